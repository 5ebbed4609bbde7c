//! The shard rules on one thread: two shards, a fake clock, fake SMS.

mod common;

use common::*;
#[test]
fn message_across_shards_with_receipts() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);

    net.message(&mut alice_conn, bob, 1, b"hi");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 1,
            id: 1
        }]
    );
    assert_eq!(
        net.read(&bob_conn),
        vec![Got::Message {
            seq: 1,
            from: alice,
            client_id: 1,
            body: b"hi".to_vec()
        }]
    );

    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 1 });
    net.send(
        &mut bob_conn,
        ClientFrame::Read {
            from: alice,
            client_id: 1,
        },
    );
    assert_eq!(
        net.read(&alice_conn),
        vec![
            Got::Receipt {
                seq: 1,
                kind: ReceiptKind::Delivered,
                by: bob,
                client_id: 1
            },
            Got::Receipt {
                seq: 2,
                kind: ReceiptKind::Read,
                by: bob,
                client_id: 1
            },
        ]
    );
    net.send(&mut alice_conn, ClientFrame::Ack { up_to: 2 });
    assert_eq!(
        net.shards.iter().map(|s| s.queued().0).sum::<u64>(),
        0,
        "acked entries are deleted"
    );
}

#[test]
fn offline_recipient_gets_everything_in_order_once() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 0..10u64 {
        net.message(&mut alice_conn, bob, client_id, &client_id.to_le_bytes());
    }
    // A resend of client_id 3 answers with the same id and stores nothing.
    net.message(&mut alice_conn, bob, 3, b"again");
    let sent = net.read(&alice_conn);
    assert_eq!(sent.len(), 11);
    assert_eq!(sent[3], sent[10]);

    let (bob_conn, got) = net.login(bob, bob_key);
    let ids: Vec<u64> = got
        .iter()
        .map(|g| match g {
            Got::Message {
                client_id, from, ..
            } if *from == alice => *client_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    let _ = bob_conn;
}

#[test]
fn a_repeated_ack_writes_no_record() {
    let mut net = Net::new(1, |_| {});
    let (alice, alice_key) = net.signup("+15550000001");
    let (mut conn, _) = net.login(alice, alice_key);
    net.message(&mut conn, alice, 1, b"note");
    net.read(&conn);
    net.send(&mut conn, ClientFrame::Ack { up_to: 1 });
    let acks = |net: &Net| {
        net.records
            .iter()
            .filter(|r| matches!(r, storage::Record::MailboxAck { .. }))
            .count()
    };
    assert_eq!(acks(&net), 1);
    net.send(&mut conn, ClientFrame::Ack { up_to: 1 });
    net.send(&mut conn, ClientFrame::Ack { up_to: 0 });
    assert_eq!(acks(&net), 1, "nothing new acknowledged, nothing recorded");
}

#[test]
fn unacked_window_bounds_what_is_in_flight() {
    let mut net = Net::new(1, |c| c.unacked_messages_max = 4);
    let (alice, alice_key) = net.signup("+15550000001");
    let (bob, bob_key) = net.signup("+15550000002");
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    for client_id in 0..10 {
        net.message(&mut alice_conn, bob, client_id, b"x");
    }
    assert_eq!(net.read(&bob_conn).len(), 4);
    assert_eq!(net.read(&bob_conn).len(), 0, "window full until acked");
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 2 });
    assert_eq!(net.read(&bob_conn).len(), 2);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 99 });
    assert_eq!(net.read(&bob_conn), vec![Got::Error(ErrorKind::BadAck)]);
}

#[test]
fn signup_codes_expire_limit_attempts_and_rate() {
    let mut net = Net::new(1, |c| c.code_requests_max = 2);
    // The shard's SMS budget starts spent; a second refills ten codes.
    net.now_ms = 1_000;
    let phone = Phone::parse("+4930123456").unwrap();
    let bad = vec![Got::Error(ErrorKind::BadCode)];
    // No code pending: the same answer as a wrong code.
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::Verify { phone, code: 1 });
    assert_eq!(net.read(&conn), bad);
    net.send(&mut conn, ClientFrame::RequestCode { phone });
    assert_eq!(net.read(&conn), vec![Got::CodeSent]);
    let code = net.sms.borrow().sent.last().unwrap().1;
    let wrong = (code + 1) % 1_000_000;
    // Five wrong tries (from two connections: four a connection after
    // the first) use the code up: the right one is dead too.
    for _ in 0..4 {
        net.send(&mut conn, ClientFrame::Verify { phone, code: wrong });
        assert_eq!(net.read(&conn), bad);
    }
    net.send(&mut conn, ClientFrame::Verify { phone, code: wrong });
    assert_eq!(
        net.read(&conn),
        vec![Got::Error(ErrorKind::RateLimited)],
        "five guesses a connection"
    );
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::Verify { phone, code: wrong });
    assert_eq!(net.read(&conn), bad);
    net.send(&mut conn, ClientFrame::Verify { phone, code });
    assert_eq!(net.read(&conn), bad, "the right code is dead too");

    net.send(&mut conn, ClientFrame::RequestCode { phone });
    assert_eq!(net.read(&conn), vec![Got::CodeSent]);
    net.send(&mut conn, ClientFrame::RequestCode { phone });
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::RateLimited)]);

    // Ten minutes later the code is gone; an hour later requests work again.
    let code = net.sms.borrow().sent.last().unwrap().1;
    net.now_ms += 10 * 60 * 1000;
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::Verify { phone, code });
    assert_eq!(net.read(&conn), bad);
    net.now_ms += 60 * 60 * 1000;
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::RequestCode { phone });
    assert_eq!(net.read(&conn), vec![Got::CodeSent]);
    assert_eq!(net.sms.borrow().sent.len(), 3);
}

#[test]
fn newer_login_replaces_older_and_signup_revokes() {
    let mut net = Net::new(2, |_| {});
    let (alice, key) = net.signup("+15550000009");
    let (first, _) = net.login(alice, key);
    let (second, _) = net.login(alice, key);
    assert_eq!(net.read(&first), vec![Got::Bye(ByeReason::Replaced)]);
    let shard = first.shard as usize;
    assert!(net.shards[shard].is_closing(first.conn));
    assert!(!net.shards[shard].is_closing(second.conn));

    let (_, new_key) = net.signup("+15550000009");
    assert_eq!(net.read(&second), vec![Got::Bye(ByeReason::Revoked)]);
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::Login { phone: alice, key });
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::BadCredentials)]);
    net.login(alice, new_key);
}

#[test]
fn idle_connections_are_closed_by_the_wheel() {
    let mut net = Net::new(1, |c| {
        c.idle_timeout_ms = 1_000;
        c.login_timeout_ms = 500;
    });
    let (alice, key) = net.signup("+15550000003");
    let (mut conn, _) = net.login(alice, key);
    let lurker = net.connect();
    for _ in 0..5 {
        net.now_ms += 400;
        net.shards[0].tick(net.now_ms);
        net.send(&mut conn, ClientFrame::Ping { nonce: 0 });
        assert_eq!(net.read(&conn), vec![Got::Pong(0)], "pinging keeps it open");
    }
    assert_eq!(net.read(&lurker), vec![Got::Bye(ByeReason::IdleTimeout)]);
    net.now_ms += 1_100;
    net.shards[0].tick(net.now_ms);
    assert_eq!(net.read(&conn), vec![Got::Bye(ByeReason::IdleTimeout)]);
}

#[test]
fn protocol_rules() {
    let mut net = Net::new(1, |_| {});
    let conn = net.shards[0].open(Source::UNKNOWN, 0).unwrap();
    let mut phone = Phone_ { shard: 0, conn };
    net.send(&mut phone, ClientFrame::Ping { nonce: 1 });
    assert_eq!(
        net.read(&phone),
        vec![
            Got::Error(ErrorKind::HelloRequired),
            Got::Bye(ByeReason::ProtocolError)
        ]
    );

    let mut conn = net.connect();
    let bob = Phone::parse("+15550000004").unwrap();
    net.message(&mut conn, bob, 1, b"");
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::NotLoggedIn)]);

    let (alice, key) = net.signup("+15550000005");
    let (mut conn, _) = net.login(alice, key);
    net.message(&mut conn, bob, 1, b"");
    assert_eq!(
        net.read(&conn),
        vec![Got::Error(ErrorKind::UnknownRecipient)]
    );
    let big = vec![0u8; BODY_BYTES_MAX + 1];
    net.message(&mut conn, alice, 2, &big);
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::BodyTooLarge)]);
}

#[test]
fn send_rate_is_limited_per_account() {
    let mut net = Net::new(1, |c| {
        c.send_rate_per_s = 10;
        c.send_burst = 5;
    });
    let (alice, key) = net.signup("+15550000006");
    let (mut conn, _) = net.login(alice, key);
    for client_id in 0..6 {
        net.message(&mut conn, alice, client_id, b"");
    }
    let got = net.read(&conn);
    assert_eq!(
        got.iter().filter(|g| matches!(g, Got::Sent { .. })).count(),
        5
    );
    assert!(got.contains(&Got::Error(ErrorKind::RateLimited)));
    net.now_ms += 100;
    // A later send would wait for the refused one (see `order.rs`): the
    // phone sends that again.
    net.message(&mut conn, alice, 5, b"");
    assert!(net.read(&conn).contains(&Got::Sent {
        client_id: 5,
        id: 6
    }));
}

#[test]
fn a_restart_restores_accounts_mailboxes_and_dedup_from_the_journal() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 1..=3 {
        net.message(&mut alice_conn, bob, client_id, b"while you were out");
    }
    // Bob reads the first message before the crash; the rest wait.
    let (mut bob_conn, got) = net.login(bob, bob_key);
    assert_eq!(got.len(), 3);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 1 });

    net.restart();

    // Keys survive: the old key logs in, a wrong one does not.
    let mut stranger = net.connect();
    net.send(
        &mut stranger,
        ClientFrame::Login {
            phone: bob,
            key: DeviceKey([7; 32]),
        },
    );
    assert_eq!(
        net.read(&stranger),
        vec![Got::Error(ErrorKind::BadCredentials)]
    );
    let (mut bob_conn, got) = net.login(bob, bob_key);
    let seqs: Vec<(u64, u64)> = got
        .iter()
        .map(|g| match g {
            Got::Message { seq, client_id, .. } => (*seq, *client_id),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![(2, 2), (3, 3)],
        "acked entry gone, the rest in order"
    );

    // Alice's receipt for message 1 waited in her mailbox.
    let (mut alice_conn, got) = net.login(alice, alice_key);
    assert_eq!(
        got,
        vec![Got::Receipt {
            seq: 1,
            kind: ReceiptKind::Delivered,
            by: bob,
            client_id: 1
        }]
    );
    // A resend of a stored message is recognised after the restart.
    net.message(&mut alice_conn, bob, 3, b"while you were out");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 3,
            id: 3
        }]
    );
    assert_eq!(net.read(&bob_conn), vec![]);
    // And new messages continue the sequence.
    net.message(&mut alice_conn, bob, 4, b"back");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 4,
            id: 4
        }]
    );
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 4 });
    let _ = net.read(&bob_conn);
}

#[test]
fn a_journal_out_of_order_is_refused() {
    let net = Net::new(1, |_| {});
    let config = net.shards[0].config().clone();
    let env = FakeEnv {
        seed: 1,
        sms: net.sms.clone(),
    };
    let mut shard = Shard::new(config, Box::new(env), 0);
    let phone = Phone::parse("+15550001234").unwrap();
    let put = storage::Record::MailboxPut {
        owner: phone,
        seq: 2,
        entry: storage::EntryRecord::Receipt {
            kind: ReceiptKind::Delivered,
            by: phone,
            client_id: 1,
        },
    };
    assert_eq!(
        shard.restore(put.clone()),
        Err(RestoreError::UnknownAccount(phone))
    );
    shard
        .restore(storage::Record::AccountKey {
            phone,
            key_hash: [1; 32],
            generation: 1,
        })
        .unwrap();
    // An empty mailbox may start past 1 (entries acknowledged while in the
    // write-back cache were never written), but a hole after an entry, or
    // a seq going back, is a journal that contradicts itself.
    shard.restore(put.clone()).unwrap();
    let at = |seq| storage::Record::MailboxPut {
        owner: phone,
        seq,
        entry: storage::EntryRecord::Receipt {
            kind: ReceiptKind::Delivered,
            by: phone,
            client_id: seq,
        },
    };
    assert_eq!(
        shard.restore(at(4)),
        Err(RestoreError::SeqMismatch {
            owner: phone,
            recorded: 4,
            assigned: 3
        })
    );
    assert_eq!(
        shard.restore(put),
        Err(RestoreError::SeqMismatch {
            owner: phone,
            recorded: 2,
            assigned: 4
        })
    );
}

#[test]
fn a_failed_journal_turns_waiting_replies_into_errors_and_refuses_new_sends() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (alice_conn, _) = net.login(alice, alice_key);
    let (bob_conn, _) = net.login(bob, bob_key);

    // Message 1 reaches Bob's shard, which holds the answer for its batch;
    // then that shard's journal fails before the batch commits.
    net.shards[0].handle_frame(
        alice_conn.conn,
        ClientFrame::Send {
            client_id: 1,
            to: bob,
            body: b"one",
        },
        net.now_ms,
    );
    let out: Vec<_> = net.shards[0].drain_peer_messages().collect();
    for (to, message) in out {
        let to = net.index_of(0, to);
        net.shards[to].handle_peer(message, net.now_ms);
    }
    net.shards[1].journal_failed();
    assert!(net.shards[1].is_journal_failed());
    net.settle();
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Error(ErrorKind::StorageFailed)],
        "no Sent for a message that is not on disk"
    );

    // New sends to that shard's phones are refused at once.
    let mut alice_conn = alice_conn;
    net.message(&mut alice_conn, bob, 2, b"two");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Error(ErrorKind::StorageFailed)]
    );
    // So are signups on it, while a healthy shard carries on.
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::RequestCode { phone: bob });
    assert_eq!(net.read(&conn), vec![Got::CodeSent]);
    net.send(
        &mut conn,
        ClientFrame::Verify {
            phone: bob,
            code: 111_111,
        },
    );
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::StorageFailed)]);
    let _ = bob_conn;
}

#[test]
fn a_reply_waits_for_the_commit_that_takes_its_record_and_no_other() {
    let mut net = Net::new(1, |_| {});
    let (alice, alice_key) = net.signup("+15550000001");
    let (conn, _) = net.login(alice, alice_key);
    let send = ClientFrame::Send {
        client_id: 1,
        to: alice,
        body: b"note",
    };
    let shard = &mut net.shards[0];
    shard.handle_frame(conn.conn, send, 0);
    assert!(shard.awaits_next_commit(), "a record waits to be taken");
    let (batch, records) = shard.take_records();
    assert!(!records.is_empty());
    // In flight: the held `Sent` needs this commit, not a next one.
    assert!(shard.has_pending_records());
    assert!(!shard.awaits_next_commit());
    shard.committed(batch);
    assert!(!shard.has_pending_records());
    assert!(!shard.awaits_next_commit());
}

#[test]
fn a_checkpoint_keeps_seqs_unread_messages_and_resend_detection() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 1..=5 {
        net.message(&mut alice_conn, bob, client_id, b"hello");
    }
    let (mut bob_conn, got) = net.login(bob, bob_key);
    assert_eq!(got.len(), 5);
    // Bob acknowledges 1..=3: only 4 and 5 are live, but 3 must still be
    // recognised as a resend, and seqs must go on from 6.
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 3 });
    net.compact();
    let bob_puts = net
        .journals
        .iter()
        .flatten()
        .filter(|r| matches!(r, storage::Record::MailboxPut { owner, .. } if *owner == bob))
        .count();
    assert_eq!(bob_puts, 2, "acknowledged entries are not carried forward");
    net.restart();
    // A checkpoint is a fixed point: restored, it checkpoints the same.
    net.assert_checkpoints_are_fixed_points();

    let (mut bob_conn, got) = net.login(bob, bob_key);
    let seqs: Vec<u64> = got
        .iter()
        .map(|g| match g {
            Got::Message { seq, .. } => *seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 3, b"hello");
    let got = net.read(&alice_conn);
    assert!(
        got.contains(&Got::Sent {
            client_id: 3,
            id: 3
        }),
        "{got:?}"
    );
    assert_eq!(
        net.read(&bob_conn),
        vec![],
        "an acknowledged resend is dropped"
    );
    net.message(&mut alice_conn, bob, 6, b"new");
    assert!(net.read(&alice_conn).contains(&Got::Sent {
        client_id: 6,
        id: 6
    }));
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 6 });
}

/// Records for `owner`'s mailbox in the journal: puts (by seq) and acks.
fn mailbox_records(net: &Net, owner: Phone) -> (Vec<u64>, Vec<u64>) {
    let mut puts = Vec::new();
    let mut acks = Vec::new();
    for record in &net.records {
        match record {
            storage::Record::MailboxPut { owner: o, seq, .. } if *o == owner => puts.push(*seq),
            storage::Record::MailboxAck { owner: o, up_to } if *o == owner => acks.push(*up_to),
            _ => {}
        }
    }
    (puts, acks)
}

#[test]
fn the_write_back_cache_never_writes_what_is_acked_in_time() {
    let mut net = Net::new(2, |c| c.sync_delay_ms = 1_000);
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    // 1 and 2 are acknowledged within the delay; 3 is not.
    for client_id in 1..=3 {
        net.message(&mut alice_conn, bob, client_id, b"quick");
    }
    let got = net.read(&alice_conn);
    assert_eq!(
        got.len(),
        3,
        "Sent comes without waiting for the disk: {got:?}"
    );
    assert_eq!(net.read(&bob_conn).len(), 3);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 2 });
    assert_eq!(
        mailbox_records(&net, bob),
        (vec![], vec![]),
        "all still cached"
    );

    net.advance(1_500);
    // Only message 3 reached the journal, and no ack (nothing written was
    // acknowledged).
    assert_eq!(mailbox_records(&net, bob), (vec![3], vec![]));
    assert_eq!(net.shards[1].counters().messages_never_written, 2);

    // Message 4 is acknowledged in time; 3 (written) is acknowledged with
    // it. Replay must see 3 acknowledged before 5, never a hole.
    net.message(&mut alice_conn, bob, 4, b"quick");
    net.message(&mut alice_conn, bob, 5, b"quick");
    let _ = net.read(&bob_conn);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 4 });
    net.advance(1_500);
    assert_eq!(mailbox_records(&net, bob), (vec![3, 5], vec![4]));

    net.restart();
    let (_, got) = net.login(bob, bob_key);
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![5], "only the unacknowledged message is back");
}

#[test]
fn a_clean_stop_writes_the_write_back_cache_out() {
    let mut net = Net::new(2, |c| c.sync_delay_ms = 60_000);
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 1, b"kept");
    assert_eq!(mailbox_records(&net, bob), (vec![], vec![]));
    for shard in &mut net.shards {
        shard.close_all();
    }
    net.settle();
    assert_eq!(mailbox_records(&net, bob), (vec![1], vec![]));
    net.restart();
    let (_, got) = net.login(bob, bob_key);
    assert!(matches!(got[..], [Got::Message { seq: 1, .. }]), "{got:?}");
}

#[test]
fn a_full_mailbox_refuses_messages_until_its_owner_reads() {
    let mut net = Net::new(2, |c| {
        c.mailbox_entries_max = 3;
        c.mailbox_bytes_max = 1024;
    });
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let mut send = |net: &mut Net, client_id, body: &[u8]| {
        net.message(&mut alice_conn, bob, client_id, body);
        net.read(&alice_conn)
    };
    for client_id in 1..=3 {
        assert!(matches!(
            send(&mut net, client_id, b"hi")[..],
            [Got::Sent { .. }]
        ));
    }
    assert_eq!(
        send(&mut net, 4, b"hi"),
        vec![Got::Error(ErrorKind::MailboxFull)]
    );
    let (mut bob_conn, got) = net.login(bob, bob_key);
    assert_eq!(got.len(), 3);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 3 });
    let _ = net.read(&bob_conn);
    // Room again; and a body over the byte bound is refused on its own.
    let got = send(&mut net, 4, b"hi");
    assert!(
        got.iter()
            .any(|g| matches!(g, Got::Sent { client_id: 4, .. })),
        "{got:?}"
    );
    let got = send(&mut net, 5, &[0; 1100]);
    assert!(got.contains(&Got::Error(ErrorKind::MailboxFull)), "{got:?}");
    let counters = net.shards[1].counters();
    assert_eq!(counters.messages_refused_mailbox_full, 2);
}

#[test]
fn one_account_cannot_fill_the_write_back_cache() {
    let mut net = Net::new(2, |c| {
        c.sync_delay_ms = 60_000;
        c.sync_delay_entries_per_account_max = 4;
    });
    let (alice, alice_key, bob, _) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 1..=5 {
        net.message(&mut alice_conn, bob, client_id, b"to an offline phone");
    }
    // The fifth entry pushed Bob over 4: the cache was written out from
    // the oldest record until he had 2 left in it.
    assert_eq!(mailbox_records(&net, bob), (vec![1, 2, 3], vec![]));
}

#[test]
fn a_full_disk_refuses_new_messages_and_signups_but_not_acks_or_resends() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    net.message(&mut alice_conn, bob, 1, b"hi");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 1,
            id: 1
        }]
    );

    // Bob's shard runs out of disk.
    net.shards[1].set_disk_full(true);
    net.message(&mut alice_conn, bob, 2, b"hi");
    assert_eq!(net.read(&alice_conn), vec![Got::Error(ErrorKind::DiskFull)]);
    // A resend of what is stored is still answered: it needs no room.
    net.message(&mut alice_conn, bob, 1, b"hi");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 1,
            id: 1
        }]
    );
    // Bob still gets message 1, and his ack of it is recorded.
    let got = net.read(&bob_conn);
    assert!(
        matches!(
            got[..],
            [Got::Message {
                seq: 1,
                client_id: 1,
                ..
            }]
        ),
        "{got:?}"
    );
    let acks_before = mailbox_records(&net, bob).1.len();
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 1 });
    assert_eq!(mailbox_records(&net, bob).1.len(), acks_before + 1);
    // No signups on that shard; the other shard is unaffected.
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::RequestCode { phone: bob });
    assert_eq!(net.read(&conn), vec![Got::CodeSent]);
    net.send(
        &mut conn,
        ClientFrame::Verify {
            phone: bob,
            code: 111_111,
        },
    );
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::DiskFull)]);
    assert_eq!(net.shards[1].counters().messages_refused_disk_full, 1);
    assert_eq!(net.shards[1].counters().signups_refused_disk_full, 1);

    // Room again: the refused message goes through.
    net.shards[1].set_disk_full(false);
    net.message(&mut alice_conn, bob, 2, b"hi");
    let got = net.read(&alice_conn);
    assert!(
        got.contains(&Got::Sent {
            client_id: 2,
            id: 2
        }),
        "{got:?}"
    );
}

#[test]
fn a_journal_short_of_a_resource_pauses_new_work_with_overloaded() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    net.message(&mut alice_conn, bob, 1, b"hi");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 1,
            id: 1
        }]
    );
    net.shards[1].set_storage_unavailable(true);
    net.message(&mut alice_conn, bob, 2, b"hi");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Error(ErrorKind::Overloaded)]
    );
    // What is stored is still answered, delivered and acknowledged.
    net.message(&mut alice_conn, bob, 1, b"hi");
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Sent {
            client_id: 1,
            id: 1
        }]
    );
    assert_eq!(net.read(&bob_conn).len(), 1);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 1 });
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::RequestCode { phone: bob });
    net.read(&conn);
    net.send(
        &mut conn,
        ClientFrame::Verify {
            phone: bob,
            code: 111_111,
        },
    );
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::Overloaded)]);
    // The resource is back: so is the shard, with no restart.
    net.shards[1].set_storage_unavailable(false);
    net.message(&mut alice_conn, bob, 2, b"hi");
    assert!(net.read(&alice_conn).contains(&Got::Sent {
        client_id: 2,
        id: 2
    }));
}

/// A message the model expects in its recipient's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    from: Phone,
    client_id: u64,
    id: u64,
    body: Vec<u8>,
    accepted_ms: u64,
}

/// One phone as the model sees it.
struct ModelPhone {
    phone: Phone,
    key: DeviceKey,
    conn: Option<Phone_>,
    next_client_id: u64,
    /// Unacknowledged messages, oldest first: the mailbox.
    queued: Vec<Expected>,
    /// How many of `queued` this connection has been given.
    delivered: usize,
    /// The highest seq (message or receipt) this connection has seen.
    seen_up_to: u64,
    /// Messages acknowledged, with when: an ack still in the write-back
    /// cache at a crash is lost, and those messages come back.
    acked: Vec<(Expected, u64)>,
}

/// Random sends, reads, acknowledgements, logouts, time, checkpoints and
/// crashes against the shards with the journal, checked against a plain
/// model of every mailbox. Without a write-back cache a crash loses
/// nothing that was answered `Sent` and brings back nothing acknowledged;
/// with one, only what the cache held at the crash (accepted or
/// acknowledged less than `sync_delay_ms` before the last tick) may differ.
#[test]
fn model_random_operations_survive_restart() {
    for seed in 1..=45u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let sync_delay_ms = [0, 300, 5_000][(seed % 3) as usize];
        let mut net = Net::new(2, |c| {
            c.sync_delay_ms = sync_delay_ms;
            // Nothing here may be refused or cut off for reasons that are
            // not under test.
            c.sync_delay_entries_per_account_max = 3;
            c.idle_timeout_ms = u64::MAX / 4;
            c.unacked_messages_max = 1_000_000;
            c.send_rate_per_s = 1_000_000;
            c.send_burst = 1_000_000;
        });
        let mut phones: Vec<ModelPhone> = (0..6)
            .map(|n| {
                let (phone, key) = net.signup(&format!("+155500030{n:02}"));
                ModelPhone {
                    phone,
                    key,
                    conn: None,
                    next_client_id: 1,
                    queued: Vec::new(),
                    delivered: 0,
                    seen_up_to: 0,
                    acked: Vec::new(),
                }
            })
            .collect();
        // When the shards last ticked: what the cache wrote out by then.
        let mut ticked_ms = net.now_ms;
        for step in 0..250 {
            let at = format!("seed {seed} step {step} (delay {sync_delay_ms} ms)");
            let p = next(phones.len() as u64) as usize;
            match next(20) {
                0..=2 => {
                    if phones[p].conn.is_some() {
                        continue;
                    }
                    let (conn, got) = net.login(phones[p].phone, phones[p].key);
                    phones[p].conn = Some(conn);
                    phones[p].delivered = 0;
                    phones[p].seen_up_to = 0;
                    take(&mut phones[p], got, &at);
                    let model = &phones[p];
                    assert_eq!(model.delivered, model.queued.len(), "{at}: all at login");
                }
                3 => {
                    if let Some(conn) = phones[p].conn.take() {
                        net.shards[conn.shard as usize].closed(conn.conn, net.now_ms);
                        net.settle();
                    }
                }
                4..=10 => {
                    let to = (p + 1 + next(phones.len() as u64 - 1) as usize) % phones.len();
                    let Some(mut conn) = phones[p].conn else {
                        continue;
                    };
                    let client_id = phones[p].next_client_id;
                    phones[p].next_client_id += 1;
                    let body = format!("{seed}/{step}").into_bytes();
                    let recipient = phones[to].phone;
                    net.message(&mut conn, recipient, client_id, &body);
                    let got = net.read(&conn);
                    let id = got
                        .iter()
                        .find_map(|g| match g {
                            Got::Sent { client_id: c, id } if *c == client_id => Some(*id),
                            _ => None,
                        })
                        .unwrap_or_else(|| panic!("{at}: no Sent in {got:?}"));
                    let from = phones[p].phone;
                    phones[to].queued.push(Expected {
                        from,
                        client_id,
                        id,
                        body,
                        accepted_ms: net.now_ms,
                    });
                    take(&mut phones[p], got, &at);
                }
                11..=14 => {
                    let Some(mut conn) = phones[p].conn else {
                        continue;
                    };
                    // Often all that arrived, sometimes only a prefix of it.
                    let up_to = phones[p]
                        .seen_up_to
                        .saturating_sub(next(4).saturating_sub(1));
                    net.send(&mut conn, ClientFrame::Ack { up_to });
                    let model = &mut phones[p];
                    let now_ms = net.now_ms;
                    let acked = model.queued.iter().take_while(|e| e.id <= up_to).count();
                    let gone: Vec<Expected> = model.queued.drain(..acked).collect();
                    model.delivered -= acked;
                    model.acked.extend(gone.into_iter().map(|e| (e, now_ms)));
                }
                15..=17 => {
                    net.advance(1 + next(2 * sync_delay_ms.max(100)));
                    ticked_ms = net.now_ms;
                }
                18 => net.compact(),
                _ => {
                    net.restart();
                    let crashed_at = ticked_ms;
                    for model in &mut phones {
                        model.conn = None;
                    }
                    for model in &mut phones {
                        let (conn, got) = net.login(model.phone, model.key);
                        let back: Vec<Expected> = got
                            .iter()
                            .filter_map(|g| match g {
                                Got::Message {
                                    seq,
                                    from,
                                    client_id,
                                    body,
                                } => Some(Expected {
                                    from: *from,
                                    client_id: *client_id,
                                    id: *seq,
                                    body: body.clone(),
                                    accepted_ms: 0,
                                }),
                                _ => None,
                            })
                            .collect();
                        let cached = |ms: u64| ms + sync_delay_ms > crashed_at;
                        let same = |a: &Expected, b: &Expected| {
                            (a.from, a.client_id, a.id, &a.body)
                                == (b.from, b.client_id, b.id, &b.body)
                        };
                        // Everything written must be back...
                        for must in model.queued.iter().filter(|e| !cached(e.accepted_ms)) {
                            assert!(
                                back.iter().any(|b| same(b, must)),
                                "{at}: {:?} lost; back: {back:?}",
                                must
                            );
                        }
                        // ...and nothing else but what the cache held.
                        let mut kept = Vec::new();
                        for b in &back {
                            let queued = model.queued.iter().find(|e| same(e, b));
                            let unacked = model
                                .acked
                                .iter()
                                .find(|(e, acked_ms)| same(e, b) && cached(*acked_ms))
                                .map(|(e, _)| e);
                            match queued.or(unacked) {
                                Some(e) => kept.push(e.clone()),
                                None => panic!("{at}: {b:?} came back from nowhere"),
                            }
                        }
                        assert!(
                            back.windows(2).all(|w| w[0].id < w[1].id),
                            "{at}: out of order: {back:?}"
                        );
                        model.queued = kept;
                        model.acked.clear();
                        model.conn = Some(conn);
                        model.delivered = 0;
                        model.seen_up_to = 0;
                        take(model, got, &at);
                    }
                    ticked_ms = net.now_ms;
                }
            }
            // Whatever arrived meanwhile at each logged-in phone.
            for model in &mut phones {
                if let Some(conn) = model.conn {
                    let got = net.read(&conn);
                    take(model, got, &at);
                }
            }
        }
    }
}

/// A connection's frames: messages must be exactly the next ones the model
/// expects, in order.
fn take(model: &mut ModelPhone, got: Vec<Got>, at: &str) {
    for g in got {
        match g {
            Got::Message {
                seq,
                from,
                client_id,
                body,
            } => {
                let expected = model
                    .queued
                    .get(model.delivered)
                    .unwrap_or_else(|| panic!("{at}: unexpected message {seq} from {from:?}"));
                assert_eq!(
                    (
                        expected.from,
                        expected.client_id,
                        expected.id,
                        &expected.body
                    ),
                    (from, client_id, seq, &body),
                    "{at}: delivered out of order or changed"
                );
                model.delivered += 1;
                model.seen_up_to = model.seen_up_to.max(seq);
            }
            Got::Receipt { seq, .. } => model.seen_up_to = model.seen_up_to.max(seq),
            Got::Sent { .. } => {}
            other => panic!("{at}: unexpected {other:?}"),
        }
    }
}

/// An operator's revocation: the session ends with `Revoked`, the old key
/// no longer logs in (after a restart either), the mailbox stays, and the
/// number signs up again with a code.
#[test]
fn a_revoked_key_stops_working_and_the_mailbox_stays() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 1, b"kept");
    let (bob_conn, _) = net.login(bob, bob_key);
    net.read(&bob_conn);
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    let before = net.shards[home].account_info(bob).unwrap();
    assert!(before.online);
    let now_ms = net.now_ms;
    assert_eq!(net.shards[home].revoke(bob, now_ms), Ok(()));
    net.settle();
    assert!(net.read(&bob_conn).contains(&Got::Bye(ByeReason::Revoked)));
    let after = net.shards[home].account_info(bob).unwrap();
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(after.mailbox_entries, before.mailbox_entries);
    for restarted in [false, true] {
        if restarted {
            net.restart();
        }
        let mut conn = net.connect();
        net.send(
            &mut conn,
            ClientFrame::Login {
                phone: bob,
                key: bob_key,
            },
        );
        let got = net.read(&conn);
        assert_eq!(
            got,
            vec![Got::Error(ErrorKind::BadCredentials)],
            "restarted: {restarted}"
        );
    }
    let (_, key) = net.signup(&format!("{bob}"));
    net.login(bob, key);
    let nobody = Phone::parse("+15559999999").unwrap();
    assert_eq!(
        net.shards[home].revoke(nobody, now_ms),
        Err(shard::AccountRefused::NoAccount)
    );
    assert!(net.shards[home].account_info(nobody).is_none());
}

/// An operator's trace follows a message from the mailbox to the phone and
/// out of the mailbox.
#[test]
fn a_trace_follows_a_message_through_the_mailbox() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 42, b"where am I");
    net.read(&alice_conn);
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    let state = |net: &mut Net| {
        let hits = net.shards[home].trace(alice, 42);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].to, Some(bob.to_string()));
        hits[0].state
    };
    assert_eq!(state(&mut net), "queued");
    let (mut bob_conn, got) = net.login(bob, bob_key);
    let seq = got
        .iter()
        .find_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap();
    assert_eq!(state(&mut net), "delivered");
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: seq });
    net.settle();
    assert_eq!(state(&mut net), "acknowledged");
    assert!(net.shards[home].trace(alice, 43).is_empty());
}

/// The mailbox totals a shard keeps for its metrics stay the sum of its
/// mailboxes through appends, acknowledgements and a replay.
#[test]
fn mailbox_totals_follow_appends_acks_and_a_restart() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 1..=3 {
        net.message(&mut alice_conn, bob, client_id, b"four");
    }
    let check = |net: &Net, entries: u64| {
        let mut all = 0;
        for shard in &net.shards {
            let lengths = shard.queue_lengths();
            let totals = (lengths.mailbox_entries, lengths.mailbox_bytes);
            assert_eq!(totals, shard.queued());
            all += lengths.mailbox_entries;
        }
        assert_eq!(all, entries);
    };
    check(&net, 3);
    let (mut bob_conn, got) = net.login(bob, bob_key);
    let first = got
        .iter()
        .find_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap();
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: first });
    net.settle();
    // Two messages left for bob, and alice's `Delivered` receipt.
    check(&net, 3);
    net.restart();
    check(&net, 3);
}

/// An operator's deletion takes everything of the account: the session
/// closes, the key stops working, queued messages go (their senders are
/// told `Undeliverable`), the resend table forgets them, and none of it
/// comes back after a restart or a checkpoint. The number signs up again
/// as a new account with an empty mailbox.
///
/// With the write-back cache on, the messages are still in the cache when
/// the account is deleted: the deletion writes it out first, so no record
/// of the account follows its deletion in the journal.
#[test]
fn a_deleted_account_is_gone_through_restarts_and_can_sign_up_again() {
    for sync_delay_ms in [0, 60_000] {
        deleted_account_is_gone(sync_delay_ms);
    }
}

/// The receipts in `got`, as (kind, client id).
fn receipts_in(got: Vec<Got>) -> Vec<(ReceiptKind, u64)> {
    got.into_iter()
        .filter_map(|got| match got {
            Got::Receipt {
                kind, client_id, ..
            } => Some((kind, client_id)),
            _ => None,
        })
        .collect()
}

fn deleted_account_is_gone(sync_delay_ms: u64) {
    let mut net = Net::new(2, |c| c.sync_delay_ms = sync_delay_ms);
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 1, b"one");
    net.message(&mut alice_conn, bob, 2, b"two");
    net.read(&alice_conn);
    let (bob_conn, _) = net.login(bob, bob_key);
    net.read(&bob_conn);
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    let accounts_before = net.shards[home].counters().accounts;
    let now_ms = net.now_ms;
    let deleted = net.shards[home].delete_account(bob, now_ms).unwrap();
    assert_eq!(deleted.mailbox_entries, 2);
    assert!(deleted.was_online);
    net.settle();
    assert_eq!(
        net.read(&bob_conn).last(),
        Some(&Got::Bye(ByeReason::AccountDeleted))
    );
    let receipts = receipts_in(net.read(&alice_conn));
    assert_eq!(
        receipts,
        [
            (ReceiptKind::Undeliverable, 1),
            (ReceiptKind::Undeliverable, 2)
        ]
    );
    assert_eq!(net.shards[home].counters().accounts, accounts_before - 1);
    assert_eq!(
        net.shards[home].delete_account(bob, now_ms),
        Err(shard::AccountRefused::NoAccount)
    );
    for step in ["live", "restarted", "compacted"] {
        match step {
            "restarted" => net.restart(),
            "compacted" => {
                net.compact();
                net.restart();
            }
            _ => {}
        }
        assert!(net.shards[home].account_info(bob).is_none(), "{step}");
        assert!(net.shards[home].trace(alice, 1).is_empty(), "{step}");
        assert_eq!(
            net.shards[home].queue_lengths().mailbox_entries,
            0,
            "{step}"
        );
        let mut conn = net.connect();
        let login = ClientFrame::Login {
            phone: bob,
            key: bob_key,
        };
        net.send(&mut conn, login);
        assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::BadCredentials)]);
        let (mut alice_conn, _) = net.login(alice, alice_key);
        net.message(&mut alice_conn, bob, 10, b"anyone?");
        let got = net.read(&alice_conn);
        assert!(
            got.contains(&Got::Error(ErrorKind::UnknownRecipient)),
            "{step}: {got:?}"
        );
    }
    // After a restart the deletion is told to every shard again (the
    // journal cannot say it finished): the number signs up once that is
    // done, at the next tick.
    net.advance(net.shards[0].config().tick_ms);
    let (_, new_key) = net.signup(&bob.to_string());
    let (_, got) = net.login(bob, new_key);
    assert!(got.is_empty(), "a new account starts empty: {got:?}");
    let (mut alice_conn, _) = net.login(alice, alice_key);
    // The same client id as before the deletion is a new message now.
    net.message(&mut alice_conn, bob, 1, b"welcome back");
    assert!(net
        .read(&alice_conn)
        .iter()
        .any(|got| matches!(got, Got::Sent { client_id: 1, .. })));
}

/// A number deleted and signed up again at once, while the write-back
/// cache still held the old account's messages, starts empty, and stays
/// empty once the cache is due and after a restart.
#[test]
fn a_number_signed_up_again_right_after_deletion_starts_empty() {
    let mut net = Net::new(2, |c| c.sync_delay_ms = 60_000);
    let (alice, alice_key, bob, _) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 1, b"for the old bob");
    net.read(&alice_conn);
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    let now_ms = net.now_ms;
    net.shards[home].delete_account(bob, now_ms).unwrap();
    net.settle();
    let (_, key) = net.signup(&bob.to_string());
    for step in ["at once", "cache due", "restarted"] {
        match step {
            "cache due" => net.advance(120_000),
            "restarted" => net.restart(),
            _ => {}
        }
        let (conn, got) = net.login(bob, key);
        assert!(got.is_empty(), "{step}: {got:?}");
        net.shards[home].closed(conn.conn, net.now_ms);
        net.settle();
    }
}

/// Limits set while running apply from their next use: a mailbox bound
/// lowered below what a mailbox holds refuses the next message, and
/// nothing already queued is lost.
#[test]
fn limits_set_while_running_apply_at_once() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, bob, _) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 1..=3 {
        net.message(&mut alice_conn, bob, client_id, b"queued");
    }
    net.read(&alice_conn);
    for shard in &mut net.shards {
        let mut limits = shard.config().clone();
        limits.mailbox_entries_max = 2;
        limits.tick_ms = 7;
        shard.set_limits(limits);
        assert_eq!(shard.config().mailbox_entries_max, 2);
        assert_eq!(shard.config().tick_ms, 100, "the wheel keeps its tick");
    }
    net.message(&mut alice_conn, bob, 4, b"one too many");
    let got = net.read(&alice_conn);
    assert_eq!(got, vec![Got::Error(ErrorKind::MailboxFull)]);
    let home = net.shards[0].config().map.shard_of(bob) as usize;
    assert_eq!(
        net.shards[home].account_info(bob).unwrap().mailbox_entries,
        3
    );
}

/// Receipts for what a deleted account sent (its recipients acknowledge
/// or read it later) never reach the number's next account, which would
/// learn whom its predecessor wrote to; the new account's own receipts
/// do, across a restart too.
#[test]
fn receipts_for_a_deleted_accounts_messages_skip_the_numbers_next_account() {
    let mut net = Net::new(2, |_| {});
    net.advance(1_000);
    let (alice, alice_key, bob, bob_key) = signed_up_pair(&mut net);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    for client_id in 1..=3 {
        net.message(&mut alice_conn, bob, client_id, b"from the old alice");
    }
    net.read(&alice_conn);
    let (mut bob_conn, got) = net.login(bob, bob_key);
    let last = got
        .iter()
        .filter_map(|g| match g {
            Got::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap();
    // Bob acknowledges one before the deletion: its receipt reaches the
    // old alice, and goes with her mailbox.
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: last - 2 });
    let home = net.shards[0].config().map.shard_of(alice) as usize;
    let now_ms = net.now_ms;
    net.shards[home].delete_account(alice, now_ms).unwrap();
    net.settle();
    net.advance(1_000);
    let (_, new_key) = net.signup(&alice.to_string());
    let (mut heir_conn, _) = net.login(alice, new_key);
    net.message(&mut heir_conn, bob, 1, b"from the new alice");
    net.read(&heir_conn);
    for step in ["live", "restarted"] {
        if step == "restarted" {
            net.restart();
            net.advance(net.shards[0].config().tick_ms);
            (heir_conn, _) = net.login(alice, new_key);
            (bob_conn, _) = net.login(bob, bob_key);
        }
        let got = net.read(&bob_conn);
        let newest = got
            .iter()
            .filter_map(|g| match g {
                Got::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(last + 1);
        for client_id in 2..=3 {
            net.send(
                &mut bob_conn,
                ClientFrame::Read {
                    from: alice,
                    client_id,
                },
            );
        }
        net.send(&mut bob_conn, ClientFrame::Ack { up_to: newest });
        net.read(&bob_conn);
        let receipts = receipts_in(net.read(&heir_conn));
        let expected: &[(ReceiptKind, u64)] = match step {
            "live" => &[(ReceiptKind::Delivered, 1)],
            _ => &[],
        };
        assert_eq!(receipts, expected, "{step}: only the new account's own");
    }
    let dropped: u64 = net
        .shards
        .iter()
        .map(|s| s.counters().receipts_dropped_predecessor)
        .sum();
    assert!(dropped > 0);
}
