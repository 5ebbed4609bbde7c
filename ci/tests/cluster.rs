//! Three isle nodes in network namespaces, one etcd, and loadgen in a
//! namespace of its own: phones spread over the nodes and redirected to
//! their home nodes chat across nodes, through a `kill -9` and restart of
//! one node, and nothing acknowledged is lost. Needs root and `ip`, and
//! `etcd-server` (`cargo run -p ci -- test` installs it).

use std::time::{Duration, Instant};

use ci::harness::{Binaries, Etcd, Loadgen, Net, Node};

/// The port of each node's phone-facing (plaintext) and peer listeners.
const PHONE_PORT: u16 = 5223;
const PEER_PORT: u16 = 5300;
/// How long three nodes take to register and be given the partitions,
/// and loadgen's run.
const SETTLE: Duration = Duration::from_secs(30);
const LOADGEN_TIMEOUT: Duration = Duration::from_secs(180);

fn binaries() -> &'static Binaries {
    Binaries::get().unwrap_or_else(|error| panic!("building isle and loadgen: {error}"))
}

/// Node `id` of the cluster in `role`'s namespace.
fn node<'net>(net: &'net Net, role: &str, id: u16, etcd: &str, config: &str) -> Node<'net> {
    let addr = net.addr(role);
    let phones = format!("{addr}:{PHONE_PORT}");
    let peers = format!("{addr}:{PEER_PORT}");
    let id = id.to_string();
    let flags = [
        "--config",
        config,
        "--plaintext-listen",
        &phones,
        "--no-tls",
        "--advertise",
        &phones,
        "--shards",
        "1",
        "--segment-bytes",
        "1048576",
        "--test-numbers",
        "+1555:111111",
        "--node-id",
        &id,
        "--etcd",
        etcd,
        "--peer-listen",
        &peers,
    ];
    Node::start(net, binaries(), role, &flags).expect("starting isle")
}

/// The cluster status a node's admin listener shows, asked from inside
/// its namespace.
fn cluster_status(net: &Net, role: &str, node: &Node) -> serde_json::Value {
    let url = format!("http://{}/status", node.admin().expect("admin address"));
    let text = net
        .within(role, || {
            let answer = ureq::get(&url).call().ok()?;
            answer.into_string().ok()
        })
        .expect("the namespace");
    let status: serde_json::Value = text
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    status["cluster"].clone()
}

fn await_assigned(net: &Net, nodes: &[(&str, &Node)]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let owned: Vec<u64> = nodes
            .iter()
            .map(|(role, node)| {
                let status = cluster_status(net, role, node);
                let live = status["nodes_live"].as_array().map_or(0, Vec::len);
                match live {
                    3 => status["partitions_owned"].as_u64().unwrap_or(0),
                    _ => 0,
                }
            })
            .collect();
        if owned.iter().all(|&o| o > 0) {
            assert_eq!(owned.iter().sum::<u64>(), 1024, "{owned:?}");
            return;
        }
        assert!(Instant::now() < deadline, "not assigned: {owned:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_chat_through_a_kill_9_and_restart_of_one_without_loss() {
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let config = net.dir().join("cluster.toml");
    std::fs::write(&config, "[cluster]\nbootstrap_nodes = 3\n").unwrap();
    let config = config.to_str().unwrap();
    let endpoints = etcd.endpoints_arg();
    let mut nodes = [
        node(&net, "n1", 1, &endpoints, config),
        node(&net, "n2", 2, &endpoints, config),
        node(&net, "n3", 3, &endpoints, config),
    ];
    let roles = ["n1", "n2", "n3"];
    let pairs: Vec<(&str, &Node)> = roles.iter().copied().zip(nodes.iter()).collect();
    await_assigned(&net, &pairs);
    // ISLE_CLUSTER_ROUNDS (`cargo run -p ci -- cluster` sets it) kills and
    // restarts the nodes in turn that many times; one by default.
    let rounds: usize = std::env::var("ISLE_CLUSTER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let duration = (6 + 8 * rounds).to_string();

    let targets: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|role| format!("{}:{PHONE_PORT}", net.addr(role)))
        .collect();
    let targets = targets.join(",");
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
        let victim = &mut nodes[(round + 1) % 3];
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
