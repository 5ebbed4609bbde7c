//! Presence, typing, contacts and profiles on one thread: two shards, so
//! that the follower and the followed sit on different shards.

mod common;

use common::*;

/// Alice (shard 0) and Bob (shard 1), signed up and logged in.
fn alice_and_bob(net: &mut Net) -> (Phone, DeviceKey, Phone_, Phone, DeviceKey, Phone_) {
    let (alice, alice_key, bob, bob_key) = signed_up_pair(net);
    let (alice_conn, _) = net.login(alice, alice_key);
    let (bob_conn, _) = net.login(bob, bob_key);
    (alice, alice_key, alice_conn, bob, bob_key, bob_conn)
}

fn sync(net: &mut Net, conn: &mut Phone_, client_id: u64, full: bool, add: &[Phone]) -> Vec<Got> {
    net.send(
        conn,
        ClientFrame::SyncContacts {
            client_id,
            full,
            add: add.to_vec(),
            remove: Vec::new(),
        },
    );
    net.read(conn)
}

fn subscribe(net: &mut Net, conn: &mut Phone_, phone: Phone) -> Vec<Got> {
    net.send(conn, ClientFrame::Subscribe { phone });
    net.read(conn)
}

fn presence(phone: Phone, presence: Presence) -> Got {
    Got::Presence { phone, presence }
}

#[test]
fn presence_is_seen_only_by_mutual_contacts_and_follows_every_change() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, mut alice_conn, bob, _, mut bob_conn) = alice_and_bob(&mut net);
    let unavailable = vec![presence(alice, Presence::Unavailable)];
    net.advance(1_000);

    // Neither lists the other; then only Bob lists Alice: hidden both times.
    assert_eq!(subscribe(&mut net, &mut bob_conn, alice), unavailable);
    let got = sync(&mut net, &mut bob_conn, 1, true, &[alice]);
    assert_eq!(
        got,
        vec![Got::Contacts {
            client_id: 1,
            registered: vec![alice]
        }]
    );
    assert_eq!(subscribe(&mut net, &mut bob_conn, alice), unavailable);

    // Alice lists Bob too: now he sees her, and each change follows.
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, alice),
        vec![presence(alice, Presence::Online)]
    );
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: false },
    );
    let away_at = net.now_ms;
    let away = Presence::Offline {
        last_seen_ms: Some(away_at),
    };
    assert_eq!(net.read(&bob_conn), vec![presence(alice, away)]);
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: true },
    );
    assert_eq!(net.read(&bob_conn), vec![presence(alice, Presence::Online)]);

    // She hangs up: offline since then; she logs in again: online.
    net.advance(5_000);
    net.shards[alice_conn.shard as usize].closed(alice_conn.conn, net.now_ms);
    net.settle();
    let gone = Presence::Offline {
        last_seen_ms: Some(net.now_ms),
    };
    assert_eq!(net.read(&bob_conn), vec![presence(alice, gone)]);
    let (mut alice_conn, _) = net.login(alice, alice_key);
    assert_eq!(net.read(&bob_conn), vec![presence(alice, Presence::Online)]);

    // She hides her last seen: offline shows no time.
    net.send(
        &mut alice_conn,
        ClientFrame::SetPrivacy {
            client_id: 2,
            hide_last_seen: true,
        },
    );
    assert_eq!(net.read(&alice_conn), vec![Got::Done(2)]);
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: false },
    );
    let hidden = Presence::Offline { last_seen_ms: None };
    assert_eq!(net.read(&bob_conn), vec![presence(alice, hidden)]);

    // She drops Bob from her contacts: he hears nothing more, and asking
    // again finds her hidden.
    net.send(
        &mut alice_conn,
        ClientFrame::SyncContacts {
            client_id: 3,
            full: false,
            add: Vec::new(),
            remove: vec![bob],
        },
    );
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: true },
    );
    assert_eq!(net.read(&bob_conn), vec![]);
    assert_eq!(subscribe(&mut net, &mut bob_conn, alice), unavailable);
}

#[test]
fn unsubscribing_or_hanging_up_ends_the_pushes() {
    let mut net = Net::new(2, |_| {});
    let (alice, _, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    sync(&mut net, &mut bob_conn, 1, true, &[alice]);
    subscribe(&mut net, &mut bob_conn, alice);
    net.send(&mut bob_conn, ClientFrame::Unsubscribe { phone: alice });
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: false },
    );
    assert_eq!(net.read(&bob_conn), vec![]);

    // A new connection follows nothing until it asks.
    subscribe(&mut net, &mut bob_conn, alice);
    net.shards[bob_conn.shard as usize].closed(bob_conn.conn, net.now_ms);
    net.settle();
    let (bob_conn, _) = net.login(bob, bob_key);
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: true },
    );
    assert_eq!(net.read(&bob_conn), vec![]);
    // Alice's shard forgot Bob: the hang-up told it.
    net.shards[alice_conn.shard as usize].closed(alice_conn.conn, net.now_ms);
    net.settle();
    assert_eq!(net.read(&bob_conn), vec![]);
}

#[test]
fn a_connection_follows_a_bounded_number_of_phones() {
    let mut net = Net::new(2, |c| c.presence_subscriptions_max = 1);
    let (alice, _, mut alice_conn, bob, _, mut bob_conn) = alice_and_bob(&mut net);
    let (carol, _) = net.signup("+15550009999");
    sync(&mut net, &mut bob_conn, 1, true, &[alice, carol]);
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    subscribe(&mut net, &mut bob_conn, alice);
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, carol),
        vec![Got::Error(ErrorKind::TooManySubscriptions)]
    );
    // Following the same phone again is no new subscription.
    assert_eq!(subscribe(&mut net, &mut bob_conn, alice).len(), 1);
}

#[test]
fn contact_sync_finds_accounts_on_every_shard_and_is_durable() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    let (carol, _) = net.signup("+15550009999");
    let nobody = Phone::parse("+15550008888").unwrap();
    let got = sync(
        &mut net,
        &mut alice_conn,
        7,
        true,
        &[nobody, carol, bob, alice, bob],
    );
    let mut registered = vec![bob, carol];
    registered.sort();
    assert_eq!(
        got,
        vec![Got::Contacts {
            client_id: 7,
            registered
        }]
    );

    // A delta: only what it adds is looked up.
    let (dave, _) = net.signup("+15550007777");
    let got = sync(&mut net, &mut alice_conn, 8, false, &[dave]);
    assert_eq!(
        got,
        vec![Got::Contacts {
            client_id: 8,
            registered: vec![dave]
        }]
    );
    sync(&mut net, &mut bob_conn, 1, true, &[alice]);

    // The lists outlive a checkpoint and a restart, and a checkpoint with
    // them is a fixed point.
    net.compact();
    net.restart();
    net.assert_checkpoints_are_fixed_points();
    let (_alice_conn, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, alice),
        vec![presence(alice, Presence::Online)]
    );
}

#[test]
fn contact_lookups_are_bounded_in_size_and_rate() {
    let mut net = Net::new(2, |c| {
        c.contacts_max = 10;
        c.contact_lookups_per_day = 24;
        c.contact_syncs_per_hour = 3;
        c.idle_timeout_ms = u64::MAX / 4;
    });
    let (_, _, mut alice_conn, _, _, _) = alice_and_bob(&mut net);
    let numbers: Vec<Phone> = (0..30)
        .map(|n| Phone::parse(&format!("+1666000{n:04}")).unwrap())
        .collect();
    assert_eq!(
        sync(&mut net, &mut alice_conn, 1, true, &numbers[..11]),
        vec![Got::Error(ErrorKind::TooManyContacts)]
    );
    // The first ten new numbers are the burst; re-sending them is free.
    assert!(matches!(
        sync(&mut net, &mut alice_conn, 2, true, &numbers[..10])[..],
        [Got::Contacts { client_id: 2, .. }]
    ));
    assert!(matches!(
        sync(&mut net, &mut alice_conn, 3, true, &numbers[..10])[..],
        [Got::Contacts { client_id: 3, .. }]
    ));
    // Swapping them for new ones needs allowance that comes back slowly:
    // one number an hour here.
    assert_eq!(
        sync(&mut net, &mut alice_conn, 4, true, &numbers[10..12]),
        vec![Got::Error(ErrorKind::RateLimited)]
    );
    net.advance(2 * 60 * 60 * 1000);
    assert!(matches!(
        sync(&mut net, &mut alice_conn, 5, true, &numbers[10..12])[..],
        [Got::Contacts { client_id: 5, .. }]
    ));
    // And syncs themselves are counted: three an hour.
    let counters = net.shards[alice_conn.shard as usize].counters();
    assert_eq!(counters.contact_syncs, 3);
    for client_id in 6..=8 {
        sync(&mut net, &mut alice_conn, client_id, true, &numbers[10..12]);
    }
    assert_eq!(
        sync(&mut net, &mut alice_conn, 9, true, &numbers[10..12]),
        vec![Got::Error(ErrorKind::RateLimited)]
    );
}

#[test]
fn typing_reaches_whoever_is_connected_and_is_never_stored() {
    let mut net = Net::new(2, |_| {});
    let (alice, _, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    let typing = |chat| ClientFrame::Typing {
        chat,
        state: TypingState::Composing,
    };
    net.send(&mut alice_conn, typing(Chat::Direct(bob)));
    assert_eq!(
        net.read(&bob_conn),
        vec![Got::Typing {
            from: alice,
            group: None,
            state: TypingState::Composing
        }]
    );

    // In a group: every other member, on any shard; a non-member's
    // indicator goes nowhere.
    let (carol, carol_key) = net.signup("+15550009999");
    let (mut carol_conn, _) = net.login(carol, carol_key);
    net.send(
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 1,
            subject: "plans",
            members: vec![bob],
        },
    );
    let group = GroupId::derive(alice, 1);
    net.read(&alice_conn);
    net.read(&bob_conn);
    net.send(&mut bob_conn, typing(Chat::Group(group)));
    let composing = Got::Typing {
        from: bob,
        group: Some(group),
        state: TypingState::Composing,
    };
    assert_eq!(net.read(&alice_conn), vec![composing]);
    assert_eq!(net.read(&bob_conn), vec![]);
    net.send(&mut carol_conn, typing(Chat::Group(group)));
    assert_eq!(
        (net.read(&alice_conn), net.read(&bob_conn)),
        (vec![], vec![])
    );
    let owner = net.shards[0].config().map.shard_of_group(group);
    assert_eq!(
        net.shards[owner as usize]
            .counters()
            .signals_dropped_not_member,
        1
    );

    // Bob is away when Alice types: he finds nothing when he is back.
    net.shards[bob_conn.shard as usize].closed(bob_conn.conn, net.now_ms);
    net.settle();
    net.send(&mut alice_conn, typing(Chat::Direct(bob)));
    let (_, got) = net.login(bob, bob_key);
    assert!(
        got.iter().all(|g| !matches!(g, Got::Typing { .. })),
        "{got:?}"
    );
}

#[test]
fn signals_give_way_at_a_full_outbox_and_a_backed_up_queue_and_are_counted() {
    let mut net = Net::new(2, |c| c.outbox_feed_bytes_max = 64);
    let (alice, _, mut alice_conn, bob, _, bob_conn) = alice_and_bob(&mut net);
    let typing = ClientFrame::Typing {
        chat: Chat::Direct(bob),
        state: TypingState::Paused,
    };
    // Bob does not read: past 64 bytes his indicators are dropped.
    for _ in 0..20 {
        net.send(&mut alice_conn, typing.clone());
    }
    let got = net.read(&bob_conn);
    let counters = net.shards[bob_conn.shard as usize].counters();
    assert!(got.len() < 20 && !got.is_empty(), "{got:?}");
    assert_eq!(counters.signals_dropped_outbox_full, 20 - got.len() as u64);
    assert!(got
        .iter()
        .all(|g| matches!(g, Got::Typing { from, .. } if *from == alice)));

    // The queue between the shards is backed up: dropped at the sender.
    net.drop_signals = true;
    net.send(&mut alice_conn, typing);
    assert_eq!(net.read(&bob_conn), vec![]);
    let counters = net.shards[alice_conn.shard as usize].counters();
    assert_eq!(counters.signals_dropped_queue_full, 1);
}

#[test]
fn profiles_show_to_contacts_change_for_followers_and_survive_a_restart() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    let profile = Profile {
        name: "Alice".into(),
        about: "at the lake".into(),
        photo: b"media:1234".to_vec(),
    };
    net.send(
        &mut alice_conn,
        ClientFrame::SetProfile {
            client_id: 4,
            profile: profile.clone(),
        },
    );
    assert_eq!(net.read(&alice_conn), vec![Got::Done(4)]);
    let hidden = vec![Got::Profile {
        phone: alice,
        profile: None,
    }];
    net.send(&mut bob_conn, ClientFrame::GetProfile { phone: alice });
    assert_eq!(net.read(&bob_conn), hidden);
    sync(&mut net, &mut bob_conn, 1, true, &[alice]);
    net.send(&mut bob_conn, ClientFrame::GetProfile { phone: alice });
    assert_eq!(net.read(&bob_conn), hidden, "Alice does not list Bob");
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    net.send(&mut bob_conn, ClientFrame::GetProfile { phone: alice });
    let shown = Got::Profile {
        phone: alice,
        profile: Some(profile.clone()),
    };
    assert_eq!(net.read(&bob_conn), vec![shown.clone()]);

    // A follower hears of a change.
    subscribe(&mut net, &mut bob_conn, alice);
    let mut changed = profile.clone();
    changed.about = "back home".into();
    net.send(
        &mut alice_conn,
        ClientFrame::SetProfile {
            client_id: 5,
            profile: changed.clone(),
        },
    );
    let pushed = Got::Profile {
        phone: alice,
        profile: Some(changed.clone()),
    };
    assert_eq!(net.read(&bob_conn), vec![pushed.clone()]);
    assert_eq!(net.read(&alice_conn), vec![Got::Done(5)]);

    // Too long a field is refused and changes nothing.
    let mut long = changed.clone();
    long.name = "x".repeat(PROFILE_NAME_BYTES_MAX + 1);
    net.send(
        &mut alice_conn,
        ClientFrame::SetProfile {
            client_id: 6,
            profile: long,
        },
    );
    assert_eq!(
        net.read(&alice_conn),
        vec![Got::Error(ErrorKind::BadRequest)]
    );

    net.restart();
    let (_, _) = net.login(alice, alice_key);
    let (mut bob_conn, _) = net.login(bob, bob_key);
    net.send(&mut bob_conn, ClientFrame::GetProfile { phone: alice });
    assert_eq!(net.read(&bob_conn), vec![pushed]);
}

#[test]
fn last_seen_survives_a_restart() {
    let mut net = Net::new(2, |_| {});
    let (alice, _, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    sync(&mut net, &mut bob_conn, 1, true, &[alice]);
    net.advance(1_000);
    let left_at = net.now_ms;
    net.shards[alice_conn.shard as usize].closed(alice_conn.conn, net.now_ms);
    net.settle();
    net.restart();
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let away = Presence::Offline {
        last_seen_ms: Some(left_at),
    };
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, alice),
        vec![presence(alice, away)]
    );
}

fn register_push(net: &mut Net, conn: &mut Phone_, token: &str) {
    net.send(
        conn,
        ClientFrame::RegisterPush {
            client_id: 90,
            platform: PushPlatform::Fcm,
            token: token.into(),
        },
    );
    assert_eq!(net.read(conn), vec![Got::Done(90)]);
}

#[test]
fn a_phone_that_is_away_is_pushed_once_per_interval_and_a_rejected_token_is_dropped() {
    let mut net = Net::new(2, |c| {
        c.push_interval_ms = 10_000;
        c.idle_timeout_ms = u64::MAX / 4;
    });
    let (alice, alice_key, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    let bob_shard = bob_conn.shard as usize;
    let pushes = |net: &Net| net.sms.borrow().pushes.clone();
    register_push(&mut net, &mut bob_conn, "token-1");
    // Online: messages go down the connection, no push.
    net.message(&mut alice_conn, bob, 1, b"hi");
    assert!(pushes(&net).is_empty());
    net.message(&mut bob_conn, alice, 1, b"hi back");
    assert!(net
        .read(&alice_conn)
        .iter()
        .any(|g| matches!(g, Got::Message { from, .. } if *from == bob)));

    net.shards[bob_shard].closed(bob_conn.conn, net.now_ms);
    net.settle();
    // A receipt wakes no one.
    net.send(
        &mut alice_conn,
        ClientFrame::Read {
            from: bob,
            client_id: 1,
        },
    );
    assert!(pushes(&net).is_empty());
    for client_id in 2..=4 {
        net.message(&mut alice_conn, bob, client_id, b"while away");
    }
    // One push at once; the two after it wait for the interval's end.
    let got = pushes(&net);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].phone, &*got[0].token), (bob, "token-1"));
    assert_eq!(got[0].platform, PushPlatform::Fcm);
    net.advance(10_000);
    let got = pushes(&net);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].waiting, 5, "every unacknowledged entry waits");
    let counters = net.shards[bob_shard].counters();
    assert_eq!((counters.pushes_sent, counters.pushes_coalesced), (2, 2));

    // The token survives a restart; then the gateway rejects it (a stale
    // rejection of another token changes nothing).
    net.restart();
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 5, b"after restart");
    assert_eq!(pushes(&net).len(), 3);
    net.shards[bob_shard].push_rejected(bob, "an older token");
    net.shards[bob_shard].push_rejected(bob, "token-1");
    net.settle();
    net.advance(60_000);
    net.message(&mut alice_conn, bob, 6, b"no push now");
    assert_eq!(pushes(&net).len(), 3);
    assert_eq!(net.shards[bob_shard].counters().push_tokens_dropped, 1);
    net.restart();
    let (mut alice_conn, _) = net.login(alice, alice_key);
    net.message(&mut alice_conn, bob, 7, b"still none");
    assert_eq!(pushes(&net).len(), 3, "the drop is durable");

    // A full push queue drops the push and counts it.
    let (mut bob_conn, _) = net.login(bob, bob_key);
    register_push(&mut net, &mut bob_conn, "token-2");
    net.shards[bob_shard].closed(bob_conn.conn, net.now_ms);
    net.sms.borrow_mut().push_queue_full = true;
    net.message(&mut alice_conn, bob, 8, b"queue full");
    assert_eq!(pushes(&net).len(), 3);
    assert_eq!(
        net.shards[bob_shard].counters().pushes_dropped_queue_full,
        1
    );
}

#[test]
fn what_waits_past_the_retention_is_deleted_and_its_sender_told() {
    let mut net = Net::new(2, |c| {
        c.message_retention_ms = 60_000;
        c.idle_timeout_ms = u64::MAX / 4;
    });
    let (alice, _, mut alice_conn, bob, bob_key, bob_conn) = alice_and_bob(&mut net);
    net.send(
        &mut alice_conn,
        ClientFrame::CreateGroup {
            client_id: 100,
            subject: "old news",
            members: vec![bob],
        },
    );
    net.read(&alice_conn);
    net.read(&bob_conn);
    let group = GroupId::derive(alice, 100);
    net.shards[bob_conn.shard as usize].closed(bob_conn.conn, net.now_ms);
    net.advance(1_000);
    net.message(&mut alice_conn, bob, 1, b"old");
    net.send(
        &mut alice_conn,
        ClientFrame::GroupSend {
            client_id: 101,
            group,
            body: b"old to the group",
        },
    );
    net.advance(30_000);
    net.message(&mut alice_conn, bob, 2, b"younger");
    net.read(&alice_conn);
    // The first two pass the retention; the third does not yet.
    net.advance(40_000);
    let got = net.read(&alice_conn);
    let mut expired: Vec<u64> = got
        .iter()
        .filter_map(|g| match g {
            Got::Receipt {
                kind: ReceiptKind::Expired,
                by,
                client_id,
                ..
            } if *by == bob => Some(*client_id),
            _ => None,
        })
        .collect();
    expired.sort();
    assert_eq!(expired, vec![1, 101], "{got:?}");
    let counters = net.shards[bob_conn.shard as usize].counters();
    assert_eq!(counters.messages_expired, 2);

    // Bob finds only what is young enough, and the deletion is durable.
    net.restart();
    let (_, got) = net.login(bob, bob_key);
    let bodies: Vec<&[u8]> = got
        .iter()
        .filter_map(|g| match g {
            Got::Message { body, .. } | Got::GroupMessage { body, .. } => Some(&body[..]),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, vec![&b"younger"[..]], "{got:?}");
}

#[test]
fn presence_changes_past_the_send_allowance_reach_no_follower_but_still_count() {
    let mut net = Net::new(2, |c| {
        c.send_burst = 4;
        c.send_rate_per_s = 1;
    });
    let (alice, _, mut alice_conn, bob, _, mut bob_conn) = alice_and_bob(&mut net);
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    sync(&mut net, &mut bob_conn, 1, true, &[alice]);
    subscribe(&mut net, &mut bob_conn, alice);
    // Ten changes at once: the burst of four is told, the rest dropped.
    for i in 0..10 {
        let available = i % 2 == 1;
        net.send(&mut alice_conn, ClientFrame::SetPresence { available });
    }
    let got = net.read(&bob_conn);
    assert_eq!(got.len(), 4, "{got:?}");
    let counters = net.shards[alice_conn.shard as usize].counters();
    assert_eq!(counters.signals_dropped_rate, 6);
    // The last change (available) stands: asking again sees it.
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, alice),
        vec![presence(alice, Presence::Online)]
    );
    // Once the allowance refills, changes are told again.
    net.advance(2_000);
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: false },
    );
    assert!(matches!(
        net.read(&bob_conn)[..],
        [Got::Presence { phone, presence: Presence::Offline { .. } }] if phone == alice
    ));
}

#[test]
fn going_away_in_a_loop_writes_last_seen_once_a_minute_and_hanging_up_writes_it_exactly() {
    let mut net = Net::new(2, |_| {});
    let (alice, alice_key, mut alice_conn, bob, bob_key, mut bob_conn) = alice_and_bob(&mut net);
    sync(&mut net, &mut alice_conn, 1, true, &[bob]);
    sync(&mut net, &mut bob_conn, 1, true, &[alice]);
    let written = |net: &Net| {
        net.records
            .iter()
            .filter_map(|r| match r {
                storage::Record::LastSeen { owner, at_ms } if *owner == alice => Some(*at_ms),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let toggle = |net: &mut Net, conn: &mut Phone_| {
        net.advance(1_000);
        net.send(conn, ClientFrame::SetPresence { available: false });
        let away_at = net.now_ms;
        net.advance(1_000);
        net.send(conn, ClientFrame::SetPresence { available: true });
        away_at
    };
    // Ten times away in twenty seconds: written the first time only.
    let first_away = toggle(&mut net, &mut alice_conn);
    for _ in 0..9 {
        toggle(&mut net, &mut alice_conn);
    }
    assert_eq!(written(&net), vec![first_away]);
    // A minute on, going away writes again.
    net.advance(60_000);
    let later_away = toggle(&mut net, &mut alice_conn);
    assert_eq!(written(&net), vec![first_away, later_away]);

    // Away again (not written: too soon), then she hangs up: the exact
    // time she went away is written, and a restart shows it.
    net.advance(1_000);
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: false },
    );
    let last_away = net.now_ms;
    assert_eq!(written(&net), vec![first_away, later_away]);
    net.advance(5_000);
    net.shards[alice_conn.shard as usize].closed(alice_conn.conn, net.now_ms);
    net.settle();
    assert_eq!(written(&net), vec![first_away, later_away, last_away]);
    net.restart();
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let away = Presence::Offline {
        last_seen_ms: Some(last_away),
    };
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, alice),
        vec![presence(alice, away)]
    );

    // Back, away (written: a minute has passed), then a crash while away:
    // what the journal holds is within the slack of the truth.
    let (mut alice_conn, _) = net.login(alice, alice_key);
    let crashed_away = toggle(&mut net, &mut alice_conn);
    net.advance(1_000);
    net.send(
        &mut alice_conn,
        ClientFrame::SetPresence { available: false },
    );
    net.restart();
    let (mut bob_conn, _) = net.login(bob, bob_key);
    let away = Presence::Offline {
        last_seen_ms: Some(crashed_away),
    };
    assert_eq!(
        subscribe(&mut net, &mut bob_conn, alice),
        vec![presence(alice, away)]
    );
    net.compact();
    net.restart();
    net.assert_checkpoints_are_fixed_points();
}
