//! What a cluster costs per core: the same open-loop chat load on one
//! isle node and on a cluster of three (one shard each, in network
//! namespaces, one etcd), interleaved round by round, each run's server
//! CPU time summed over its processes. Deliveries per second of server
//! CPU are compared as a ratio of medians measured in the same run, not
//! asserted (timings on a shared machine are noisy); the run asserts only
//! that nothing acknowledged was lost.
//!
//! A benchmark, so ignored by `cargo test`: `cargo run -p ci --
//! cluster-bench` builds release binaries and runs it, printing a table
//! and writing `target/cluster-bench.json`. `ISLE_BENCH_ROUNDS` (3),
//! `ISLE_BENCH_PHONES` (2,000), `ISLE_BENCH_RATE` (2,000 msg/s) and
//! `ISLE_BENCH_SECONDS` (25, 8 of them warm-up) change the load.

use std::time::Duration;

use ci::harness::{node_flags, Binaries, Cluster, Etcd, Loadgen, Net, Node, PHONE_PORT};
use serde_json::{json, Value};

/// A run's longest wait: its duration plus signups and the drain.
const LOADGEN_TIMEOUT: Duration = Duration::from_secs(300);
/// Seconds of each run left out of the figures: signups, logins and
/// redirects happen then.
const WARMUP_S: u64 = 8;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One loadgen chat run against `targets`, the server being `pids`: its
/// JSON report.
fn run(net: &Net, binaries: &Binaries, targets: &str, pids: &[u32]) -> Value {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let (phones, rate, seconds) = (
        setting("ISLE_BENCH_PHONES", 2_000).to_string(),
        setting("ISLE_BENCH_RATE", 2_000).to_string(),
        setting("ISLE_BENCH_SECONDS", 25).to_string(),
    );
    let args = [
        "chat",
        "--target",
        targets,
        "--phones",
        &phones,
        "--rate",
        &rate,
        "--duration",
        &seconds,
        "--warmup",
        &WARMUP_S.to_string(),
        "--drain",
        "30",
        "--server-pid",
        &pids.join(","),
    ];
    let report = Loadgen::run(net, binaries, "lg", &args, LOADGEN_TIMEOUT).expect("loadgen");
    assert_eq!(report.count("lost").unwrap(), 0, "{}", report.json);
    report.json
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The medians of `field` over `runs`.
fn median_of(runs: &[Value], field: &str) -> f64 {
    median(
        runs.iter()
            .map(|r| r[field].as_f64().unwrap_or(0.0))
            .collect(),
    )
}

#[test]
#[ignore = "a benchmark: `cargo run -p ci -- cluster-bench` runs it"]
fn deliveries_per_server_cpu_second_on_one_node_and_on_three() {
    let binaries = Binaries::get().expect("building isle and loadgen");
    let net = Net::new(&["etcd", "n1", "n2", "n3", "s1", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let mut cluster = Cluster::start(&net, binaries, &["n1", "n2", "n3"], &etcd.endpoints_arg())
        .expect("three nodes given the partitions");
    let mut single = Node::start(&net, binaries, "s1", &node_flags(&net, "s1")).expect("one node");
    let single_target = format!("{}:{PHONE_PORT}", net.addr("s1"));
    let cluster_pids: Vec<u32> = (cluster.nodes.iter_mut())
        .map(|node| node.process().expect("running").pid())
        .collect();
    let single_pid = single.process().expect("running").pid();
    let (mut singles, mut clusters) = (Vec::new(), Vec::new());
    for round in 0..setting("ISLE_BENCH_ROUNDS", 3) {
        // Interleaved, the order swapped every round, so a slow spell of
        // the machine falls on both.
        for cluster_first in [round % 2 == 1, round % 2 == 0] {
            if cluster_first {
                clusters.push(run(&net, binaries, &cluster.targets(), &cluster_pids));
            } else {
                singles.push(run(&net, binaries, &single_target, &[single_pid]));
            }
        }
        eprintln!("round {round} done");
    }
    report(&singles, &clusters);
}

/// Prints each run and the medians, and writes them with the ratio to
/// `target/cluster-bench.json`.
fn report(singles: &[Value], clusters: &[Value]) {
    let fields = [
        "delivered_per_s",
        "server_cpu_s",
        "delivered_per_server_cpu_s",
        "latency_us_p50",
        "latency_us_p99",
        "redirects",
        "lost",
    ];
    for (name, runs) in [("one node", singles), ("three nodes", clusters)] {
        for run in runs {
            let line: Vec<String> = fields.iter().map(|f| format!("{f}={}", run[f])).collect();
            eprintln!("{name}: {}", line.join(" "));
        }
    }
    let medians = |runs: &[Value]| -> Value {
        fields[..5]
            .iter()
            .map(|f| (f.to_string(), json!(median_of(runs, f))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let per_cpu = |runs| median_of(runs, "delivered_per_server_cpu_s");
    let ratio = per_cpu(clusters) / per_cpu(singles);
    let summary = json!({
        "one_node": medians(singles),
        "three_nodes": medians(clusters),
        "ratio_delivered_per_server_cpu_s_three_to_one": ratio,
        "runs": {"one_node": singles, "three_nodes": clusters},
    });
    eprintln!("medians: {}", summary["one_node"]);
    eprintln!("         {}", summary["three_nodes"]);
    eprintln!("deliveries per server CPU-second, three nodes to one: {ratio:.2}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cluster-bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("written to {}", out.display());
}
