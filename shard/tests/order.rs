//! Per-conversation order across refusals (README, "Order across
//! refusals"): a send refused with a retryable error holds back every later
//! send of its conversation until it comes again, so a recipient gets a
//! sender's messages in the order they were written.

mod common;

use common::*;

fn send(client_id: u64, to: Phone, body: &[u8]) -> ClientFrame<'_> {
    ClientFrame::Send {
        client_id,
        to,
        body,
    }
}

/// The answers in `got` to sends, by client id, in arrival order.
fn answers(got: &[Got]) -> Vec<Got> {
    got.iter()
        .filter(|g| matches!(g, Got::Sent { .. } | Got::Error(_)))
        .cloned()
        .collect()
}

/// The client ids of the messages in `got`, in arrival order.
fn client_ids(got: &[Got]) -> Vec<u64> {
    got.iter()
        .filter_map(|g| match g {
            Got::Message { client_id, .. } | Got::GroupMessage { client_id, .. } => {
                Some(*client_id)
            }
            _ => None,
        })
        .collect()
}

fn sent_ids(got: &[Got]) -> Vec<u64> {
    got.iter()
        .filter_map(|g| match g {
            Got::Sent { client_id, .. } => Some(*client_id),
            _ => None,
        })
        .collect()
}

fn errors(got: &[Got]) -> Vec<ErrorKind> {
    got.iter()
        .filter_map(|g| match g {
            Got::Error(kind) => Some(*kind),
            _ => None,
        })
        .collect()
}

/// The case from the issue: with one send a second, 2 is refused; 3
/// written later must not overtake it.
#[test]
fn a_rate_limited_send_holds_back_the_rest_of_its_conversation() {
    let mut net = Net::new(2, |c| {
        c.send_rate_per_s = 1;
        c.send_burst = 1;
    });
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (a, _) = net.login(alice, alice_key);
    let (b, _) = net.login(bob, bob_key);
    net.pipeline(&a, &[send(1, bob, b"one"), send(2, bob, b"two")]);
    let got = net.read(&a);
    assert_eq!(sent_ids(&got), [1]);
    assert_eq!(errors(&got), [ErrorKind::RateLimited]);

    net.advance(1_100);
    net.pipeline(&a, &[send(3, bob, b"three")]);
    assert_eq!(
        answers(&net.read(&a)),
        [Got::Error(ErrorKind::OutOfOrder)],
        "3 must wait for 2"
    );

    // The phone's rule: from the refused one on, in order.
    net.pipeline(&a, &[send(2, bob, b"two"), send(3, bob, b"three")]);
    let got = net.read(&a);
    assert_eq!(sent_ids(&got), [2]);
    assert_eq!(errors(&got), [ErrorKind::RateLimited]);
    net.advance(1_100);
    net.pipeline(&a, &[send(3, bob, b"three")]);
    assert_eq!(sent_ids(&net.read(&a)), [3]);
    assert_eq!(client_ids(&net.read(&b)), [1, 2, 3]);
    assert_eq!(net.shards[0].counters().sends_out_of_order, 1);
}

/// A full mailbox refuses on the recipient's shard, after later sends have
/// already left the sender's: they are held there.
#[test]
fn a_full_mailbox_holds_back_the_sends_already_on_their_way() {
    for same_shard in [false, true] {
        let mut net = Net::new(2, |c| c.mailbox_entries_max = 2);
        let (alice, alice_key, bob, bob_key) = if same_shard {
            let (a, _) = pair(&net);
            let (alice, alice_key) = net.signup(&a);
            let other = (0..50)
                .map(|n| format!("+1555000{n:04}"))
                .find(|n| {
                    *n != a
                        && net.shards[0]
                            .config()
                            .map
                            .shard_of(Phone::parse(n).unwrap())
                            == 0
                })
                .unwrap();
            let (bob, bob_key) = net.signup(&other);
            (alice, alice_key, bob, bob_key)
        } else {
            signed_up_pair(&mut net)
        };
        let (a, _) = net.login(alice, alice_key);
        let frames: Vec<ClientFrame> = (1..=5).map(|n| send(n, bob, b"m")).collect();
        net.pipeline(&a, &frames);
        let got = net.read(&a);
        assert_eq!(sent_ids(&got), [1, 2], "same shard: {same_shard}");
        assert_eq!(
            errors(&got),
            [
                ErrorKind::MailboxFull,
                ErrorKind::OutOfOrder,
                ErrorKind::OutOfOrder
            ]
        );

        let (b, got) = net.login(bob, bob_key);
        assert_eq!(client_ids(&got), [1, 2]);
        net.send(&mut b.clone(), ClientFrame::Ack { up_to: 2 });
        // Room again, but 4 still waits for 3.
        net.pipeline(&a, &[send(4, bob, b"m")]);
        assert_eq!(answers(&net.read(&a)), [Got::Error(ErrorKind::OutOfOrder)]);
        net.pipeline(&a, &[send(3, bob, b"m"), send(4, bob, b"m")]);
        assert_eq!(sent_ids(&net.read(&a)), [3, 4]);
        assert_eq!(client_ids(&net.read(&b)), [3, 4]);
    }
}

/// The gap belongs to one conversation: the sender's other chats go on,
/// and a send already stored is still answered `Sent`.
#[test]
fn a_gap_holds_only_its_own_conversation() {
    let mut net = Net::new(2, |c| c.mailbox_entries_max = 1);
    let (alice, alice_key, bob, _) = signed_up_pair(&mut net);
    let (carol, _) = net.signup("+15550009999");
    let (a, _) = net.login(alice, alice_key);
    net.pipeline(
        &a,
        &[send(1, bob, b"m"), send(2, bob, b"m"), send(3, carol, b"m")],
    );
    let got = net.read(&a);
    // Answers come as each is settled, not in the order asked: a phone
    // matches them by client id.
    let mut sent = sent_ids(&got);
    sent.sort_unstable();
    assert_eq!(sent, [1, 3]);
    assert_eq!(errors(&got), [ErrorKind::MailboxFull]);
    net.pipeline(&a, &[send(1, bob, b"m")]);
    assert_eq!(sent_ids(&net.read(&a)), [1], "a resend of a stored message");
}

/// Final refusals leave no gap: the message will never be stored, and the
/// conversation goes on without it.
#[test]
fn a_final_refusal_leaves_no_gap() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (a, _) = net.login(alice, alice_key);
    let (b, _) = net.login(bob, bob_key);
    let too_big = vec![0u8; wire::BODY_BYTES_MAX + 1];
    net.pipeline(&a, &[send(1, bob, &too_big), send(2, bob, b"two")]);
    let got = net.read(&a);
    assert_eq!(errors(&got), [ErrorKind::BodyTooLarge]);
    assert_eq!(sent_ids(&got), [2]);
    assert_eq!(client_ids(&net.read(&b)), [2]);
}

/// A new session starts its conversations afresh (the phone resends its
/// outbox in order on it), so a phone that gave a message up is not held
/// back forever.
#[test]
fn a_new_session_starts_afresh() {
    let mut net = Net::new(2, |c| c.mailbox_entries_max = 1);
    let (alice, alice_key, bob, _) = signed_up_pair(&mut net);
    let (a, _) = net.login(alice, alice_key);
    net.pipeline(&a, &[send(1, bob, b"m"), send(2, bob, b"m")]);
    assert_eq!(errors(&net.read(&a)), [ErrorKind::MailboxFull]);
    net.pipeline(&a, &[send(3, bob, b"m")]);
    assert_eq!(errors(&net.read(&a)), [ErrorKind::OutOfOrder]);
    let (a, _) = net.login(alice, alice_key);
    net.pipeline(&a, &[send(3, bob, b"m")]);
    assert_eq!(
        errors(&net.read(&a)),
        [ErrorKind::MailboxFull],
        "judged on its own again"
    );
}

/// Group posts: a post the owner refuses (its disk is full) holds back
/// the sender's later posts to that group.
#[test]
fn a_refused_group_post_holds_back_later_posts() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut a, _) = net.login(alice, alice_key);
    let (b, _) = net.login(bob, bob_key);
    net.send(
        &mut a,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "plans",
            members: vec![bob],
        },
    );
    let got = net.read(&a);
    let [Got::Sent { id, .. }] = answers(&got)[..] else {
        panic!("{got:?}")
    };
    let group = GroupId::from_u64(id).unwrap();
    let owner = net.shards[0].config().map.shard_of_group(group) as usize;
    let post = |client_id, body| ClientFrame::GroupSend {
        client_id,
        group,
        body,
    };
    net.pipeline(&a, &[post(2, &b"two"[..])]);
    net.shards[owner].set_disk_full(true);
    net.pipeline(&a, &[post(3, &b"three"[..]), post(4, &b"four"[..])]);
    let got = net.read(&a);
    assert_eq!(
        errors(&got),
        [ErrorKind::DiskFull, ErrorKind::OutOfOrder],
        "{got:?}"
    );
    net.shards[owner].set_disk_full(false);
    net.pipeline(&a, &[post(4, &b"four"[..])]);
    assert_eq!(errors(&net.read(&a)), [ErrorKind::OutOfOrder]);
    net.pipeline(&a, &[post(3, &b"three"[..]), post(4, &b"four"[..])]);
    assert_eq!(sent_ids(&net.read(&a)), [3, 4]);
    let got = net.read(&b);
    assert_eq!(client_ids(&got), [2, 3, 4]);
}

/// More conversations waiting than the server remembers gaps for: a phone
/// that sends its refused messages again, in order, still has each
/// conversation arrive in order (a forgotten gap once let a later send
/// overtake the refused one).
#[test]
fn past_the_gap_bound_every_conversation_still_arrives_in_order() {
    let mut net = Net::new(1, |c| {
        c.send_rate_per_s = 1;
        c.send_burst = 1;
    });
    let (alice, alice_key) = net.signup("+15550000001");
    let recipients: Vec<(Phone, DeviceKey)> = (0..GAPS_PER_SENDER_MAX as u64 + 2)
        .map(|n| net.signup(&format!("+1555000{:04}", 100 + n)))
        .collect();
    let (a, _) = net.login(alice, alice_key);
    // One message to each, then a second one to the second (whose first
    // is refused: the first message of all takes the one token).
    let mut outbox: Vec<(u64, Phone)> = recipients
        .iter()
        .enumerate()
        .map(|(n, (phone, _))| (100 + n as u64, *phone))
        .collect();
    outbox.push((10_000, recipients[1].0));
    // The phone's rule: everything not yet `Sent`, again, in order.
    for _ in 0..1_000 {
        if outbox.is_empty() {
            break;
        }
        let frames: Vec<ClientFrame> = outbox.iter().map(|&(id, to)| send(id, to, b"m")).collect();
        net.pipeline(&a, &frames);
        let stored = sent_ids(&net.read(&a));
        outbox.retain(|(id, _)| !stored.contains(id));
        net.advance(1_100);
    }
    assert!(outbox.is_empty(), "not all sent: {outbox:?}");
    let (_, got) = net.login(recipients[1].0, recipients[1].1);
    assert_eq!(client_ids(&got), [101, 10_000]);
}
