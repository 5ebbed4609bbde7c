//! Shards of several nodes of a cluster on one thread: phones redirected
//! to their home node, messages, receipts and groups across nodes, and a
//! node that is down (requests refused `Unavailable`, logins told to try
//! later, what is owed to it kept until it is back).

mod common;

use common::*;

/// A number whose account lives on node `node`, the `skip`-th such.
fn number_on(net: &Net, node: u16, skip: usize) -> String {
    (0..2_000)
        .map(|n| format!("+1555000{n:04}"))
        .filter(|n| net.home_node(Phone::parse(n).unwrap()) == node)
        .nth(skip)
        .unwrap()
}

/// Whether `got` holds a `Delivered` receipt for `client_id`.
fn delivered(got: &[Got], client_id: u64) -> bool {
    got.iter().any(|g| {
        matches!(g, Got::Receipt { kind: ReceiptKind::Delivered, client_id: c, .. } if *c == client_id)
    })
}

fn sent(got: &[Got], client_id: u64) -> bool {
    got.iter()
        .any(|g| matches!(g, Got::Sent { client_id: c, .. } if *c == client_id))
}

#[test]
fn a_phone_on_the_wrong_node_is_redirected_and_closed() {
    let mut net = Net::cluster(&[2, 2], |_| {});
    let bob = Phone::parse(&number_on(&net, 2, 0)).unwrap();
    let mut conn = net.connect_to(1);
    net.send(&mut conn, ClientFrame::RequestCode { phone: bob });
    assert_eq!(
        net.read(&conn),
        vec![Got::Redirect {
            addr: "node2:5222".into(),
            revision: 1
        }]
    );
    assert!(net.shards[usize::from(conn.shard)].is_closing(conn.conn));
    let counters = net.shards[usize::from(conn.shard)].counters();
    assert_eq!(counters.redirects, 1);
    // On its own node it signs up and logs in.
    let (_, key) = net.signup(&bob.to_string());
    net.login(bob, key);
}

#[test]
fn messages_receipts_and_groups_cross_nodes() {
    let mut net = Net::cluster(&[2, 1], |_| {});
    let (alice, alice_key) = net.signup(&number_on(&net, 1, 0));
    let (bob, bob_key) = net.signup(&number_on(&net, 2, 0));
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 1, b"over there");
    assert!(sent(&net.read(&alice_conn), 1));
    let (mut bob_conn, got) = net.login(bob, bob_key);
    let seq = got
        .iter()
        .find_map(|g| match g {
            Got::Message { seq, from, .. } if *from == alice => Some(*seq),
            _ => None,
        })
        .expect("bob got alice's message");
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: seq });
    let got = net.read(&alice_conn);
    assert!(delivered(&got, 1), "{got:?}");
    // A group with members on both nodes: every member gets the post.
    let (carol, carol_key) = net.signup(&number_on(&net, 2, 1));
    let (mut carol_conn, _) = net.login(carol, carol_key);
    net.send(
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 2,
            subject: "across",
            members: vec![bob, carol],
        },
    );
    let got = net.read(&alice_conn);
    let group = got
        .iter()
        .find_map(|g| match g {
            Got::Sent { client_id: 2, id } => GroupId::from_u64(*id).ok(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no group: {got:?}"));
    net.send(
        &mut carol_conn,
        ClientFrame::GroupSend {
            client_id: 3,
            group,
            body: b"hello both",
        },
    );
    assert!(sent(&net.read(&carol_conn), 3));
    for conn in [&alice_conn, &bob_conn] {
        let got = net.read(conn);
        assert!(
            got.iter()
                .any(|g| matches!(g, Got::GroupMessage { body, .. } if body == b"hello both")),
            "{got:?}"
        );
    }
}

#[test]
fn a_node_that_is_down_refuses_requests_and_is_owed_the_rest() {
    let mut net = Net::cluster(&[1, 1], |_| {});
    let (alice, alice_key) = net.signup(&number_on(&net, 1, 0));
    let (bob, bob_key) = net.signup(&number_on(&net, 2, 0));
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    net.message(&mut bob_conn, alice, 1, b"before");
    net.read(&bob_conn);
    net.set_live(2, false, 2);

    // To a node that is down: refused, nothing stored, no Sent.
    net.message(&mut alice_conn, bob, 7, b"while down");
    let got = net.read(&alice_conn);
    assert!(got.contains(&Got::Error(ErrorKind::Unavailable)), "{got:?}");
    assert!(!sent(&got, 7));
    // A login for an account of the node that is down: try later.
    let mut conn = net.connect_to(1);
    net.send(
        &mut conn,
        ClientFrame::Login {
            phone: bob,
            key: bob_key,
        },
    );
    assert!(matches!(net.read(&conn)[..], [Got::TryLater(_)]));
    // What alice owes bob (the receipt of his message) waits for him.
    let got = net.read(&alice_conn);
    let seq = got
        .iter()
        .find_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap_or(1);
    net.send(&mut alice_conn, ClientFrame::Ack { up_to: seq });
    // Kept on disk, told once the node is back (at the next tick).
    assert!(net.parked.is_empty(), "nothing waits on the link");
    assert_eq!(net.shards[0].counters().receipts_owed, 1);
    net.set_live(2, true, 3);
    net.advance(net.shards[0].config().tick_ms);
    assert!(net.parked.is_empty());
    assert_eq!(net.shards[0].counters().receipts_owed, 0);
    let got = net.read(&bob_conn);
    assert!(delivered(&got, 1), "{got:?}");
    // Back: the refused message goes through when sent again.
    net.message(&mut alice_conn, bob, 7, b"while down");
    assert!(sent(&net.read(&alice_conn), 7));
}

#[test]
fn logins_past_the_admission_bucket_are_told_to_try_later() {
    let mut net = Net::new(1, |c| {
        c.logins_admitted_per_s = 1;
        c.logins_admitted_burst = 2;
    });
    let (alice, key) = net.signup("+15550000001");
    net.login(alice, key);
    net.login(alice, key);
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::Login { phone: alice, key });
    let got = net.read(&conn);
    let [Got::TryLater(after_ms)] = got[..] else {
        panic!("{got:?}")
    };
    assert!((1_000..=6_000).contains(&after_ms), "{after_ms}");
    assert!(net.shards[0].is_closing(conn.conn));
    net.advance(1_000);
    net.login(alice, key);
}

/// An account deleted while a node that owns some of its groups is down:
/// the number stays out of sign-up until that node answered, and the
/// node is told again once it is back, even after its link lost what
/// waited for it (a crash of either end).
#[test]
fn a_deletion_waits_for_a_node_that_is_down_and_is_told_again() {
    let mut net = Net::cluster(&[1, 1], |_| {});
    let (bob, _) = net.signup(&number_on(&net, 1, 0));
    let (carol, carol_key) = net.signup(&number_on(&net, 2, 0));
    let (mut carol_conn, _) = net.login(carol, carol_key);
    for client_id in 1..=6 {
        net.send(
            &mut carol_conn,
            ClientFrame::CreateGroup {
                client_id,
                subject: "with bob",
                members: vec![bob],
            },
        );
    }
    let created = net
        .read(&carol_conn)
        .iter()
        .filter(|g| matches!(g, Got::Sent { .. }))
        .count();
    assert_eq!(created, 6);
    net.set_live(2, false, 2);
    let now_ms = net.now_ms;
    net.shards[0].delete_account(bob, now_ms).unwrap();
    net.settle();
    // The word of the deletion waiting on the link to node 2 is lost (a
    // crash of either end empties a link's queue).
    let waiting = net.parked.len();
    net.parked
        .retain(|(_, message)| !matches!(message, PeerMessage::AccountGone { .. }));
    assert!(net.parked.len() < waiting);
    let verify = |net: &mut Net| net.try_signup(bob).1;
    assert_eq!(verify(&mut net), [Got::Error(ErrorKind::Unavailable)]);
    net.set_live(2, true, 3);
    assert_eq!(net.shards[0].counters().account_deletions_pending, 1);
    net.advance(shard::DELETION_RESEND_MS);
    assert_eq!(net.shards[0].counters().account_deletions_pending, 0);
    let left = net
        .read(&carol_conn)
        .iter()
        .filter(
            |g| matches!(g, Got::GroupNotice { by, change: GroupChange::Left, .. } if *by == bob),
        )
        .count();
    assert_eq!(left, 6, "bob left every group carol made");
    assert!(matches!(verify(&mut net)[..], [Got::Registered(_)]));
}

/// A receipt owed to a node that is down is kept on disk by the node
/// owing it, not only on the link: a restart of that node while the other
/// is away loses nothing, and the receipt arrives once the node is back.
/// The acknowledgement that made it is durable, so nothing else would
/// ever make it again.
#[test]
fn a_receipt_owed_to_a_down_node_survives_a_restart_of_the_node_owing_it() {
    let mut net = Net::cluster(&[1, 1], |_| {});
    let (alice, alice_key) = net.signup(&number_on(&net, 1, 0));
    let (bob, bob_key) = net.signup(&number_on(&net, 2, 0));
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    net.message(&mut alice_conn, bob, 7, b"ack me");
    assert!(sent(&net.read(&alice_conn), 7));
    let seq = net
        .read(&bob_conn)
        .iter()
        .find_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap();
    net.set_live(1, false, 2);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: seq });
    assert_eq!(net.shards[1].counters().receipts_owed, 1);
    // The link to node 1 loses what waited on it (node 2 restarts), and
    // node 2's journal is all it has.
    net.parked.clear();
    net.restart();
    assert_eq!(net.shards[1].counters().receipts_owed, 1, "replayed");
    net.advance(net.shards[1].config().tick_ms);
    assert_eq!(
        net.shards[1].counters().receipts_owed,
        1,
        "not told while node 1 is down"
    );
    net.set_live(1, true, 3);
    net.advance(net.shards[1].config().tick_ms);
    assert_eq!(net.shards[1].counters().receipts_owed, 0, "answered");
    let (alice_conn, got) = net.login(alice, alice_key);
    let got = [got, net.read(&alice_conn)].concat();
    assert!(delivered(&got, 7), "{got:?}");
    // Once stored, a checkpoint no longer holds it.
    net.compact();
    net.restart();
    net.advance(net.shards[1].config().tick_ms);
    assert_eq!(net.shards[1].counters().receipts_owed, 0);
}

/// A node that comes back as a new incarnation has lost whom its accounts
/// were followed by (memory only): the followers' shards send their
/// follows again, so a follower that never subscribed again still hears
/// of the restarted node's phones, first their presence now, then each
/// change.
#[test]
fn followers_on_other_nodes_hear_of_a_restarted_nodes_phones() {
    let mut net = Net::cluster(&[1, 1], |_| {});
    let (alice, alice_key) = net.signup(&number_on(&net, 1, 0));
    let (bob, bob_key) = net.signup(&number_on(&net, 2, 0));
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    for (conn, other) in [(&mut alice_conn, bob), (&mut bob_conn, alice)] {
        net.send(
            conn,
            ClientFrame::SyncContacts {
                client_id: 1,
                full: true,
                add: vec![other],
                remove: Vec::new(),
            },
        );
    }
    net.send(&mut alice_conn, ClientFrame::Subscribe { phone: bob });
    let online = Got::Presence {
        phone: bob,
        presence: Presence::Online,
    };
    assert!(net.read(&alice_conn).contains(&online));

    net.restart_node(2, 2);
    let tick = net.shards[0].config().tick_ms;
    net.advance(tick);
    let got = net.read(&alice_conn);
    assert!(
        got.iter().any(|g| matches!(g, Got::Presence { phone, presence: Presence::Offline { .. } } if *phone == bob)),
        "alice is told bob's presence after his node's restart: {got:?}"
    );
    assert_eq!(net.shards[0].counters().presence_rewatched, 1);
    let (_bob_conn, _) = net.login(bob, bob_key);
    let got = net.read(&alice_conn);
    assert!(got.contains(&online), "bob's return reaches alice: {got:?}");
}

/// A contact lookup whose question or answer is lost on the way (a link
/// session that started over, a node that went meanwhile) does not leave
/// the phone waiting: after 15 s it is told `Unavailable` and asks again.
#[test]
fn a_lookup_left_unanswered_is_refused_unavailable() {
    let mut net = Net::cluster(&[1, 1], |_| {});
    let (alice, alice_key) = net.signup(&number_on(&net, 1, 0));
    let (bob, _) = net.signup(&number_on(&net, 2, 0));
    let (mut alice_conn, _) = net.login(alice, alice_key);
    // Node 2 stays live in every placement, but what goes to it is lost.
    net.nodes[1].live = false;
    let sync = |client_id| ClientFrame::SyncContacts {
        client_id,
        full: true,
        add: vec![bob],
        remove: Vec::new(),
    };
    net.send(&mut alice_conn, sync(1));
    net.parked.clear();
    net.nodes[1].live = true;
    net.advance(10_000);
    assert_eq!(net.read(&alice_conn), [], "still waiting for node 2");
    net.advance(5_000);
    assert_eq!(net.read(&alice_conn), [Got::Error(ErrorKind::Unavailable)]);
    assert_eq!(net.shards[0].counters().lookups_expired, 1);
    net.send(&mut alice_conn, sync(2));
    let registered = vec![bob];
    let answer = Got::Contacts {
        client_id: 2,
        registered,
    };
    assert_eq!(net.read(&alice_conn), [answer], "asked again, answered");
}
