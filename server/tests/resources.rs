//! A resource that runs short and comes back (file descriptors) pauses
//! new durable work with a clear error and heals by itself; it never
//! poisons the journal the way a failed write does.

mod common;

use std::time::Duration;

use common::{Server, TEST_CODE};
use loadgen::client::{Client, Event};
use wire::{ClientFrame, ErrorKind, Phone};

#[test]
fn running_out_of_descriptors_at_a_segment_switch_heals_without_a_restart() {
    // Small segments switch often; forty descriptors run out quickly.
    let extra = ["--shards", "1", "--segment-bytes", "65536"];
    let server = Server::start_with_open_files(40, &extra);
    let (mut alice, _, _) = server.phone("+15550000001");
    let bob = Phone::parse("+15550000002").unwrap();
    let (mut bob_client, _, _) = server.phone("+15550000002");
    // Logged-in phones (no cap applies to them) take every descriptor left.
    let mut hoard: Vec<Client> = Vec::new();
    for n in 3..200 {
        let Ok(mut client) = Client::connect(server.plain) else {
            break;
        };
        client.set_timeout(Duration::from_secs(2)).unwrap();
        let phone = Phone::parse(&format!("+1555000{n:04}")).unwrap();
        let Ok(key) = client.sign_up(phone, || Ok(TEST_CODE)) else {
            break;
        };
        if client.login(phone, key).is_err() {
            break;
        }
        hoard.push(client);
    }
    assert!(!hoard.is_empty());
    // 4 KiB messages until the log needs a new segment it cannot open:
    // that message's `Sent` waits for the commit, which waits for a
    // descriptor.
    let body = vec![7u8; 4096];
    let send = |alice: &mut Client, client_id: u64| {
        alice
            .send(&ClientFrame::Send {
                client_id,
                to: bob,
                body: &body,
            })
            .unwrap();
    };
    let answer = |alice: &mut Client| -> Option<Event> {
        loop {
            match alice.recv() {
                Ok(event @ (Event::Sent { .. } | Event::Error { .. })) => return Some(event),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    alice.set_timeout(Duration::from_secs(2)).unwrap();
    let mut waiting = 0;
    for client_id in 1..200 {
        send(&mut alice, client_id);
        match answer(&mut alice) {
            Some(Event::Sent { .. }) => {}
            None => {
                waiting = client_id;
                break;
            }
            other => panic!("message {client_id}: {other:?}"),
        }
    }
    assert!(waiting > 0, "the log never needed a new segment");
    // Meanwhile new messages are refused as a pause, not a failure.
    send(&mut alice, waiting + 1);
    match answer(&mut alice) {
        Some(Event::Error { kind, .. }) => assert_eq!(kind, ErrorKind::Overloaded),
        other => panic!("{other:?}"),
    }
    // Descriptors come back: the waiting message is stored, and the
    // refused one is accepted when sent again, with no restart.
    drop(hoard);
    alice.set_timeout(Duration::from_secs(20)).unwrap();
    match answer(&mut alice) {
        Some(Event::Sent { client_id, .. }) => assert_eq!(client_id, waiting),
        other => panic!("{other:?}"),
    }
    send(&mut alice, waiting + 1);
    match answer(&mut alice) {
        Some(Event::Sent { client_id, .. }) => assert_eq!(client_id, waiting + 1),
        other => panic!("{other:?}"),
    }
    let client_id = waiting + 1;
    let lines: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        !lines.iter().any(|l| l.contains("journal failed")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("has what it needs again")));
    // And Bob gets what was stored.
    bob_client.set_timeout(Duration::from_secs(5)).unwrap();
    let got = (0..client_id)
        .map_while(|_| bob_client.recv().ok())
        .filter(|e| matches!(e, Event::Message { .. }))
        .count();
    assert!(got >= 1);
}
