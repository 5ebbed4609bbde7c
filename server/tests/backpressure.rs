//! Cross-shard queues at their smallest: senders pause and resume, nothing is
//! lost and nothing hangs.

mod common;

use common::{expect, Server};
use loadgen::client::Event;
use shard::{PartitionMap, PARTITIONS_DEFAULT};
use wire::{ClientFrame, Phone};

#[test]
fn a_congested_destination_pauses_its_senders_without_losing_messages() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("isle.toml");
    // One message staged per destination and one batch in flight: almost
    // every cross-shard message finds its queue full.
    std::fs::write(
        &config,
        "[limits]\npeer_staging_messages_max = 1\npeer_queue_batches_max = 1\n",
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);

    // The common server runs two shards; put the two phones on different ones.
    let map = PartitionMap::new(PARTITIONS_DEFAULT, 2);
    let on_shard = |shard: u16| {
        (0..100u64)
            .map(|n| format!("+1555009{n:04}"))
            .find(|number| map.shard_of(Phone::parse(number).unwrap()) == shard)
            .unwrap()
    };
    let (mut alice, _, _) = server.phone(&on_shard(0));
    let (mut bob, bob_phone, _) = server.phone(&on_shard(1));

    const MESSAGES: u64 = 2_000;
    // Write everything without waiting: the server must apply backpressure.
    let mut frames = Vec::new();
    for client_id in 0..MESSAGES {
        let body = client_id.to_le_bytes();
        wire::encode_client(
            &ClientFrame::Send {
                client_id,
                to: bob_phone,
                body: &body,
            },
            &mut frames,
        );
    }
    let writer = std::thread::spawn(move || {
        alice.send_raw(&frames).unwrap();
        let mut sent = 0;
        while sent < MESSAGES {
            // Delivery receipts interleave with the Sent replies: a message
            // can reach Bob and be acked before its batch is on disk.
            match alice.recv().unwrap() {
                Event::Sent { .. } => sent += 1,
                Event::Receipt { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    });

    let mut next = 0;
    while next < MESSAGES {
        let event = expect(&mut bob, "Message", |e| matches!(e, Event::Message { .. }));
        let Event::Message { seq, client_id, .. } = event else {
            unreachable!()
        };
        assert_eq!(client_id, next, "in order, none missing");
        next += 1;
        bob.send(&ClientFrame::Ack { up_to: seq }).unwrap();
    }
    writer.join().unwrap();
}
