//! A secondary's warm standby over the fault-injecting disk: shipped
//! batches are written to its tablet log and restored into its shard as
//! they come, so its state is the primary's at every acknowledged batch,
//! across its own restart, and a promotion needs no replay.

use std::sync::Arc;

use futures_lite::future::block_on;
use server::island::standby::{Standby, StandbyError};
use shard::{Env, PartitionMap, Push, Shard, ShardConfig, PARTITIONS_DEFAULT};
use storage::{
    log::{memory_disk::MemoryDisk, shipping::ShippedBatch, Log, LogConfig},
    EntryRecord, Record,
};
use wire::Phone;

struct QuietEnv;

impl Env for QuietEnv {
    fn random(&mut self, buffer: &mut [u8]) {
        buffer.fill(7);
    }
    fn send_sms(&mut self, _: Phone, _: u32) -> bool {
        true
    }
    fn push(&mut self, _: Push) -> bool {
        true
    }
}

fn new_shard() -> Shard {
    let config = ShardConfig::new(0, PartitionMap::new(PARTITIONS_DEFAULT, 1));
    Shard::new(config, Box::new(QuietEnv), 0)
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        ..LogConfig::new(0, 1)
    }
}

fn phone(n: u64) -> Phone {
    Phone::from_u64(15_550_000_000 + n).unwrap()
}

/// Commits a shard of the primary would make: accounts signing up, then
/// messages between them, some acknowledged.
fn commits(count: u64) -> Vec<Vec<Record>> {
    let mut commits: Vec<Vec<Record>> = (0..10)
        .map(|n| {
            vec![
                Record::AccountKey {
                    phone: phone(n),
                    key_hash: [n as u8; storage::KEY_HASH_BYTES],
                    generation: 1,
                },
                Record::AccountSince {
                    phone: phone(n),
                    since_ms: 1_000 + n,
                },
            ]
        })
        .collect();
    for c in 0..count {
        let (owner, from) = (phone(c % 10), phone((c + 1) % 10));
        let seq = c / 10 + 1;
        let mut commit = vec![Record::MailboxPut {
            owner,
            seq,
            entry: EntryRecord::Message {
                from,
                client_id: c,
                sent_at_ms: 2_000 + c,
                body: Arc::from(vec![c as u8; 100 + (c as usize * 37) % 3_000]),
            },
        }];
        if c % 3 == 0 {
            commit.push(Record::MailboxAck { owner, up_to: seq });
        }
        commits.push(commit);
    }
    commits
}

/// What a shard holds, comparable: its checkpoint's records, sorted.
fn state(shard: &mut Shard) -> Vec<String> {
    let mut lines: Vec<String> = shard
        .checkpoint()
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_standby_holds_the_primarys_state_at_every_batch_and_across_its_restart() {
    let (primary_disk, tablet_disk) = (MemoryDisk::new(), MemoryDisk::new());
    let (mut primary_log, _) = block_on(Log::open(primary_disk.clone(), log_config(), |_| {
        panic!("a new log")
    }))
    .unwrap();
    let mut primary = new_shard();
    let (mut standby, _) = block_on(Standby::open(
        tablet_disk.clone(),
        log_config(),
        new_shard(),
    ))
    .unwrap();
    for (n, commit) in commits(120).iter().enumerate() {
        let mut shipped = Vec::new();
        block_on(primary_log.append_shipping(commit, &mut shipped)).unwrap();
        for record in commit {
            primary.restore(record.clone()).unwrap();
        }
        block_on(standby.append(&shipped)).unwrap();
        assert_eq!(standby.next_seq(), primary_log.next_seq());
        if n % 40 == 0 {
            assert_eq!(state(standby.shard()), state(&mut primary), "batch {n}");
        }
    }
    assert_eq!(state(standby.shard()), state(&mut primary));
    let next = standby.next_seq();
    drop(standby);

    // The secondary restarts: its tablet's log gives back the same state.
    let (standby, recovery) =
        block_on(Standby::open(tablet_disk, log_config(), new_shard())).unwrap();
    assert_eq!(standby.next_seq(), next);
    assert_eq!(recovery.torn_tail, None);
    let (mut log, mut promoted) = standby.promote();
    assert_eq!(state(&mut promoted), state(&mut primary));
    assert_eq!(promoted.counters().accounts, 10);
    // Promoted, its log goes on as a primary's.
    block_on(log.append(&commits(1)[0])).unwrap();
}

#[test]
fn a_standby_takes_only_the_next_batch_and_stops_on_one_that_does_not_apply() {
    let (primary_disk, tablet_disk) = (MemoryDisk::new(), MemoryDisk::new());
    let (mut primary_log, _) = block_on(Log::open(primary_disk, log_config(), |_| {
        panic!("a new log")
    }))
    .unwrap();
    let mut shipped: Vec<ShippedBatch> = Vec::new();
    for commit in &commits(5) {
        block_on(primary_log.append_shipping(commit, &mut shipped)).unwrap();
    }
    let (mut standby, _) = block_on(Standby::open(tablet_disk, log_config(), new_shard())).unwrap();
    // A gap is refused, and nothing is applied.
    let error = block_on(standby.append(&shipped[3..])).unwrap_err();
    assert!(matches!(error, StandbyError::Ship(_)), "{error}");
    assert_eq!(standby.shard().counters().accounts, 0);
    block_on(standby.append(&shipped[..12])).unwrap();
    assert_eq!(standby.shard().counters().accounts, 10);

    // A batch that is whole but refers to an account the standby never
    // had: the stream and the tablet disagree; the standby stops.
    let mut stray = Vec::new();
    let orphan = vec![Record::MailboxAck {
        owner: phone(99),
        up_to: 1,
    }];
    let (mut other_log, _) = block_on(Log::open(MemoryDisk::new(), log_config(), |_| {})).unwrap();
    for _ in 0..12 {
        block_on(other_log.append(&commits(0)[0])).unwrap();
    }
    block_on(other_log.append_shipping(&orphan, &mut stray)).unwrap();
    let error = block_on(standby.append(&stray)).unwrap_err();
    assert!(
        matches!(error, StandbyError::Restore { seq: 13, .. }),
        "{error}"
    );
    let error = block_on(standby.append(&shipped[13..14])).unwrap_err();
    assert!(matches!(error, StandbyError::Failed), "{error}");
}
