//! Signup, login and 1:1 messaging against the real binary.

mod common;

use common::{expect, expect_error, Server, TEST_CODE};
use loadgen::client::{Client, Event};
use wire::*;

#[test]
fn message_to_an_online_phone_with_receipts() {
    let server = Server::start(&[]);
    let (mut alice, alice_phone, _) = server.phone("+15550000001");
    let (mut bob, bob_phone, _) = server.phone("+15550000002");

    alice
        .send(&ClientFrame::Send {
            client_id: 7,
            to: bob_phone,
            body: b"hello bob",
        })
        .unwrap();
    expect(&mut alice, "Sent", |e| {
        matches!(e, Event::Sent { client_id: 7, .. })
    });
    let Event::Message {
        seq,
        from,
        client_id,
        body,
        ..
    } = expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        (from, client_id, &*body),
        (alice_phone, 7, &b"hello bob"[..])
    );

    bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    bob.send(&ClientFrame::Read {
        from: alice_phone,
        client_id: 7,
    })
    .unwrap();
    let delivered = expect(&mut alice, "Delivered", |e| {
        matches!(
            e,
            Event::Receipt {
                kind: ReceiptKind::Delivered,
                ..
            }
        )
    });
    let read = expect(&mut alice, "Read", |e| {
        matches!(
            e,
            Event::Receipt {
                kind: ReceiptKind::Read,
                ..
            }
        )
    });
    for receipt in [delivered, read] {
        let Event::Receipt { by, client_id, .. } = receipt else {
            unreachable!()
        };
        assert_eq!((by, client_id), (bob_phone, 7));
    }
}

#[test]
fn offline_phone_gets_messages_in_order_at_login_and_resends_are_not_stored_twice() {
    let server = Server::start(&[]);
    let (mut alice, _, _) = server.phone("+15550000011");
    let (bob_conn, bob_phone, bob_key) = server.phone("+15550000012");
    drop(bob_conn);
    for client_id in 0..20u64 {
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob_phone,
                body: &client_id.to_le_bytes(),
            })
            .unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..20 {
        let Event::Sent { id, .. } =
            expect(&mut alice, "Sent", |e| matches!(e, Event::Sent { .. }))
        else {
            unreachable!()
        };
        ids.push(id);
    }
    alice
        .send(&ClientFrame::Send {
            client_id: 5,
            to: bob_phone,
            body: b"resend",
        })
        .unwrap();
    let Event::Sent { id, .. } = expect(&mut alice, "Sent", |e| {
        matches!(e, Event::Sent { client_id: 5, .. })
    }) else {
        unreachable!()
    };
    assert_eq!(id, ids[5], "a resend is answered with the first id");

    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    let mut received = Vec::new();
    for _ in 0..20 {
        let Event::Message {
            client_id, body, ..
        } = expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. }))
        else {
            unreachable!()
        };
        assert_eq!(&*body, client_id.to_le_bytes());
        received.push(client_id);
    }
    assert_eq!(received, (0..20).collect::<Vec<_>>());
    // Nothing more: the resend was not stored.
    bob.set_timeout(std::time::Duration::from_millis(300))
        .unwrap();
    assert!(bob.recv().is_err(), "no 21st message");
}

#[test]
fn signup_over_tls_with_a_code_from_the_sms_outbox() {
    let server = Server::start(&[]);
    common::await_sms_budget();
    let phone = Phone::parse("+4930123456").unwrap();
    let mut client = Client::connect_tls(server.tls, Some(&server.cert)).unwrap();
    let outbox = server.data_dir().join("sms-outbox.log");
    let key = client
        .sign_up(phone, || {
            for _ in 0..100 {
                if let Ok(text) = std::fs::read_to_string(&outbox) {
                    if let Some(line) = text.lines().find(|l| l.contains("+4930123456")) {
                        return Ok(line.split_whitespace().last().unwrap().parse()?);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            anyhow::bail!("no code in the outbox")
        })
        .unwrap();
    client.login(phone, key).unwrap();
    client.send(&ClientFrame::Ping { nonce: 9 }).unwrap();
    expect(&mut client, "Pong", |e| *e == Event::Pong { nonce: 9 });
}

#[test]
fn wrong_code_and_wrong_key_are_refused() {
    let server = Server::start(&[]);
    let phone = Phone::parse("+15550000021").unwrap();
    let mut client = server.connect();
    client.send(&ClientFrame::RequestCode { phone }).unwrap();
    expect(&mut client, "CodeSent", |e| {
        matches!(e, Event::CodeSent { .. })
    });
    client
        .send(&ClientFrame::Verify {
            phone,
            code: TEST_CODE + 1,
        })
        .unwrap();
    expect_error(&mut client, ErrorKind::BadCode);
    client
        .send(&ClientFrame::Verify {
            phone,
            code: TEST_CODE,
        })
        .unwrap();
    expect(&mut client, "Registered", |e| {
        matches!(e, Event::Registered { .. })
    });
    client
        .send(&ClientFrame::Login {
            phone,
            key: DeviceKey([0; 32]),
        })
        .unwrap();
    expect_error(&mut client, ErrorKind::BadCredentials);
}

#[test]
fn signing_up_again_revokes_the_old_key_and_closes_its_connection() {
    let server = Server::start(&[]);
    let (mut old, phone, old_key) = server.phone("+15550000031");
    let mut other = server.connect();
    other.sign_up(phone, || Ok(TEST_CODE)).unwrap();
    expect(&mut old, "Bye Revoked", |e| {
        *e == Event::Bye {
            reason: ByeReason::Revoked,
        }
    });
    assert_eq!(old.try_recv().unwrap(), None, "closed after Bye");
    let mut again = server.connect();
    again
        .send(&ClientFrame::Login {
            phone,
            key: old_key,
        })
        .unwrap();
    expect_error(&mut again, ErrorKind::BadCredentials);
}

#[test]
fn a_newer_connection_replaces_the_older() {
    let server = Server::start(&[]);
    let (mut first, phone, key) = server.phone("+15550000041");
    let mut second = server.connect();
    second.login(phone, key).unwrap();
    expect(&mut first, "Bye Replaced", |e| {
        *e == Event::Bye {
            reason: ByeReason::Replaced,
        }
    });
    assert_eq!(first.try_recv().unwrap(), None);
    second.send(&ClientFrame::Ping { nonce: 1 }).unwrap();
    expect(&mut second, "Pong", |e| *e == Event::Pong { nonce: 1 });
}

#[test]
fn malformed_frames_get_an_error_and_a_close_and_the_server_carries_on() {
    let mut server = Server::start(&[]);
    // Garbage after a valid Hello.
    let mut client = server.connect();
    client.send_raw(&[3, 0, 0, 0, 0xFF, 0xFF, 0xFF]).unwrap();
    expect_error(&mut client, ErrorKind::Malformed);
    expect(&mut client, "Bye", |e| {
        *e == Event::Bye {
            reason: ByeReason::ProtocolError,
        }
    });
    assert_eq!(client.try_recv().unwrap(), None);

    // A length prefix of 4 GiB: refused before anything is buffered.
    let mut client = server.connect();
    client.send_raw(&u32::MAX.to_le_bytes()).unwrap();
    expect_error(&mut client, ErrorKind::FrameTooLarge);
    expect(&mut client, "Bye", |e| {
        *e == Event::Bye {
            reason: ByeReason::ProtocolError,
        }
    });

    // No Hello first.
    let mut client = Client::connect_raw(server.plain).unwrap();
    client.send(&ClientFrame::Ping { nonce: 1 }).unwrap();
    expect_error(&mut client, ErrorKind::HelloRequired);

    // TLS garbage on the TLS port.
    let mut raw = std::net::TcpStream::connect(server.tls).unwrap();
    std::io::Write::write_all(&mut raw, &[0x16, 0x03, 0x01, 0xFF, 0xFF, 1, 2, 3]).unwrap();
    drop(raw);

    assert!(server.is_running());
    let (mut alice, alice_phone, _) = server.phone("+15550000051");
    alice
        .send(&ClientFrame::Send {
            client_id: 1,
            to: alice_phone,
            body: b"still here",
        })
        .unwrap();
    // A note to self: the Message may overtake the Sent, which waits for the commit.
    let events = [alice.recv().unwrap(), alice.recv().unwrap()];
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Sent { client_id: 1, .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Message { client_id: 1, .. })),
        "{events:?}"
    );
}

#[test]
fn idle_connections_are_closed() {
    let server = Server::start(&["--idle-timeout-ms", "500"]);
    let (mut quiet, _, _) = server.phone("+15550000061");
    let (mut chatty, _, _) = server.phone("+15550000062");
    for nonce in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        chatty.send(&ClientFrame::Ping { nonce }).unwrap();
        expect(&mut chatty, "Pong", |e| *e == Event::Pong { nonce });
    }
    expect(&mut quiet, "Bye IdleTimeout", |e| {
        *e == Event::Bye {
            reason: ByeReason::IdleTimeout,
        }
    });
}

#[test]
fn sigterm_tells_phones_and_exits_cleanly() {
    let server = Server::start(&[]);
    let (mut alice, _, _) = server.phone("+15550000071");
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    expect(&mut alice, "Bye ShuttingDown", |e| {
        *e == Event::Bye {
            reason: ByeReason::ShuttingDown,
        }
    });
}
