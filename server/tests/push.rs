//! Pushes to phones that are away, POSTed to an HTTP receiver the test
//! runs: coalescing, retries, and dropping a token the gateway rejects.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{expect, http_receiver, Server};
use loadgen::client::{Client, Event};
use wire::*;

fn register(client: &mut Client, token: &str) {
    client
        .send(&ClientFrame::RegisterPush {
            client_id: 1,
            platform: PushPlatform::Apns,
            token: token.into(),
        })
        .unwrap();
    expect(client, "Done", |e| *e == Event::Done { client_id: 1 });
}

/// Lists each other, so that `watcher` can see `phone` go.
fn befriend(watcher: &mut Client, watcher_phone: Phone, client: &mut Client, phone: Phone) {
    for (client, other, client_id) in [
        (&mut *watcher, phone, phone.as_u64()),
        (client, watcher_phone, 1),
    ] {
        client
            .send(&ClientFrame::SyncContacts {
                client_id,
                full: false,
                add: vec![other],
                remove: Vec::new(),
            })
            .unwrap();
        expect(client, "Contacts", |e| matches!(e, Event::Contacts { .. }));
    }
}

/// `client` hangs up; returns once `watcher` sees it offline, so that the
/// server knows it is away.
fn hang_up(watcher: &mut Client, client: Client, phone: Phone) {
    watcher.send(&ClientFrame::Subscribe { phone }).unwrap();
    expect(watcher, "online", |e| {
        matches!(
            e,
            Event::Presence {
                presence: Presence::Online,
                ..
            }
        )
    });
    drop(client);
    expect(watcher, "offline", |e| {
        matches!(
            e,
            Event::Presence {
                presence: Presence::Offline { .. },
                ..
            }
        )
    });
}

fn send(client: &mut Client, to: Phone, client_id: u64) {
    client
        .send(&ClientFrame::Send {
            client_id,
            to,
            body: b"wake up",
        })
        .unwrap();
    expect(client, "Sent", |e| matches!(e, Event::Sent { .. }));
}

#[test]
fn pushes_are_coalesced_retried_and_a_rejected_token_is_dropped() {
    // "flaky" fails once with 503, "dead" is gone (410), the rest work.
    let tries: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = tries.clone();
    let (url, pushes) = http_receiver(move |json| {
        let token = json["token"].as_str().unwrap().to_owned();
        let mut tries = seen.lock().unwrap();
        let n = tries.entry(token.clone()).or_default();
        *n += 1;
        match (token.as_str(), *n) {
            ("flaky", 1) => 503,
            ("dead", _) => 410,
            _ => 200,
        }
    });
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("isle.toml");
    std::fs::write(
        &config,
        format!("[push]\nwebhook_url = \"{url}\"\ninterval_ms = 2000\nretry_ms = 50\n"),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let (mut alice, alice_phone, _) = server.phone("+15550040001");
    let (mut bob, bob_phone, _) = server.phone("+15550040002");
    let (mut carol, carol_phone, _) = server.phone("+15550040003");
    register(&mut bob, "live");
    register(&mut carol, "dead");
    befriend(&mut alice, alice_phone, &mut bob, bob_phone);
    befriend(&mut alice, alice_phone, &mut carol, carol_phone);
    hang_up(&mut alice, bob, bob_phone);
    hang_up(&mut alice, carol, carol_phone);
    let next = |what: &str| {
        pushes
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no push: {what}"))
    };
    let none_for = |ms: u64| {
        if let Ok(json) = pushes.recv_timeout(Duration::from_millis(ms)) {
            panic!("an unexpected push: {json}");
        }
    };

    // Five messages at once: one push now, one when the interval ends.
    for client_id in 1..=5 {
        send(&mut alice, bob_phone, client_id);
    }
    let first = next("the first");
    assert_eq!(first["phone"], "+15550040002");
    assert_eq!(first["platform"], "apns");
    assert_eq!(first["token"], "live");
    assert!(first.get("body").is_none(), "a push never carries content");
    let second = next("the one that covers the rest");
    assert_eq!(second["token"], "live");
    assert_eq!(second["waiting"], 5);
    none_for(2_500);

    // The gateway says Carol's token is gone: it is not used again.
    send(&mut alice, carol_phone, 10);
    assert_eq!(next("to the dead token")["token"], "dead");
    std::thread::sleep(Duration::from_millis(2_500));
    send(&mut alice, carol_phone, 11);
    none_for(1_000);
    assert_eq!(tries.lock().unwrap()["dead"], 1);

    // A 503 is tried again.
    let (mut dave, dave_phone, _) = server.phone("+15550040004");
    register(&mut dave, "flaky");
    befriend(&mut alice, alice_phone, &mut dave, dave_phone);
    hang_up(&mut alice, dave, dave_phone);
    send(&mut alice, dave_phone, 20);
    assert_eq!(next("the failed try")["token"], "flaky");
    assert_eq!(next("the retry")["token"], "flaky");
    assert_eq!(tries.lock().unwrap()["flaky"], 2);
}
