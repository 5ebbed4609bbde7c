//! Group rules on one thread: two shards, so that owners, senders and
//! members sit on different shards.

mod common;

use common::*;
use storage::Record;

/// `count` test numbers whose home is `shard`.
fn numbers_on(net: &Net, shard: u16, count: usize) -> Vec<String> {
    let map = net.shards[0].config().map;
    (0..500)
        .map(|n| format!("+1555000{n:04}"))
        .filter(|n| map.shard_of(Phone::parse(n).unwrap()) == shard)
        .take(count)
        .collect()
}

struct Member {
    phone: Phone,
    key: DeviceKey,
    conn: Phone_,
}

/// Signs up and logs in one phone per number.
fn members(net: &mut Net, numbers: &[String]) -> Vec<Member> {
    numbers
        .iter()
        .map(|number| {
            let (phone, key) = net.signup(number);
            let (conn, _) = net.login(phone, key);
            Member { phone, key, conn }
        })
        .collect()
}

/// Alice and Carol on shard 0, Bob and Dave on shard 1.
fn four(net: &mut Net) -> Vec<Member> {
    let zero = numbers_on(net, 0, 2);
    let one = numbers_on(net, 1, 2);
    members(
        net,
        &[
            zero[0].clone(),
            one[0].clone(),
            zero[1].clone(),
            one[1].clone(),
        ],
    )
}

fn sent(got: &[Got], client_id: u64) -> u64 {
    got.iter()
        .find_map(|g| match g {
            Got::Sent { client_id: c, id } if *c == client_id => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Sent for {client_id} in {got:?}"))
}

/// The one error in `got`, group posts that arrived meanwhile aside.
fn error(got: &[Got]) -> ErrorKind {
    let rest: Vec<&Got> = got
        .iter()
        .filter(|g| !matches!(g, Got::GroupMessage { .. } | Got::GroupNotice { .. }))
        .collect();
    match rest[..] {
        [Got::Error(kind)] => *kind,
        _ => panic!("expected one error, got {got:?}"),
    }
}

fn create(net: &mut Net, by: &mut Member, client_id: u64, others: &[Phone]) -> GroupId {
    create_seen(net, by, client_id, others).0
}

/// Creates a group; also returns what the creator received.
fn create_seen(
    net: &mut Net,
    by: &mut Member,
    client_id: u64,
    others: &[Phone],
) -> (GroupId, Vec<Got>) {
    net.send(
        &mut by.conn,
        ClientFrame::CreateGroup {
            client_id,
            subject: "plans",
            members: others.to_vec(),
        },
    );
    let got = net.read(&by.conn);
    (GroupId::from_u64(sent(&got, client_id)).unwrap(), got)
}

fn post(net: &mut Net, by: &mut Member, group: GroupId, client_id: u64, body: &[u8]) -> Vec<Got> {
    net.send(
        &mut by.conn,
        ClientFrame::GroupSend {
            client_id,
            group,
            body,
        },
    );
    net.read(&by.conn)
}

fn change(
    net: &mut Net,
    by: &mut Member,
    group: GroupId,
    client_id: u64,
    change: GroupChange,
) -> Vec<Got> {
    net.send(
        &mut by.conn,
        ClientFrame::ChangeGroup {
            client_id,
            group,
            change,
        },
    );
    net.read(&by.conn)
}

/// The group posts in what a phone received, as `(gseq, what)`, where
/// `what` is the body of a message or the debug form of a change.
fn posts(got: &[Got]) -> Vec<(u64, String)> {
    got.iter()
        .filter_map(|g| match g {
            Got::GroupMessage { gseq, body, .. } => {
                Some((*gseq, String::from_utf8(body.clone()).unwrap()))
            }
            Got::GroupNotice { gseq, change, .. } => Some((*gseq, format!("{change:?}"))),
            _ => None,
        })
        .collect()
}

/// Acknowledges everything the phone was given, going by `got`.
fn ack_all(net: &mut Net, member: &mut Member, got: &[Got]) {
    let up_to = got
        .iter()
        .filter_map(|g| match g {
            Got::Message { seq, .. }
            | Got::Receipt { seq, .. }
            | Got::GroupMessage { seq, .. }
            | Got::GroupNotice { seq, .. } => Some(*seq),
            _ => None,
        })
        .max();
    if let Some(up_to) = up_to {
        net.send(&mut member.conn, ClientFrame::Ack { up_to });
    }
}

#[test]
fn a_post_reaches_members_on_every_shard_stored_once_per_shard() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let (alice, bob, carol, dave) = (m[0].phone, m[1].phone, m[2].phone, m[3].phone);
    let (group, alice_got) = create_seen(&mut net, &mut m[0], 1, &[bob, carol, dave]);
    let created = format!(
        "{:?}",
        GroupChange::Created {
            subject: "plans".into(),
            members: {
                let mut all = vec![alice, bob, carol, dave];
                all.sort();
                all
            }
        }
    );
    assert_eq!(posts(&alice_got), vec![(1, created.clone())]);
    for member in &m[1..] {
        let got = net.read(&member.conn);
        assert_eq!(
            posts(&got),
            vec![(1, created.clone())],
            "{:?}",
            member.phone
        );
    }

    let got = post(&mut net, &mut m[1], group, 7, b"hello all");
    assert_eq!(sent(&got, 7), 2, "the group's second post");
    for (i, member) in m.iter().enumerate() {
        let got = net.read(&member.conn);
        if i == 1 {
            assert_eq!(posts(&got), vec![], "the sender does not get its own");
        } else {
            assert_eq!(posts(&got), vec![(2, "hello all".into())]);
            assert!(got.iter().all(
                |g| !matches!(g, Got::GroupMessage { from, client_id: 7, .. } if *from != bob)
            ));
        }
    }
    // The body went to each shard's journal once, not once per member.
    for journal in &net.journals {
        let copies = journal
            .iter()
            .filter(|r| matches!(r, Record::GroupCopy { gseq: 2, .. }))
            .count();
        assert_eq!(copies, 1);
    }
    let puts = net
        .records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::MailboxPut {
                    entry: storage::EntryRecord::Group { gseq: 2, .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(puts, 3, "one entry per receiving member");

    // Each member's ack sends Bob a Delivered receipt.
    for i in [0, 2, 3] {
        let got = vec![Got::GroupMessage {
            seq: 2,
            group,
            gseq: 2,
            from: bob,
            client_id: 7,
            body: b"hello all".to_vec(),
        }];
        ack_all(&mut net, &mut m[i], &got);
    }
    let got = net.read(&m[1].conn);
    let mut by: Vec<Phone> = got
        .iter()
        .filter_map(|g| match g {
            Got::Receipt {
                kind: ReceiptKind::Delivered,
                by,
                client_id: 7,
                ..
            } => Some(*by),
            _ => None,
        })
        .collect();
    by.sort();
    let mut expected = vec![alice, carol, dave];
    expected.sort();
    assert_eq!(by, expected);
    // Once every member acknowledged it, no shard holds the body.
    net.send(&mut m[1].conn, ClientFrame::Ack { up_to: 1 });
    for shard in &mut net.shards {
        let copies = shard
            .checkpoint()
            .into_iter()
            .filter(|r| matches!(r, Record::GroupCopy { gseq: 2, .. }))
            .count();
        assert_eq!(copies, 0);
    }
}

#[test]
fn only_members_send_and_only_admins_change() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let (bob, carol, dave) = (m[1].phone, m[2].phone, m[3].phone);
    let group = create(&mut net, &mut m[0], 1, &[bob, carol]);

    // Dave is not a member: he can neither send nor leave.
    assert_eq!(
        error(&post(&mut net, &mut m[3], group, 1, b"let me in")),
        ErrorKind::NotGroupMember
    );
    assert_eq!(
        error(&change(&mut net, &mut m[3], group, 2, GroupChange::Left)),
        ErrorKind::NotGroupMember
    );
    // Bob is a member but not an admin.
    for (client_id, attempt) in [
        GroupChange::Added(vec![dave]),
        GroupChange::Removed(carol),
        GroupChange::Promoted(carol),
        GroupChange::Subject("mine now".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let got = change(&mut net, &mut m[1], group, 10 + client_id as u64, attempt);
        assert_eq!(error(&got), ErrorKind::NotGroupAdmin);
    }
    // Nonsense from an admin is refused too.
    let got = change(
        &mut net,
        &mut m[0],
        group,
        20,
        GroupChange::Added(vec![bob]),
    );
    assert_eq!(error(&got), ErrorKind::BadRequest, "already a member");
    let got = change(
        &mut net,
        &mut m[0],
        group,
        21,
        GroupChange::Subject("x".repeat(300)),
    );
    assert_eq!(error(&got), ErrorKind::BadRequest, "subject too long");
    // A group that does not exist answers as one the sender is not in:
    // no one learns which ids are taken.
    let unknown = GroupId::derive(dave, 99);
    assert_eq!(
        error(&post(&mut net, &mut m[0], unknown, 22, b"?")),
        ErrorKind::NotGroupMember
    );
    let got = change(
        &mut net,
        &mut m[0],
        group,
        23,
        GroupChange::Created {
            subject: "x".into(),
            members: vec![],
        },
    );
    assert_eq!(error(&got), ErrorKind::BadRequest);

    // Promoted, Bob may add Dave.
    let got = change(&mut net, &mut m[0], group, 24, GroupChange::Promoted(bob));
    assert_eq!(sent(&got, 24), 2);
    let got = change(
        &mut net,
        &mut m[1],
        group,
        30,
        GroupChange::Added(vec![dave]),
    );
    assert_eq!(sent(&got, 30), 3);
    let got = net.read(&m[3].conn);
    assert_eq!(
        posts(&got),
        vec![(3, format!("{:?}", GroupChange::Added(vec![dave])))]
    );
    // Nothing of before reached him, and refused requests left no trace:
    // Carol, who read nothing yet, has exactly the three posts.
    let got = net.read(&m[2].conn);
    let gseqs: Vec<u64> = posts(&got).iter().map(|(g, _)| *g).collect();
    assert_eq!(gseqs, [1, 2, 3]);
}

#[test]
fn a_removed_member_gets_the_removal_and_nothing_after() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let (bob, carol) = (m[1].phone, m[2].phone);
    let group = create(&mut net, &mut m[0], 1, &[bob, carol]);
    let got = change(&mut net, &mut m[0], group, 2, GroupChange::Removed(bob));
    assert_eq!(sent(&got, 2), 2);
    post(&mut net, &mut m[0], group, 3, b"after");
    let got = net.read(&m[1].conn);
    assert_eq!(
        posts(&got).iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        vec![1, 2],
        "the creation and his removal"
    );
    assert_eq!(
        error(&post(&mut net, &mut m[1], group, 4, b"hey")),
        ErrorKind::NotGroupMember
    );
    let got = net.read(&m[2].conn);
    assert_eq!(
        posts(&got),
        vec![
            (1, posts(&got)[0].1.clone()),
            (2, format!("{:?}", GroupChange::Removed(bob))),
            (3, "after".into())
        ]
    );
}

#[test]
fn the_last_admin_leaving_hands_the_role_on() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let (bob, carol) = (m[1].phone, m[2].phone);
    let group = create(&mut net, &mut m[0], 1, &[bob, carol]);
    let got = change(&mut net, &mut m[0], group, 2, GroupChange::Left);
    assert_eq!(sent(&got, 2), 2);
    let successor = bob.min(carol);
    let other = bob.max(carol);
    let [successor_m, other_m] = if successor == bob { [1, 2] } else { [2, 1] };
    // The lowest remaining number is admin now, and the other is not.
    let got = change(
        &mut net,
        &mut m[other_m],
        group,
        3,
        GroupChange::Subject("coup".into()),
    );
    assert_eq!(error(&got), ErrorKind::NotGroupAdmin);
    let got = change(
        &mut net,
        &mut m[successor_m],
        group,
        4,
        GroupChange::Removed(other),
    );
    assert_eq!(sent(&got, 4), 3);
    // The last admin cannot demote themself: a group keeps one.
    let got = change(
        &mut net,
        &mut m[successor_m],
        group,
        5,
        GroupChange::Demoted(successor),
    );
    assert_eq!(error(&got), ErrorKind::BadRequest);
}

#[test]
fn group_size_is_bounded() {
    let mut net = Net::new(2, |config| config.group_members_max = 3);
    let mut m = four(&mut net);
    let (bob, carol, dave) = (m[1].phone, m[2].phone, m[3].phone);
    net.send(
        &mut m[0].conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "big",
            members: vec![bob, carol, dave],
        },
    );
    assert_eq!(error(&net.read(&m[0].conn)), ErrorKind::GroupFull);
    let group = create(&mut net, &mut m[0], 2, &[bob, carol]);
    let got = change(
        &mut net,
        &mut m[0],
        group,
        3,
        GroupChange::Added(vec![dave]),
    );
    assert_eq!(error(&got), ErrorKind::GroupFull);
}

#[test]
fn resends_are_answered_alike_and_stored_once() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let bob = m[1].phone;
    let group = create(&mut net, &mut m[0], 1, &[bob]);
    assert_eq!(
        create(&mut net, &mut m[0], 1, &[bob]),
        group,
        "a resent creation"
    );
    let first = sent(&post(&mut net, &mut m[0], group, 2, b"once"), 2);
    let again = sent(&post(&mut net, &mut m[0], group, 2, b"once"), 2);
    assert_eq!(first, again);
    let got = net.read(&m[1].conn);
    assert_eq!(
        posts(&got).len(),
        2,
        "the creation and one message: {got:?}"
    );
}

#[test]
fn group_order_survives_restarts_checkpoints_and_a_lost_fan_out() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let (bob, carol, dave) = (m[1].phone, m[2].phone, m[3].phone);
    let group = create(&mut net, &mut m[0], 1, &[bob, carol, dave]);
    for client_id in 2..5 {
        post(
            &mut net,
            &mut m[0],
            group,
            client_id,
            format!("m{client_id}").as_bytes(),
        );
    }
    net.compact();
    net.restart();
    // A checkpoint with groups in it is a fixed point too.
    net.assert_checkpoints_are_fixed_points();
    for member in &mut m {
        let (conn, _) = net.login(member.phone, member.key);
        member.conn = conn;
    }
    post(&mut net, &mut m[2], group, 5, b"m5");

    // A crash after the owner made a post durable but before any member
    // shard did: the owner's journal has it, the others do not.
    let owner = net.shards[0].config().map.shard_of_group(group);
    let client = &mut m[0];
    net.shards[client.conn.shard as usize].handle_frame(
        client.conn.conn,
        ClientFrame::GroupSend {
            client_id: 6,
            group,
            body: b"m6",
        },
        net.now_ms,
    );
    // Move the request to the owner (it may be on the sender's shard),
    // commit the owner alone, and lose everything else.
    for _ in 0..2 {
        for index in 0..net.shards.len() {
            let out: Vec<_> = net.shards[index].drain_peer_messages().collect();
            for (to, message) in out {
                if matches!(message, PeerMessage::GroupRequest { .. }) {
                    let to = net.index_of(index, to);
                    net.shards[to].handle_peer(message, net.now_ms);
                }
            }
        }
    }
    let (batch, records) = net.shards[owner as usize].take_records();
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::GroupPost { gseq: 6, .. })));
    net.journals[owner as usize].extend(records);
    net.shards[owner as usize].committed(batch);
    net.restart();
    net.settle();

    // Nobody acknowledged anything: each has every post but its own, in
    // order, once; the post the crash caught arrived after the restart.
    let expected: [&[u64]; 4] = [
        &[1, 5],
        &[1, 2, 3, 4, 5, 6],
        &[1, 2, 3, 4, 6],
        &[1, 2, 3, 4, 5, 6],
    ];
    for (member, expected) in m.iter_mut().zip(expected) {
        let (conn, got) = net.login(member.phone, member.key);
        member.conn = conn;
        let gseqs: Vec<u64> = posts(&got).iter().map(|(g, _)| *g).collect();
        assert_eq!(gseqs, expected, "{:?}: {got:?}", member.phone);
    }
}

/// With the write-back cache, entries of one fan-out reach the log at
/// different times, or not at all when acknowledged first: the copy they
/// refer to is written at once, and a restore still finds it for the
/// entries that were written, and drops it when none were.
#[test]
fn group_entries_go_through_the_write_back_cache() {
    let mut net = Net::new(2, |config| config.sync_delay_ms = 1_000);
    let mut m = four(&mut net);
    let (bob, carol, dave) = (m[1].phone, m[2].phone, m[3].phone);
    let group = create(&mut net, &mut m[0], 1, &[bob, carol, dave]);
    post(&mut net, &mut m[0], group, 2, b"cached");
    // Bob and Carol read and acknowledge within the delay; Dave does not.
    for i in [1, 2] {
        let got = net.read(&m[i].conn);
        ack_all(&mut net, &mut m[i], &got);
    }
    post(&mut net, &mut m[0], group, 3, b"read by none");
    net.advance(2_000);
    net.restart();
    let expected: [&[u64]; 4] = [&[1], &[3], &[3], &[1, 2, 3]];
    for (member, expected) in m.iter_mut().zip(expected) {
        let (conn, got) = net.login(member.phone, member.key);
        member.conn = conn;
        let gseqs: Vec<u64> = posts(&got).iter().map(|(g, _)| *g).collect();
        assert_eq!(gseqs, expected, "{:?}: {got:?}", member.phone);
    }
    // Post 2 was acknowledged by all but Dave before anything was written:
    // its only written entry is Dave's.
    let puts_of_2 = net
        .records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::MailboxPut {
                    entry: storage::EntryRecord::Group { gseq: 2, .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(puts_of_2, 1);
}

/// A deleted account leaves every group it was in, on every owner shard:
/// the members get a `Left` notice by it under the server's client id, its
/// queued group posts release their copies, and a restart keeps it out. A
/// phone may not use the server's client id; the same number, signed up
/// and added again, is taken out again by a second deletion.
#[test]
fn a_deleted_account_leaves_its_groups() {
    let mut net = Net::new(2, |_| {});
    let mut m = four(&mut net);
    let (bob, carol) = (m[1].phone, m[2].phone);
    let first = create(&mut net, &mut m[0], 1, &[bob, carol]);
    let second = create(&mut net, &mut m[3], 2, &[bob]);
    assert_ne!(
        net.shards[0].config().map.shard_of_group(first),
        net.shards[0].config().map.shard_of_group(second),
        "pick client ids whose groups live on different shards"
    );
    for member in m.iter() {
        net.read(&member.conn);
    }
    // Bob goes offline with a post queued for him.
    net.shards[m[1].conn.shard as usize].closed(m[1].conn.conn, net.now_ms);
    post(&mut net, &mut m[2], first, 3, b"queued for bob");
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    let now_ms = net.now_ms;
    let deleted = net.shards[home].delete_account(bob, now_ms).unwrap();
    // The two creation notices, never acknowledged, and the post.
    assert_eq!(deleted.mailbox_entries, 3);
    net.settle();
    let got = net.read(&m[2].conn);
    let told = got.iter().any(|g| {
        matches!(g, Got::Receipt { kind: ReceiptKind::Undeliverable, by, client_id: 3, .. } if *by == bob)
    });
    assert!(told, "carol learns her post will not reach bob: {got:?}");
    let left = format!("{:?}", GroupChange::Left);
    let notices = |got: &[Got]| -> Vec<(GroupId, Phone, String)> {
        got.iter()
            .filter_map(|g| match g {
                Got::GroupNotice {
                    group, by, change, ..
                } => Some((*group, *by, format!("{change:?}"))),
                _ => None,
            })
            .collect()
    };
    assert_eq!(notices(&net.read(&m[0].conn)), [(first, bob, left.clone())]);
    assert_eq!(
        notices(&net.read(&m[3].conn)),
        [(second, bob, left.clone())]
    );
    let got = change(&mut net, &mut m[0], first, 4, GroupChange::Removed(bob));
    assert_eq!(error(&got), ErrorKind::BadRequest, "bob is no member");
    net.restart();
    // The restarted home shard tells every shard of the deletion again
    // (its journal cannot say it was finished); the number may sign up
    // once they answered.
    net.advance(net.shards[0].config().tick_ms);
    let [alice, dave] = [&m[0], &m[3]].map(|x| (x.phone, x.key));
    let (conn, _) = net.login(alice.0, alice.1);
    m[0].conn = conn;
    let (conn, _) = net.login(dave.0, dave.1);
    m[3].conn = conn;
    let got = change(&mut net, &mut m[0], first, 5, GroupChange::Removed(bob));
    assert_eq!(
        error(&got),
        ErrorKind::BadRequest,
        "still none after a restart"
    );

    // The server's own client id is refused from a phone.
    net.send(
        &mut m[0].conn,
        ClientFrame::GroupSend {
            client_id: SERVER_CLIENT_ID,
            group: first,
            body: b"mine",
        },
    );
    assert_eq!(error(&net.read(&m[0].conn)), ErrorKind::BadRequest);

    // Signed up and added again, deleted again: out again.
    let (_, key) = net.signup(&bob.to_string());
    let (conn, _) = net.login(bob, key);
    m[1] = Member {
        phone: bob,
        key,
        conn,
    };
    let got = change(
        &mut net,
        &mut m[3],
        second,
        6,
        GroupChange::Added(vec![bob]),
    );
    sent(&got, 6);
    let now_ms = net.now_ms;
    net.shards[home].delete_account(bob, now_ms).unwrap();
    net.settle();
    let got = net.read(&m[3].conn);
    assert_eq!(notices(&got).last(), Some(&(second, bob, left)));
}

/// A group request still waiting for its lookup when its sender's account
/// is deleted goes no further: it would otherwise reach the group's owner
/// after the deletion took the account out of its groups.
#[test]
fn a_request_looked_up_during_a_deletion_is_dropped() {
    let mut net = Net::new(2, |_| {});
    let m = four(&mut net);
    let (alice, bob) = (m[0].phone, m[1].phone);
    let create = ClientFrame::CreateGroup {
        client_id: 1,
        subject: "never",
        members: vec![alice],
    };
    let bob_conn = m[1].conn;
    let home = bob_conn.shard as usize;
    let outcome = net.shards[home].handle_frame(bob_conn.conn, create, net.now_ms);
    assert!(matches!(outcome, FrameOutcome::Continue));
    let now_ms = net.now_ms;
    net.shards[home].delete_account(bob, now_ms).unwrap();
    net.settle();
    let got = net.read(&m[0].conn);
    assert!(posts(&got).is_empty(), "no group was made: {got:?}");
}

/// Bob's groups, one on each shard, and his account deleted on his home
/// shard with its `AccountDeleted` durable there, while the
/// `AccountGone` to `lost_to` never arrives (the shard died before its
/// commit, or the link lost its queue).
fn delete_losing_word_to(net: &mut Net, lost_to: &[u16]) -> (Vec<Member>, [GroupId; 2]) {
    let mut m = four(net);
    let bob = m[1].phone;
    let first = create(net, &mut m[0], 1, &[bob]);
    let second = create(net, &mut m[3], 2, &[bob]);
    let map = net.shards[0].config().map;
    assert_ne!(map.shard_of_group(first), map.shard_of_group(second));
    for member in m.iter() {
        net.read(&member.conn);
    }
    let home = map.shard_of(bob) as usize;
    let now_ms = net.now_ms;
    net.shards[home].delete_account(bob, now_ms).unwrap();
    let (batch, records) = net.shards[home].take_records();
    net.journals[home].extend(records);
    net.shards[home].committed(batch);
    let out: Vec<_> = net.shards[home].drain_peer_messages().collect();
    for (to, message) in out {
        let Dest::Shard { shard: to, .. } = to else {
            unreachable!()
        };
        if !lost_to.contains(&to) {
            net.shards[to as usize].handle_peer(message, now_ms);
        }
    }
    net.settle();
    (m, [first, second])
}

/// What `member` hears of `bob` leaving groups.
fn left_notices(net: &mut Net, member: &Member, bob: Phone) -> Vec<GroupId> {
    net.read(&member.conn)
        .iter()
        .filter_map(|g| match g {
            Got::GroupNotice {
                group,
                by,
                change: GroupChange::Left,
                ..
            } if *by == bob => Some(*group),
            _ => None,
        })
        .collect()
}

/// A shard that never heard of a deletion is told again until it
/// answers; meanwhile the number cannot sign up again (its new account
/// would be in its predecessor's groups).
#[test]
fn a_deletion_is_told_again_to_a_shard_that_did_not_answer() {
    let mut net = Net::new(2, |_| {});
    let (m, [first, second]) = delete_losing_word_to(&mut net, &[0, 1]);
    let bob = m[1].phone;
    assert!(left_notices(&mut net, &m[0], bob).is_empty());
    assert_eq!(error(&net.try_signup(bob).1), ErrorKind::Unavailable);
    net.advance(shard::DELETION_RESEND_MS);
    assert_eq!(left_notices(&mut net, &m[0], bob), [first]);
    assert_eq!(left_notices(&mut net, &m[3], bob), [second]);
    let pending: u64 = net
        .shards
        .iter()
        .map(|s| s.counters().account_deletions_pending)
        .sum();
    assert_eq!(pending, 0, "every shard answered");
    net.signup(&bob.to_string());
}

/// The home shard dies right after the deletion is durable and before
/// the other shard took the number out of its groups (the home shard
/// itself did, at once: its `AccountGone` to itself never leaves it). The
/// deletion is in its journal, and in every checkpoint until it is
/// finished, so the restarted shard tells every shard again.
#[test]
fn a_deletion_cut_short_by_a_crash_is_finished_after_the_restart() {
    let mut net = Net::new(2, |_| {});
    let (m, [first, _]) = delete_losing_word_to(&mut net, &[0]);
    let bob = m[1].phone;
    net.compact();
    net.restart();
    net.assert_checkpoints_are_fixed_points();
    let (alice_conn, _) = net.login(m[0].phone, m[0].key);
    let alice = Member {
        conn: alice_conn,
        ..m[0]
    };
    net.advance(net.shards[0].config().tick_ms);
    assert_eq!(left_notices(&mut net, &alice, bob), [first]);
    net.compact();
    assert!(
        net.journals
            .iter()
            .flatten()
            .all(|r| !matches!(r, Record::AccountDeleted { .. })),
        "a finished deletion leaves checkpoints"
    );
    net.signup(&bob.to_string());
}

/// A number's new account, added back to a group its deleted predecessor
/// posted in, posts under a client id the predecessor used: a new post,
/// not a resend of the old one (which would answer `Sent` and deliver
/// nothing), also after the owner's restart from a checkpoint.
#[test]
fn a_new_accounts_post_is_not_taken_for_its_predecessors_resend() {
    let mut net = Net::new(2, |_| {});
    net.advance(1_000);
    let mut m = four(&mut net);
    let bob = m[1].phone;
    let group = create(&mut net, &mut m[0], 1, &[bob]);
    let old = sent(&post(&mut net, &mut m[1], group, 5, b"old bob"), 5);
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    let now_ms = net.now_ms;
    net.shards[home].delete_account(bob, now_ms).unwrap();
    net.settle();
    net.advance(1_000);
    let (_, key) = net.signup(&bob.to_string());
    let (conn, _) = net.login(bob, key);
    m[1] = Member {
        phone: bob,
        key,
        conn,
    };
    sent(
        &change(&mut net, &mut m[0], group, 2, GroupChange::Added(vec![bob])),
        2,
    );
    net.read(&m[0].conn);
    for (round, client_id) in [(0, 5), (1, 6)] {
        if round == 1 {
            // The owner's resend table comes back from a checkpoint.
            net.compact();
            net.restart();
            let (conn, _) = net.login(m[0].phone, m[0].key);
            m[0].conn = conn;
            let (conn, _) = net.login(bob, key);
            m[1].conn = conn;
            net.read(&m[0].conn);
        }
        let body = format!("new bob {round}");
        let new = sent(
            &post(&mut net, &mut m[1], group, client_id, body.as_bytes()),
            client_id,
        );
        assert_ne!(new, old, "round {round}");
        let got = net.read(&m[0].conn);
        assert!(
            posts(&got).iter().any(|(_, what)| *what == body),
            "round {round}: alice gets the new post: {got:?}"
        );
        // Its own resend is still recognised.
        let again = post(&mut net, &mut m[1], group, client_id, body.as_bytes());
        assert_eq!(sent(&again, client_id), new, "round {round}");
    }
    // The predecessor's client id 5, resent after the restart: still the
    // new account's post, not the old one.
    let again = post(&mut net, &mut m[1], group, 5, b"new bob 0");
    assert_ne!(sent(&again, 5), old);
}

/// With the write-back cache on, a deletion's consequences are written
/// through: the `Undeliverable` receipts its senders are owed (on their
/// own shard and on another) and the `Left` notice its groups' members
/// get survive a crash right after the deletion was answered, although
/// the mailbox that held the messages is gone for good. With a checkpoint
/// between the answer and the crash, nothing of the deletion is left to
/// tell them again: what they were told must be in the journal.
#[test]
fn with_the_write_back_cache_a_deletion_still_tells_senders_and_members_after_a_crash() {
    for checkpoint in [false, true] {
        deletion_told_across_a_crash(checkpoint);
    }
}

fn deletion_told_across_a_crash(checkpoint: bool) {
    let mut net = Net::new(2, |c| c.sync_delay_ms = 60_000);
    let mut m = four(&mut net);
    let (bob, carol) = (m[1].phone, m[2].phone);
    let group = create(&mut net, &mut m[0], 1, &[bob, carol]);
    for member in m.iter() {
        net.read(&member.conn);
    }
    net.shards[m[1].conn.shard as usize].closed(m[1].conn.conn, net.now_ms);
    // Alice's shard is not Bob's; Dave's is.
    net.message(&mut m[0].conn, bob, 7, b"from alice");
    net.message(&mut m[3].conn, bob, 8, b"from dave");
    post(&mut net, &mut m[2], group, 9, b"from carol");
    for member in m.iter() {
        net.read(&member.conn);
    }
    let home = m[1].conn.shard as usize;
    let now_ms = net.now_ms;
    net.shards[home].delete_account(bob, now_ms).unwrap();
    net.settle();
    let owed: u64 = net.shards.iter().map(|s| s.counters().receipts_owed).sum();
    assert_eq!(owed, 0, "every receipt was answered durable");
    if checkpoint {
        net.compact();
    }
    // kill -9: the write-back cache is lost.
    net.restart();
    net.advance(net.shards[0].config().tick_ms);
    let undeliverable = |got: &[Got], client_id: u64| {
        got.iter().any(|g| {
            matches!(g, Got::Receipt { kind: ReceiptKind::Undeliverable, by, client_id: c, .. }
                if *by == bob && *c == client_id)
        })
    };
    for (index, client_id) in [(0, 7), (3, 8), (2, 9)] {
        let (conn, got) = net.login(m[index].phone, m[index].key);
        m[index].conn = conn;
        let got = [got, net.read(&m[index].conn)].concat();
        assert!(
            undeliverable(&got, client_id),
            "{checkpoint}: member {index} is told {client_id} will not reach bob: {got:?}"
        );
        if index != 3 {
            let left = got.iter().any(|g| {
                matches!(g, Got::GroupNotice { group: g, by, change: GroupChange::Left, .. }
                    if *g == group && *by == bob)
            });
            assert!(
                left,
                "{checkpoint}: member {index} learns bob left: {got:?}"
            );
        }
    }
}
