//! The multi-node harness against the real things: namespaces on a
//! bridge, etcd, an isle node and loadgen, and each fault the cluster
//! tests will use, shown to do what it claims and to be undone. Needs
//! root and `ip`; etcd's tests need `etcd-server` and `etcd-client`
//! (`cargo run -p ci -- test` installs them).

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use ci::harness::{Binaries, Etcd, Loadgen, Net, Node, Report};

/// A connection attempt that should fail gets this long.
const DOOMED_CONNECT_MS: u64 = 500;
/// Something that should work again after a fault is undone may take
/// this long (a neighbour to resolve again); it normally takes
/// milliseconds.
const RECOVERY_MS: u64 = 5_000;
const LOADGEN_TIMEOUT_S: u64 = 60;
/// After an etcd leader is killed, the others elect a new one within an
/// election timeout (1 s by default) or a few on a busy machine.
const ELECTION_S_MAX: u64 = 20;

fn net(roles: &[&str]) -> Net {
    Net::new(roles).unwrap_or_else(|error| panic!("making the test network: {error}"))
}

fn binaries() -> &'static Binaries {
    Binaries::get().unwrap_or_else(|error| panic!("building isle and loadgen: {error}"))
}

/// isle in `role` with a plaintext listener on its bridge address, one
/// shard and small log segments (a quick start).
fn isle<'net>(net: &'net Net, role: &str) -> Node<'net> {
    let listen = format!("{}:5223", net.addr(role));
    let flags = [
        "--plaintext-listen",
        &listen,
        "--no-tls",
        "--shards",
        "1",
        "--segment-bytes",
        "1048576",
        "--test-numbers",
        "+1555:111111",
    ];
    Node::start(net, binaries(), role, &flags).expect("starting isle")
}

/// A short chat run from `role` against `target`.
fn chat(net: &Net, role: &str, target: SocketAddr, extra: &[&str]) -> Report {
    let target = target.to_string();
    let args = ["chat", "--target", &target, "--phones", "100"];
    let args = [&args[..], &["--duration", "2", "--warmup", "0.5"], extra].concat();
    let timeout = Duration::from_secs(LOADGEN_TIMEOUT_S);
    Loadgen::run(net, binaries(), role, &args, timeout).expect("running loadgen")
}

fn assert_clean_chat(report: &Report) {
    let count = |name| report.count(name).expect("a loadgen counter");
    assert!(count("delivered") > 0, "nothing delivered: {}", report.json);
    for name in ["lost", "duplicates", "reordered", "connect_failures"] {
        assert_eq!(count(name), 0, "{name}: {}", report.json);
    }
    assert!(report.status.success(), "loadgen: {}", report.status);
}

fn connects(net: &Net, from: &str, to: SocketAddr) -> bool {
    let patience = Duration::from_millis(DOOMED_CONNECT_MS);
    net.connect(from, to, patience).is_ok()
}

/// Whether `from` reaches `to` within `RECOVERY_MS`, trying again and
/// again.
fn connects_again(net: &Net, from: &str, to: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_millis(RECOVERY_MS);
    while Instant::now() < deadline {
        if connects(net, from, to) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn etcd_answers_another_namespace_and_a_lease_ends_without_keepalives() {
    let net = net(&["etcd", "lg"]);
    let etcd = Etcd::start(&net, &["etcd"]).expect("starting etcd");
    assert_eq!(
        etcd.endpoints(),
        [format!("http://{}:2379", net.addr("etcd"))]
    );
    etcd.ctl("lg", &["put", "/isle/probe", "v1"]).expect("put");
    let value = etcd.ctl("lg", &["get", "/isle/probe", "--print-value-only"]);
    assert_eq!(value.expect("get").trim(), "v1");

    // `lease 694d7a... granted with TTL(2s)`
    let granted = etcd.ctl("lg", &["lease", "grant", "2"]).expect("lease");
    let lease = granted.split_whitespace().nth(1).expect("a lease id");
    let with_lease = format!("--lease={lease}");
    etcd.ctl("lg", &["put", "/isle/nodes/a", "alive", &with_lease])
        .expect("put under the lease");
    let get = || etcd.ctl("lg", &["get", "/isle/nodes/a", "--print-value-only"]);

    let keepalive = etcd
        .ctl_command(&["lease", "keep-alive", lease])
        .expect("etcdctl");
    let mut keepalive = net.spawn("lg", "keepalive", keepalive).expect("keep-alive");
    // Past the TTL: only the keepalives can have kept the key.
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(
        get().expect("get").trim(),
        "alive",
        "expired while kept alive"
    );
    keepalive.kill().expect("stopping keepalives");
    let stopped = Instant::now();
    // Expiry takes the TTL plus etcd's 500 ms sweep; the bound is slack.
    while !get().expect("get").trim().is_empty() {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "lease never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("key gone {:?} after the last keepalive", stopped.elapsed());
}

#[test]
fn three_etcd_members_serve_through_the_loss_of_one() {
    let net = net(&["e1", "e2", "e3", "lg"]);
    let mut etcd = Etcd::start(&net, &["e1", "e2", "e3"]).expect("starting etcd");
    assert_eq!(etcd.endpoints_arg().split(',').count(), 3);
    let members = etcd.ctl("lg", &["member", "list"]).expect("member list");
    assert_eq!(members.lines().count(), 3, "{members}");
    etcd.ctl("lg", &["put", "/isle/probe", "before"])
        .expect("put");

    etcd.kill("e1").expect("kill -9 of e1");
    assert!(etcd.member("e1").unwrap().is_none());
    // etcdctl passes over the dead endpoint, and two of three are a
    // quorum; if e1 led, a write fails until the others elect a leader.
    let deadline = Instant::now() + Duration::from_secs(ELECTION_S_MAX);
    while let Err(error) = etcd.ctl("lg", &["put", "/isle/probe", "during"]) {
        assert!(Instant::now() < deadline, "no write without e1: {error}");
        std::thread::sleep(Duration::from_millis(200));
    }
    etcd.restart("e1").expect("restarting e1");
    let value = etcd.ctl("lg", &["get", "/isle/probe", "--print-value-only"]);
    assert_eq!(value.expect("get").trim(), "during");
}

#[test]
fn loadgen_in_one_namespace_chats_through_isle_in_another() {
    let net = net(&["n1", "lg"]);
    let node = isle(&net, "n1");
    let target = node.plaintext().expect("plaintext address");
    assert_eq!(target, SocketAddr::from((net.addr("n1"), 5223)));
    assert_clean_chat(&chat(&net, "lg", target, &[]));
}

#[test]
fn a_cut_port_parts_a_role_both_ways_until_healed() {
    let net = net(&["n1", "n2", "lg"]);
    let n1 = net.listen("n1", 7000).expect("listener in n1");
    let n2 = net.listen("n2", 7000).expect("listener in n2");
    let (to_n1, to_n2) = (n1.local_addr().unwrap(), n2.local_addr().unwrap());
    assert!(connects(&net, "lg", to_n1), "no path before any fault");

    net.cut("n1").expect("cut");
    assert!(!connects(&net, "lg", to_n1), "lg reached a cut n1");
    assert!(!connects(&net, "n1", to_n2), "a cut n1 reached n2");
    assert!(connects(&net, "lg", to_n2), "the cut spread to n2");

    net.heal("n1").expect("heal");
    assert!(
        connects_again(&net, "lg", to_n1),
        "lg cannot reach a healed n1"
    );
    assert!(
        connects_again(&net, "n1", to_n2),
        "a healed n1 cannot reach n2"
    );
}

#[test]
fn a_blackhole_drops_one_direction_until_undone() {
    let net = net(&["n1", "n2", "lg"]);
    let listener = net.listen("n1", 7000).expect("listener in n1");
    let to_n1 = listener.local_addr().unwrap();
    let udp = |role: &str| {
        let addr = SocketAddr::from((net.addr(role), 7001));
        let socket = net.within(role, || UdpSocket::bind(addr)).unwrap().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(DOOMED_CONNECT_MS)))
            .unwrap();
        socket
    };
    let (n1, lg) = (udp("n1"), udp("lg"));
    let arrives = |from: &UdpSocket, to: &UdpSocket| {
        from.send_to(b"probe", to.local_addr().unwrap())
            .expect("send");
        to.recv_from(&mut [0; 16]).is_ok()
    };
    assert!(
        arrives(&lg, &n1) && arrives(&n1, &lg),
        "no path before any fault"
    );

    net.blackhole("lg", "n1").expect("blackhole");
    assert!(!arrives(&lg, &n1), "lg's datagram reached n1");
    assert!(
        arrives(&n1, &lg),
        "the drop is not one-way: n1 no longer reaches lg"
    );
    assert!(
        !connects(&net, "lg", to_n1),
        "lg connected through the blackhole"
    );
    assert!(
        connects(&net, "n2", to_n1),
        "n1 is unreachable for everyone"
    );

    net.unblackhole("lg", "n1").expect("unblackhole");
    assert!(
        connects_again(&net, "lg", to_n1),
        "lg cannot reach n1 after the undo"
    );
    assert!(
        arrives(&lg, &n1),
        "lg's datagrams still vanish after the undo"
    );
}

#[test]
fn a_stopped_isle_answers_nothing_until_continued() {
    let net = net(&["n1", "lg"]);
    let mut node = isle(&net, "n1");
    let target = node.plaintext().expect("plaintext address").to_string();
    let args = [
        "chat", "--target", &target, "--phones", "100", "--rate", "400",
    ];
    let args = [&args[..], &["--duration", "6", "--warmup", "0.5"]].concat();
    let run = Loadgen::start(&net, binaries(), "lg", &args).expect("loadgen");
    // Sign-ups take a fraction of a second; then the stop falls on
    // sending, and spans at least one whole second of loadgen's timeline.
    std::thread::sleep(Duration::from_millis(1_500));
    let process = node.process().expect("isle runs");
    process.stop().expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(2_500));
    process.cont().expect("SIGCONT");
    let report = run
        .finish(Duration::from_secs(LOADGEN_TIMEOUT_S))
        .expect("loadgen's report");
    assert_clean_chat(&report);
    let timeline = report.timeline().expect("loadgen's timeline");
    let delivered: Vec<f64> = timeline.iter().map(|tick| tick.delivered_per_s).collect();
    let silent = delivered.iter().position(|&rate| rate == 0.0);
    let silent = silent.unwrap_or_else(|| panic!("no silent second: {delivered:?}"));
    assert!(
        delivered[..silent].iter().any(|&rate| rate > 0.0)
            && delivered[silent..].iter().any(|&rate| rate > 0.0),
        "no deliveries before and after the stop: {delivered:?}"
    );
}

#[test]
fn a_dropped_net_leaves_nothing_behind_even_when_its_thread_panics() {
    let roles = ["cleanone", "cleantwo"];
    let net = net(&roles);
    let (names, dir) = (net.namespaces(), net.dir().to_owned());
    let sleeper = net.spawn("cleanone", "sleeper", sleep()).expect("sleep");
    let pid = sleeper.pid();
    // Forgotten, so that only the net can end it.
    std::mem::forget(sleeper);
    drop(net);
    assert_gone(&names, &roles);
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!running(pid), "the sleeper in a dropped net still runs");

    let (sender, receiver) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let net = Net::new(&["cleanpanic"]).expect("net");
        sender
            .send((net.namespaces(), net.dir().to_owned()))
            .unwrap();
        panic!("on purpose, holding a net");
    })
    .join();
    assert!(panicked.is_err());
    let (names, dir) = receiver.recv().unwrap();
    assert_gone(&names, &["cleanpanic"]);
    // The failing test's logs are kept, under another name.
    let kept = dir.with_file_name(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .replace("isle-test-", "isle-kept-"),
    );
    assert!(kept.is_dir() && !dir.exists(), "{} not kept", dir.display());
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
fn a_new_net_removes_what_a_dead_run_left() {
    // No process has a pid above the kernel's limit (2^22 at most).
    let stale = format!("isle-test-99999999-{}-hub", std::process::id());
    ip(&["netns", "add", &stale]);
    let stale_dir = std::env::temp_dir().join(&stale);
    std::fs::create_dir_all(&stale_dir).unwrap();
    let _net = net(&["fresh"]);
    assert!(
        !ip(&["netns", "list"]).contains(&stale),
        "stale namespace kept"
    );
    assert!(!stale_dir.exists(), "stale run directory kept");
}

fn sleep() -> Command {
    let mut command = Command::new("sleep");
    command.arg("60");
    command
}

/// Whether `pid` runs (a zombie, dead but not reaped, does not).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) STATE ...`
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    state.is_some_and(|state| state != "Z")
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(output.status.success(), "ip {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Neither `ip netns list` nor the root namespace's `ip link` shows any
/// of `namespaces` or an interface named after one of `roles`.
fn assert_gone(namespaces: &[String], roles: &[&str]) {
    let listed = ip(&["netns", "list"]);
    let links = ip(&["-o", "link"]);
    for name in namespaces {
        assert!(!listed.contains(name.as_str()), "namespace {name} remains");
        assert!(!links.contains(name.as_str()), "a link into {name} remains");
    }
    let interfaces: Vec<&str> = (links.lines())
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .collect();
    for role in roles {
        assert!(
            !interfaces.contains(role),
            "interface {role} in the root namespace"
        );
    }
}
