//! What a cluster costs, in three benchmarks.
//!
//! Per core: the same open-loop chat load on one isle node and on a
//! cluster of three (one shard each, in network namespaces, one etcd),
//! interleaved round by round, each run's server CPU time summed over its
//! processes. Deliveries per second of server CPU are compared as a ratio
//! of medians measured in the same run, not asserted (timings on a shared
//! machine are noisy); the run asserts only that nothing acknowledged was
//! lost. Writes `target/cluster-bench.json`.
//!
//! In latency: the three-node cluster's maximum rate, measured closed
//! loop, then open-loop runs at a quarter of it, each timing its
//! same-node deliveries (sender and recipient on one node) and its
//! cross-node ones (the message crossed a link) in the same run. Writes
//! `target/cluster-latency.json`.
//!
//! In replication: one node, three without replication and three with
//! `replication = "sync"`, interleaved; deliveries per server CPU-second
//! and the `Sent` latency. Writes `target/cluster-replication.json`.
//!
//! Benchmarks, so ignored by `cargo test`: `cargo run -p ci --
//! cluster-bench` builds release binaries and runs all three
//! (`cluster-bench latency` only the second, `cluster-bench replication`
//! only the third), printing a table. `ISLE_BENCH_ROUNDS` (3),
//! `ISLE_BENCH_PHONES` (2,000), `ISLE_BENCH_RATE` (2,000 msg/s, the first
//! benchmark's) and `ISLE_BENCH_SECONDS` (25, 8 of them warm-up) change
//! the load; `ISLE_BENCH_SHARE` (4) divides the maximum rate into the
//! latency runs' rate.

use std::time::Duration;

use ci::harness::{
    node_flags, target_dir, Binaries, Cluster, Etcd, Loadgen, Net, Node, PHONE_PORT,
};
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
    let rate = setting("ISLE_BENCH_RATE", 2_000);
    run_at(net, binaries, targets, pids, rate, &[])
}

/// One loadgen chat run against `targets` at `rate` messages a second (0:
/// closed loop, as fast as the server answers), `extra` flags added.
fn run_at(
    net: &Net,
    binaries: &Binaries,
    targets: &str,
    pids: &[u32],
    rate: u64,
    extra: &[&str],
) -> Value {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let (phones, rate, seconds) = (
        setting("ISLE_BENCH_PHONES", 2_000).to_string(),
        rate.to_string(),
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
    let args = [&args[..], extra].concat();
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
    let out = target_dir()
        .expect("the target directory")
        .join("cluster-bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("written to {}", out.display());
}

#[test]
#[ignore = "a benchmark: `cargo run -p ci -- cluster-bench` runs it"]
fn cross_node_and_same_node_latency_at_a_quarter_of_the_maximum_rate() {
    let binaries = Binaries::get().expect("building isle and loadgen");
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let mut cluster = Cluster::start(&net, binaries, &["n1", "n2", "n3"], &etcd.endpoints_arg())
        .expect("three nodes given the partitions");
    let targets = cluster.targets();
    let pids: Vec<u32> = (cluster.nodes.iter_mut())
        .map(|node| node.process().expect("running").pid())
        .collect();
    let rounds = setting("ISLE_BENCH_ROUNDS", 3);
    // The maximum: closed loop, each phone keeping four sends
    // outstanding, as fast as the cluster answers.
    let mut maximum = Vec::new();
    for round in 0..rounds {
        maximum.push(run_at(&net, binaries, &targets, &pids, 0, &[]));
        eprintln!("maximum, round {round}: {}", maximum[round as usize]);
    }
    let share = setting("ISLE_BENCH_SHARE", 4).max(1) as f64;
    let quarter = (median_of(&maximum, "delivered_per_s") / share).round() as u64;
    let mut paced = Vec::new();
    for round in 0..rounds {
        paced.push(run_at(&net, binaries, &targets, &pids, quarter, &[]));
        eprintln!("at {quarter}/s, round {round}: {}", paced[round as usize]);
    }
    report_latency(&maximum, share, quarter, &paced);
}

/// Prints the maximum runs and the paced runs' latency by kind, and
/// writes them with the medians to `target/cluster-latency.json`.
fn report_latency(maximum: &[Value], share: f64, quarter: u64, paced: &[Value]) {
    for run in maximum {
        eprintln!(
            "maximum: delivered_per_s={} server_cpu_s={} latency_us_p99={}",
            run["delivered_per_s"], run["server_cpu_s"], run["latency_us_p99"]
        );
    }
    let kinds = [
        "same_node_latency_us_p50",
        "same_node_latency_us_p99",
        "same_node_deliveries_timed",
        "cross_node_latency_us_p50",
        "cross_node_latency_us_p99",
        "cross_node_deliveries_timed",
        "delivered_per_s",
        "send_lag_us_p99",
    ];
    for run in paced {
        let line: Vec<String> = kinds.iter().map(|f| format!("{f}={}", run[f])).collect();
        eprintln!("at {quarter}/s: {}", line.join(" "));
    }
    let medians: serde_json::Map<String, Value> = (kinds.iter())
        .map(|f| (f.to_string(), json!(median_of(paced, f))))
        .collect();
    let ratio = |quantile: &str| {
        median_of(paced, &format!("cross_node_latency_us_{quantile}"))
            / median_of(paced, &format!("same_node_latency_us_{quantile}"))
    };
    let summary = json!({
        "maximum_delivered_per_s": median_of(maximum, "delivered_per_s"),
        "paced_rate": quarter,
        "share_of_maximum": 1.0 / share,
        "paced": medians,
        "ratio_cross_to_same_p50": ratio("p50"),
        "ratio_cross_to_same_p99": ratio("p99"),
        "runs": {"maximum": maximum, "paced": paced},
    });
    eprintln!(
        "maximum {} delivered/s; at {quarter}/s, medians: {}",
        summary["maximum_delivered_per_s"], summary["paced"]
    );
    eprintln!(
        "cross-node to same-node latency: p50 {:.2}, p99 {:.2}",
        ratio("p50"),
        ratio("p99")
    );
    let out = target_dir()
        .expect("the target directory")
        .join("cluster-latency.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("written to {}", out.display());
}

/// Sync replication's cost: the same open-loop chat load on one node
/// (durable, no cluster), on three nodes without replication and on
/// three nodes with `replication = "sync"`, interleaved round by round
/// (the order turned every round). Deliveries per server CPU-second and
/// the `Sent` latency (from a send's intended time to its answer: the
/// wait for the disks, the replica's included) are compared as ratios of
/// medians. Writes `target/cluster-replication.json`.
#[test]
#[ignore = "a benchmark: `cargo run -p ci -- cluster-bench` runs it"]
fn sync_replication_against_no_replication_and_one_node() {
    let binaries = Binaries::get().expect("building isle and loadgen");
    let roles = [
        "etcd", "etcd2", "n1", "n2", "n3", "r1", "r2", "r3", "s1", "lg",
    ];
    let net = Net::new(&roles).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let etcd2 = Etcd::start(&net, &["etcd2"]).expect("starting the second etcd");
    let mut off = Cluster::start(&net, binaries, &["n1", "n2", "n3"], &etcd.endpoints_arg())
        .expect("three nodes without replication");
    let sync = "replication = \"sync\"";
    let mut replicated = Cluster::start_with(
        &net,
        binaries,
        &["r1", "r2", "r3"],
        &etcd2.endpoints_arg(),
        sync,
    )
    .expect("three nodes with sync replication");
    let mut single = Node::start(&net, binaries, "s1", &node_flags(&net, "s1")).expect("one node");
    let pids = |cluster: &mut Cluster| -> Vec<u32> {
        (cluster.nodes.iter_mut())
            .map(|node| node.process().expect("running").pid())
            .collect()
    };
    let setups = [
        (
            "one node",
            format!("{}:{PHONE_PORT}", net.addr("s1")),
            vec![single.process().expect("running").pid()],
        ),
        ("three nodes", off.targets(), pids(&mut off)),
        (
            "three nodes, sync",
            replicated.targets(),
            pids(&mut replicated),
        ),
    ];
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); setups.len()];
    for round in 0..setting("ISLE_BENCH_ROUNDS", 3) as usize {
        for turn in 0..setups.len() {
            let index = (turn + round) % setups.len();
            let (_, targets, pids) = &setups[index];
            runs[index].push(run(&net, binaries, targets, pids));
        }
        eprintln!("round {round} done");
    }
    let names: Vec<&str> = setups.iter().map(|(name, _, _)| *name).collect();
    report_replication(&names, &runs);
}

/// Prints each run and the medians, and writes them with the ratios to
/// `target/cluster-replication.json`.
fn report_replication(names: &[&str], runs: &[Vec<Value>]) {
    let fields = [
        "delivered_per_s",
        "delivered_per_server_cpu_s",
        "sent_latency_us_p50",
        "sent_latency_us_p99",
        "latency_us_p50",
        "latency_us_p99",
        "lost",
    ];
    let mut medians = serde_json::Map::new();
    for (name, runs) in names.iter().zip(runs) {
        for run in runs {
            let line: Vec<String> = fields.iter().map(|f| format!("{f}={}", run[f])).collect();
            eprintln!("{name}: {}", line.join(" "));
        }
        let median: serde_json::Map<String, Value> = (fields.iter())
            .map(|f| (f.to_string(), json!(median_of(runs, f))))
            .collect();
        eprintln!("{name}, medians: {}", Value::from(median.clone()));
        medians.insert(name.to_string(), median.into());
    }
    let ratio =
        |field: &str, a: usize, b: usize| median_of(&runs[a], field) / median_of(&runs[b], field);
    let ratios = json!({
        "per_cpu_sync_to_off": ratio("delivered_per_server_cpu_s", 2, 1),
        "per_cpu_sync_to_one_node": ratio("delivered_per_server_cpu_s", 2, 0),
        "sent_p50_sync_to_off": ratio("sent_latency_us_p50", 2, 1),
        "sent_p99_sync_to_off": ratio("sent_latency_us_p99", 2, 1),
        "sent_p50_sync_to_one_node": ratio("sent_latency_us_p50", 2, 0),
        "sent_p99_sync_to_one_node": ratio("sent_latency_us_p99", 2, 0),
    });
    eprintln!("ratios: {ratios}");
    let summary = json!({"medians": medians, "ratios": ratios, "runs": runs});
    let out = target_dir()
        .expect("the target directory")
        .join("cluster-replication.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("written to {}", out.display());
}
