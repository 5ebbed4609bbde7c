//! loadgen's scenarios against the real binary.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{free_port, Server};

#[test]
fn idle_holds_every_phone_and_samples_server_memory_per_step() {
    let server = Server::start(&[]);
    let addr = server.plain.to_string();
    let pid = server.pid().to_string();
    let args = loadgen::idle::Args::parse_from([
        "idle",
        "--target",
        &addr,
        "--phones",
        "400",
        "--steps",
        "4",
        "--server-pid",
        &pid,
        "--keepalive-s",
        "0.3",
        "--hold",
        "1",
        "--settle",
        "0.2",
    ]);
    let report = loadgen::idle::run(&args).unwrap();
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.logged_in, 400);
    let phones: Vec<usize> = report.samples.iter().map(|s| s.phones).collect();
    assert_eq!(phones, [0, 100, 200, 300, 400], "{report:?}");
    assert!(report.samples.iter().all(|s| s.server_rss_bytes > 0));
    assert!(
        report.pongs > 400,
        "every phone pinged at least once: {report:?}"
    );
    assert!(report.login_per_s > 0.0);
    assert!(server.stderr.try_iter().all(|line| !line.contains("ERROR")));
}

#[test]
fn storm_brings_every_phone_back_with_what_was_queued_meanwhile() {
    let server = Server::start(&[]);
    let addr = server.plain.to_string();
    let args = loadgen::storm::Args::parse_from([
        "storm",
        "--target",
        &addr,
        "--phones",
        "300",
        "--senders",
        "4",
        "--queued",
        "600",
    ]);
    let report = loadgen::storm::run(&args).unwrap();
    assert!(!report.failed(), "{report:?}");
    // The login time curve for `--report` covers every phone's login.
    let p99 = report.curves.latency.iter().find(|p| p.percentile == 99.0);
    assert!(
        p99.is_some_and(|p| p.latency_us > 0.0),
        "{:?}",
        report.curves
    );
    assert!(report.curves.timeline.is_empty());
    assert_eq!((report.back, report.failures), (300, 0), "{report:?}");
    assert_eq!(report.queued, 600, "{report:?}");
    assert_eq!(report.delivered, 600, "{report:?}");
    assert_eq!(
        (report.lost, report.duplicates, report.reordered),
        (0, 0, 0),
        "{report:?}"
    );
    assert!(report.logins_per_s > 0.0 && report.time_to_all_back_s > 0.0);
}

#[test]
fn storm_after_a_server_restart_brings_every_phone_back() {
    let addr = format!("127.0.0.1:{}", free_port());
    let extra = ["--plaintext-listen", addr.as_str()];
    let server = Server::start(&extra);
    let args = loadgen::storm::Args::parse_from([
        "storm",
        "--target",
        &addr,
        "--phones",
        "200",
        "--trigger",
        "server",
        "--patience",
        "30",
    ]);
    let (signed_up, waiting) = std::sync::mpsc::channel();
    let run = std::thread::spawn(move || {
        loadgen::storm::run_then(&args, move || signed_up.send(()).unwrap())
    });
    // Once every phone is signed up and waiting, kill -9 the server.
    if waiting
        .recv_timeout(std::time::Duration::from_secs(300))
        .is_err()
    {
        panic!("signing up failed: {:?}", run.join().unwrap().err());
    }
    let dir = server.into_data_dir();
    let _server = Server::start_in(dir, &extra);
    let report = run.join().unwrap().unwrap();
    assert_eq!((report.back, report.failures), (200, 0), "{report:?}");
    assert!(!report.failed(), "{report:?}");
}

#[test]
fn slow_compares_a_run_with_stalled_readers_against_one_without() {
    let server = Server::start(&[]);
    let reports = tempfile::tempdir().unwrap();
    let addr = server.plain.to_string();
    let pid = server.pid().to_string();
    let args = loadgen::slow::Args::parse_from([
        "slow",
        "--target",
        &addr,
        "--phones",
        "200",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--share",
        "0.25",
        "--server-pid",
        &pid,
        "--report",
        reports.path().to_str().unwrap(),
    ]);
    let report = loadgen::slow::run(&args).unwrap();
    for run in ["baseline", "with-stalled"] {
        let json = std::fs::read_to_string(reports.path().join(run).join("report.json"))
            .unwrap_or_else(|e| panic!("{run}: {e}"));
        assert!(json.contains("\"latency\""), "{run}: {json}");
    }
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.baseline.stalled, 0);
    assert_eq!(report.baseline.delivered_to_stalled, 0);
    assert_eq!(report.with_stalled.stalled, 50);
    // A quarter of the messages went to phones that read nothing until
    // sending stopped; they were kept for them and all arrived (lost 0).
    assert!(report.with_stalled.delivered_to_stalled > 500, "{report:?}");
    assert!(report.p99_ratio.is_finite() && report.p99_ratio > 0.0);
    assert!(report.with_stalled.server_rss_bytes.unwrap() > 0);
}

#[test]
fn idle_paces_logins_in_open_loop_at_the_offered_rate() {
    let server = Server::start(&[]);
    let addr = server.plain.to_string();
    let args = loadgen::idle::Args::parse_from([
        "idle",
        "--target",
        &addr,
        "--phones",
        "150",
        "--steps",
        "1",
        "--login-rate",
        "300",
        "--hold",
        "0",
        "--settle",
        "0",
    ]);
    let report = loadgen::idle::run(&args).unwrap();
    assert!(!report.failed(), "{report:?}");
    // 150 phones at 300/s cannot all be in before 0.5 s: a slow machine
    // lowers the rate, never raises it.
    assert!(
        report.login_per_s <= 300.0 * 1.1,
        "logins were not paced: {report:?}"
    );
    assert!(report.login_ms_p50 > 0.0 && report.login_ms_max >= report.login_ms_p50);
}

#[test]
fn groups_counts_every_member_delivery_across_two_shards_and_threads() {
    let server = Server::start(&[]);
    let addr = server.plain.to_string();
    let pid = server.pid().to_string();
    let args = loadgen::groups::Args::parse_from([
        "groups",
        "--target",
        &addr,
        "--first-phone",
        "+15550400000",
        "--phones",
        "60",
        "--group-size",
        "12",
        "--threads",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--server-pid",
        &pid,
    ]);
    let report = loadgen::groups::run(&args).unwrap();
    assert!(!report.failed(), "{report:?}");
    assert_eq!((report.groups, report.phones), (5, 60));
    assert!(report.posts > 0, "{report:?}");
    // Every post reached the other eleven members: nothing undelivered
    // (checked by `failed`) and nothing counted that was not a post.
    assert_eq!(report.deliveries, report.posts * 11, "{report:?}");
    assert!(report.deliveries_per_server_cpu_s.is_some_and(|d| d > 0.0));
}

#[test]
fn presence_reaches_every_follower_across_two_shards_and_threads() {
    let server = Server::start(&[]);
    let addr = server.plain.to_string();
    let pid = server.pid().to_string();
    let args = loadgen::presence::Args::parse_from([
        "presence",
        "--target",
        &addr,
        "--first-phone",
        "+15550500000",
        "--phones",
        "60",
        "--contacts",
        "6",
        "--rate",
        "120",
        "--threads",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--drain",
        "1",
        "--server-pid",
        &pid,
    ]);
    let report = loadgen::presence::run(&args).unwrap();
    assert!(!report.failed(), "{report:?}");
    assert!(report.changes >= 120, "{report:?}");
    // Two changes a second per phone, far below every bound: each reaches
    // all six followers, whichever shard and thread they are on.
    assert_eq!(report.missed, 0, "{report:?}");
    assert_eq!(report.updates, report.changes * 6, "{report:?}");
    assert!(report.updates_per_server_cpu_s.is_some_and(|u| u > 0.0));
    assert!(server.stderr.try_iter().all(|line| !line.contains("ERROR")));
}

/// The accounts `server` holds over its shards, from its metrics.
fn accounts(server: &Server) -> u64 {
    let url = format!("http://{}/metrics", server.admin);
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    text.lines()
        .filter(|line| line.starts_with("isle_accounts{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `--target` with two addresses: two single servers here, not a
/// cluster, so each phone stays where it drew and signs up there. Both
/// get phones, every phone gets on, and each message is answered: `Sent`
/// for a recipient on the same server, `UnknownRecipient` (a final
/// refusal) for one on the other.
#[test]
fn chat_spreads_phones_over_every_target() {
    const PHONES: u64 = 60;
    let servers = [
        Server::start(&["--shards", "1"]),
        Server::start(&["--shards", "1"]),
    ];
    let targets = format!("{},{}", servers[0].plain, servers[1].plain);
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &targets,
        "--first-phone",
        "+15550600000",
        "--phones",
        &PHONES.to_string(),
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ]);
    let report = loadgen::chat::run(&args).unwrap();
    assert_eq!(report.connect_failures, 0, "{report:?}");
    assert!(report.failures().is_empty(), "{report:?}");
    assert!(report.acked > 100 && report.rejected > 100, "{report:?}");
    assert_eq!(report.acked + report.rejected, report.sent, "{report:?}");
    assert_eq!(report.delivered, report.acked, "{report:?}");
    assert_eq!(
        report.dialed,
        loadgen::dial::Dialed::default(),
        "{report:?}"
    );
    // Half the sends are refused for good, and the window refills after
    // each: the phones were still sending when sending stopped.
    let last = report.curves.timeline.last().expect("a tick a second");
    assert!(last.sent_per_s > 0.0, "{:?}", report.curves.timeline);
    // Metrics reach the control thread once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts = servers.each_ref().map(accounts);
        if counts[0] + counts[1] == PHONES || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(counts[0] + counts[1], PHONES, "{counts:?}");
    assert!(counts.iter().all(|&n| n >= PHONES / 4), "{counts:?}");
}

/// `loadgen groups` run a second time against the same server with the
/// same numbers: its client ids start above the time, so its creations
/// and posts are not taken for resends of the first run's (answered
/// `Sent`, delivered to no one), and it finishes within its duration and
/// drain.
#[test]
fn groups_run_twice_on_the_same_numbers_finishes() {
    let server = Server::start(&["--shards", "1"]);
    let addr = server.plain.to_string();
    let run = |addr: String| {
        std::thread::spawn(move || {
            let args = loadgen::groups::Args::parse_from([
                "groups",
                "--target",
                &addr,
                "--first-phone",
                "+15550500000",
                "--phones",
                "20",
                "--group-size",
                "10",
                "--duration",
                "2",
                "--warmup",
                "0.5",
            ]);
            loadgen::groups::run(&args).map(|report| report.failed())
        })
    };
    let first = run(addr.clone()).join().unwrap();
    assert!(
        matches!(first, Ok(false)),
        "the first run: {:?}",
        first.map_err(|e| e.to_string())
    );
    let second = run(addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !second.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        second.is_finished(),
        "a second `loadgen groups --duration 2` on the same numbers was still running after 60 s"
    );
}
