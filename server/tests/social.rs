//! Presence, typing, contacts and profiles against the real binary, with
//! the phones on different shards.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{expect, expect_error, free_port, Server};
use loadgen::client::{Client, Event};
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::*;

/// Test numbers whose home is `shard` on a two-shard server.
fn numbers_on(shard: u16, count: usize) -> Vec<String> {
    let map = PartitionMap::new(PARTITIONS_DEFAULT, 2);
    (0..1000)
        .map(|n| format!("+1555003{n:04}"))
        .filter(|n| map.shard_of(Phone::parse(n).unwrap()) == shard)
        .take(count)
        .collect()
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Syncs a full contact list; returns the registered numbers among it.
fn sync(client: &mut Client, client_id: u64, contacts: &[Phone]) -> Vec<Phone> {
    client
        .send(&ClientFrame::SyncContacts {
            client_id,
            full: true,
            add: contacts.to_vec(),
            remove: Vec::new(),
        })
        .unwrap();
    match expect(client, "Contacts", |e| matches!(e, Event::Contacts { .. })) {
        Event::Contacts {
            client_id: answered,
            registered,
        } => {
            assert_eq!(answered, client_id);
            registered
        }
        _ => unreachable!(),
    }
}

fn presence_of(client: &mut Client, phone: Phone) -> Presence {
    match expect(
        client,
        "Presence",
        |e| matches!(e, Event::Presence { phone: p, .. } if *p == phone),
    ) {
        Event::Presence { presence, .. } => presence,
        _ => unreachable!(),
    }
}

fn subscribe(client: &mut Client, phone: Phone) -> Presence {
    client.send(&ClientFrame::Subscribe { phone }).unwrap();
    presence_of(client, phone)
}

/// Nothing arrives for a moment.
fn quiet(client: &mut Client) {
    client.set_timeout(Duration::from_millis(300)).unwrap();
    let got = client.try_recv();
    assert!(matches!(got, Ok(None)) || got.is_err(), "{got:?}");
    client.set_timeout(Duration::from_secs(10)).unwrap();
}

#[test]
fn presence_crosses_shards_only_between_mutual_contacts_and_last_seen_survives_a_crash() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let extra = ["--plaintext-listen", listen.as_str()];
    let server = Server::start(&extra);
    let zero = numbers_on(0, 2);
    let one = numbers_on(1, 1);
    let (mut alice, alice_phone, _) = server.phone(&zero[0]);
    let (mut bob, bob_phone, bob_key) = server.phone(&one[0]);
    let (mut carol, carol_phone, _) = server.phone(&zero[1]);

    assert_eq!(sync(&mut alice, 1, &[bob_phone]), vec![bob_phone]);
    sync(&mut bob, 1, &[alice_phone, carol_phone]);
    sync(&mut carol, 1, &[alice_phone]);
    assert_eq!(subscribe(&mut bob, alice_phone), Presence::Online);
    // Carol lists Alice, but Alice does not list Carol.
    assert_eq!(subscribe(&mut carol, alice_phone), Presence::Unavailable);

    alice
        .send(&ClientFrame::SetPresence { available: false })
        .unwrap();
    assert!(matches!(
        presence_of(&mut bob, alice_phone),
        Presence::Offline {
            last_seen_ms: Some(_)
        }
    ));
    alice
        .send(&ClientFrame::SetPresence { available: true })
        .unwrap();
    assert_eq!(presence_of(&mut bob, alice_phone), Presence::Online);

    // Alice's phone goes away: Bob sees when; Carol sees nothing.
    let before = wall_ms();
    drop(alice);
    let Presence::Offline {
        last_seen_ms: Some(last_seen),
    } = presence_of(&mut bob, alice_phone)
    else {
        panic!("Alice should be offline with a time");
    };
    // The server's wall clock is its monotonic clock plus an offset taken
    // at start, good to a few milliseconds.
    let slack_ms = 5;
    assert!(
        last_seen + slack_ms >= before && last_seen <= wall_ms() + slack_ms,
        "{last_seen} not within [{before}, now]"
    );
    quiet(&mut carol);

    // kill -9 and back: the time she was last seen is still known.
    drop((bob, carol));
    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &extra);
    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    assert_eq!(
        subscribe(&mut bob, alice_phone),
        Presence::Offline {
            last_seen_ms: Some(last_seen)
        }
    );
}

#[test]
fn typing_reaches_connected_chat_partners_and_group_members_across_shards() {
    let server = Server::start(&[]);
    let zero = numbers_on(0, 2);
    let one = numbers_on(1, 1);
    let (mut alice, alice_phone, _) = server.phone(&zero[0]);
    let (mut bob, bob_phone, _) = server.phone(&one[0]);
    let (mut carol, carol_phone, _) = server.phone(&zero[1]);

    alice
        .send(&ClientFrame::Typing {
            chat: Chat::Direct(bob_phone),
            state: TypingState::Composing,
        })
        .unwrap();
    let event = bob.recv().unwrap();
    assert_eq!(
        event,
        Event::Typing {
            from: alice_phone,
            group: None,
            state: TypingState::Composing
        }
    );

    alice
        .send(&ClientFrame::CreateGroup {
            client_id: 1,
            subject: "trip",
            members: vec![bob_phone, carol_phone],
        })
        .unwrap();
    // The answer and the creation notice, in either order.
    let group = (0..2)
        .find_map(|_| match alice.recv().unwrap() {
            Event::Sent { id, .. } => Some(GroupId::from_u64(id).unwrap()),
            _ => None,
        })
        .expect("Sent");
    for member in [&mut bob, &mut carol] {
        expect(member, "the creation", |e| {
            matches!(e, Event::GroupNotice { .. })
        });
    }
    bob.send(&ClientFrame::Typing {
        chat: Chat::Group(group),
        state: TypingState::Paused,
    })
    .unwrap();
    let paused = Event::Typing {
        from: bob_phone,
        group: Some(group),
        state: TypingState::Paused,
    };
    assert_eq!(alice.recv().unwrap(), paused);
    assert_eq!(carol.recv().unwrap(), paused);
    quiet(&mut bob);
}

#[test]
fn contacts_and_profiles_keep_their_bounds_show_only_to_contacts_and_survive_a_crash() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("isle.toml");
    std::fs::write(&config, "[limits]\ncontacts_max = 3\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let extra = [
        "--config",
        config.to_str().unwrap(),
        "--plaintext-listen",
        listen.as_str(),
    ];
    let server = Server::start(&extra);
    let zero = numbers_on(0, 2);
    let one = numbers_on(1, 1);
    let (mut alice, alice_phone, alice_key) = server.phone(&zero[0]);
    let (mut bob, bob_phone, bob_key) = server.phone(&one[0]);
    let (mut carol, _, _) = server.phone(&zero[1]);

    let strangers: Vec<Phone> = (0..3)
        .map(|n| Phone::parse(&format!("+1666000000{n}")).unwrap())
        .collect();
    let mut four = strangers.clone();
    four.push(bob_phone);
    alice
        .send(&ClientFrame::SyncContacts {
            client_id: 1,
            full: true,
            add: four,
            remove: Vec::new(),
        })
        .unwrap();
    expect_error(&mut alice, ErrorKind::TooManyContacts);
    let mut three = strangers[..2].to_vec();
    three.push(bob_phone);
    assert_eq!(sync(&mut alice, 2, &three), vec![bob_phone]);
    sync(&mut bob, 1, &[alice_phone]);

    let profile = Profile {
        name: "Alice".into(),
        about: "available".into(),
        photo: b"media:42".to_vec(),
    };
    alice
        .send(&ClientFrame::SetProfile {
            client_id: 3,
            profile: profile.clone(),
        })
        .unwrap();
    assert_eq!(alice.recv().unwrap(), Event::Done { client_id: 3 });
    bob.send(&ClientFrame::GetProfile { phone: alice_phone })
        .unwrap();
    assert_eq!(
        bob.recv().unwrap(),
        Event::Profile {
            phone: alice_phone,
            profile: Some(profile.clone())
        }
    );
    carol
        .send(&ClientFrame::GetProfile { phone: alice_phone })
        .unwrap();
    assert_eq!(
        carol.recv().unwrap(),
        Event::Profile {
            phone: alice_phone,
            profile: None
        }
    );

    // Bob follows her: a change reaches him unasked.
    subscribe(&mut bob, alice_phone);
    let mut changed = profile;
    changed.about = "busy".into();
    alice
        .send(&ClientFrame::SetProfile {
            client_id: 4,
            profile: changed.clone(),
        })
        .unwrap();
    let pushed = Event::Profile {
        phone: alice_phone,
        profile: Some(changed),
    };
    assert_eq!(bob.recv().unwrap(), pushed);
    assert_eq!(alice.recv().unwrap(), Event::Done { client_id: 4 });

    // kill -9 after the Done: the profile and both lists are back.
    drop((alice, bob, carol));
    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &extra);
    let mut alice = server.connect();
    alice.login(alice_phone, alice_key).unwrap();
    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    bob.send(&ClientFrame::GetProfile { phone: alice_phone })
        .unwrap();
    assert_eq!(bob.recv().unwrap(), pushed);
    assert_eq!(subscribe(&mut bob, alice_phone), Presence::Online);
}

#[test]
fn a_message_undelivered_past_the_retention_is_deleted_and_the_sender_told() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("isle.toml");
    std::fs::write(&config, "[limits]\nmessage_retention_ms = 1000\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let (mut alice, _, _) = server.phone(&numbers_on(0, 1)[0]);
    // Bob signs up and stays away.
    let bob_phone = Phone::parse(&numbers_on(1, 1)[0]).unwrap();
    let bob_key = server
        .connect()
        .sign_up(bob_phone, || Ok(common::TEST_CODE))
        .unwrap();
    alice
        .send(&ClientFrame::Send {
            client_id: 7,
            to: bob_phone,
            body: b"are you there?",
        })
        .unwrap();
    expect(&mut alice, "Sent", |e| {
        matches!(e, Event::Sent { client_id: 7, .. })
    });
    expect(&mut alice, "Expired", |e| {
        matches!(
            e,
            Event::Receipt { kind: ReceiptKind::Expired, by, client_id: 7, .. } if *by == bob_phone
        )
    });
    let mut bob = server.connect();
    bob.login(bob_phone, bob_key).unwrap();
    quiet(&mut bob);
}
