//! Nodes coordinated through a real etcd and the real binary:
//! registration under a lease, the controller's election and partition
//! assignment, a node's death and return (its predecessor's lease
//! revoked), an etcd outage; messages, receipts, contacts, presence,
//! typing and profiles across nodes; and what README ("Several nodes: a
//! cluster") and docs/links.md promise when a node is paused past its
//! lease, when a second process claims a live node's id, and when a node
//! has no readable partition map.

mod common;

use std::{
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use common::{etcd::Etcd, Server};
use loadgen::client::{Client, Event, Polled};
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::{ClientFrame, DeviceKey, ErrorKind, Phone, Presence, Profile, TypingState};

/// A lease (5 s), etcd's expiry sweep, a session's retry and a tick.
const SETTLE: Duration = Duration::from_secs(20);

struct Node {
    id: u16,
    peer_port: u16,
    server: Server,
}

/// Node `id` of a cluster of three, registering with `etcd` (client URLs,
/// comma separated).
fn start_node(etcd: &str, id: u16, peer_port: u16, data_dir: tempfile::TempDir) -> Node {
    start_node_with(etcd, id, peer_port, data_dir, &[], |_| {})
}

/// `start_node`, with `extra` flags and more of the node's environment
/// set by `more`.
fn start_node_with(
    etcd: &str,
    id: u16,
    peer_port: u16,
    data_dir: tempfile::TempDir,
    extra: &[&str],
    more: impl FnOnce(&mut Command),
) -> Node {
    let peer = format!("127.0.0.1:{peer_port}");
    let id_text = id.to_string();
    // One shard unless `extra` says how many.
    let shards: &[&str] = if extra.contains(&"--shards") {
        &[]
    } else {
        &["--shards", "1"]
    };
    let mut flags = shards.to_vec();
    flags.extend_from_slice(&[
        "--node-id",
        &id_text,
        "--etcd",
        etcd,
        "--peer-listen",
        &peer,
        "--bootstrap-nodes",
        "3",
    ]);
    flags.extend_from_slice(extra);
    let secret = secret_file();
    let server = Server::start_with(data_dir, &flags, |command| {
        command.env("ISLE_CLUSTER__SECRET_FILE", &secret);
        more(command);
    });
    Node {
        id,
        peer_port,
        server,
    }
}

/// The cluster's shared secret, in a file of this test process: the
/// nodes' links prove their handshakes with it.
fn secret_file() -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("isle-cluster-test-{}.secret", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, "a secret the nodes of this test share\n").unwrap();
    }
    path
}

fn start_three(etcd: &Etcd) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let dir = tempfile::tempdir().unwrap();
            start_node(
                &failover_endpoints(etcd),
                id,
                common::etcd::free_port(),
                dir,
            )
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    // Links up too: what these tests check crosses them (a lookup asked
    // while they are still being set up is the subject of no test here).
    await_all(
        &all,
        "all three registered, partitions assigned, links up",
        |s| {
            live(s) == [1, 2, 3]
                && s["partitions_owned"].as_u64().unwrap_or(0) > 0
                && s["links"].as_u64().unwrap_or(0) > 0
                && s["links_up"] == s["links"]
        },
    );
    nodes
}

fn status(server: &Server) -> serde_json::Value {
    let url = format!("http://{}/status", server.admin);
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cluster_status(server: &Server) -> serde_json::Value {
    status(server)["cluster"].clone()
}

/// The HTTP status `/health/ready` answers with.
fn ready_code(server: &Server) -> u16 {
    let url = format!("http://{}/health/ready", server.admin);
    match ureq::get(&url).call() {
        Ok(answer) => answer.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(error) => panic!("/health/ready: {error}"),
    }
}

fn await_all(nodes: &[&Node], what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let statuses: Vec<serde_json::Value> =
            nodes.iter().map(|n| cluster_status(&n.server)).collect();
        if statuses.iter().all(&check) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {statuses:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn live(status: &serde_json::Value) -> Vec<u64> {
    status["nodes_live"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default()
}

/// The node of three owning `phone` (contiguous thirds of the partitions).
fn home_of(phone: Phone) -> u16 {
    let partition = usize::from(PartitionMap::new(PARTITIONS_DEFAULT, 1).partition_of(phone));
    (partition * 3 / usize::from(PARTITIONS_DEFAULT)) as u16 + 1
}

/// The `nth` test number whose account lives on `node`.
fn number_on(node: u16, nth: usize) -> Phone {
    (0..5_000u64)
        .map(|n| Phone::parse(&format!("+1555000{n:04}")).unwrap())
        .filter(|&phone| home_of(phone) == node)
        .nth(nth)
        .unwrap()
}

fn signal(server: &Server, name: &str) {
    let done = Command::new("kill")
        .args([&format!("-{name}"), &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(done.success(), "kill -{name}");
}

/// Signs `number` up on `server` (its home), retrying while it is told to
/// try later (the shards take the placement within a tick of the view),
/// and logs it in.
fn sign_up(server: &Server, number: Phone) -> (Client, DeviceKey) {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(signed_up) = try_sign_up(server, number) {
            return signed_up;
        }
        assert!(Instant::now() < deadline, "{number} told to try later");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A signed-up and logged-in phone on `server`, or `None` while it is told
/// to try later.
fn try_sign_up(server: &Server, number: Phone) -> Option<(Client, DeviceKey)> {
    let mut client = Client::connect(server.plain).unwrap();
    client.set_timeout(Duration::from_secs(10)).unwrap();
    client
        .send(&ClientFrame::RequestCode { phone: number })
        .unwrap();
    match client.recv().unwrap() {
        Event::CodeSent { .. } => {}
        Event::TryLater { .. } => return None,
        other => panic!("{number}: {other:?}"),
    }
    client
        .send(&ClientFrame::Verify {
            phone: number,
            code: common::TEST_CODE,
        })
        .unwrap();
    let key = match client.recv().unwrap() {
        Event::Registered { key, .. } => key,
        other => panic!("{other:?}"),
    };
    client.login(number, key).unwrap();
    Some((client, key))
}

/// Waits up to `wait` for a frame `pick` accepts, skipping others.
fn await_frame<T>(
    client: &mut Client,
    wait: Duration,
    pick: impl Fn(&Event) -> Option<T>,
) -> Result<T, Vec<Event>> {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.poll(left.max(Duration::from_millis(1))).unwrap() {
            Polled::Frame(event) => match pick(&event) {
                Some(value) => return Ok(value),
                None => seen.push(event),
            },
            Polled::Quiet => {}
            Polled::Closed => break,
        }
    }
    Err(seen)
}

fn sent(client_id: u64) -> impl Fn(&Event) -> Option<()> {
    move |e| matches!(e, Event::Sent { client_id: c, .. } if *c == client_id).then_some(())
}

/// `etcd`'s client URL after a dead endpoint: the coordinator must fail
/// over to the next.
fn failover_endpoints(etcd: &Etcd) -> String {
    format!("http://127.0.0.1:1,{}", etcd.url)
}

/// What `server` answers a code request for `phone` with.
fn ask_code(server: &Server, phone: Phone) -> Event {
    let mut client = Client::connect(server.plain).unwrap();
    client.send(&ClientFrame::RequestCode { phone }).unwrap();
    client.recv().unwrap()
}

#[test]
fn nodes_register_elect_assign_and_come_back() {
    let mut etcd = Etcd::start();
    let mut nodes = start_three(&etcd);
    let all: Vec<&Node> = nodes.iter().collect();
    let statuses: Vec<serde_json::Value> = all.iter().map(|n| cluster_status(&n.server)).collect();
    let owned: Vec<u64> = statuses
        .iter()
        .map(|s| s["partitions_owned"].as_u64().unwrap())
        .collect();
    assert_eq!(owned.iter().sum::<u64>(), 1024, "{owned:?}");
    assert!(owned.iter().all(|o| (341..=342).contains(o)), "{owned:?}");
    let controller = statuses[0]["controller"].as_u64().unwrap();
    assert!(statuses.iter().all(|s| s["controller"] == controller));
    let map = etcd.get("/isle/v1/partitions").expect("a partition map");
    // The islands went in with the map (a ring, each node primary of its
    // own partitions and secondary of the one before it), but with
    // replication off nothing is shipped: the status says so and lists
    // no island, so that none looks like a second copy.
    for island in 1..=3 {
        let key = format!("/isle/v1/islands/{island}");
        assert!(etcd.get(&key).is_some(), "no {key}");
    }
    for status in &statuses {
        assert_eq!(status["replication"], "off", "{status}");
        assert_eq!(status["islands"], serde_json::json!([]), "{status}");
    }
    let first = statuses[0]["incarnation"].as_i64().unwrap();

    // A phone is served by its home node and redirected there by the
    // others (the shards take the placement within a tick of the view).
    for node in &nodes {
        for home in 1..=3u16 {
            let phone = number_on(home, 0);
            let deadline = Instant::now() + SETTLE;
            let answer = loop {
                let answer = ask_code(&node.server, phone);
                if !matches!(answer, Event::TryLater { .. }) || Instant::now() > deadline {
                    break answer;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if home == node.id {
                assert!(matches!(answer, Event::CodeSent { .. }), "{answer:?}");
            } else {
                let home_tls = nodes[usize::from(home) - 1].server.tls.to_string();
                assert!(
                    matches!(&answer, Event::Redirect { addr, .. } if *addr == home_tls),
                    "node {} for a phone of node {home}: {answer:?}",
                    node.id
                );
            }
        }
    }

    // kill -9 of node 1: its lease runs out, the others see it gone and
    // elect a controller if it was one; its partitions stay its own.
    let dead = nodes.remove(0);
    let (id, peer_port) = (dead.id, dead.peer_port);
    let data_dir = dead.server.into_data_dir();
    let rest: Vec<&Node> = nodes.iter().collect();
    await_all(&rest, "node 1 gone", |s| {
        live(s) == [2, 3] && [2, 3].contains(&s["controller"].as_u64().unwrap_or(0))
    });
    assert_eq!(etcd.get("/isle/v1/partitions").as_ref(), Some(&map));
    // Its phones are told to come back later, not sent to a dead node
    // (once the shards took the view the coordinator shows: a tick).
    let deadline = Instant::now() + SETTLE;
    loop {
        let answer = ask_code(&nodes[0].server, number_on(1, 0));
        if matches!(answer, Event::TryLater { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "{answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Back on the same data: a new incarnation, seen by everyone.
    nodes.insert(
        0,
        start_node(&failover_endpoints(&etcd), id, peer_port, data_dir),
    );
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "node 1 back", |s| live(s) == [1, 2, 3]);
    let again = cluster_status(&nodes[0].server)["incarnation"]
        .as_i64()
        .unwrap();
    assert_ne!(again, first, "a restart is a new incarnation");
    assert_eq!(
        cluster_status(&nodes[0].server)["partitions_owned"],
        owned[0]
    );

    // An etcd outage: sessions end and come back; nothing is reassigned.
    etcd.crash_and_restart(Duration::from_secs(2));
    await_all(&all, "sessions back after the outage", |s| {
        live(s) == [1, 2, 3] && s["sessions"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(etcd.get("/isle/v1/partitions").as_ref(), Some(&map));
}

/// A message crosses from a phone of node 1 to a phone of node 2 on the
/// links between nodes, and its `Delivered` receipt comes back.
#[test]
fn messages_and_receipts_cross_nodes() {
    let etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let (alice_number, bob_number) = (number_on(1, 0), number_on(2, 0));
    let (mut alice, _) = sign_up(&nodes[0].server, alice_number);
    let (mut bob, _) = sign_up(&nodes[1].server, bob_number);
    alice
        .send(&ClientFrame::Send {
            client_id: 1,
            to: bob_number,
            body: b"across",
        })
        .unwrap();
    common::expect(&mut alice, "Sent", |e| {
        matches!(e, Event::Sent { client_id: 1, .. })
    });
    let seq = match common::expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. })) {
        Event::Message { seq, body, .. } => {
            assert_eq!(&body[..], b"across");
            seq
        }
        _ => unreachable!(),
    };
    bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    common::expect(&mut alice, "Delivered", |e| {
        matches!(
            e,
            Event::Receipt {
                kind: wire::ReceiptKind::Delivered,
                client_id: 1,
                ..
            }
        )
    });
    // Node 1's metrics carry its id, and its link to node 2 pushed the
    // message (and its receipts came back on node 2's).
    let url = format!("http://{}/metrics", nodes[0].server.admin);
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = ureq::get(&url).call().unwrap().into_string().unwrap();
        let pushed = text
            .lines()
            .filter(|l| {
                l.starts_with("isle_link_pushed_total{node=\"1\",shard=\"0\",peer_node=\"2\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
        if pushed > 0 && text.contains("isle_messages_stored_total{node=\"1\",") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no link metrics on node 1:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Contact lookups, presence, typing and profile notices cross nodes.
#[test]
fn contacts_presence_typing_and_profiles_cross_nodes() {
    let etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let (alice_number, bob_number) = (number_on(1, 0), number_on(2, 0));
    let (mut alice, _) = sign_up(&nodes[0].server, alice_number);
    let (mut bob, _) = sign_up(&nodes[1].server, bob_number);
    let stranger = number_on(3, 7);
    for (client, other) in [(&mut alice, bob_number), (&mut bob, alice_number)] {
        client
            .send(&ClientFrame::SyncContacts {
                client_id: 1,
                full: true,
                add: vec![other, stranger],
                remove: vec![],
            })
            .unwrap();
        let registered = await_frame(client, SETTLE, |e| match e {
            Event::Contacts { registered, .. } => Some(registered.clone()),
            _ => None,
        })
        .expect("a Contacts answer");
        assert_eq!(
            registered,
            vec![other],
            "the other is registered, the stranger not"
        );
    }
    alice
        .send(&ClientFrame::Subscribe { phone: bob_number })
        .unwrap();
    let presence = await_frame(&mut alice, SETTLE, |e| match e {
        Event::Presence { phone, presence } if *phone == bob_number => Some(*presence),
        _ => None,
    })
    .expect("bob's presence");
    assert_eq!(presence, Presence::Online);
    alice
        .send(&ClientFrame::Typing {
            chat: wire::Chat::Direct(bob_number),
            state: TypingState::Composing,
        })
        .unwrap();
    await_frame(&mut bob, SETTLE, |e| {
        matches!(e, Event::Typing { from, .. } if *from == alice_number).then_some(())
    })
    .expect("alice's typing reaches bob on another node");
    let profile = Profile {
        name: "Bob".into(),
        about: "on node 2".into(),
        photo: vec![],
    };
    bob.send(&ClientFrame::SetProfile {
        client_id: 2,
        profile: profile.clone(),
    })
    .unwrap();
    await_frame(&mut alice, SETTLE, |e| match e {
        Event::Profile {
            phone,
            profile: Some(p),
        } if *phone == bob_number => Some(p.clone()),
        _ => None,
    })
    .expect("bob's profile change reaches his subscriber on another node");
    bob.send(&ClientFrame::SetPresence { available: false })
        .unwrap();
    await_frame(&mut alice, SETTLE, |e| match e {
        Event::Presence {
            phone,
            presence: Presence::Offline { .. },
        } if *phone == bob_number => Some(()),
        _ => None,
    })
    .expect("bob's change of presence reaches alice");
}

/// A node frozen (SIGSTOP) past its lease comes back as a new incarnation
/// (other nodes reject traffic from the old one). Its links carry the new
/// name and messages cross again. A send its phone wrote while it was
/// frozen is answered: the other node stores it while it still counts
/// the frozen node as down, and the answer is taken by the same process
/// under its new name.
#[test]
fn a_node_paused_past_its_lease_carries_messages_again_once_back() {
    let etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let (alice_number, bob_number) = (number_on(1, 0), number_on(2, 0));
    let (mut alice, _) = sign_up(&nodes[0].server, alice_number);
    let (mut bob, _) = sign_up(&nodes[1].server, bob_number);
    let send = |client: &mut Client, client_id: u64, to: Phone| {
        client
            .send(&ClientFrame::Send {
                client_id,
                to,
                body: b"hello",
            })
            .unwrap();
    };
    send(&mut alice, 1, bob_number);
    await_frame(&mut alice, SETTLE, sent(1)).expect("Sent before the pause");
    let before = cluster_status(&nodes[1].server)["incarnation"]
        .as_i64()
        .unwrap();

    signal(&nodes[1].server, "STOP");
    let others: Vec<&Node> = vec![&nodes[0], &nodes[2]];
    await_all(&others, "node 2's lease gone", |s| live(s) == [1, 3]);
    // Waits in the socket until node 2 reads again.
    send(&mut bob, 7, alice_number);
    std::thread::sleep(Duration::from_secs(1));
    signal(&nodes[1].server, "CONT");
    let frozen_send = await_frame(&mut bob, SETTLE, |e| match e {
        Event::Sent { client_id: 7, .. } => Some(Ok(())),
        Event::Error {
            kind: ErrorKind::Unavailable,
            client_id: Some(7),
            ..
        } => Some(Err(())),
        _ => None,
    });
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "node 2 back, as a new incarnation", |s| {
        live(s) == [1, 2, 3]
    });
    let after = cluster_status(&nodes[1].server)["incarnation"]
        .as_i64()
        .unwrap();
    assert_ne!(after, before, "a lost lease is a new incarnation");
    // Both directions: node 1 to node 2, and node 2 to node 1. The status
    // says node 2 is live a moment (up to a shard's tick) before every
    // shard routes by the new view, and a send in that moment is refused
    // `Unavailable`, which a phone sends again: so does this one.
    let send_until_sent = |client: &mut Client, client_id: u64, to: Phone| {
        let deadline = Instant::now() + SETTLE;
        loop {
            send(client, client_id, to);
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = await_frame(client, left, |e| match e {
                Event::Sent { client_id: c, .. } if *c == client_id => Some(Ok(())),
                Event::Error {
                    kind: ErrorKind::Unavailable,
                    client_id: Some(c),
                    ..
                } if *c == client_id => Some(Err(())),
                _ => None,
            });
            match answer {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(())) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(Err(())) => return Err(vec![]),
                Err(seen) => return Err(seen),
            }
        }
    };
    let frozen_send = match frozen_send {
        // Refused (a phone sends it again): not the case this checks, but
        // not wrong either.
        Ok(Err(())) => send_until_sent(&mut bob, 7, alice_number),
        Ok(Ok(())) => Ok(()),
        Err(seen) => Err(seen),
    };
    assert!(
        frozen_send.is_ok(),
        "the send written while node 2 was frozen had no answer: {frozen_send:?}"
    );
    let to_bob = send_until_sent(&mut alice, 2, bob_number);
    let to_alice = send_until_sent(&mut bob, 1, alice_number);
    let metrics = |server: &Server| {
        let url = format!("http://{}/metrics", server.admin);
        let text = ureq::get(&url).call().unwrap().into_string().unwrap();
        text.lines()
            .filter(|l| l.starts_with("isle_link_connected"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        to_bob.is_ok() && to_alice.is_ok(),
        "no Sent within {SETTLE:?} of node 2's return (node 1 to 2: {to_bob:?}, \
         node 2 to 1: {to_alice:?});\nnode 1:\n{}\nnode 2:\n{}",
        metrics(&nodes[0].server),
        metrics(&nodes[1].server)
    );
}

#[test]
fn a_node_that_never_reached_etcd_is_not_ready() {
    let node = start_node(
        "http://127.0.0.1:1",
        1,
        common::etcd::free_port(),
        tempfile::tempdir().unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let cluster = cluster_status(&node.server);
    assert_eq!(cluster["partitions_owned"], 0, "{cluster:#}");
    assert_eq!(
        cluster["incarnation"],
        serde_json::Value::Null,
        "{cluster:#}"
    );
    let mut phone = Client::connect(node.server.plain).unwrap();
    phone
        .send(&ClientFrame::RequestCode {
            phone: number_on(1, 0),
        })
        .unwrap();
    let answer = phone.recv().unwrap();
    assert!(matches!(answer, Event::TryLater { .. }), "{answer:?}");
    assert_ne!(
        ready_code(&node.server),
        200,
        "ready without a partition map: {:#}",
        status(&node.server)
    );
}

/// A stored map that cannot be read (a bad write to etcd) is refused and
/// the last good one stays in use: the nodes keep their partitions and
/// stay ready.
#[test]
fn a_damaged_partition_map_leaves_the_last_good_one_in_use() {
    let etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let put = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.url,
            "put",
            "/isle/v1/partitions",
            "not json",
        ])
        .status()
        .expect("etcdctl");
    assert!(put.success());
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "the damaged map seen", |s| {
        s["rejected_keys"].as_u64().unwrap_or(0) > 0
    });
    std::thread::sleep(Duration::from_secs(2));
    for node in &nodes {
        let cluster = cluster_status(&node.server);
        assert!(
            cluster["partitions_owned"].as_u64().unwrap_or(0) > 0,
            "node {} lost its partitions: {cluster:#}",
            node.id
        );
        assert_eq!(ready_code(&node.server), 200, "{:#}", status(&node.server));
    }
}

/// A second process started with the id of a live node (an operator's
/// slip: a copied config) does not take the live node's place: only a
/// restart on the same data dir revokes its predecessor's lease. The
/// second process waits, not registered and not ready.
#[test]
fn a_second_process_with_a_live_node_id_does_not_revoke_its_lease() {
    let etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let first = cluster_status(&nodes[1].server);
    let impostor = start_node(
        &etcd.url,
        2,
        common::etcd::free_port(),
        tempfile::tempdir().unwrap(),
    );
    std::thread::sleep(Duration::from_secs(12));
    let now = cluster_status(&nodes[1].server);
    let impostor_status = cluster_status(&impostor.server);
    assert_eq!(
        (now["incarnation"].as_i64(), now["sessions"].as_u64()),
        (first["incarnation"].as_i64(), first["sessions"].as_u64()),
        "the live node 2 lost its lease to a second process with its id:\n\
         live node: {now:#}\nsecond process: {impostor_status:#}"
    );
    assert_ne!(ready_code(&impostor.server), 200, "{impostor_status:#}");
}

/// Connections opened to a node's peer port and never said a word each
/// held one of the 64 places a shard keeps for handshakes, for the 3 s of
/// the handshake deadline, and a connection past them was closed unread:
/// a few hundred of them, opened again as the node closed them, kept a
/// restarted node's links from being accepted. Now a new connection takes
/// the place of the oldest silent one of its source address, so the
/// silent ones only push each other out.
#[test]
fn idle_connections_to_the_peer_port_do_not_keep_a_restarted_node_out() {
    const HELD: usize = 400;
    let etcd = Etcd::start();
    let mut nodes = start_three(&etcd);
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], nodes[1].peer_port));
    // From another address than the nodes', as another host would.
    let source = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let open = move || {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&source.into()).unwrap();
        socket.connect(&target.into()).ok()?;
        socket.set_nonblocking(true).unwrap();
        Some(std::net::TcpStream::from(socket))
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (reopened, flood_stop) = (std::sync::Arc::new(AtomicU64::new(0)), stop.clone());
    let flood_reopened = reopened.clone();
    let flood = std::thread::spawn(move || {
        let mut held: Vec<Option<std::net::TcpStream>> = (0..HELD).map(|_| open()).collect();
        while !flood_stop.load(Ordering::Relaxed) {
            for slot in held.iter_mut() {
                let closed = match slot {
                    None => true,
                    Some(socket) => {
                        let mut byte = [0u8; 1];
                        match std::io::Read::read(socket, &mut byte) {
                            Ok(_) => true,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        }
                    }
                };
                if closed {
                    *slot = open();
                    flood_reopened.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });

    // Node 1 restarts while the flood holds node 2's peer port.
    let dead = nodes.remove(0);
    let (id, peer_port) = (dead.id, dead.peer_port);
    let data_dir = dead.server.into_data_dir();
    nodes.insert(
        0,
        start_node(&failover_endpoints(&etcd), id, peer_port, data_dir),
    );
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "node 1 back", |s| live(s) == [1, 2, 3]);

    // Its link to node 2 carries a message, and node 2's back carries the
    // receipt.
    let (alice_number, bob_number) = (number_on(1, 1), number_on(2, 1));
    let (mut alice, _) = sign_up(&nodes[0].server, alice_number);
    let (mut bob, _) = sign_up(&nodes[1].server, bob_number);
    alice
        .send(&ClientFrame::Send {
            client_id: 1,
            to: bob_number,
            body: b"through the flood",
        })
        .unwrap();
    common::expect(&mut alice, "Sent", |e| {
        matches!(e, Event::Sent { client_id: 1, .. })
    });
    let seq = match common::expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. })) {
        Event::Message { seq, .. } => seq,
        _ => unreachable!(),
    };
    bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    common::expect(&mut alice, "Delivered", |e| {
        matches!(
            e,
            Event::Receipt {
                kind: wire::ReceiptKind::Delivered,
                client_id: 1,
                ..
            }
        )
    });
    // The flood was there all along: node 2 pushed its silent
    // connections out, and the flood opened them again. (The metrics are
    // a snapshot a second old at most, and the flood's first connections
    // may still be arriving on a busy machine: looked at until they show.)
    let evicted = || metric(&nodes[1].server, "isle_remote_handshakes_evicted_total").unwrap_or(0);
    let deadline = Instant::now() + SETTLE;
    while evicted() < (HELD - 64) as i64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let evicted = evicted();
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(evicted >= (HELD - 64) as i64, "{evicted} evicted");
    assert!(reopened.load(Ordering::Relaxed) > 0);
}

/// The value of the series `name` of `server`'s metrics (summed over its
/// labels), if it has one.
fn metrics_text(server: &Server) -> String {
    let url = format!("http://{}/metrics", server.admin);
    ureq::get(&url).call().unwrap().into_string().unwrap()
}

fn metric(server: &Server, name: &str) -> Option<i64> {
    let text = metrics_text(server);
    let values: Vec<i64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The lease time left was computed when the coordinator last heard from
/// etcd, so during an outage it stood still at its last value; and the
/// error that ended a session stayed in the status after the next one
/// was healthy. Now the time left runs down to the moment of reading,
/// the error goes once a session settles, and `/metrics` and `isle ctl
/// status` show the node's part of the cluster.
#[test]
fn lease_time_runs_down_while_etcd_is_away_and_the_error_clears_once_back() {
    let mut etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let node = &nodes[0].server;
    await_all(&[&nodes[0]], "both links up", |s| s["links_up"] == 2);
    assert_eq!(metric(node, "isle_cluster_members"), Some(3));
    assert_eq!(metric(node, "isle_cluster_links_up"), Some(2));
    assert!(metric(node, "isle_cluster_map_revision").unwrap() > 0);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["ctl", "--admin", &node.admin.to_string(), "status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("node 1 incarnation "), "{table}");
    assert!(table.contains("3 members, 3 live [1, 2, 3]"), "{table}");
    assert!(table.contains("links 2/2 up"), "{table}");
    assert!(
        table.contains("phones redirected 0, told to try later 0"),
        "{table}"
    );
    // One row per link, with its depth and decays: `now/1s/10s/100s`.
    for peer in [2, 3] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("shard 0 -> {peer} ")));
        let row = row.unwrap_or_else(|| panic!("no link row to node {peer} in:\n{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[4], "yes", "{row}");
        assert_eq!(cells[5].split('/').count(), 4, "{row}");
    }
    let averages = metrics_text(node);
    let depth = averages
        .lines()
        .filter(|l| l.starts_with("isle_link_queue_messages_avg{"))
        .filter(|l| l.contains("window=\"100s\""));
    assert_eq!(depth.count(), 2, "one per link:\n{averages}");

    etcd.crash();
    await_all(&[&nodes[0]], "the session ended", |s| {
        s["last_error"].is_string() && s["lease_left_ms"].as_u64().unwrap_or(0) > 0
    });
    let before = cluster_status(node)["lease_left_ms"].as_u64().unwrap();
    await_all(&[&nodes[0]], "the lease time running down", |s| {
        s["lease_left_ms"].as_u64().unwrap() < before
    });
    etcd.restart();
    await_all(&[&nodes[0]], "a healthy session again", |s| {
        s["last_error"].is_null() && s["lease_left_ms"].as_u64().unwrap_or(0) > 0
    });
}

/// A node that joins a cluster whose partitions are assigned owns none
/// (moving partitions is not done yet), and said nothing about it: it
/// looked like any other node. Its status, metrics and `isle ctl status`
/// now say so.
#[test]
fn a_node_that_joins_later_says_it_owns_no_partitions() {
    let etcd = Etcd::start();
    let nodes = start_three(&etcd);
    let late = start_node(
        &failover_endpoints(&etcd),
        4,
        common::etcd::free_port(),
        tempfile::tempdir().unwrap(),
    );
    await_all(&[&late], "the late node sees the map", |s| {
        live(s) == [1, 2, 3, 4] && s["map_revision"].is_i64()
    });
    assert_eq!(cluster_status(&late.server)["partitions_owned"], 0);
    assert_eq!(
        metric(&late.server, "isle_cluster_partitions_owned"),
        Some(0)
    );
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["ctl", "--admin", &late.server.admin.to_string(), "status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("owns 0 partitions"), "{table}");
    // The others still own them all.
    let owned: u64 = nodes
        .iter()
        .map(|n| {
            cluster_status(&n.server)["partitions_owned"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(owned, 1024);
}

/// Node `id` of a replicating cluster of three, with small log segments
/// and a checkpoint after every closed one: the primaries' and the
/// standbys' logs are cut by checkpoints within a few dozen messages.
fn start_replicating(etcd: &Etcd, id: u16, peer_port: u16, dir: tempfile::TempDir) -> Node {
    start_replicating_with(etcd, id, peer_port, dir, &[])
}

/// [`start_replicating`] with more environment settings.
fn start_replicating_with(
    etcd: &Etcd,
    id: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    env: &[(&str, &str)],
) -> Node {
    let small = ["--segment-bytes", "65536"];
    start_node_with(&etcd.url, id, peer_port, dir, &small, |command| {
        command
            .env("ISLE_CLUSTER__REPLICATION", "sync")
            .env("ISLE_STORAGE__CHECKPOINT_SEGMENTS", "1")
            .envs(env.iter().copied());
    })
}

/// Three replicating nodes on ports of their own (returned, for
/// restarts), once island 1 is in sync past the bootstrap's epoch.
fn three_replicating(etcd: &Etcd) -> (Vec<Node>, Vec<u16>) {
    three_replicating_with(etcd, &[])
}

/// [`three_replicating`] with more environment settings on every node.
fn three_replicating_with(etcd: &Etcd, env: &[(&str, &str)]) -> (Vec<Node>, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| common::etcd::free_port()).collect();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let dir = tempfile::tempdir().unwrap();
            start_replicating_with(etcd, id, ports[usize::from(id) - 1], dir, env)
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync", |s| {
        island_is(s, 1, 2, "sync", &[1, 2])
    });
    (nodes, ports)
}

/// Whether island `id` is in `mode` with `insync`, at `epoch` or later, in
/// a node's status. (The bootstrap's epoch 1 is never served: each
/// primary's first view names it primary of an epoch it did not win since
/// it started, so it moves on to 2.)
fn island_is(status: &serde_json::Value, id: u64, epoch: u64, mode: &str, insync: &[u64]) -> bool {
    let islands = status["islands"].as_array().cloned().unwrap_or_default();
    islands.iter().any(|i| {
        i["id"].as_u64() == Some(id)
            && i["epoch"].as_u64() >= Some(epoch)
            && i["mode"] == mode
            && i["insync"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_u64()).collect())
                == Some(insync.to_vec())
    })
}

/// Sends `ids` from `from` to `to`, each answered `Sent`.
fn send_all(from: &mut Client, to: Phone, ids: std::ops::RangeInclusive<u64>) {
    send_each(from, to, ids, false);
}

/// [`send_all`], each sent again after a while when refused
/// `Unavailable` (as a phone does), for a while.
fn send_all_resending(from: &mut Client, to: Phone, ids: std::ops::RangeInclusive<u64>) {
    send_each(from, to, ids, true);
}

/// Sends `ids` from `from` to `to`, each answered `Sent`; with `resend`,
/// one refused `Unavailable` is sent again after a while, for a while.
fn send_each(from: &mut Client, to: Phone, ids: std::ops::RangeInclusive<u64>, resend: bool) {
    for client_id in ids {
        let body = shipped_body(client_id);
        let send = ClientFrame::Send {
            client_id,
            to,
            body: body.as_bytes(),
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            from.send(&send).unwrap();
            let answer = await_frame(from, SETTLE, |e| match e {
                Event::Sent { client_id: c, .. } if *c == client_id => Some(true),
                Event::Error {
                    kind: ErrorKind::Unavailable,
                    client_id: Some(c),
                    ..
                } if *c == client_id && resend => Some(false),
                _ => None,
            });
            match answer {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => panic!("message {client_id}: {other:?}"),
            }
        }
    }
}

/// Alice and Bob signed up on `node` (node 1: island 1's primary), Bob
/// gone: Alice's client, and Bob's number and key.
fn alice_and_bob_on(node: &Node) -> (Client, Phone, DeviceKey) {
    let (alice, bob) = (number_on(1, 0), number_on(1, 1));
    let (alice_client, _) = sign_up(&node.server, alice);
    let (bob_client, bob_key) = sign_up(&node.server, bob);
    drop(bob_client);
    (alice_client, bob, bob_key)
}

/// Island 1's primary (`nodes[0]`) killed, the tablet of island 1 that
/// `nodes[holder]` keeps gives `phone` messages `1..=count`.
fn primary_gone_tablet_delivers(
    nodes: &mut Vec<Node>,
    holder: usize,
    (phone, key): (Phone, DeviceKey),
    count: u64,
) {
    let tablet = nodes[holder]
        .server
        .data_dir()
        .join("islands/island-1/shard-0");
    let primary = nodes.remove(0);
    drop(primary.server.into_data_dir());
    tablet_delivers(&tablet, phone, key, count);
}

/// Starts a single node on a copy of `tablet` (a secondary's log of what
/// its primary shipped) and checks that `phone` gets messages `1..=count`
/// there, in order.
fn tablet_delivers(tablet: &std::path::Path, phone: Phone, key: DeviceKey, count: u64) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(tablet, &copy.path().join("log/shard-0"));
    let single = Server::start_in(copy, &["--shards", "1"]);
    let mut client = single.connect();
    client.set_timeout(Duration::from_secs(10)).unwrap();
    client.login(phone, key).unwrap();
    expect_messages(&mut client, count);
}

/// Message `n`'s body: 2 KiB, so that a few dozen fill a test's segment.
fn shipped_body(n: u64) -> String {
    format!("shipped {n:>4} {}", "x".repeat(2_036))
}

fn has_checkpoint(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".ckpt"))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// With `cluster.replication = "sync"`, a phone is told `Sent` only once
/// its island's secondary holds the message: after a kill -9 of the
/// primary, a server started on a copy of the secondary's tablet (its log
/// of what the primary shipped, byte for byte) delivers every message.
#[test]
fn with_sync_replication_every_sent_message_is_on_the_secondary_s_disk() {
    let etcd = Etcd::start();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let dir = tempfile::tempdir().unwrap();
            start_replicating(&etcd, id, common::etcd::free_port(), dir)
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    // Each primary's first view names it primary of an epoch it did not
    // win since it started: it goes solo in a new epoch, its secondary
    // catches up, and the island is back in sync.
    await_all(&all, "every island back in sync", |s| {
        let islands = s["islands"].as_array().cloned().unwrap_or_default();
        islands.len() == 3
            && islands
                .iter()
                .all(|i| i["mode"] == "sync" && i["epoch"].as_u64() >= Some(2))
    });
    let (mut alice_client, bob, bob_key) = alice_and_bob_on(&nodes[0]);
    send_all(&mut alice_client, bob, 1..=60);
    let tablet = nodes[1].server.data_dir().join("islands/island-1/shard-0");
    // The standby checkpoints its tablet as the primary does its log.
    let deadline = Instant::now() + SETTLE;
    while !has_checkpoint(&tablet) {
        let files: Vec<_> = std::fs::read_dir(&tablet)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().len())
            })
            .collect();
        assert!(Instant::now() < deadline, "no checkpoint: {files:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let primary = nodes.remove(0);
    drop(primary.server.into_data_dir());
    tablet_delivers(&tablet, bob, bob_key, 60);
}

/// A secondary killed: its island goes solo (by an etcd compare-and-swap)
/// and phones keep being answered; once it is back it catches up from
/// the primary's log and the island is in sync again, its tablet holding
/// what was sent while it was away.
#[test]
fn with_sync_replication_a_dead_secondary_leaves_its_island_solo_until_it_caught_up() {
    let etcd = Etcd::start();
    let (mut nodes, ports) = three_replicating(&etcd);
    let (mut alice_client, bob, bob_key) = alice_and_bob_on(&nodes[0]);
    send_all(&mut alice_client, bob, 1..=10);

    let secondary = nodes.remove(1);
    let data_dir = secondary.server.into_data_dir();
    send_all(&mut alice_client, bob, 11..=20);
    let left: Vec<&Node> = nodes.iter().collect();
    await_all(&left, "island 1 solo", |s| island_is(s, 1, 3, "solo", &[1]));
    // What the secondary does not hold shows as the replica's lag, in
    // batches and bytes, and the island as solo in its new epoch.
    let lag = |name| metric(&nodes[0].server, name).unwrap_or(0);
    let deadline = Instant::now() + SETTLE;
    while lag("isle_queue_replica_lag_batches") == 0 || lag("isle_queue_replica_lag_bytes") == 0 {
        assert!(Instant::now() < deadline, "no replica lag shown");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = metrics_text(&nodes[0].server);
    for line in [
        "isle_cluster_island_solo{node=\"1\",island=\"1\"} 1",
        "isle_cluster_island_epoch{node=\"1\",island=\"1\"} 3",
        "isle_cluster_island_insync{node=\"1\",island=\"1\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?}");
    }
    assert!(metric(&nodes[0].server, "isle_replication_shipped_batches_total").unwrap_or(0) >= 10);

    nodes.insert(1, start_replicating(&etcd, 2, ports[1], data_dir));
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync again", |s| {
        island_is(s, 1, 3, "sync", &[1, 2])
    });
    send_all(&mut alice_client, bob, 21..=25);
    primary_gone_tablet_delivers(&mut nodes, 1, (bob, bob_key), 25);
}

/// A primary killed: its in-sync secondary takes the island over in a new
/// epoch (rule 2) and serves its phones. A phone that asks another node
/// is sent there, and finds every message sent before the kill and after,
/// in order. The old primary, started again, finds its island served by
/// node 2 and sends the island's phones there.
#[test]
fn with_sync_replication_a_killed_primary_s_island_is_served_by_its_secondary() {
    let etcd = Etcd::start();
    let (mut nodes, ports) = three_replicating(&etcd);
    let (alice, bob) = (number_on(1, 0), number_on(1, 1));
    let (mut alice_client, alice_key) = sign_up(&nodes[0].server, alice);
    let (bob_client, bob_key) = sign_up(&nodes[0].server, bob);
    drop(bob_client);
    send_all(&mut alice_client, bob, 1..=30);
    drop(alice_client);

    let primary = nodes.remove(0);
    let data_dir = primary.server.into_data_dir();
    let rest: Vec<&Node> = nodes.iter().collect();
    await_all(&rest, "island 1 taken over by node 2", |s| {
        island_served_by(s, 1, 2)
    });
    let node_2 = nodes[0].server.tls.to_string();
    let asked_elsewhere = redirect_settled(&nodes[1].server, (alice, alice_key), &node_2);
    assert!(
        matches!(&asked_elsewhere, Err(Event::Redirect { addr, .. }) if *addr == node_2),
        "node 3 for a phone of island 1: {:?}",
        asked_elsewhere.as_ref().err()
    );
    let mut alice_client = login_or_redirect(&nodes[0].server, alice, alice_key).unwrap();
    send_all(&mut alice_client, bob, 31..=45);
    let mut bob_client = login_or_redirect(&nodes[0].server, bob, bob_key).unwrap();
    expect_messages(&mut bob_client, 45);
    drop(bob_client);

    nodes.insert(0, start_replicating(&etcd, 1, ports[0], data_dir));
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "node 1 back, island 1 still on node 2", |s| {
        live(s) == [1, 2, 3] && island_served_by(s, 1, 2)
    });
    let back = redirect_settled(&nodes[0].server, (bob, bob_key), &node_2);
    assert!(
        matches!(&back, Err(Event::Redirect { addr, .. }) if *addr == node_2),
        "the old primary for a phone of its island: {:?}",
        back.as_ref().err()
    );
    send_all(&mut alice_client, bob, 46..=50);

    // It rejoins its island as the secondary: the island is in sync again
    // on both nodes, so that node 2 can fail in turn. Killed, node 2
    // hands the island back to node 1 by the same rule, which has every
    // message.
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync on nodes 2 and 1", |s| {
        island_served_by(s, 1, 2) && island_is(s, 1, 3, "sync", &[2, 1])
    });
    send_all(&mut alice_client, bob, 51..=55);
    drop(alice_client);
    let node_2 = nodes.remove(1);
    drop(node_2.server.into_data_dir());
    let rest: Vec<&Node> = nodes.iter().collect();
    await_all(&rest, "island 1 back on node 1", |s| {
        island_served_by(s, 1, 1)
    });
    let mut bob_client = login_or_redirect(&nodes[0].server, bob, bob_key).unwrap();
    expect_messages(&mut bob_client, 55);
}

/// Whether island `id` is served by node `primary` in a node's status.
fn island_served_by(status: &serde_json::Value, id: u64, primary: u64) -> bool {
    let islands = status["islands"].as_array().cloned().unwrap_or_default();
    islands
        .iter()
        .any(|i| i["id"].as_u64() == Some(id) && i["primary"].as_u64() == Some(primary))
}

/// `phone` logged in on `server`, or what it was answered instead (a
/// `Redirect`, say). A `TryLater` is tried again for a while.
fn login_or_redirect(server: &Server, phone: Phone, key: DeviceKey) -> Result<Client, Event> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut client = Client::connect(server.plain).unwrap();
        client.set_timeout(Duration::from_secs(10)).unwrap();
        client.send(&ClientFrame::Login { phone, key }).unwrap();
        match client.recv().unwrap() {
            Event::LoggedIn { .. } => return Ok(client),
            Event::TryLater { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return Err(other),
        }
    }
}

/// [`login_or_redirect`], asked again for a while while it is redirected
/// elsewhere than `to`: the shards take a new placement within a tick of
/// the status that shows it.
fn redirect_settled(
    server: &Server,
    (phone, key): (Phone, DeviceKey),
    to: &str,
) -> Result<Client, Event> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match login_or_redirect(server, phone, key) {
            Err(Event::Redirect { addr, .. }) if addr != to && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Waits for messages `1..=count` on `client`, in order.
fn expect_messages(client: &mut Client, count: u64) {
    let mut bodies = Vec::new();
    while bodies.len() < count as usize {
        let message = await_frame(client, SETTLE, |e| match e {
            Event::Message { body, .. } => Some(body.to_vec()),
            _ => None,
        });
        match message {
            Ok(body) => bodies.push(String::from_utf8(body).unwrap()),
            Err(seen) => panic!("{} of {count} messages, then {seen:?}", bodies.len()),
        }
    }
    let expected: Vec<String> = (1..=count).map(shipped_body).collect();
    assert_eq!(bodies, expected);
}

/// A secondary away while its primary's log moved past what the primary
/// keeps for it (`replica_retain_segments = 0` here: the checkpoints go
/// ahead and the segments after them go) cannot catch up from the log
/// alone: it is sent the primary's checkpoint, makes it its tablet, then
/// catches up from the log and is in sync again. Its tablet holds every
/// message.
#[test]
fn with_sync_replication_a_secondary_behind_the_primary_s_log_gets_its_checkpoint() {
    let etcd = Etcd::start();
    let retain_none = [("ISLE_CLUSTER__REPLICA_RETAIN_SEGMENTS", "0")];
    let (mut nodes, ports) = three_replicating_with(&etcd, &retain_none);
    let (mut alice_client, bob, bob_key) = alice_and_bob_on(&nodes[0]);
    send_all(&mut alice_client, bob, 1..=10);

    let secondary = nodes.remove(1);
    let data_dir = secondary.server.into_data_dir();
    // About 30 messages fill a segment: the primary checkpoints past
    // several while its secondary is away.
    send_all(&mut alice_client, bob, 11..=160);
    let primary_log = nodes[0].server.data_dir().join("log/shard-0");
    let first_segment = std::fs::read_dir(&primary_log)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .min();
    assert!(
        first_segment.is_some_and(|n| n > 1),
        "the primary still has its first segment: {first_segment:?}"
    );

    let back = start_replicating_with(&etcd, 2, ports[1], data_dir, &retain_none);
    nodes.insert(1, back);
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync again", |s| {
        island_is(s, 1, 3, "sync", &[1, 2])
    });
    send_all(&mut alice_client, bob, 161..=170);
    // It came back through the checkpoint, not the log.
    let said: Vec<String> = nodes[1].server.stderr.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("the standby is the primary's checkpoint of batch")),
        "no checkpoint installed: {}",
        said.join("\n")
    );
    primary_gone_tablet_delivers(&mut nodes, 1, (bob, bob_key), 170);
}

/// An island left solo because its secondary is gone gets another live
/// node as its secondary once the grace period is over (3 s here; 10
/// minutes by default): that node builds a standby from the primary's
/// log (or checkpoint) and the island is in sync again, so a second
/// failure no longer loses its data. The new secondary's tablet holds
/// every message.
#[test]
fn with_sync_replication_an_island_whose_secondary_stays_away_is_given_another() {
    let etcd = Etcd::start();
    let grace = [("ISLE_CLUSTER__REPAIR_GRACE_MS", "3000")];
    let (mut nodes, _ports) = three_replicating_with(&etcd, &grace);
    let (mut alice_client, bob, bob_key) = alice_and_bob_on(&nodes[0]);
    send_all(&mut alice_client, bob, 1..=40);

    let secondary = nodes.remove(1);
    drop(secondary.server.into_data_dir());
    send_all(&mut alice_client, bob, 41..=80);
    let left: Vec<&Node> = nodes.iter().collect();
    await_all(&left, "island 1 re-paired with node 3, in sync", |s| {
        island_is(s, 1, 3, "sync", &[1, 3])
    });
    send_all(&mut alice_client, bob, 81..=90);
    primary_gone_tablet_delivers(&mut nodes, 1, (bob, bob_key), 90);
}

/// A primary started on an empty data dir (its disk was lost) while its
/// island is in sync never serves it: serving an empty log would make its
/// secondary cut the island's log to nothing. It says why, is not ready,
/// and asks its in-sync secondary to take the island over (if the
/// secondary did not already, while the primary was down): the island is
/// served by node 2 with every message.
#[test]
fn with_sync_replication_a_primary_on_an_empty_data_dir_hands_its_island_over() {
    let etcd = Etcd::start();
    let (mut nodes, ports) = three_replicating(&etcd);
    let (mut alice_client, bob, bob_key) = alice_and_bob_on(&nodes[0]);
    send_all(&mut alice_client, bob, 1..=20);
    drop(alice_client);

    let primary = nodes.remove(0);
    drop(primary.server.into_data_dir());
    let wiped = start_replicating(&etcd, 1, ports[0], tempfile::tempdir().unwrap());
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 served by node 2", |s| {
        island_served_by(s, 1, 2)
    });
    let mut bob_client = login_or_redirect(&nodes[0].server, bob, bob_key).unwrap();
    expect_messages(&mut bob_client, 20);
    // Unless node 2 took the island over while node 1 was down, the
    // wiped node said why it does not serve, and is not ready.
    let said: Vec<String> = wiped.server.stderr.try_iter().collect();
    if said
        .iter()
        .any(|l| l.contains("this data dir is not the island's"))
    {
        assert_eq!(
            ready_code(&wiped.server),
            503,
            "a node that cannot serve is ready"
        );
    }
}

/// A node that left for good stays a member (what is owed to it waits on
/// the links) until an operator removes it, which etcd allows only once
/// it is not live and no island names it. The others then drop their
/// links to it and send on what they held for it: here Alice's messages
/// to Bob (island 3) written to node 3's link while node 3 was stopped,
/// which go to island 3's new primary, where the copies Alice sent again
/// meanwhile are absorbed. Bob gets every message once, in order.
#[test]
fn with_sync_replication_a_node_removed_for_good_leaves_no_link_and_nothing_behind() {
    let etcd = Etcd::start();
    let grace = [("ISLE_CLUSTER__REPAIR_GRACE_MS", "2000")];
    let (mut nodes, _ports) = three_replicating_with(&etcd, &grace);
    let remove = |node: &Node, gone: u16| {
        let out = Command::new(env!("CARGO_BIN_EXE_isle"))
            .args(["ctl", "--admin", &node.server.admin.to_string()])
            .args(["remove-node", &gone.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, said) = remove(&nodes[0], 3);
    assert!(!ok && said.contains("node 3 is live"), "{said}");

    let (alice, bob) = (number_on(1, 0), number_on(3, 0));
    let (mut alice_client, alice_key) = sign_up(&nodes[0].server, alice);
    let (bob_client, bob_key) = sign_up(&nodes[2].server, bob);
    drop(bob_client);
    send_all(&mut alice_client, bob, 1..=5);
    // Node 3 stops answering: Alice's next sends wait on its link.
    signal(&nodes[2].server, "STOP");
    for client_id in 6..=10 {
        let body = shipped_body(client_id);
        let send = ClientFrame::Send {
            client_id,
            to: bob,
            body: body.as_bytes(),
        };
        alice_client.send(&send).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let gone = nodes.remove(2);
    drop(gone.server.into_data_dir());
    drop(alice_client);
    let left: Vec<&Node> = nodes.iter().collect();
    // A lease, the re-pairing grace and a catch-up for each of two islands:
    // longer than SETTLE on a loaded machine.
    let repaired = |s: &serde_json::Value| {
        let islands = s["islands"].as_array().cloned().unwrap_or_default();
        islands.len() == 3
            && islands
                .iter()
                .all(|i| i["primary"] != 3 && i["secondary"] != 3 && i["mode"] == "sync")
    };
    let deadline = Instant::now() + 3 * SETTLE;
    while !left.iter().all(|n| repaired(&cluster_status(&n.server))) {
        assert!(
            Instant::now() < deadline,
            "islands 2 and 3 not re-paired without node 3"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The phone sends again what was not answered.
    let mut alice_client = login_or_redirect(&nodes[0].server, alice, alice_key).unwrap();
    send_all(&mut alice_client, bob, 6..=12);

    let (ok, said) = remove(&nodes[1], 3);
    assert!(ok, "{said}");
    assert!(said.contains("node 3 removed"), "{said}");
    let (ok, said) = remove(&nodes[1], 3);
    assert!(!ok && said.contains("not a member"), "{said}");
    await_all(&left, "two members, every link up", |s| {
        s["members"].as_array().map(Vec::len) == Some(2) && s["links"] == 1 && s["links_up"] == 1
    });
    // Node 1's link to node 3 held messages 6 to 10: sent on, not lost.
    let said_on = await_log(&nodes[0].server, "node 3 left the cluster:");
    assert!(!said_on.contains(": 0 messages"), "{said_on}");
    let island_3 = island_primary(&cluster_status(&nodes[0].server), 3);
    let holder = nodes.iter().find(|n| u64::from(n.id) == island_3).unwrap();
    let mut bob_client = login_or_redirect(&holder.server, bob, bob_key).unwrap();
    expect_messages(&mut bob_client, 12);
    let more = await_frame(&mut bob_client, Duration::from_millis(1_500), |e| match e {
        Event::Message { body, .. } => Some(body.to_vec()),
        _ => None,
    });
    assert!(more.is_err(), "a message twice: {more:?}");
}

/// The primary of island `id` in a node's status.
fn island_primary(status: &serde_json::Value, id: u64) -> u64 {
    let islands = status["islands"].as_array().cloned().unwrap_or_default();
    let island = islands.iter().find(|i| i["id"].as_u64() == Some(id));
    island
        .and_then(|i| i["primary"].as_u64())
        .expect("the island")
}

/// The first line of `server`'s log that contains `text`, within
/// `SETTLE`.
fn await_log(server: &Server, text: &str) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.stderr.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {text:?}"),
        }
    }
}

/// `isle ctl restart` on island 1's primary: refused while an island of
/// the node is not in sync; then a planned stop gives island 1 to node 2
/// at once (the lease is revoked, not left to expire), the test restarts
/// the process as a service manager would, and the command returns once
/// node 1 is back and its islands are in sync again. Every message Alice
/// sent before, during and after is delivered once, in order.
#[test]
fn with_sync_replication_ctl_restart_hands_the_islands_over_and_waits_for_sync() {
    let etcd = Etcd::start();
    let (mut nodes, ports) = three_replicating(&etcd);
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "every island in sync", |s| {
        (1..=3).all(|id| {
            let islands = s["islands"].as_array().cloned().unwrap_or_default();
            islands
                .iter()
                .any(|i| i["id"] == id && i["mode"] == "sync" && i["epoch"].as_u64() >= Some(2))
        })
    });
    let (alice, bob) = (number_on(3, 0), number_on(1, 0));
    let (mut alice_client, _) = sign_up(&nodes[2].server, alice);
    let (bob_client, bob_key) = sign_up(&nodes[0].server, bob);
    drop(bob_client);
    send_all(&mut alice_client, bob, 1..=20);

    let data_dir = nodes[0].server.data_dir().to_owned();
    let ctl = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_isle"))
            .args(["ctl", "--data-dir"])
            .arg(&data_dir)
            .args(["restart", "--wait-ms", "60000"])
            .output()
            .unwrap()
    });
    let deadline = Instant::now() + SETTLE;
    while nodes[0].server.is_running() {
        assert!(Instant::now() < deadline, "node 1 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = await_log(&nodes[0].server, "planned stop:");
    assert!(said.contains("giving this node's islands"), "{said}");
    let rest: Vec<&Node> = nodes[1..].iter().collect();
    await_all(&rest, "island 1 on node 2", |s| island_served_by(s, 1, 2));
    // The shards take the new placement within a tick of the status:
    // until then a send is refused `Unavailable`, and sent again.
    send_all_resending(&mut alice_client, bob, 21..=30);
    let stopped = nodes.remove(0);
    let dir = stopped.server.into_data_dir();
    nodes.insert(0, start_replicating(&etcd, 1, ports[0], dir));
    let out = ctl.join().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("node 1 restarted: stopped "), "{stdout}");
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync on nodes 2 and 1", |s| {
        island_served_by(s, 1, 2) && island_is(s, 1, 3, "sync", &[2, 1])
    });
    send_all(&mut alice_client, bob, 31..=40);
    let mut bob_client = login_or_redirect(&nodes[1].server, bob, bob_key).unwrap();
    expect_messages(&mut bob_client, 40);
    let more = await_frame(&mut bob_client, Duration::from_millis(1_500), |e| match e {
        Event::Message { body, .. } => Some(body.to_vec()),
        _ => None,
    });
    assert!(more.is_err(), "a message twice: {more:?}");

    // Node 1 is island 1's secondary now; node 3 is island 2's. With node
    // 3 stopped, island 2 has one copy: node 2's restart is refused.
    signal(&nodes[2].server, "STOP");
    await_all(&all[..2], "node 3's lease gone", |s| live(s) == [1, 2]);
    let out = Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["ctl", "--admin", &nodes[1].server.admin.to_string()])
        .args(["restart", "--wait-ms", "1000"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("node 2 not restarted"), "{said}");
    assert_eq!(
        status(&nodes[1].server)["ready"],
        true,
        "node 2 still serves"
    );
    signal(&nodes[2].server, "CONT");
}

/// Island 1's primary paused past its lease (SIGSTOP): node 2 takes the
/// island over. Woken up, node 1 finds its island moved: the phones it
/// still had are told to go, and a phone of island 1 that comes to it is
/// redirected to node 2 at once (it used to get no answer: the stale
/// tablet's connections waited for a commit that never came).
#[test]
fn with_sync_replication_a_primary_paused_past_its_lease_redirects_its_phones_once_awake() {
    let etcd = Etcd::start();
    let (nodes, _ports) = three_replicating(&etcd);
    let (mut alice_client, bob, bob_key) = alice_and_bob_on(&nodes[0]);
    send_all(&mut alice_client, bob, 1..=10);
    signal(&nodes[0].server, "STOP");
    let rest: Vec<&Node> = nodes[1..].iter().collect();
    await_all(&rest, "island 1 taken over by node 2", |s| {
        island_served_by(s, 1, 2)
    });
    signal(&nodes[0].server, "CONT");
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync on nodes 2 and 1", |s| {
        island_served_by(s, 1, 2) && island_is(s, 1, 3, "sync", &[2, 1])
    });
    // Alice's connection to node 1 is told to go.
    let closed = await_frame(&mut alice_client, SETTLE, |e| match e {
        Event::Bye { .. } => Some(()),
        _ => None,
    });
    assert!(closed.is_ok(), "{closed:?}");
    let node_2 = nodes[1].server.tls.to_string();
    for _ in 0..3 {
        let mut client = Client::connect(nodes[0].server.plain).unwrap();
        client.set_timeout(Duration::from_secs(5)).unwrap();
        client
            .send(&ClientFrame::Login {
                phone: bob,
                key: bob_key,
            })
            .unwrap();
        match client.recv() {
            Ok(Event::Redirect { addr, .. }) => assert_eq!(addr, node_2),
            other => panic!("node 1 for a phone of island 1: {other:?}"),
        }
    }
    let mut bob_client = login_or_redirect(&nodes[1].server, bob, bob_key).unwrap();
    expect_messages(&mut bob_client, 10);
}

/// The epoch of island `id` in a node's status.
fn island_epoch(status: &serde_json::Value, id: u64) -> u64 {
    let islands = status["islands"].as_array().cloned().unwrap_or_default();
    islands
        .iter()
        .find(|i| i["id"].as_u64() == Some(id))
        .and_then(|i| i["epoch"].as_u64())
        .unwrap_or(0)
}

/// The shard of a two-shard node that keeps `phone`'s account.
fn shard_of_two(phone: Phone) -> u16 {
    PartitionMap::new(PARTITIONS_DEFAULT, 1).partition_of(phone) % 2
}

/// Two shards a node: each island has one tablet a shard, each with its
/// own member, and one record. An island change one shard's member asks
/// for is the node's: going solo when the secondary is stopped past its
/// lease is one epoch, served by both tablets (not an epoch each, bumped
/// back and forth for ever), and the island is in sync again, in that
/// epoch, once both tablets caught up. Accounts on both shards get every
/// message, in order.
#[test]
fn with_sync_replication_two_shards_a_node_make_one_epoch_per_island_change() {
    let etcd = Etcd::start();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let (port, dir) = (common::etcd::free_port(), tempfile::tempdir().unwrap());
            let flags = ["--shards", "2", "--segment-bytes", "65536"];
            start_node_with(&etcd.url, id, port, dir, &flags, |command| {
                command.env("ISLE_CLUSTER__REPLICATION", "sync");
            })
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "island 1 in sync", |s| {
        island_is(s, 1, 2, "sync", &[1, 2])
    });
    let on_node_1 = || (0..).map(|n| number_on(1, n));
    let alice = number_on(1, 0);
    let bobs: Vec<Phone> = [0, 1]
        .map(|shard| {
            on_node_1()
                .find(|&p| p != alice && shard_of_two(p) == shard)
                .unwrap()
        })
        .to_vec();
    let (mut alice_client, _) = sign_up(&nodes[0].server, alice);
    let keys: Vec<DeviceKey> = bobs
        .iter()
        .map(|&bob| sign_up(&nodes[0].server, bob).1)
        .collect();
    let send_both = |client: &mut Client, round: u64| {
        for (at, &bob) in bobs.iter().enumerate() {
            let first = 100 * at as u64 + 5 * round + 1;
            send_all(client, bob, first..=first + 4);
        }
    };
    send_both(&mut alice_client, 0);

    signal(&nodes[1].server, "STOP");
    let rest = [&nodes[0], &nodes[2]];
    await_all(&rest, "island 1 solo", |s| island_is(s, 1, 3, "solo", &[1]));
    let solo = island_epoch(&cluster_status(&nodes[0].server), 1);
    send_both(&mut alice_client, 1);
    std::thread::sleep(Duration::from_secs(3));
    let later = island_epoch(&cluster_status(&nodes[0].server), 1);
    assert_eq!(
        later, solo,
        "island 1's epoch moved on while nothing changed"
    );

    signal(&nodes[1].server, "CONT");
    await_all(&all, "island 1 in sync again", |s| {
        island_is(s, 1, solo, "sync", &[1, 2])
    });
    assert_eq!(island_epoch(&cluster_status(&nodes[0].server), 1), solo);
    send_both(&mut alice_client, 2);
    for (at, (&bob, &key)) in bobs.iter().zip(&keys).enumerate() {
        let mut client = login_or_redirect(&nodes[0].server, bob, key).unwrap();
        let mut bodies = Vec::new();
        while bodies.len() < 15 {
            let message = await_frame(&mut client, SETTLE, |e| match e {
                Event::Message { body, .. } => Some(String::from_utf8(body.to_vec()).unwrap()),
                _ => None,
            });
            bodies
                .push(message.unwrap_or_else(|seen| panic!("bob {at}: {bodies:?}, then {seen:?}")));
        }
        let first = 100 * at as u64 + 1;
        let expected: Vec<String> = (first..first + 15).map(shipped_body).collect();
        assert_eq!(bodies, expected, "bob {at}");
    }
}
