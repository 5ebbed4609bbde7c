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
            .filter(|g| **g == Got::Error(ErrorKind::RateLimited))
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
