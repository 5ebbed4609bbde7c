//! Three isle nodes in network namespaces, one etcd, and loadgen in a
//! namespace of its own: phones spread over the nodes and redirected to
//! their home nodes chat across nodes, through a `kill -9` and restart of
//! one node, and nothing acknowledged is lost. Needs root and `ip`, and
//! `etcd-server` (`cargo run -p ci -- test` installs it).

use std::time::Duration;

use ci::harness::{Binaries, Cluster, Etcd, Loadgen, Net};

/// loadgen's run, drain included.
const LOADGEN_TIMEOUT: Duration = Duration::from_secs(180);

fn binaries() -> &'static Binaries {
    Binaries::get().unwrap_or_else(|error| panic!("building isle and loadgen: {error}"))
}

#[test]
fn three_nodes_chat_through_a_kill_9_and_restart_of_one_without_loss() {
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let mut cluster = Cluster::start(&net, binaries(), &["n1", "n2", "n3"], &etcd.endpoints_arg())
        .expect("three nodes given the partitions");
    // ISLE_CLUSTER_ROUNDS (`cargo run -p ci -- cluster` sets it) kills and
    // restarts the nodes in turn that many times; one by default.
    let rounds: usize = std::env::var("ISLE_CLUSTER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let duration = (6 + 8 * rounds).to_string();

    let targets = cluster.targets();
    let args = [
        "chat",
        "--target",
        &targets,
        "--phones",
        "300",
        "--rate",
        "600",
        "--duration",
        &duration,
        "--warmup",
        "0",
        "--drain",
        "60",
    ];
    let run = Loadgen::start(&net, binaries(), "lg", &args).expect("loadgen");
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(5));
        let victim = &mut cluster.nodes[(round + 1) % 3];
        victim.kill().expect("kill -9");
        std::thread::sleep(Duration::from_secs(3));
        victim.restart().expect("back on its data");
        eprintln!(
            "round {round}: node {} killed and restarted",
            (round + 1) % 3 + 1
        );
    }
    let report = run.finish(LOADGEN_TIMEOUT).expect("loadgen's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!("{}", report.json);
    assert!(
        count("delivered") > 1_000,
        "too little traffic: {}",
        report.json
    );
    assert!(
        count("redirects") > 0,
        "no phone was redirected: {}",
        report.json
    );
    assert_eq!(
        count("lost"),
        0,
        "acknowledged messages lost: {}",
        report.json
    );
    assert_eq!(count("reordered"), 0, "{}", report.json);
    assert_eq!(
        count("delivered") + count("rejected"),
        count("sent"),
        "a send neither delivered nor refused: {}",
        report.json
    );
}
