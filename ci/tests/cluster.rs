//! Three isle nodes in network namespaces, one etcd, and loadgen in a
//! namespace of its own: phones spread over the nodes and redirected to
//! their home nodes chat across nodes, through a `kill -9` and restart of
//! one node, and nothing acknowledged is lost; groups whose members live
//! on all three lose nothing; presence crosses nodes; a fourth node joins
//! and redirects. Needs root and `ip`, and `etcd-server` (`cargo run -p
//! ci -- test` installs it).

use std::{sync::Mutex, time::Duration};

use ci::harness::{Binaries, Cluster, Etcd, Loadgen, Net};

/// loadgen's run, drain included.
const LOADGEN_TIMEOUT: Duration = Duration::from_secs(180);

/// One cluster at a time: the machine has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn binaries() -> &'static Binaries {
    Binaries::get().unwrap_or_else(|error| panic!("building isle and loadgen: {error}"))
}

#[test]
fn three_nodes_chat_through_a_kill_9_and_restart_of_one_without_loss() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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

/// Groups of ten among 300 phones spread over three nodes (so nearly
/// every group has members on all three) lose no post and see none twice;
/// presence changes reach followers on other nodes, and the phones of a
/// node killed and restarted come back and carry on; a fourth node joins
/// after the bootstrap, owns no partition (partitions move only at the
/// bootstrap for now), and sends the phones that land on it to their home
/// nodes, where they chat without loss.
#[test]
fn three_nodes_serve_groups_and_presence_and_a_fourth_node_redirects() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::new(&["etcd", "n1", "n2", "n3", "n4", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let mut cluster = Cluster::start(&net, binaries(), &["n1", "n2", "n3"], &etcd.endpoints_arg())
        .expect("three nodes given the partitions");
    let targets = cluster.targets();

    let groups = [
        "groups",
        "--target",
        &targets,
        "--phones",
        "300",
        "--group-size",
        "10",
        "--duration",
        "5",
        "--warmup",
        "0",
        "--drain",
        "30",
    ];
    let report = Loadgen::run(&net, binaries(), "lg", &groups, LOADGEN_TIMEOUT).expect("groups");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!("{}", report.json);
    assert!(count("posts") > 100, "too few posts: {}", report.json);
    assert_eq!(count("undelivered"), 0, "{}", report.json);
    assert_eq!(count("duplicates"), 0, "{}", report.json);
    assert_eq!(count("errors"), 0, "{}", report.json);
    assert!(count("redirects") > 0, "{}", report.json);

    // Presence across nodes, through a kill -9 and restart of one: its
    // phones come back, subscribe again and carry on changing.
    let presence = [
        "presence",
        "--target",
        &targets,
        "--first-phone",
        "+15550100000",
        "--phones",
        "300",
        "--contacts",
        "4",
        "--rate",
        "300",
        "--duration",
        "16",
        "--warmup",
        "0",
        "--drain",
        "3",
    ];
    let mut run = Loadgen::start(&net, binaries(), "lg", &presence).expect("presence");
    (run.process())
        .wait_for_stderr_line("phones following", LOADGEN_TIMEOUT)
        .expect("the presence set-up");
    let changing = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let victim = &mut cluster.nodes[1];
    victim.kill().expect("kill -9");
    std::thread::sleep(Duration::from_secs(1));
    victim.restart().expect("back on its data");
    let back_s = changing.elapsed().as_secs_f64();
    let report = run.finish(LOADGEN_TIMEOUT).expect("presence's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!("node 2 back {back_s:.1} s into the changes; {}", report.json);
    assert_eq!(count("errors"), 0, "{}", report.json);
    assert!(count("updates") > 0, "{}", report.json);
    // About a third of the phones live on node 2: every one came back.
    assert!(count("reconnects") >= 50, "{}", report.json);
    assert_eq!(count("reconnects"), count("disconnects"), "{}", report.json);
    assert!(
        count("updates") <= count("changes") * 4,
        "more updates than changes reach followers: {}",
        report.json
    );
    // Back, the phones of node 2 change on schedule with the others: the
    // seconds after its return see the whole rate of changes again
    // (without them, two thirds of it).
    let ticks = report.timeline().expect("the timeline");
    let after: Vec<f64> = (ticks.iter())
        .filter(|tick| tick.t_s > back_s + 3.0 && tick.t_s <= 16.0)
        .map(|tick| tick.sent_per_s)
        .collect();
    let mean = after.iter().sum::<f64>() / after.len().max(1) as f64;
    assert!(
        after.len() >= 3 && mean > 0.9 * 300.0,
        "changes per second after node 2 came back: {after:?}"
    );

    cluster.join(binaries(), "n4").expect("a fourth node");
    cluster.await_live(4).expect("every node sees four");
    assert_eq!(cluster.status(3)["partitions_owned"].as_u64(), Some(0));
    let owned: u64 = (0..3)
        .map(|i| cluster.status(i)["partitions_owned"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(owned, 1024, "the map is unchanged by the join");
    let only_the_new_node = cluster.targets_of(3..4);
    let chat = [
        "chat",
        "--target",
        &only_the_new_node,
        "--first-phone",
        "+15550200000",
        "--phones",
        "100",
        "--rate",
        "200",
        "--duration",
        "4",
        "--warmup",
        "0",
        "--drain",
        "30",
    ];
    let report = Loadgen::run(&net, binaries(), "lg", &chat, LOADGEN_TIMEOUT).expect("chat");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!("{}", report.json);
    assert!(
        count("redirects") >= 100,
        "every phone landed on the new node and was sent home: {}",
        report.json
    );
    assert_eq!(count("lost"), 0, "{}", report.json);
    assert!(count("delivered") > 100, "{}", report.json);
}
