//! Groups against the real binary: fan-out across shards, receipts, the
//! membership rules, and order across reconnects and a crash.

mod common;

use std::time::Duration;

use common::{expect, expect_error, Server};
use loadgen::client::{Client, Event};
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::*;

/// Test numbers whose home is `shard` on a two-shard server.
fn numbers_on(shard: u16, count: usize) -> Vec<String> {
    let map = PartitionMap::new(PARTITIONS_DEFAULT, 2);
    (0..1000)
        .map(|n| format!("+1555001{n:04}"))
        .filter(|n| map.shard_of(Phone::parse(n).unwrap()) == shard)
        .take(count)
        .collect()
}

/// Reads `count` events; a test that cares about their order checks it.
fn read(client: &mut Client, count: usize) -> Vec<Event> {
    (0..count)
        .map(|_| client.recv().expect("waiting for an event"))
        .collect()
}

/// Reads until every request in `client_ids` is answered with `Sent`;
/// returns the answers' ids in that order. Other events are skipped.
fn sents(client: &mut Client, client_ids: &[u64]) -> Vec<u64> {
    let mut ids = vec![None; client_ids.len()];
    while ids.iter().any(Option::is_none) {
        let event = client.recv().expect("waiting for Sent");
        match event {
            Event::Sent { client_id, id } => {
                if let Some(at) = client_ids.iter().position(|c| *c == client_id) {
                    ids[at] = Some(id);
                }
            }
            Event::Error { .. } => panic!("{event:?}"),
            _ => {}
        }
    }
    ids.into_iter().map(Option::unwrap).collect()
}

fn sent_id(events: &[Event], client_id: u64) -> u64 {
    events
        .iter()
        .find_map(|e| match e {
            Event::Sent { client_id: c, id } if *c == client_id => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Sent for {client_id} in {events:?}"))
}

fn create(client: &mut Client, client_id: u64, members: &[Phone]) -> GroupId {
    client
        .send(&ClientFrame::CreateGroup {
            client_id,
            subject: "weekend",
            members: members.to_vec(),
        })
        .unwrap();
    // The answer, and the creation notice every member gets.
    let events = read(client, 2);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::GroupNotice {
                gseq: 1,
                change: GroupChange::Created { .. },
                ..
            }
        )),
        "{events:?}"
    );
    GroupId::from_u64(sent_id(&events, client_id)).unwrap()
}

fn group_send(client: &mut Client, group: GroupId, client_id: u64, body: &[u8]) {
    client
        .send(&ClientFrame::GroupSend {
            client_id,
            group,
            body,
        })
        .unwrap();
}

/// The next event must be `group`'s message `gseq` with `body`; acks it.
fn expect_post(client: &mut Client, group: GroupId, gseq: u64, body: &[u8]) -> u64 {
    let event = expect(client, "GroupMessage", |e| {
        matches!(e, Event::GroupMessage { .. })
    });
    let Event::GroupMessage {
        seq,
        group: g,
        gseq: n,
        body: b,
        ..
    } = event
    else {
        unreachable!()
    };
    assert_eq!((g, n, &*b), (group, gseq, body));
    client.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    seq
}

#[test]
fn a_group_spans_shards_with_receipts_and_keeps_its_rules() {
    let server = Server::start(&[]);
    let zero = numbers_on(0, 3);
    let one = numbers_on(1, 2);
    let (mut alice, _, _) = server.phone(&zero[0]);
    let (mut bob, bob_phone, _) = server.phone(&one[0]);
    let (mut carol, carol_phone, _) = server.phone(&zero[1]);
    let (mut dave, dave_phone, _) = server.phone(&one[1]);
    let (mut eve, eve_phone, _) = server.phone(&zero[2]);

    let group = create(&mut alice, 1, &[bob_phone, carol_phone, dave_phone]);
    for member in [&mut bob, &mut carol, &mut dave] {
        let notice = expect(member, "Created", |e| {
            matches!(e, Event::GroupNotice { .. })
        });
        let Event::GroupNotice {
            seq,
            change: GroupChange::Created { subject, members },
            ..
        } = notice
        else {
            panic!("{notice:?}")
        };
        assert_eq!((subject.as_str(), members.len()), ("weekend", 4));
        member.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    }
    alice.send(&ClientFrame::Ack { up_to: 1 }).unwrap();

    // Bob posts; everyone else gets it once, and Bob hears from each.
    group_send(&mut bob, group, 10, b"saturday?");
    let sent = expect(&mut bob, "Sent", |e| matches!(e, Event::Sent { .. }));
    assert!(
        matches!(
            sent,
            Event::Sent {
                client_id: 10,
                id: 2
            }
        ),
        "{sent:?}"
    );
    for member in [&mut alice, &mut carol, &mut dave] {
        expect_post(member, group, 2, b"saturday?");
    }
    carol
        .send(&ClientFrame::Read {
            from: bob_phone,
            client_id: 10,
        })
        .unwrap();
    let receipts = read(&mut bob, 4);
    let mut delivered = 0;
    let mut read_by = Vec::new();
    for receipt in &receipts {
        match receipt {
            Event::Receipt {
                kind: ReceiptKind::Delivered,
                client_id: 10,
                ..
            } => delivered += 1,
            Event::Receipt {
                kind: ReceiptKind::Read,
                client_id: 10,
                by,
                ..
            } => read_by.push(*by),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((delivered, read_by), (3, vec![carol_phone]));

    // Eve is no member; Bob is no admin.
    group_send(&mut eve, group, 20, b"hello?");
    expect_error(&mut eve, ErrorKind::NotGroupMember);
    bob.send(&ClientFrame::ChangeGroup {
        client_id: 11,
        group,
        change: GroupChange::Added(vec![eve_phone]),
    })
    .unwrap();
    expect_error(&mut bob, ErrorKind::NotGroupAdmin);

    // Alice removes Dave: he hears of it, and of nothing after.
    alice
        .send(&ClientFrame::ChangeGroup {
            client_id: 2,
            group,
            change: GroupChange::Removed(dave_phone),
        })
        .unwrap();
    assert_eq!(sents(&mut alice, &[2]), [3]);
    let removal = expect(
        &mut dave,
        "Removed",
        |e| matches!(e, Event::GroupNotice { gseq: 3, change: GroupChange::Removed(p), .. } if *p == dave_phone),
    );
    let Event::GroupNotice { seq, .. } = removal else {
        unreachable!()
    };
    dave.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    group_send(&mut alice, group, 3, b"without dave");
    assert_eq!(sents(&mut alice, &[3]), [4]);
    // Bob shares Dave's shard: once Bob has the post, Dave's shard has
    // fanned it out, and Dave's next event is what Alice sends him next.
    for member in [&mut bob, &mut carol] {
        expect(member, "Removed", |e| {
            matches!(e, Event::GroupNotice { gseq: 3, .. })
        });
        expect_post(member, group, 4, b"without dave");
    }
    alice
        .send(&ClientFrame::Send {
            client_id: 4,
            to: dave_phone,
            body: b"just you",
        })
        .unwrap();
    let next = expect(&mut dave, "Message", |e| matches!(e, Event::Message { .. }));
    assert!(
        matches!(next, Event::Message { client_id: 4, .. }),
        "{next:?}"
    );
    group_send(&mut dave, group, 30, b"still here?");
    expect_error(&mut dave, ErrorKind::NotGroupMember);
}

#[test]
fn group_order_holds_across_reconnects_and_a_crash() {
    let server = Server::start(&[]);
    let zero = numbers_on(0, 1);
    let one = numbers_on(1, 2);
    let (mut alice, _, alice_key) = server.phone(&zero[0]);
    let (bob, bob_phone, bob_key) = server.phone(&one[0]);
    let (mut carol, carol_phone, _) = server.phone(&one[1]);
    drop(bob);
    let group = create(&mut alice, 1, &[bob_phone, carol_phone]);
    let alice_phone = Phone::parse(&zero[0]).unwrap();
    expect(&mut carol, "Created", |e| {
        matches!(e, Event::GroupNotice { .. })
    });

    // Bob reads some, drops his connection without acknowledging the
    // rest, and comes back: the rest follows in order.
    for n in 0..10u64 {
        group_send(&mut alice, group, 100 + n, format!("m{n}").as_bytes());
    }
    let events = read(&mut alice, 10);
    assert!(
        events.iter().all(|e| matches!(e, Event::Sent { .. })),
        "{events:?}"
    );
    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    expect(&mut bob, "Created", |e| {
        matches!(e, Event::GroupNotice { .. })
    });
    for n in 0..4u64 {
        expect_post(&mut bob, group, n + 2, format!("m{n}").as_bytes());
    }
    drop(bob);
    std::thread::sleep(Duration::from_millis(100));

    // A crash (SIGKILL), then more posts after the restart.
    let data = server.into_data_dir();
    let server = Server::start_in(data, &[]);
    let mut alice = server.connect();
    alice.login(alice_phone, alice_key).unwrap();
    for n in 10..15u64 {
        group_send(&mut alice, group, 100 + n, format!("m{n}").as_bytes());
    }
    // Resends of posts from before the crash are recognised.
    group_send(&mut alice, group, 100, b"m0");
    let ids = sents(&mut alice, &[110, 111, 112, 113, 114, 100]);
    assert_eq!(ids, [12, 13, 14, 15, 16, 2]);

    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    for n in 4..15u64 {
        expect_post(&mut bob, group, n + 2, format!("m{n}").as_bytes());
    }
    bob.set_timeout(Duration::from_millis(300)).unwrap();
    assert!(bob.recv().is_err(), "nothing more, nothing twice");
}

#[test]
fn group_size_is_bounded_by_configuration() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("isle.toml");
    std::fs::write(&config, "[limits]\ngroup_members_max = 3\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let (mut alice, _, _) = server.phone("+15550020001");
    let others: Vec<Phone> = (2..5)
        .map(|n| server.phone(&format!("+155500200{n:02}")).1)
        .collect();
    alice
        .send(&ClientFrame::CreateGroup {
            client_id: 1,
            subject: "too many",
            members: others.clone(),
        })
        .unwrap();
    expect_error(&mut alice, ErrorKind::GroupFull);
    let group = create(&mut alice, 2, &others[..2]);
    alice
        .send(&ClientFrame::ChangeGroup {
            client_id: 3,
            group,
            change: GroupChange::Added(vec![others[2]]),
        })
        .unwrap();
    expect_error(&mut alice, ErrorKind::GroupFull);
}

#[test]
fn a_group_survives_a_change_of_shard_count() {
    let server = Server::start(&[]);
    let (mut alice, alice_phone, alice_key) = server.phone("+15550030000");
    let mut members = Vec::new();
    for n in 1..=6 {
        let (client, phone, key) = server.phone(&format!("+155500300{n:02}"));
        drop(client);
        members.push((phone, key));
    }
    let phones: Vec<Phone> = members.iter().map(|m| m.0).collect();
    let group = create(&mut alice, 1, &phones);
    for n in 0..5u64 {
        group_send(&mut alice, group, 10 + n, format!("p{n}").as_bytes());
    }
    assert_eq!(sents(&mut alice, &[10, 11, 12, 13, 14]), [2, 3, 4, 5, 6]);
    let (status, dir) = server.stop_keeping_data();
    assert!(status.success());
    let mut dir = Some(dir);

    for (shards, next) in [("3", 7u64), ("1", 8)] {
        let server = Server::start_in(dir.take().expect("a data dir"), &["--shards", shards]);
        let mut alice = server.connect();
        alice.login(alice_phone, alice_key).unwrap();
        // The group goes on numbering, and still knows a resend.
        let body = format!("after {shards}");
        group_send(&mut alice, group, 100 + next, body.as_bytes());
        group_send(&mut alice, group, 10, b"p0");
        assert_eq!(sents(&mut alice, &[100 + next, 10]), [next, 2]);
        for (phone, key) in &members {
            let mut member = server.connect();
            member.login(*phone, *key).unwrap();
            expect(&mut member, "Created", |e| {
                matches!(e, Event::GroupNotice { gseq: 1, .. })
            });
            for n in 0..5u64 {
                let event = expect(&mut member, "post", |e| {
                    matches!(e, Event::GroupMessage { .. })
                });
                assert!(
                    matches!(&event, Event::GroupMessage { gseq, .. } if *gseq == n + 2),
                    "{event:?}"
                );
            }
            // Each start adds one post; none is acknowledged.
            for gseq in 7..=next {
                let event = expect(&mut member, "post", |e| {
                    matches!(e, Event::GroupMessage { .. })
                });
                assert!(
                    matches!(&event, Event::GroupMessage { gseq: g, .. } if *g == gseq),
                    "{event:?}"
                );
            }
        }
        let (status, kept) = server.stop_keeping_data();
        assert!(status.success());
        dir = Some(kept);
    }
}
