//! Nodes coordinated through a real etcd: registration under a lease, the
//! controller's election and partition assignment, a node's death and
//! return (its predecessor's lease revoked), and an etcd outage.

mod common;

use std::time::{Duration, Instant};

use common::{etcd::Etcd, Server};
use loadgen::client::{Client, Event};
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::{ClientFrame, Phone};

/// Longer than a lease (5 s) plus etcd's expiry sweep and a session's
/// retry: what a change may take to show on every node.
const SETTLE: Duration = Duration::from_secs(20);

struct Node {
    id: u16,
    peer_port: u16,
    server: Server,
}

fn start_node(etcd: &Etcd, id: u16, peer_port: u16, data_dir: tempfile::TempDir) -> Node {
    // A dead endpoint first: the coordinator must fail over to the next.
    let endpoints = format!("http://127.0.0.1:1,{}", etcd.url);
    let peer = format!("127.0.0.1:{peer_port}");
    let id_text = id.to_string();
    let flags = [
        "--shards",
        "1",
        "--node-id",
        &id_text,
        "--etcd",
        &endpoints,
        "--peer-listen",
        &peer,
    ];
    let server = Server::start_with(data_dir, &flags, |command| {
        command.env("ISLE_CLUSTER__BOOTSTRAP_NODES", "3");
    });
    Node {
        id,
        peer_port,
        server,
    }
}

/// Nodes 1, 2 and 3, once all are live and the partitions assigned.
fn start_three(etcd: &Etcd) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let data_dir = tempfile::tempdir().unwrap();
            start_node(etcd, id, common::etcd::free_port(), data_dir)
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    await_all(&all, "all three registered, partitions assigned", |s| {
        live(s) == [1, 2, 3] && s["partitions_owned"].as_u64().unwrap_or(0) > 0
    });
    nodes
}

/// The node's `/status` cluster section.
fn cluster_status(server: &Server) -> serde_json::Value {
    let url = format!("http://{}/status", server.admin);
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    status["cluster"].clone()
}

/// Waits until `check` holds for every node's cluster status.
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

/// The node of three owning `phone`: the controller spreads the
/// partitions over nodes 1, 2, 3 in contiguous runs.
fn home_of(phone: Phone) -> u16 {
    let partition = usize::from(PartitionMap::new(PARTITIONS_DEFAULT, 1).partition_of(phone));
    (partition * 3 / usize::from(PARTITIONS_DEFAULT)) as u16 + 1
}

/// A test number whose account lives on node `node`.
fn number_on(node: u16) -> Phone {
    (0..2_000u64)
        .map(|n| Phone::parse(&format!("+1555000{n:04}")).unwrap())
        .find(|&phone| home_of(phone) == node)
        .unwrap()
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
    let first = statuses[0]["incarnation"].as_i64().unwrap();

    // A phone is served by its home node and redirected there by the
    // others (the shards take the placement within a tick of the view).
    for node in &nodes {
        for home in 1..=3u16 {
            let phone = number_on(home);
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
        let answer = ask_code(&nodes[0].server, number_on(1));
        if matches!(answer, Event::TryLater { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "{answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Back on the same data: a new incarnation, seen by everyone.
    nodes.insert(0, start_node(&etcd, id, peer_port, data_dir));
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
    let (alice_number, bob_number) = (number_on(1), number_on(2));
    let login = |node: &Node, number: Phone| {
        let deadline = Instant::now() + SETTLE;
        loop {
            // The shards take the placement within a tick of the view.
            if let Some(phone) = try_phone(&node.server, number) {
                return phone;
            }
            assert!(Instant::now() < deadline, "{number} cannot log in");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut alice = login(&nodes[0], alice_number);
    let mut bob = login(&nodes[1], bob_number);
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

/// A signed-up and logged-in phone on `server`, or `None` while it is told
/// to try later.
fn try_phone(server: &Server, number: Phone) -> Option<Client> {
    let mut client = Client::connect(server.plain).unwrap();
    client
        .send(&ClientFrame::RequestCode { phone: number })
        .unwrap();
    match client.recv().unwrap() {
        Event::CodeSent { .. } => {}
        Event::TryLater { .. } => return None,
        other => panic!("{other:?}"),
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
    Some(client)
}
