//! Three isle nodes in network namespaces, one etcd, and loadgen in a
//! namespace of its own: phones spread over the nodes and redirected to
//! their home nodes chat across nodes, through a `kill -9` and restart of
//! one node, and nothing acknowledged is lost; groups whose members live
//! on all three lose nothing; presence crosses nodes; a fourth node joins
//! and redirects. Needs root and `ip`, and `etcd-server` (`cargo run -p
//! ci -- test` installs it).

use std::{process::Command, sync::Mutex, time::Duration};

use ci::harness::{metrics, target_dir, Binaries, Cluster, Etcd, Loadgen, Net, Report};

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
    eprintln!(
        "node 2 back {back_s:.1} s into the changes; {}",
        report.json
    );
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

/// The bounds a node keeps on what waits for another node
/// (docs/links.md: a link's queue, which is also the receiver's window;
/// `peer_staging_messages_max` for what is staged for a node).
const LINK_QUEUE_MESSAGES_MAX: f64 = 8_192.0;
const LINK_QUEUE_BYTES_MAX: f64 = 32.0 * 1024.0 * 1024.0;
const STAGING_MESSAGES_MAX: f64 = 16_384.0;

/// The `/metrics` families that hold what waits for, or from, another
/// node, each with its bound: the highest any series of them reached on
/// the running nodes is what the test checks.
const BOUNDED: [(&str, f64); 5] = [
    ("isle_link_queue_messages", LINK_QUEUE_MESSAGES_MAX),
    ("isle_link_queue_bytes", LINK_QUEUE_BYTES_MAX),
    ("isle_link_in_unreleased_messages", LINK_QUEUE_MESSAGES_MAX),
    ("isle_link_in_unreleased_bytes", LINK_QUEUE_BYTES_MAX),
    ("isle_queue_node_staged_messages_max", STAGING_MESSAGES_MAX),
];

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One node of three stopped with SIGSTOP for 10 s while the phones of
/// all three chat: the messages between the other two's phones keep
/// flowing. Nothing acknowledged is lost, and what the running nodes
/// hold for other nodes (link queues, what they received and have not
/// released, what is staged for a node) stays within its bound, read
/// from their `/metrics` four times a second. The p99 latency of the
/// other two's chat (`--latency-nodes`) is measured against runs
/// without the stop, interleaved on the same cluster, and reported with
/// the ratio (printed, and written to `target/cluster-stop.json`), not
/// asserted: docs/BENCHMARKS.md has the figures.
///
/// Long, so `cargo run -p ci -- cluster` runs it, not `ci test`.
/// `ISLE_STOP_ROUNDS` (3), `ISLE_STOP_PHONES` (600) and
/// `ISLE_STOP_RATE` (600 messages a second) change it.
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn a_node_stopped_for_10_s_leaves_the_other_two_chatting_within_their_bounds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let mut cluster = Cluster::start(&net, binaries(), &["n1", "n2", "n3"], &etcd.endpoints_arg())
        .expect("three nodes given the partitions");
    let (mut stopped, mut baseline) = (Vec::new(), Vec::new());
    let mut run_index = 0;
    for round in 0..setting("ISLE_STOP_ROUNDS", 3) {
        // Interleaved, the order swapped every round, so a slow spell of
        // the machine falls on both.
        for stop in [round % 2 == 0, round % 2 == 1] {
            let run = stop_run(&net, &mut cluster, stop, run_index);
            run_index += 1;
            eprintln!("round {round}, stop {stop}: {run}");
            match stop {
                true => stopped.push(run),
                false => baseline.push(run),
            }
        }
    }
    report_stop(&stopped, &baseline);
}

/// One chat run over the three nodes; with `stop`, node 3 is stopped
/// 8 s into the sending and continued 10 s later. The run's report, with
/// the highest of each [`BOUNDED`] family on nodes 1 and 2 added as
/// `bounded_max`.
fn stop_run(net: &Net, cluster: &mut Cluster, stop: bool, run_index: u64) -> serde_json::Value {
    let (targets, measured) = (cluster.targets(), cluster.targets_of(0..2));
    let first_phone = format!("+1555{:07}", 3_000_000 + run_index * 10_000);
    let (phones, rate) = (
        setting("ISLE_STOP_PHONES", 600).to_string(),
        setting("ISLE_STOP_RATE", 600).to_string(),
    );
    let args = [
        "chat",
        "--target",
        &targets,
        "--latency-nodes",
        &measured,
        "--first-phone",
        &first_phone,
        "--phones",
        &phones,
        "--rate",
        &rate,
        "--duration",
        "30",
        "--warmup",
        "5",
        "--drain",
        "60",
    ];
    let mut run = Loadgen::start(net, binaries(), "lg", &args).expect("loadgen");
    (run.process())
        .wait_for_stderr_line("phones logged in", LOADGEN_TIMEOUT)
        .expect("the logins");
    let sending = std::time::Instant::now();
    let (stop_at, cont_at) = (Duration::from_secs(8), Duration::from_secs(18));
    let mut highest = [0.0f64; BOUNDED.len()];
    let mut state = 0; // 0 before the stop, 1 stopped, 2 continued
    while run.process().try_status().expect("loadgen").is_none() {
        assert!(sending.elapsed() < LOADGEN_TIMEOUT, "loadgen runs too long");
        if stop && state == 0 && sending.elapsed() >= stop_at {
            let node = cluster.nodes[2].process().expect("node 3 runs");
            node.stop().expect("SIGSTOP");
            state = 1;
        }
        if stop && state == 1 && sending.elapsed() >= cont_at {
            let node = cluster.nodes[2].process().expect("node 3 runs");
            node.cont().expect("SIGCONT");
            state = 2;
        }
        for index in 0..2 {
            let Some(text) = cluster.metrics(index) else {
                continue;
            };
            for ((family, _), high) in BOUNDED.iter().zip(&mut highest) {
                for sample in metrics::samples(&text, family) {
                    *high = high.max(sample.value);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = run.finish(LOADGEN_TIMEOUT).expect("loadgen's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    assert_eq!(
        count("lost"),
        0,
        "acknowledged messages lost: {}",
        report.json
    );
    assert!(count("delivered") > 1_000, "{}", report.json);
    assert_eq!(
        count("acked") + count("rejected"),
        count("sent"),
        "sends left without an answer: {}",
        report.json
    );
    for ((family, bound), high) in BOUNDED.iter().zip(highest) {
        assert!(
            high <= *bound,
            "{family} reached {high}, past its bound {bound}"
        );
    }
    if stop {
        // The stop took: node 3's phones waited out the 10 s for answers.
        let gap = report.json["answer_gap_ms_max"].as_f64().unwrap_or(0.0);
        assert!(
            gap >= 9_000.0,
            "no phone waited through the stop: {}",
            report.json
        );
        cluster.await_live(3).expect("node 3 back among the live");
    }
    // The next run starts on a cluster whose links are all up again.
    await_links_up(cluster);
    let mut json = report.json;
    json["bounded_max"] = (BOUNDED.iter().zip(highest))
        .map(|((family, _), high)| (family.to_string(), serde_json::json!(high)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    json
}

/// Waits until every node's outgoing links are all connected.
fn await_links_up(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up = (0..cluster.nodes.len()).all(|index| {
            let status = cluster.status(index);
            let links = status["links"].as_u64().unwrap_or(0);
            links > 0 && status["links_up"].as_u64() == Some(links)
        });
        if up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "links not all up again within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the runs and the medians, and writes them with the ratio of
/// the p99s to `target/cluster-stop.json`.
fn report_stop(stopped: &[serde_json::Value], baseline: &[serde_json::Value]) {
    let median = |runs: &[serde_json::Value], field: &str| {
        let mut values: Vec<f64> = (runs.iter())
            .map(|run| run[field].as_f64().unwrap_or(0.0))
            .collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let fields = [
        "latency_us_p50",
        "latency_us_p99",
        "delivered_per_s",
        "unavailable",
        "answer_gap_ms_max",
    ];
    let medians = |runs: &[serde_json::Value]| -> serde_json::Value {
        (fields.iter())
            .map(|f| (f.to_string(), serde_json::json!(median(runs, f))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let ratio = median(stopped, "latency_us_p99") / median(baseline, "latency_us_p99");
    let summary = serde_json::json!({
        "stopped": medians(stopped),
        "baseline": medians(baseline),
        "ratio_p99_stopped_to_baseline": ratio,
        "runs": {"stopped": stopped, "baseline": baseline},
    });
    eprintln!("medians with node 3 stopped: {}", summary["stopped"]);
    eprintln!("medians without the stop:    {}", summary["baseline"]);
    eprintln!("p99 of nodes 1 and 2's chat, stopped to baseline: {ratio:.2}");
    let out = target_dir()
        .expect("the target directory")
        .join("cluster-stop.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!("written to {}", out.display());
}

/// Nodes n1 to n3 with `replication = "sync"`, given the partitions.
fn replicating_cluster<'net>(net: &'net Net, etcd: &Etcd) -> Cluster<'net> {
    let sync = "replication = \"sync\"";
    Cluster::start_with(
        net,
        binaries(),
        &["n1", "n2", "n3"],
        &etcd.endpoints_arg(),
        sync,
    )
    .expect("three replicating nodes given the partitions")
}

/// loadgen's chat from `lg`: `phones` over every node of `cluster`,
/// `rate` messages a second for `seconds`, `more` flags added; started,
/// with every phone logged in.
fn chat(
    net: &Net,
    cluster: &Cluster,
    (phones, rate, seconds): (u64, u64, u64),
    more: &[&str],
) -> Loadgen {
    let (targets, seconds) = (cluster.targets(), seconds.to_string());
    let (phones, rate) = (phones.to_string(), rate.to_string());
    let args = [
        "chat",
        "--target",
        &targets,
        "--phones",
        &phones,
        "--rate",
        &rate,
        "--duration",
        &seconds,
        "--warmup",
        "0",
        "--drain",
        "60",
    ];
    let args = [&args[..], more].concat();
    let mut run = Loadgen::start(net, binaries(), "lg", &args).expect("loadgen");
    (run.process())
        .wait_for_stderr_line("phones logged in", LOADGEN_TIMEOUT)
        .expect("the logins");
    run
}

/// Three replicating nodes with every island in sync, and 600 phones
/// (`ISLE_FAILOVER_PHONES`) chatting over all three at 600 messages a
/// second (`ISLE_FAILOVER_RATE`) for `seconds`.
fn replicating_chat<'net>(net: &'net Net, etcd: &Etcd, seconds: u64) -> (Cluster<'net>, Loadgen) {
    let (phones, rate) = (
        setting("ISLE_FAILOVER_PHONES", 600),
        setting("ISLE_FAILOVER_RATE", 600),
    );
    let cluster = replicating_cluster(net, etcd);
    await_every_island_in_sync(&cluster, 0, Duration::from_secs(30));
    let run = chat(net, &cluster, (phones, rate, seconds), &[]);
    (cluster, run)
}

/// Each island's (epoch, mode) as node `index` sees it, by island id.
fn islands(cluster: &Cluster, index: usize) -> Vec<(u64, u64, String)> {
    let status = cluster.status(index);
    let islands = status["islands"].as_array().cloned().unwrap_or_default();
    islands
        .iter()
        .map(|i| {
            let field = |name: &str| i[name].as_u64().unwrap_or(0);
            let mode = i["mode"].as_str().unwrap_or("").to_owned();
            (field("id"), field("epoch"), mode)
        })
        .collect()
}

/// Waits until node `index` sees island `id` in `mode`, past the
/// bootstrap's epoch (never served: each primary's first view moves its
/// island on).
fn await_island_mode(cluster: &Cluster, index: usize, id: u64, mode: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let seen = islands(cluster, index);
        if seen.iter().any(|(i, e, m)| *i == id && *e > 1 && m == mode) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "island {id} not {mode} within {within:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With sync replication, node 3 (island 2's secondary, and island 3's
/// primary) is killed with `kill -9` while all three nodes' phones chat,
/// and restarted 10 s later: island 2 goes solo and its phones go on
/// being answered; island 3 is taken over by its secondary, node 1
/// (its phones are answered `Unavailable` or `TryLater` until then, and
/// keep what they sent); after the restart island 2 is in sync again. Nothing acknowledged is
/// lost; every send is answered. The p99 and the largest gap between
/// answers are printed (the switch to solo holds replies for up to the
/// replica timeout, 2 s).
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn with_sync_replication_a_killed_secondary_leaves_its_island_solo_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let mut cluster = replicating_cluster(&net, &etcd);
    await_island_mode(&cluster, 1, 2, "sync", Duration::from_secs(30));
    let measured = cluster.targets_of(0..2);
    let run = chat(
        &net,
        &cluster,
        (600, 600, 30),
        &["--latency-nodes", &measured],
    );
    std::thread::sleep(Duration::from_secs(8));
    cluster.nodes[2].kill().expect("kill -9 of node 3");
    await_island_mode(&cluster, 1, 2, "solo", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(8));
    cluster.nodes[2].restart().expect("node 3 back on its data");
    let report = run.finish(LOADGEN_TIMEOUT).expect("loadgen's report");
    eprintln!(
        "node 3 killed and restarted: p99 {:.1} ms of nodes 1-2's chat, largest answer gap {} ms",
        report.json["latency_us_p99"].as_f64().unwrap_or(0.0) / 1e3,
        report.json["answer_gap_ms_max"]
    );
    eprintln!("{}", report.json);
    assert_nothing_lost(&report);
    await_island_mode(&cluster, 1, 2, "sync", Duration::from_secs(60));
}

/// With sync replication, etcd is down for 30 s while the phones chat:
/// messages go on (a sync primary's fence is its secondary's acks, not
/// its lease), no island changes epoch, and nothing is lost.
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn with_sync_replication_an_etcd_outage_of_30_s_stops_no_message_and_moves_no_island() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let mut etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let cluster = replicating_cluster(&net, &etcd);
    for island in 1..=3 {
        await_island_mode(&cluster, 0, island, "sync", Duration::from_secs(30));
    }
    let before = islands(&cluster, 0);
    let run = chat(&net, &cluster, (600, 600, 45), &[]);
    let sending = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    etcd.kill("etcd").expect("etcd down");
    let down_at = sending.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(30));
    etcd.restart("etcd").expect("etcd back");
    let up_at = sending.elapsed().as_secs_f64();
    let report = run.finish(LOADGEN_TIMEOUT).expect("loadgen's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!(
        "etcd down from {down_at:.1} s to {up_at:.1} s; {}",
        report.json
    );
    assert_eq!(count("lost"), 0, "acknowledged lost: {}", report.json);
    assert_eq!(
        count("acked") + count("rejected"),
        count("sent"),
        "sends left without an answer: {}",
        report.json
    );
    // Messages went on while etcd was away: the outage's seconds deliver.
    let ticks = report.timeline().expect("the timeline");
    let during: Vec<f64> = (ticks.iter())
        .filter(|t| t.t_s > down_at + 2.0 && t.t_s < up_at - 1.0)
        .map(|t| t.delivered_per_s)
        .collect();
    assert!(
        during.len() >= 20 && during.iter().all(|&d| d > 0.0),
        "seconds of the outage without a delivery: {during:?}"
    );
    // No failover, no solo: every island as it was.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(islands(&cluster, 0), before, "an island moved");
}

/// With sync replication, the primaries are killed with `kill -9` in
/// turn while the phones of all three nodes chat, each restarted once its
/// islands moved: each time, the killed node's islands are taken over by
/// their in-sync secondaries (a new epoch each), the phones follow the
/// redirects, the restarted node rejoins its islands as their secondary,
/// and the next kill waits until every island is in sync again. Nothing
/// acknowledged is lost, every send is answered, and no message reaches
/// its recipient after a later one of the same sender (a failover let
/// about one message in 27,000 overtake an earlier one until a
/// conversation's gap stayed at its earliest refused send).
/// Each round's failover (the kill until every island it led is served by
/// another node, as etcd says) and rejoin (its restart until every island
/// is in sync) are printed. `ISLE_FAILOVER_ROUNDS` (1; `ci cluster` sets
/// 20), `ISLE_FAILOVER_PHONES` (600) and `ISLE_FAILOVER_RATE` (600
/// messages a second) change it.
#[test]
fn with_sync_replication_killed_primaries_fail_over_rejoin_and_lose_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rounds = setting("ISLE_FAILOVER_ROUNDS", 1);
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    // Long enough for every round (a kill, its failover, the restart and
    // the rejoin take about 20 s here).
    let chat_s = 15 + 30 * rounds;
    let (mut cluster, run) = replicating_chat(&net, &etcd, chat_s);
    let (mut failovers, mut rejoins) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(5));
        let victim = usize::try_from(round % 3).expect("small");
        let watcher = (victim + 1) % 3;
        let id = victim as u64 + 1;
        let led: Vec<u64> = island_records(&cluster, watcher)
            .iter()
            .filter(|i| i["primary"].as_u64() == Some(id))
            .filter_map(|i| i["id"].as_u64())
            .collect();
        let killed = std::time::Instant::now();
        cluster.nodes[victim].kill().expect("kill -9 of a primary");
        await_islands(&cluster, watcher, Duration::from_secs(60), |islands| {
            islands.iter().all(|i| {
                !led.contains(&i["id"].as_u64().unwrap_or(0)) || i["primary"].as_u64() != Some(id)
            })
        });
        failovers.push(killed.elapsed().as_secs_f64());
        let restarted = std::time::Instant::now();
        cluster.nodes[victim].restart().expect("back on its data");
        await_every_island_in_sync(&cluster, watcher, Duration::from_secs(120));
        rejoins.push(restarted.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: node {id} (primary of islands {led:?}) killed: its islands served \
             elsewhere after {:.1} s; restarted, every island in sync after {:.1} s",
            failovers[failovers.len() - 1],
            rejoins[rejoins.len() - 1]
        );
    }
    // The rounds may end well before the chat does.
    let chat_left = Duration::from_secs(chat_s) + LOADGEN_TIMEOUT;
    let report = run.finish(chat_left).expect("loadgen's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    eprintln!(
        "{rounds} rounds: failover median {:.1} s (max {:.1} s), rejoin median {:.1} s; largest \
         answer gap {} ms; {}",
        median(&mut failovers.clone()),
        failovers.iter().copied().fold(0.0, f64::max),
        median(&mut rejoins.clone()),
        report.json["answer_gap_ms_max"],
        report.json
    );
    assert_nothing_lost(&report);
    assert!(
        count("redirects") > 0,
        "no phone followed an island: {}",
        report.json
    );
}

/// What a chaos case asserts of loadgen's report: nothing acknowledged
/// lost, no message reaching its recipient after a later one of its
/// sender, every send answered, and enough delivered to mean something.
fn assert_nothing_lost(report: &Report) {
    let count = |name| report.count(name).expect("a loadgen counter");
    assert_eq!(count("lost"), 0, "acknowledged lost: {}", report.json);
    assert_eq!(count("reordered"), 0, "{}", report.json);
    assert!(count("delivered") > 1_000, "{}", report.json);
    assert_eq!(
        count("acked") + count("rejected"),
        count("sent"),
        "sends left without an answer: {}",
        report.json
    );
}

/// Each island's record as node `index`'s status shows it.
fn island_records(cluster: &Cluster, index: usize) -> Vec<serde_json::Value> {
    let status = cluster.status(index);
    status["islands"].as_array().cloned().unwrap_or_default()
}

/// Waits until node `index` shows islands `done` accepts.
fn await_islands(
    cluster: &Cluster,
    index: usize,
    within: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let seen = island_records(cluster, index);
        if seen.len() == 3 && done(&seen) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "islands not as awaited within {within:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until node `index` shows every island in sync on two nodes.
fn await_every_island_in_sync(cluster: &Cluster, index: usize, within: Duration) {
    await_islands(cluster, index, within, |islands| {
        islands.iter().all(|i| {
            i["mode"] == "sync" && i["insync"].as_array().is_some_and(|nodes| nodes.len() == 2)
        })
    });
}

/// `isle ctl restart` on each node in turn (what `isle ctl
/// rolling-restart` does, run here in each node's namespace, where its
/// admin listener is) while the phones of all three nodes chat; the test
/// starts each stopped node again, as a service manager would. Each
/// restart hands the node's islands to their secondaries (its lease
/// revoked, not left to expire), and the next begins only once every
/// island is in sync again. Nothing acknowledged is lost, every send is
/// answered, and no message overtakes an earlier one of its sender; each
/// node's stop, return and sync times and the largest gap any phone saw
/// between answers are printed.
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn with_sync_replication_a_rolling_restart_under_load_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let chat_s = 100;
    let (mut cluster, run) = replicating_chat(&net, &etcd, chat_s);
    let mut said = Vec::new();
    for index in 0..3 {
        std::thread::sleep(Duration::from_secs(5));
        let watcher = (index + 1) % 3;
        await_every_island_in_sync(&cluster, watcher, Duration::from_secs(120));
        let role = ["n1", "n2", "n3"][index];
        let mut ctl = Command::new(&binaries().isle);
        ctl.args(["ctl", "--data-dir"])
            .arg(cluster.nodes[index].data_dir())
            .args(["restart", "--wait-ms", "120000"]);
        let mut restart = net
            .spawn(role, "ctl-restart", ctl)
            .expect("isle ctl restart");
        supervise(&mut cluster, index, Duration::from_secs(60));
        let status = restart.wait(Duration::from_secs(150)).expect("ctl's end");
        assert!(status.success(), "{}", restart.stderr_tail());
        let line = restart.stdout().expect("ctl's output");
        eprintln!("{}", line.trim_end());
        said.push(line);
    }
    let chat_left = Duration::from_secs(chat_s) + LOADGEN_TIMEOUT;
    let report = run.finish(chat_left).expect("loadgen's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!(
        "rolling restart: largest answer gap {} ms; reordered {}; {}",
        report.json["answer_gap_ms_max"],
        count("reordered"),
        report.json
    );
    assert_nothing_lost(&report);
    for (index, line) in said.iter().enumerate() {
        let node = index + 1;
        assert!(
            line.starts_with(&format!("node {node} restarted: ")),
            "{line}"
        );
    }
}

/// Waits until node `index`'s process exits by itself (a planned stop),
/// then starts it again on its data, as a service manager would.
fn supervise(cluster: &mut Cluster, index: usize, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let process = cluster.nodes[index].process().expect("a running node");
        if process.try_status().expect("its status").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {} did not stop",
            index + 1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.nodes[index]
        .restart()
        .expect("started again on its data");
}

/// What happens to island 1's primary in [`fault_on_a_primary`].
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGSTOP for `FAULT_S`, then SIGCONT: past its lease, it wakes up
    /// as a primary whose island moved.
    Pause,
    /// Its bridge port down for `FAULT_S`: a silent two-way partition
    /// from every node, etcd and the phones.
    Partition,
    /// Cut from etcd alone (both ways) for `FAULT_S`: it still reaches
    /// the other nodes, which see its lease end.
    EtcdOnly,
}

/// How long a fault lasts, in s: past the lease (5 s) and etcd's sweep.
const FAULT_S: u64 = 12;

/// With sync replication, node 1 (island 1's primary) is paused for 12 s
/// (twice the lease) while the phones of all three nodes chat: island 1
/// is taken over by node 2, node 1 wakes up to find its island moved,
/// acknowledges nothing more of it, and rejoins it as its secondary.
/// Nothing acknowledged is lost, every send is answered, none reordered.
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn with_sync_replication_a_primary_paused_past_its_lease_loses_nothing() {
    fault_on_a_primary(Fault::Pause);
}

/// [`with_sync_replication_a_primary_paused_past_its_lease_loses_nothing`]
/// with node 1's bridge port down for 12 s instead: no node, etcd nor
/// phone reaches it, nor it them.
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn with_sync_replication_a_primary_cut_off_by_a_silent_partition_loses_nothing() {
    fault_on_a_primary(Fault::Partition);
}

/// [`with_sync_replication_a_primary_paused_past_its_lease_loses_nothing`]
/// with node 1 cut from etcd alone for 12 s: it still reaches nodes 2 and
/// 3, which see its lease end; node 2 takes island 1 over, and node 1,
/// whose lease it can no longer renew, acknowledges nothing of it.
#[test]
#[ignore = "long: `cargo run -p ci -- cluster` runs it"]
fn with_sync_replication_a_primary_cut_off_from_etcd_alone_loses_nothing() {
    fault_on_a_primary(Fault::EtcdOnly);
}

/// `fault` on node 1 for [`FAULT_S`] s, 8 s into a chat of all three
/// nodes' phones; prints when island 1 was served elsewhere (from the
/// fault on, as node 2 sees etcd) and when every island was in sync again
/// (from the healing on), and what loadgen saw.
fn fault_on_a_primary(fault: Fault) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = Net::new(&["etcd", "n1", "n2", "n3", "lg"]).expect("the test network");
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    let (mut cluster, run) = replicating_chat(&net, &etcd, 45);
    std::thread::sleep(Duration::from_secs(8));
    let began = std::time::Instant::now();
    match fault {
        Fault::Pause => cluster.nodes[0].process().expect("node 1").stop(),
        Fault::Partition => net.cut("n1"),
        Fault::EtcdOnly => net
            .blackhole("n1", "etcd")
            .and_then(|()| net.blackhole("etcd", "n1")),
    }
    .expect("the fault");
    await_islands(&cluster, 1, Duration::from_secs(30), |islands| {
        islands
            .iter()
            .any(|i| i["id"] == 1 && i["primary"].as_u64() != Some(1))
    });
    let moved_s = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(FAULT_S).saturating_sub(began.elapsed()));
    match fault {
        Fault::Pause => cluster.nodes[0].process().expect("node 1").cont(),
        Fault::Partition => net.heal("n1"),
        Fault::EtcdOnly => net
            .unblackhole("n1", "etcd")
            .and_then(|()| net.unblackhole("etcd", "n1")),
    }
    .expect("healing");
    let healed = std::time::Instant::now();
    await_every_island_in_sync(&cluster, 1, Duration::from_secs(120));
    let rejoined_s = healed.elapsed().as_secs_f64();
    let report = run
        .finish(Duration::from_secs(45) + LOADGEN_TIMEOUT)
        .expect("loadgen's report");
    let count = |name| report.count(name).expect("a loadgen counter");
    eprintln!(
        "{fault:?} of node 1 for {FAULT_S} s: island 1 served by another node {moved_s:.1} s \
         after it began; every island in sync {rejoined_s:.1} s after it ended; largest \
         answer gap {} ms; reordered {}; {}",
        report.json["answer_gap_ms_max"],
        count("reordered"),
        report.json
    );
    assert_nothing_lost(&report);
}
