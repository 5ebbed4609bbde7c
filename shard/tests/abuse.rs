//! What a hostile logged-in phone can make the shard do to others: every
//! frame that puts something into another account's mailbox must pass a
//! rule the server checks, and allowances belong to the account, not to
//! the connection, and stay spent across a restart where they bound
//! enumeration.

mod common;

use common::*;

/// Signs up a number outside the test range, through a real code.
fn signup_by_sms(net: &mut Net, number: &str) -> (Phone, DeviceKey) {
    let phone = Phone::parse(number).unwrap();
    // The SMS budget starts spent; a second refills one code.
    net.advance(1_000);
    let mut conn = net.connect();
    net.send(&mut conn, ClientFrame::RequestCode { phone });
    assert_eq!(net.read(&conn), vec![Got::CodeSent]);
    let code = net
        .sms
        .borrow()
        .sent
        .iter()
        .rev()
        .find(|(p, _)| *p == phone)
        .expect("a code went out")
        .1;
    net.send(&mut conn, ClientFrame::Verify { phone, code });
    let [Got::Registered(key)] = net.read(&conn)[..] else {
        panic!("not registered")
    };
    (phone, key)
}

fn read(net: &mut Net, conn: &mut Phone_, from: Phone, client_id: u64) -> Vec<Got> {
    net.send(conn, ClientFrame::Read { from, client_id });
    net.read(conn)
}

fn receipts(got: &[Got]) -> Vec<(ReceiptKind, Phone, u64)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Receipt {
                kind,
                by,
                client_id,
                ..
            } => Some((*kind, *by, *client_id)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_read_receipt_needs_a_message_delivered_to_the_reader() {
    let mut net = Net::new(2, |c| c.unacked_messages_max = 1);
    let (a, b) = pair(&net);
    let (alice, alice_key) = net.signup(&a);
    let (bob, bob_key) = net.signup(&b);
    let (xavier, xavier_key) = net.signup("+15550000099");
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let (mut xavier_conn, _) = net.login(xavier, xavier_key);

    // Two messages; with a window of one, only the first is written to Bob.
    net.message(&mut alice_conn, bob, 42, b"one");
    net.message(&mut alice_conn, bob, 43, b"two");
    net.read(&alice_conn);
    let got = net.read(&bob_conn);
    assert_eq!(got.len(), 1, "{got:?}");

    let refused = vec![Got::Error(ErrorKind::BadRequest)];
    // Xavier never received 42; Alice never sent 777; 43 is stored for
    // Bob but was not delivered yet.
    assert_eq!(read(&mut net, &mut xavier_conn, alice, 42), refused);
    assert_eq!(read(&mut net, &mut xavier_conn, alice, 777), refused);
    assert_eq!(read(&mut net, &mut bob_conn, alice, 43), refused);
    assert_eq!(read(&mut net, &mut bob_conn, alice, 777), refused);
    assert_eq!(receipts(&net.read(&alice_conn)), vec![]);

    // What Bob was given he may mark read, once.
    assert_eq!(read(&mut net, &mut bob_conn, alice, 42), vec![]);
    assert_eq!(read(&mut net, &mut bob_conn, alice, 42), refused);
    assert_eq!(
        receipts(&net.read(&alice_conn)),
        vec![(ReceiptKind::Read, bob, 42)]
    );
    let refused_count: u64 = net.shards.iter().map(|s| s.counters().reads_refused).sum();
    assert_eq!(refused_count, 5);
    // After the ack (the entry is gone) and a restart, 43 still may be.
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 1 });
    net.read(&bob_conn);
    net.send(&mut bob_conn, ClientFrame::Ack { up_to: 2 });
    net.restart();
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let (mut alice_conn, mut got) = net.login(alice, alice_key);
    // A window of one: Alice acks her way through.
    for up_to in 1..=3 {
        net.send(&mut alice_conn, ClientFrame::Ack { up_to });
        got.extend(net.read(&alice_conn));
    }
    assert_eq!(
        receipts(&got),
        vec![
            (ReceiptKind::Read, bob, 42),
            (ReceiptKind::Delivered, bob, 42),
            (ReceiptKind::Delivered, bob, 43),
        ]
    );
    assert_eq!(read(&mut net, &mut bob_conn, alice, 43), vec![]);
    assert_eq!(
        receipts(&net.read(&alice_conn)),
        vec![(ReceiptKind::Read, bob, 43)]
    );
}

#[test]
fn a_read_receipt_for_a_group_post_needs_the_post_delivered_to_that_member() {
    let mut net = Net::new(2, |_| {});
    let (a, b) = pair(&net);
    let (alice, alice_key) = net.signup(&a);
    let (bob, bob_key) = net.signup(&b);
    let (xavier, xavier_key) = net.signup("+15550000099");
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let (mut xavier_conn, _) = net.login(xavier, xavier_key);
    net.send(
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "plans",
            members: vec![bob],
        },
    );
    let group = net
        .read(&alice_conn)
        .iter()
        .find_map(|g| match g {
            Got::Sent { client_id: 1, id } => GroupId::from_u64(*id).ok(),
            _ => None,
        })
        .unwrap();
    net.send(
        &mut alice_conn,
        ClientFrame::GroupSend {
            client_id: 2,
            group,
            body: b"hello all",
        },
    );
    net.read(&alice_conn);
    let got = net.read(&bob_conn);
    assert!(got
        .iter()
        .any(|g| matches!(g, Got::GroupMessage { client_id: 2, .. })));

    let refused = vec![Got::Error(ErrorKind::BadRequest)];
    assert_eq!(read(&mut net, &mut xavier_conn, alice, 2), refused);
    assert_eq!(
        read(&mut net, &mut bob_conn, alice, 1),
        refused,
        "a notice is not read"
    );
    assert_eq!(read(&mut net, &mut bob_conn, alice, 2), vec![]);
    assert_eq!(read(&mut net, &mut bob_conn, alice, 2), refused);
    assert_eq!(
        receipts(&net.read(&alice_conn)),
        vec![(ReceiptKind::Read, bob, 2)]
    );
}

#[test]
fn receipts_never_make_an_account_refuse_messages_and_have_their_own_bound() {
    let mut net = Net::new(1, |c| {
        c.mailbox_entries_max = 2;
        c.receipts_max = 3;
    });
    let (alice, alice_key) = net.signup("+15550000001");
    let (bob, bob_key) = net.signup("+15550000002");
    let (carol, carol_key) = net.signup("+15550000003");
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    // Alice sends five messages and never reads: five Delivered receipts
    // come back, past her receipt bound.
    for client_id in 1..=5 {
        net.message(&mut alice_conn, bob, client_id, b"hi");
        let got = net.read(&bob_conn);
        let Some(Got::Message { seq, .. }) = got.first() else {
            panic!("{got:?}")
        };
        net.send(&mut bob_conn, ClientFrame::Ack { up_to: *seq });
    }
    net.shards[0].closed(alice_conn.conn, net.now_ms);
    net.settle();
    let counters = net.shards[0].counters();
    assert_eq!(counters.receipts_dropped_mailbox_full, 2);
    // Her mailbox holds three receipts, yet messages still reach her up
    // to the message bound.
    let (mut carol_conn, _) = net.login(carol, carol_key);
    for client_id in 1..=3 {
        net.message(&mut carol_conn, alice, client_id, b"still reachable");
    }
    let got = net.read(&carol_conn);
    assert_eq!(
        got,
        vec![
            Got::Sent {
                client_id: 1,
                id: 4
            },
            Got::Sent {
                client_id: 2,
                id: 5
            },
            Got::Error(ErrorKind::MailboxFull),
        ]
    );
}

#[test]
fn the_send_allowance_belongs_to_the_account_not_the_connection() {
    let mut net = Net::new(1, |c| {
        c.send_rate_per_s = 1;
        c.send_burst = 3;
    });
    let (alice, alice_key) = net.signup("+15550000001");
    let (bob, _) = net.signup("+15550000002");
    let mut limited = 0;
    let mut client_id = 0;
    // Three logins in a row, each spending what it can.
    for _ in 0..3 {
        let (mut conn, _) = net.login(alice, alice_key);
        for _ in 0..5 {
            client_id += 1;
            net.message(&mut conn, bob, client_id, b"spam");
        }
        limited += net
            .read(&conn)
            .iter()
            // Sends behind a refused one wait for it (`OutOfOrder`).
            .filter(|g| {
                matches!(
                    g,
                    Got::Error(ErrorKind::RateLimited | ErrorKind::OutOfOrder)
                )
            })
            .count();
        net.shards[0].closed(conn.conn, net.now_ms);
    }
    assert_eq!(
        limited,
        15 - 3,
        "one burst for the account, not one per login"
    );
}

/// Lookups of numbers outside the contact list (by sync, or by sending to
/// them) come from one allowance, which a restart restores as spent.
#[test]
fn probing_for_accounts_by_sending_costs_lookups_that_a_restart_does_not_refill() {
    let mut net = Net::new(2, |c| {
        c.contacts_max = 4;
        c.contact_lookups_per_day = 1;
    });
    let (mallory, mallory_key) = signup_by_sms(&mut net, "+442071230001");
    let (friend, _) = net.signup("+15550000001");
    let (mut conn, _) = net.login(mallory, mallory_key);
    let sync = |net: &mut Net, conn: &mut Phone_, client_id, add: Vec<Phone>| {
        net.send(
            conn,
            ClientFrame::SyncContacts {
                client_id,
                full: false,
                add,
                remove: Vec::new(),
            },
        );
        net.read(conn)
    };
    let got = sync(&mut net, &mut conn, 1, vec![friend]);
    assert_eq!(
        got,
        vec![Got::Contacts {
            client_id: 1,
            registered: vec![friend]
        }]
    );
    // A listed number costs nothing, however often.
    for client_id in 2..=5 {
        net.message(&mut conn, friend, client_id, b"hi");
    }
    assert!(net
        .read(&conn)
        .iter()
        .all(|g| matches!(g, Got::Sent { .. })));
    // Three strangers (the rest of the burst), then nothing tells a
    // registered number from an unregistered one.
    let registered = net.signup("+15550000002").0;
    let strangers: Vec<Phone> = (10..13)
        .map(|n| Phone::parse(&format!("+44207123{n:04}")).unwrap())
        .collect();
    for (client_id, to) in (10..).zip(&strangers) {
        net.message(&mut conn, *to, client_id, b"probe");
    }
    assert_eq!(
        net.read(&conn),
        vec![Got::Error(ErrorKind::UnknownRecipient); 3]
    );
    // A stranger written to again is not charged twice.
    net.message(&mut conn, strangers[0], 13, b"again");
    assert_eq!(
        net.read(&conn),
        vec![Got::Error(ErrorKind::UnknownRecipient)]
    );
    net.message(&mut conn, registered, 20, b"probe");
    net.message(
        &mut conn,
        Phone::parse("+442071239999").unwrap(),
        21,
        b"probe",
    );
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::RateLimited); 2]);

    // A crash and restart gives no new burst.
    net.restart();
    let (mut conn, _) = net.login(mallory, mallory_key);
    net.message(&mut conn, registered, 22, b"probe");
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::RateLimited)]);
    let got = sync(&mut net, &mut conn, 23, vec![registered]);
    assert_eq!(got, vec![Got::Error(ErrorKind::RateLimited)]);
    // A day refills one lookup.
    net.advance(24 * 60 * 60 * 1000);
    let (mut conn, _) = net.login(mallory, mallory_key);
    net.message(&mut conn, registered, 24, b"hello");
    assert!(matches!(
        net.read(&conn)[..],
        [Got::Sent { client_id: 24, .. }]
    ));
    // The mark that says "spent" outlives a checkpoint too.
    net.compact();
    net.restart();
    let (mut conn, _) = net.login(mallory, mallory_key);
    net.message(
        &mut conn,
        Phone::parse("+15550000003").unwrap(),
        25,
        b"probe",
    );
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::RateLimited)]);
}

/// A connection from `addr` with its `Hello` done.
fn connect_from(net: &mut Net, addr: &str) -> Result<Phone_, Refused> {
    let source = Source::new(addr.parse().unwrap());
    let conn = net.shards[0].open(source, net.now_ms)?;
    let mut phone = Phone_ { shard: 0, conn };
    net.send(
        &mut phone,
        ClientFrame::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    assert_eq!(net.read(&phone), vec![Got::Welcome]);
    Ok(phone)
}

#[test]
fn a_connection_must_log_in_by_a_deadline_from_accept_whatever_it_sends() {
    let mut net = Net::new(1, |c| c.login_timeout_ms = 30_000);
    let mut lurker = net.connect();
    let mut got = Vec::new();
    for _ in 0..8 {
        net.advance(5_000);
        net.send(&mut lurker, ClientFrame::Ping { nonce: 1 });
        got.extend(net.read(&lurker));
    }
    assert!(got.contains(&Got::Bye(ByeReason::IdleTimeout)), "{got:?}");
    assert!(net.shards[0].is_closing(lurker.conn));
    assert_eq!(net.shards[0].counters().idle_closed, 1);
}

#[test]
fn connections_that_have_not_logged_in_are_capped_per_source_and_per_shard() {
    let mut net = Net::new(2, |c| {
        c.prelogin_per_source_max = 3;
        c.prelogin_connections_max = 5;
    });
    let (number, _) = pair(&net);
    let (alice, alice_key) = net.signup(&number);
    let mut held: Vec<Phone_> = (0..3)
        .map(|_| connect_from(&mut net, "192.0.2.7").unwrap())
        .collect();
    assert_eq!(
        connect_from(&mut net, "192.0.2.7").unwrap_err(),
        Refused::SourceFull
    );
    // An IPv6 host is its /64, whatever address it picks in it.
    for host in ["2001:db8::1", "2001:db8::2"] {
        held.push(connect_from(&mut net, host).unwrap());
    }
    assert_eq!(
        connect_from(&mut net, "2001:db8::3").unwrap_err(),
        Refused::ShardFull
    );
    // Logging in leaves the count: a phone can always get in again.
    net.send(
        &mut held[0],
        ClientFrame::Login {
            phone: alice,
            key: alice_key,
        },
    );
    assert_eq!(net.read(&held[0]), vec![Got::LoggedIn]);
    let mut other = connect_from(&mut net, "198.51.100.1").unwrap();
    assert_eq!(net.shards[0].counters().connections_refused, 2);
    assert_eq!(net.shards[0].counters().connections_anonymous, 5);
    // Closing leaves it too.
    net.shards[0].closed(held[1].conn, net.now_ms);
    connect_from(&mut net, "192.0.2.7").unwrap();
    // A handover counts on the shard it moves to, under the same bounds.
    let (elsewhere, _) = numbers_on(&net, 1);
    let phone = Phone::parse(&elsewhere).unwrap();
    net.send(&mut other, ClientFrame::RequestCode { phone });
    assert_eq!(other.shard, 1);
    assert_eq!(net.shards[1].counters().connections_anonymous, 1);
    assert_eq!(net.shards[0].counters().connections_anonymous, 4);
}

/// A test number on shard `shard`, and one outside the test range there.
fn numbers_on(net: &Net, shard: u16) -> (String, String) {
    let map = net.shards[0].config().map;
    let find = |prefix: &str| {
        (0..500)
            .map(|n| format!("{prefix}{n:04}"))
            .find(|n| map.shard_of(Phone::parse(n).unwrap()) == shard)
            .unwrap()
    };
    (find("+1555000"), find("+4420712"))
}

fn ask_code(net: &mut Net, conn: &mut Phone_, number: &str) -> Got {
    let phone = Phone::parse(number).unwrap();
    net.send(conn, ClientFrame::RequestCode { phone });
    let got = net.read(conn);
    assert_eq!(got.len(), 1, "{got:?}");
    got[0].clone()
}

#[test]
fn code_requests_are_limited_per_connection_source_network_range_and_in_all() {
    let mut net = Net::new(1, |c| {
        c.code_requests_per_connection_max = 2;
        c.code_requests_per_source_per_hour = 3;
        c.code_requests_per_prefix_per_hour = 5;
        c.code_requests_per_range_per_hour = 4;
        c.sms_per_minute = 60;
    });
    let limited = Got::Error(ErrorKind::RateLimited);
    // Nothing at start: the SMS budget comes back spent after a restart.
    let mut conn = connect_from(&mut net, "192.0.2.1").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612000001"), limited);
    net.advance(60_000);

    // Per connection: the third request on one connection.
    let mut conn = connect_from(&mut net, "192.0.2.1").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612000002"), Got::CodeSent);
    assert_eq!(ask_code(&mut net, &mut conn, "+33612100003"), Got::CodeSent);
    assert_eq!(ask_code(&mut net, &mut conn, "+33612200004"), limited);
    // Per source host: its third code.
    let mut conn = connect_from(&mut net, "192.0.2.1").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612300005"), Got::CodeSent);
    assert_eq!(ask_code(&mut net, &mut conn, "+33612400006"), limited);
    // Per network: two more hosts in 192.0.2.0/24 get two more codes.
    let mut conn = connect_from(&mut net, "192.0.2.2").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612500007"), Got::CodeSent);
    let mut conn = connect_from(&mut net, "192.0.2.3").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612600008"), Got::CodeSent);
    assert_eq!(ask_code(&mut net, &mut conn, "+33612700009"), limited);
    // Per range of numbers, from everywhere: +3361200xxxx had one, and
    // three more from other networks fill it.
    for (n, host) in ["198.51.100.1", "198.51.101.1", "198.51.102.1"]
        .iter()
        .enumerate()
    {
        let mut conn = connect_from(&mut net, host).unwrap();
        let number = format!("+3361200100{n}");
        assert_eq!(ask_code(&mut net, &mut conn, &number), Got::CodeSent);
    }
    let mut conn = connect_from(&mut net, "203.0.113.1").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612001009"), limited);
    assert_eq!(net.sms.borrow().sent.len(), 8);

    // In all: sixty a minute, however many sources; the test range
    // (no SMS) is never crowded out, and refused requests leave nothing
    // in the table of pending signups.
    let mut sent = 0;
    for n in 0..100u32 {
        let host = format!("10.{}.{}.1", n / 256, n % 256);
        let mut conn = connect_from(&mut net, &host).unwrap();
        let number = format!("+4915{:09}", u64::from(n) * 10_000);
        if ask_code(&mut net, &mut conn, &number) == Got::CodeSent {
            sent += 1;
        }
        net.shards[0].closed(conn.conn, net.now_ms);
    }
    assert_eq!(sent, 60 - 8);
    let (test_number, _) = numbers_on(&net, 0);
    assert_eq!(ask_code(&mut net, &mut conn, &test_number), Got::CodeSent);
    net.send(
        &mut conn,
        ClientFrame::Verify {
            phone: Phone::parse(&test_number).unwrap(),
            code: 111_111,
        },
    );
    assert!(matches!(net.read(&conn)[..], [Got::Registered(_)]));
    assert_eq!(net.shards[0].counters().codes_refused, 5 + 48);
}

fn group_answer(net: &mut Net, conn: &mut Phone_, frame: ClientFrame<'_>) -> Vec<Got> {
    net.send(conn, frame);
    net.read(conn)
        .into_iter()
        .filter(|g| !matches!(g, Got::GroupNotice { .. } | Got::GroupMessage { .. }))
        .collect()
}

#[test]
fn a_non_member_cannot_tell_a_group_that_exists_from_one_that_does_not() {
    let mut net = Net::new(2, |_| {});
    let (a, b) = pair(&net);
    let (alice, alice_key) = net.signup(&a);
    let (bob, bob_key) = net.signup(&b);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let create = ClientFrame::CreateGroup {
        client_id: 1,
        subject: "private",
        members: vec![],
    };
    let got = group_answer(&mut net, &mut alice_conn, create);
    let [Got::Sent { id, .. }] = got[..] else {
        panic!("{got:?}")
    };
    let real = GroupId::from_u64(id).unwrap();
    let made_up = GroupId::derive(alice, 2);
    let mut answers = Vec::new();
    for group in [real, made_up] {
        let post = ClientFrame::GroupSend {
            client_id: 5,
            group,
            body: b"?",
        };
        answers.push(group_answer(&mut net, &mut bob_conn, post));
        let leave = ClientFrame::ChangeGroup {
            client_id: 6,
            group,
            change: GroupChange::Left,
        };
        answers.push(group_answer(&mut net, &mut bob_conn, leave));
    }
    let refused = vec![Got::Error(ErrorKind::NotGroupMember)];
    assert_eq!(answers, vec![refused; 4]);
}

#[test]
fn only_numbers_with_accounts_become_members_and_strangers_cost_lookups() {
    let mut net = Net::new(2, |c| {
        c.contacts_max = 2;
        c.contact_lookups_per_day = 1;
    });
    let (a, b) = pair(&net);
    let (alice, alice_key) = net.signup(&a);
    let (bob, _) = net.signup(&b);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let nobody = Phone::parse("+15550009999").unwrap();
    // Test numbers are not charged: this is the registration rule alone.
    let got = group_answer(
        &mut net,
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "plans",
            members: vec![bob, nobody],
        },
    );
    assert_eq!(got, vec![Got::Error(ErrorKind::UnknownRecipient)]);
    assert_eq!(
        net.shards.iter().map(|s| s.counters().groups).sum::<u64>(),
        0
    );
    let got = group_answer(
        &mut net,
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "plans",
            members: vec![bob],
        },
    );
    let [Got::Sent { id, .. }] = got[..] else {
        panic!("{got:?}")
    };
    let group = GroupId::from_u64(id).unwrap();
    let got = group_answer(
        &mut net,
        &mut alice_conn,
        ClientFrame::ChangeGroup {
            client_id: 2,
            group,
            change: GroupChange::Added(vec![nobody]),
        },
    );
    assert_eq!(got, vec![Got::Error(ErrorKind::UnknownRecipient)]);

    // Outside the test range, members outside the contacts cost lookups
    // (a burst of two here), all or nothing.
    let (mallory, mallory_key) = signup_by_sms(&mut net, "+442071230001");
    let (mut conn, _) = net.login(mallory, mallory_key);
    let (carol, _) = net.signup("+15550000003");
    let got = group_answer(
        &mut net,
        &mut conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "probe",
            members: vec![alice, bob, carol],
        },
    );
    assert_eq!(got, vec![Got::Error(ErrorKind::RateLimited)]);
    let got = group_answer(
        &mut net,
        &mut conn,
        ClientFrame::CreateGroup {
            client_id: 2,
            subject: "probe",
            members: vec![alice, nobody],
        },
    );
    assert_eq!(got, vec![Got::Error(ErrorKind::UnknownRecipient)]);
    let got = group_answer(
        &mut net,
        &mut conn,
        ClientFrame::CreateGroup {
            client_id: 3,
            subject: "probe",
            members: vec![carol],
        },
    );
    assert_eq!(got, vec![Got::Error(ErrorKind::RateLimited)], "spent");
}

#[test]
fn a_closing_connection_that_does_not_read_is_dropped_after_a_grace_time() {
    let mut net = Net::new(1, |c| {
        c.login_timeout_ms = 2_000;
        c.close_flush_timeout_ms = 5_000;
    });
    // Never logs in and never reads what it is sent.
    let lurker = net.connect();
    let (alice, alice_key) = net.signup("+15550000001");
    let (first, _) = net.login(alice, alice_key);
    let (_second, _) = net.login(alice, alice_key);
    net.advance(2_000);
    assert!(net.shards[0].is_closing(lurker.conn));
    assert!(net.shards[0].is_closing(first.conn), "replaced");
    assert!(!net.shards[0].is_abandoned(lurker.conn));
    assert!(!net.shards[0].is_abandoned(first.conn));
    net.advance(5_000);
    assert!(net.shards[0].is_abandoned(lurker.conn));
    assert!(net.shards[0].is_abandoned(first.conn));
    assert_eq!(net.shards[0].counters().closes_abandoned, 2);
}

#[test]
fn what_expired_undelivered_can_never_be_marked_read() {
    let mut net = Net::new(2, |c| {
        c.message_retention_ms = 60_000;
        c.idle_timeout_ms = u64::MAX / 4;
    });
    let (a, b) = pair(&net);
    let (alice, alice_key) = net.signup(&a);
    let (bob, bob_key) = net.signup(&b);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.send(
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 50,
            subject: "stale",
            members: vec![bob],
        },
    );
    let group = GroupId::derive(alice, 50);
    net.message(&mut alice_conn, bob, 5, b"never read");
    net.send(
        &mut alice_conn,
        ClientFrame::GroupSend {
            client_id: 51,
            group,
            body: b"never read either",
        },
    );
    net.advance(61_000);
    net.advance(61_000);
    let mut expired: Vec<u64> = net
        .read(&alice_conn)
        .iter()
        .filter_map(|g| match g {
            Got::Receipt {
                kind: ReceiptKind::Expired,
                client_id,
                ..
            } => Some(*client_id),
            _ => None,
        })
        .collect();
    expired.sort_unstable();
    assert_eq!(expired, vec![5, 51], "the message and the post");
    let refused = vec![Got::Error(ErrorKind::BadRequest)];
    let (mut bob_conn, _) = net.login(bob, bob_key);
    assert_eq!(read(&mut net, &mut bob_conn, alice, 5), refused);
    assert_eq!(read(&mut net, &mut bob_conn, alice, 51), refused);
    // The same after a restart, from the log, and after a checkpoint.
    for compact in [false, true] {
        if compact {
            net.compact();
        }
        net.restart();
        let (mut bob_conn, _) = net.login(bob, bob_key);
        assert_eq!(read(&mut net, &mut bob_conn, alice, 5), refused);
        assert_eq!(read(&mut net, &mut bob_conn, alice, 51), refused);
    }
}

#[test]
fn a_group_cannot_make_a_member_unreachable_nor_hold_unbounded_bytes_for_it() {
    let mut net = Net::new(2, |c| {
        c.mailbox_entries_max = 3;
        c.group_entries_max = 5;
        c.group_bytes_max = 10_000;
    });
    let (a, b) = pair(&net);
    let (mallory, mallory_key) = net.signup(&a);
    let (victim, victim_key) = net.signup(&b);
    let (friend, friend_key) = net.signup("+15550000099");
    let (mut mallory_conn, _) = net.login(mallory, mallory_key);
    net.send(
        &mut mallory_conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "spam",
            members: vec![victim],
        },
    );
    let group = GroupId::derive(mallory, 1);
    // The victim is away; posts pile up in its mailbox: the notice and
    // four small posts reach the entry bound.
    for client_id in 2..=9 {
        net.send(
            &mut mallory_conn,
            ClientFrame::GroupSend {
                client_id,
                group,
                body: b"spam",
            },
        );
    }
    let shard = net.shards[0].config().map.shard_of(victim) as usize;
    assert_eq!(net.shards[shard].counters().group_entries_stored, 5);
    // Each post answered `Sent` that will not reach the victim is reported.
    let undeliverable: Vec<u64> = receipts(&net.read(&mallory_conn))
        .into_iter()
        .filter(|&(kind, by, _)| kind == ReceiptKind::Undeliverable && by == victim)
        .map(|(_, _, client_id)| client_id)
        .collect();
    assert_eq!(undeliverable, vec![6, 7, 8, 9]);
    // A friend's 1:1 messages still get in, up to the 1:1 bound.
    let (mut friend_conn, _) = net.login(friend, friend_key);
    for client_id in 1..=3 {
        net.message(&mut friend_conn, victim, client_id, b"are you there?");
    }
    let got = net.read(&friend_conn);
    assert!(got.iter().all(|g| matches!(g, Got::Sent { .. })), "{got:?}");
    assert_eq!(got.len(), 3);

    // Bytes: after the victim reads everything, two 4,000-byte posts fit
    // in 10,000 bytes and a third does not.
    let (mut victim_conn, mut got) = net.login(victim, victim_key);
    while let Some(seq) = got.iter().rev().find_map(|g| match g {
        Got::Message { seq, .. } | Got::GroupMessage { seq, .. } | Got::GroupNotice { seq, .. } => {
            Some(*seq)
        }
        _ => None,
    }) {
        net.send(&mut victim_conn, ClientFrame::Ack { up_to: seq });
        got = net.read(&victim_conn);
    }
    net.shards[shard].closed(victim_conn.conn, net.now_ms);
    net.settle();
    let before = net.shards[shard]
        .counters()
        .group_entries_dropped_mailbox_full;
    let big = vec![7u8; 4_000];
    for client_id in 20..23 {
        net.send(
            &mut mallory_conn,
            ClientFrame::GroupSend {
                client_id,
                group,
                body: &big,
            },
        );
    }
    let dropped = net.shards[shard]
        .counters()
        .group_entries_dropped_mailbox_full
        - before;
    assert_eq!(dropped, 1);
    assert!(receipts(&net.read(&mallory_conn)).contains(&(ReceiptKind::Undeliverable, victim, 22)));
    // What was stored comes back with its bytes after a restart, and the
    // bound still holds.
    net.restart();
    let (mut mallory_conn, _) = net.login(mallory, mallory_key);
    net.send(
        &mut mallory_conn,
        ClientFrame::GroupSend {
            client_id: 30,
            group,
            body: &big,
        },
    );
    assert_eq!(
        net.shards[shard]
            .counters()
            .group_entries_dropped_mailbox_full,
        1
    );
}

#[test]
fn code_allowances_stay_spent_across_a_crash_and_a_checkpoint() {
    let mut net = Net::new(1, |c| {
        c.code_requests_max = 2;
        c.code_requests_per_source_per_hour = 3;
        c.code_requests_per_connection_max = 10;
    });
    net.advance(60_000);
    let limited = Got::Error(ErrorKind::RateLimited);
    let mut conn = connect_from(&mut net, "192.0.2.1").unwrap();
    // Two codes for one number, then its allowance is spent.
    assert_eq!(ask_code(&mut net, &mut conn, "+33612000001"), Got::CodeSent);
    assert_eq!(ask_code(&mut net, &mut conn, "+33612000001"), Got::CodeSent);
    assert_eq!(ask_code(&mut net, &mut conn, "+33612000001"), limited);
    for compact in [false, true] {
        if compact {
            net.compact();
        }
        net.restart();
        net.advance(60_000);
        let mut conn = connect_from(&mut net, "192.0.2.9").unwrap();
        assert_eq!(
            ask_code(&mut net, &mut conn, "+33612000001"),
            limited,
            "the number's allowance (compacted: {compact})"
        );
        // The source's third code, then nothing from it.
        let mut conn = connect_from(&mut net, "192.0.2.1").unwrap();
        let number = if compact {
            "+33613000003"
        } else {
            "+33613000002"
        };
        let expected = if compact {
            limited.clone()
        } else {
            Got::CodeSent
        };
        assert_eq!(ask_code(&mut net, &mut conn, number), expected);
    }
    // An hour on, all of it comes back.
    net.advance(60 * 60 * 1000);
    let mut conn = connect_from(&mut net, "192.0.2.1").unwrap();
    assert_eq!(ask_code(&mut net, &mut conn, "+33612000001"), Got::CodeSent);
}

#[test]
fn logins_profiles_groups_and_code_guesses_each_cost_an_allowance() {
    let mut net = Net::new(1, |c| {
        c.logins_per_minute = 3;
        c.groups_created_per_day = 2;
        c.send_rate_per_s = 1;
        c.send_burst = 3;
        c.code_attempts_per_source_per_hour = 3;
    });
    let limited = Got::Error(ErrorKind::RateLimited);
    let (alice, alice_key) = net.signup("+15550000001");
    // Logins: three a minute to one account.
    for _ in 0..3 {
        net.login(alice, alice_key);
    }
    let mut conn = net.connect();
    net.send(
        &mut conn,
        ClientFrame::Login {
            phone: alice,
            key: alice_key,
        },
    );
    assert_eq!(net.read(&conn), vec![limited.clone()]);
    net.advance(60_000);
    let (mut conn, _) = net.login(alice, alice_key);
    // A profile change costs a send token like a message.
    for client_id in 1..=4 {
        net.send(
            &mut conn,
            ClientFrame::SetProfile {
                client_id,
                profile: Profile::default(),
            },
        );
    }
    assert_eq!(
        net.read(&conn),
        vec![Got::Done(1), Got::Done(2), Got::Done(3), limited.clone()]
    );
    // Groups: two a day.
    net.advance(10_000);
    for client_id in 10..13 {
        net.send(
            &mut conn,
            ClientFrame::CreateGroup {
                client_id,
                subject: "g",
                members: vec![],
            },
        );
    }
    let got: Vec<Got> = net
        .read(&conn)
        .into_iter()
        .filter(|g| !matches!(g, Got::GroupNotice { .. }))
        .collect();
    assert!(
        matches!(got[..], [Got::Sent { .. }, Got::Sent { .. }, _]),
        "{got:?}"
    );
    assert_eq!(got[2], limited);
    // Code guesses: three an hour from one source, across connections.
    let phone = Phone::parse("+4930123456").unwrap();
    for n in 0..3 {
        let mut conn = connect_from(&mut net, "192.0.2.5").unwrap();
        net.send(&mut conn, ClientFrame::Verify { phone, code: n });
        assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::BadCode)]);
    }
    let mut conn = connect_from(&mut net, "192.0.2.5").unwrap();
    net.send(&mut conn, ClientFrame::Verify { phone, code: 9 });
    assert_eq!(net.read(&conn), vec![limited]);
    let mut conn = connect_from(&mut net, "192.0.2.6").unwrap();
    net.send(&mut conn, ClientFrame::Verify { phone, code: 9 });
    assert_eq!(net.read(&conn), vec![Got::Error(ErrorKind::BadCode)]);
}

/// Regression: with `code_requests_max = 0` (a number may be sent no code)
/// the first request for a number never seen went past the number's
/// allowance, which only an existing entry was asked, and the shard then
/// asserted that the code it sent had been spent: a panic from one frame.
#[test]
fn a_number_allowed_no_codes_is_refused_not_a_panic() {
    let mut net = Net::new(1, |c| c.code_requests_max = 0);
    // The SMS budget starts spent; a second refills one code.
    net.advance(1_000);
    let mut conn = net.connect();
    let got = ask_code(&mut net, &mut conn, "+442071230001");
    assert_eq!(got, Got::Error(ErrorKind::RateLimited));
}
