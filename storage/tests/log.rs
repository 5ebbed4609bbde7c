//! The log over the in-memory disk: replay, rotation, and every fault the
//! disk can be made to commit.

use std::sync::Arc;

use futures_lite::future::block_on;
use storage::{
    log::{
        format::BLOCK_BYTES,
        memory_disk::{Fault, MemoryDisk},
        Log, LogConfig, LogError, Recovery,
    },
    EntryRecord, Record,
};
use wire::{Phone, ReceiptKind};

fn phone(n: u64) -> Phone {
    Phone::from_u64(15_550_000_000 + n).unwrap()
}

fn message(owner: u64, seq: u64, body_bytes: usize) -> Record {
    Record::MailboxPut {
        owner: phone(owner),
        seq,
        entry: EntryRecord::Message {
            from: phone(owner + 1),
            client_id: seq * 7,
            sent_at_ms: 1_700_000_000_000 + seq,
            body: Arc::from(vec![(seq % 251) as u8; body_bytes]),
        },
    }
}

/// Segments are preallocated, and the in-memory disk holds them whole:
/// small ones keep the tests quick.
const SEGMENT_BYTES: u64 = 256 * 1024;

fn config() -> LogConfig {
    sharded(0, 1)
}

fn sharded(shard: u16, shard_count: u16) -> LogConfig {
    LogConfig {
        segment_bytes_max: SEGMENT_BYTES,
        ..LogConfig::new(shard, shard_count)
    }
}

fn open(
    disk: &MemoryDisk,
    config: LogConfig,
) -> Result<(Log<MemoryDisk>, Recovery, Vec<Record>), LogError> {
    let mut replayed = Vec::new();
    let (log, recovery) = block_on(Log::open(disk.clone(), config, |r| replayed.push(r)))?;
    Ok((log, recovery, replayed))
}

fn commits(count: u64) -> Vec<Vec<Record>> {
    (0..count)
        .map(|c| {
            vec![
                message(c, c * 3 + 1, 10),
                Record::MailboxAck {
                    owner: phone(c),
                    up_to: c,
                },
                Record::MailboxPut {
                    owner: phone(c),
                    seq: c * 3 + 2,
                    entry: EntryRecord::Receipt {
                        kind: ReceiptKind::Read,
                        by: phone(9),
                        client_id: c,
                    },
                },
            ]
        })
        .collect()
}

#[test]
fn replays_what_was_appended_across_reopens() {
    let disk = MemoryDisk::new();
    let (mut log, recovery, replayed) = open(&disk, config()).unwrap();
    assert_eq!((recovery, replayed.len()), (Recovery::default(), 0));
    let all = commits(20);
    for commit in &all[..10] {
        block_on(log.append(commit)).unwrap();
    }
    drop(log);
    let (mut log, recovery, replayed) = open(&disk, config()).unwrap();
    assert_eq!(replayed, all[..10].concat());
    assert_eq!((recovery.batches, recovery.records), (10, 30));
    for commit in &all[10..] {
        block_on(log.append(commit)).unwrap();
    }
    drop(log);
    let (log, _, replayed) = open(&disk, config()).unwrap();
    assert_eq!(replayed, all.concat());
    assert_eq!(log.next_seq(), 21);
}

#[test]
fn rotates_segments_and_splits_large_commits() {
    let disk = MemoryDisk::new();
    let config = LogConfig {
        segment_bytes_max: 64 * 1024,
        ..config()
    };
    let (mut log, _, _) = open(&disk, config).unwrap();
    // 300 records of 60 KiB: batches split at the payload limit, and many
    // segments.
    let big: Vec<Record> = (0..300).map(|i| message(1, i + 1, 60 * 1024)).collect();
    block_on(log.append(&big)).unwrap();
    let small = commits(50);
    for commit in &small {
        block_on(log.append(commit)).unwrap();
    }
    // 3 batches of at most 8 MiB for the big commit, each in a segment of
    // its own; small batches of one block each, 15 to a segment.
    assert_eq!(log.segments(), 1..=7);
    drop(log);
    let (_, recovery, replayed) = open(&disk, config).unwrap();
    assert!(replayed == [big, small.concat()].concat(), "replay differs");
    assert_eq!(recovery.segments, 7);
    assert_eq!(recovery.torn_tail, None);
}

/// Appends `commits`, then one more whose sync fails, and crashes keeping
/// `torn` bytes of that last write. Returns the disk and the last commit's
/// frame length.
fn crash_during_last(all: &[Vec<Record>], torn: usize) -> MemoryDisk {
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, config()).unwrap();
    for commit in &all[..all.len() - 1] {
        block_on(log.append(commit)).unwrap();
    }
    // The next operations are: write, sync. Fail the sync.
    disk.inject(disk.operations() + 2, Fault::Errno(libc::EIO));
    let error = block_on(log.append(&all[all.len() - 1])).unwrap_err();
    assert!(matches!(error, LogError::Io(_)), "{error}");
    assert!(matches!(
        block_on(log.append(&all[0])),
        Err(LogError::Poisoned)
    ));
    drop(log);
    disk.crash(torn);
    disk
}

#[test]
fn a_torn_last_batch_is_cut_at_every_offset() {
    let mut all = commits(5);
    all.push(vec![message(7, 100, 5_000), message(7, 101, 3)]);
    let acknowledged = all[..5].concat();
    // The last batch's bytes before its zero padding.
    let mut frame = Vec::new();
    storage::log::format::encode_batch(6, &all[5], &mut frame);
    let content = frame.len() - frame.iter().rev().take_while(|&&b| b == 0).count();
    assert!(frame.len() > BLOCK_BYTES, "the last batch spans blocks");
    for torn in 0..=frame.len() {
        let disk = crash_during_last(&all, torn);
        let (mut log, recovery, replayed) = open(&disk, config()).unwrap();
        if torn >= content {
            assert!(replayed == all.concat(), "whole batch survived at {torn}");
            assert_eq!(recovery.torn_tail, None);
        } else {
            assert!(
                replayed == acknowledged,
                "torn at {torn}: {} records",
                replayed.len()
            );
            let zeros = torn == 0;
            assert_eq!(
                recovery.torn_tail.is_some(),
                !zeros,
                "torn at {torn}: {recovery:?}"
            );
        }
        // The log carries on from there, and a second reopen agrees.
        block_on(log.append(&all[0])).unwrap();
        drop(log);
        let (_, recovery, again) = open(&disk, config()).unwrap();
        assert_eq!(again.last(), all[0].last(), "torn at {torn}");
        assert_eq!(recovery.torn_tail, None, "torn at {torn}");
    }
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_kept() {
    let all = commits(8);
    let disk = crash_during_last(&all, 0);
    let (_, _, replayed) = open(&disk, config()).unwrap();
    assert_eq!(replayed, all[..7].concat());
}

#[test]
fn a_flipped_bit_in_the_last_batch_is_a_torn_tail() {
    let all = commits(4);
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, config()).unwrap();
    for commit in &all {
        block_on(log.append(commit)).unwrap();
    }
    drop(log);
    // Batch 4 starts at block 4 (block 0 is the header).
    disk.flip_bit(1, (4 * BLOCK_BYTES + 40) as u64, 3);
    let (_, recovery, replayed) = open(&disk, config()).unwrap();
    assert_eq!(replayed, all[..3].concat());
    assert_eq!(recovery.torn_tail, Some((1, (4 * BLOCK_BYTES) as u64)));
}

#[test]
fn a_flipped_bit_in_the_middle_refuses_to_start_unless_salvaging() {
    let all = commits(6);
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, config()).unwrap();
    for commit in &all {
        block_on(log.append(commit)).unwrap();
    }
    drop(log);
    disk.flip_bit(1, (2 * BLOCK_BYTES + 30) as u64, 0);
    match open(&disk, config()) {
        Err(LogError::Damaged {
            number,
            offset,
            reason,
        }) => {
            assert_eq!((number, offset), (1, 2 * BLOCK_BYTES as u64));
            assert!(reason.to_string().contains("checksum"), "{reason}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("damage in the middle was accepted"),
    }
    // The error names the way out, and salvage takes it, loudly.
    let salvage = LogConfig {
        salvage: true,
        ..config()
    };
    let (_, recovery, replayed) = open(&disk, salvage).unwrap();
    let mut expected = all.clone();
    expected.remove(1);
    assert_eq!(replayed, expected.concat());
    assert_eq!(recovery.salvaged.len(), 1, "{recovery:?}");
    assert!(
        recovery.salvaged[0]
            .to_string()
            .contains("batches 2..3 lost"),
        "{recovery:?}"
    );
}

#[test]
fn write_and_sync_errors_poison_the_log() {
    for (step, errno) in [
        (1, libc::EIO),
        (1, libc::ENOSPC),
        (2, libc::EIO),
        (2, libc::ENOSPC),
    ] {
        let disk = MemoryDisk::new();
        let (mut log, _, _) = open(&disk, config()).unwrap();
        let all = commits(3);
        block_on(log.append(&all[0])).unwrap();
        disk.inject(disk.operations() + step, Fault::Errno(errno));
        assert!(block_on(log.append(&all[1])).is_err());
        assert!(log.is_poisoned());
        // Even with the disk healthy again, nothing more is accepted.
        assert!(matches!(
            block_on(log.append(&all[2])),
            Err(LogError::Poisoned)
        ));
        drop(log);
        disk.crash(0);
        let (_, _, replayed) = open(&disk, config()).unwrap();
        assert_eq!(replayed, all[0], "step {step} errno {errno}");
    }
}

#[test]
fn a_disk_without_room_for_a_larger_segment_takes_one_like_the_last() {
    let disk = MemoryDisk::new();
    let config = LogConfig {
        segment_bytes_max: 4 * SEGMENT_BYTES,
        first_segment_bytes: SEGMENT_BYTES,
        ..config()
    };
    let (mut log, _, _) = open(&disk, config).unwrap();
    // Room for the first segment and one more of its size, not for the
    // twice as large one that would come next: the disk is not full, and
    // the log goes on into a segment as large as the first.
    disk.set_capacity(Some(2 * SEGMENT_BYTES + SEGMENT_BYTES / 2));
    assert!(!log.disk_full());
    let all = commits(200);
    for commit in &all {
        match block_on(log.append(commit)) {
            Ok(()) => {}
            Err(LogError::NoSpace) => break,
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(log.segments().count(), 2, "no second segment was made");
    // That one full too, the disk is: there is no room for a third.
    assert!(log.disk_full());
    assert!(!log.is_poisoned());
    drop(log);
    // After a restart the same: room for one like the last is enough.
    disk.set_capacity(Some(3 * SEGMENT_BYTES + SEGMENT_BYTES / 2));
    let (log, _, _) = open(&disk, config).unwrap();
    assert!(!log.disk_full());
}

#[test]
fn a_full_disk_refuses_a_new_segment_without_poisoning_the_log() {
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, config()).unwrap();
    assert!(!log.disk_full());
    // Room for the one segment there is, and not for a second: the log
    // says so at once, and appends go on into what is left of it.
    disk.set_capacity(Some(SEGMENT_BYTES + SEGMENT_BYTES / 2));
    assert!(log.disk_full());
    let all = commits(200);
    let mut written = 0;
    let refused = loop {
        match block_on(log.append(&all[written])) {
            Ok(()) => written += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(refused, LogError::NoSpace), "{refused:?}");
    assert!(
        written > 10,
        "only {written} commits before the segment was full"
    );
    assert!(!log.is_poisoned());
    // Refused again, as often as asked, with nothing written.
    assert!(matches!(
        block_on(log.append(&all[written])),
        Err(LogError::NoSpace)
    ));
    // Space comes back: the same commit goes through, and so do the rest.
    disk.set_capacity(None);
    assert!(!log.disk_full());
    for commit in &all[written..] {
        block_on(log.append(commit)).unwrap();
    }
    assert!(log.segments().count() > 1);
    drop(log);
    disk.crash(0);
    let (_, _, replayed) = open(&disk, config()).unwrap();
    assert!(replayed == all.concat(), "replay differs");
}

#[test]
fn running_short_of_descriptors_for_a_new_segment_heals_without_poisoning() {
    for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
        let disk = MemoryDisk::new();
        let (mut log, _, _) = open(&disk, config()).unwrap();
        disk.fail_creates(Some(errno));
        let all = commits(200);
        let mut written = 0;
        let refused = loop {
            match block_on(log.append(&all[written])) {
                Ok(()) => written += 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(refused, LogError::Unavailable(_)), "{refused:?}");
        assert!(!log.is_poisoned());
        assert!(matches!(
            block_on(log.append(&all[written])),
            Err(LogError::Unavailable(_))
        ));
        // The descriptors come back: the same commit goes through.
        disk.fail_creates(None);
        for commit in &all[written..] {
            block_on(log.append(commit)).unwrap();
        }
        drop(log);
        disk.crash(0);
        let (_, _, replayed) = open(&disk, config()).unwrap();
        assert!(replayed == all.concat(), "replay differs (errno {errno})");
    }
}

#[test]
fn short_writes_are_resumed() {
    for short in [0, 1, 100, BLOCK_BYTES - 1, BLOCK_BYTES, BLOCK_BYTES + 7] {
        let disk = MemoryDisk::new();
        let (mut log, _, _) = open(&disk, config()).unwrap();
        let big = vec![message(1, 1, 20_000), message(1, 2, 20_000)];
        disk.inject(disk.operations() + 1, Fault::ShortWrite(short));
        block_on(log.append(&big)).unwrap();
        drop(log);
        let (_, _, replayed) = open(&disk, config()).unwrap();
        assert_eq!(replayed, big, "short write of {short}");
    }
}

#[test]
fn endless_short_writes_fail_instead_of_spinning() {
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, config()).unwrap();
    let at = disk.operations();
    for i in 1..=20 {
        disk.inject(at + i, Fault::ShortWrite(10));
    }
    let error = block_on(log.append(&commits(1)[0])).unwrap_err();
    assert!(error.to_string().contains("less than a block"), "{error}");
}

#[test]
fn a_log_of_another_shard_or_shard_count_is_refused() {
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, sharded(1, 4)).unwrap();
    block_on(log.append(&commits(1)[0])).unwrap();
    drop(log);
    for config in [sharded(0, 4), sharded(1, 2)] {
        match open(&disk, config) {
            Err(LogError::WrongShard {
                found_shard: 1,
                found_count: 4,
                ..
            }) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("another shard's log was replayed"),
        }
    }
    assert!(open(&disk, sharded(1, 4)).is_ok());
}

#[test]
fn a_missing_segment_is_refused() {
    let disk = MemoryDisk::new();
    let config = LogConfig {
        segment_bytes_max: 3 * BLOCK_BYTES as u64,
        ..config()
    };
    let (mut log, _, _) = open(&disk, config).unwrap();
    for commit in commits(12) {
        block_on(log.append(&commit)).unwrap();
    }
    assert_eq!(log.segments(), 1..=6);
    drop(log);
    block_on(storage::log::backend::Backend::remove(&disk, 3)).unwrap();
    match open(&disk, config) {
        Err(LogError::MissingSegment {
            before: 2,
            after: 4,
        }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a gap was accepted"),
    }
}

/// Random commits, faults and crashes against a model: after every reopen
/// the log replays every acknowledged commit, in order, and nothing else but
/// whole commits that were in flight when the fault struck.
#[test]
fn model_random_operations_survive_reopen() {
    for seed in 1..=60u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let config = LogConfig {
            segment_bytes_max: (4 + next(40)) * BLOCK_BYTES as u64,
            ..config()
        };
        let disk = MemoryDisk::new();
        // What the log must replay, and commits that may or may not appear.
        let mut acknowledged: Vec<Vec<Record>> = Vec::new();
        let mut seq = 0;
        let (mut log, _, _) = open(&disk, config).unwrap();
        for step in 0..120 {
            match next(20) {
                0 => {
                    // A fault on one of the next few operations, then a
                    // crash that tears whatever was unsynced.
                    let at = disk.operations() + 1 + next(3);
                    let fault = match next(3) {
                        0 => Fault::Errno(libc::EIO),
                        1 => Fault::Errno(libc::ENOSPC),
                        _ => Fault::ShortWrite(next(3 * BLOCK_BYTES as u64) as usize),
                    };
                    disk.inject(at, fault);
                    let commit: Vec<Record> = (0..1 + next(4))
                        .map(|_| {
                            seq += 1;
                            message(next(5), seq, next(9_000) as usize)
                        })
                        .collect();
                    let outcome = block_on(log.append(&commit));
                    drop(log);
                    disk.crash(next(4 * BLOCK_BYTES as u64) as usize);
                    let (reopened, _, replayed) = open(&disk, config)
                        .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                    let expected = acknowledged.concat();
                    if outcome.is_ok() {
                        acknowledged.push(commit.clone());
                        assert!(
                            replayed == acknowledged.concat(),
                            "seed {seed} step {step}: {} records, {} expected",
                            replayed.len(),
                            acknowledged.concat().len()
                        );
                    } else {
                        // The failed commit is either wholly absent or, if
                        // its batches reached the disk before the failure,
                        // a prefix of its records in whole batches.
                        assert!(
                            replayed.len() >= expected.len()
                                && replayed[..expected.len()] == expected[..],
                            "seed {seed} step {step}"
                        );
                        let extra = &replayed[expected.len()..];
                        assert!(
                            extra.len() <= commit.len() && extra == &commit[..extra.len()],
                            "seed {seed} step {step}"
                        );
                        if !extra.is_empty() {
                            acknowledged.push(extra.to_vec());
                        }
                    }
                    log = reopened;
                }
                1 => {
                    drop(log);
                    let (reopened, _, replayed) = open(&disk, config).unwrap();
                    assert!(
                        replayed == acknowledged.concat(),
                        "seed {seed} step {step}: {} records, {} expected",
                        replayed.len(),
                        acknowledged.concat().len()
                    );
                    log = reopened;
                }
                _ => {
                    let commit: Vec<Record> = (0..1 + next(6))
                        .map(|_| {
                            seq += 1;
                            match next(3) {
                                0 => Record::MailboxAck {
                                    owner: phone(next(5)),
                                    up_to: seq,
                                },
                                _ => message(next(5), seq, next(2_000) as usize),
                            }
                        })
                        .collect();
                    block_on(log.append(&commit)).unwrap();
                    acknowledged.push(commit);
                }
            }
        }
    }
}

#[test]
fn a_checkpoint_lets_replay_skip_and_delete_old_segments() {
    let disk = MemoryDisk::new();
    let config = LogConfig {
        segment_bytes_max: 3 * BLOCK_BYTES as u64,
        ..config()
    };
    let (mut log, _, _) = open(&disk, config).unwrap();
    let all = commits(12);
    for commit in &all[..8] {
        block_on(log.append(commit)).unwrap();
    }
    // Two batches per segment: 8 batches fill segments 1..=4.
    let checkpoint = log.last_batch();
    assert_eq!(checkpoint, 8);
    assert!(log.closed_segments() >= 3, "{:?}", log.segments());
    for commit in &all[8..] {
        block_on(log.append(commit)).unwrap();
    }
    let removed = block_on(log.remove_through(checkpoint)).unwrap();
    assert!(removed >= 3, "{removed}");
    let first_kept = *log.segments().start();
    drop(log);

    // Reopened after the checkpoint, only the later batches come back.
    let mut replayed = Vec::new();
    let (log, _) = block_on(Log::open_after(disk.clone(), config, checkpoint, |r| {
        replayed.push(r)
    }))
    .unwrap();
    assert_eq!(replayed, all[8..].concat());
    assert_eq!(*log.segments().start(), first_kept);
    assert_eq!(log.next_seq(), 13);
    drop(log);

    // Without the checkpoint, the log now starts mid-way: refused.
    let Err(error) = open(&disk, config) else {
        panic!("opened a log that starts mid-way")
    };
    assert!(matches!(error, LogError::CheckpointGap { .. }), "{error}");
}

#[test]
fn segments_a_checkpoint_covers_are_deleted_on_open_after_a_crash() {
    // The checkpoint became durable, then the process died before deleting
    // the segments it covers: opening finishes the job.
    let disk = MemoryDisk::new();
    let config = LogConfig {
        segment_bytes_max: 3 * BLOCK_BYTES as u64,
        ..config()
    };
    let (mut log, _, _) = open(&disk, config).unwrap();
    let all = commits(10);
    for commit in &all {
        block_on(log.append(commit)).unwrap();
    }
    let segments = log.segments().count() as u64;
    drop(log);
    let mut replayed = Vec::new();
    let (log, recovery) = block_on(Log::open_after(disk.clone(), config, 6, |r| {
        replayed.push(r)
    }))
    .unwrap();
    assert_eq!(replayed, all[6..].concat());
    assert!(recovery.obsolete >= 2, "{recovery:?}");
    assert_eq!(log.segments().count() as u64, segments - recovery.obsolete);

    // A checkpoint beyond what the log holds means the log lost batches.
    drop(log);
    let Err(error) = block_on(Log::open_after(disk, config, 40, |_| {})) else {
        panic!("opened a log that ends before its checkpoint")
    };
    assert!(matches!(error, LogError::Damaged { .. }), "{error}");
}

/// The sizes segment files have on `disk`, by number.
fn segment_sizes(disk: &MemoryDisk) -> Vec<(u64, u64)> {
    use storage::log::backend::{Backend, SegmentFile};
    let numbers = block_on(disk.list()).unwrap();
    let size = |n| block_on(block_on(disk.open(n)).unwrap().size()).unwrap();
    numbers.into_iter().map(|n| (n, size(n))).collect()
}

/// A log that starts small: `first` blocks, doubling up to 16.
fn young(first: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 * BLOCK_BYTES as u64,
        first_segment_bytes: first * BLOCK_BYTES as u64,
        ..config()
    }
}

#[test]
fn a_new_log_starts_small_and_doubles_its_segments_up_to_the_limit() {
    let disk = MemoryDisk::new();
    let config = young(2);
    let (mut log, _, _) = open(&disk, config).unwrap();
    let all = commits(60);
    for commit in &all[..40] {
        block_on(log.append(commit)).unwrap();
    }
    // One block per batch: 1 in the first segment, 3, 7, then 15 a
    // segment; never a write past the size a segment was made with.
    let block = BLOCK_BYTES as u64;
    let sizes: Vec<u64> = segment_sizes(&disk)
        .iter()
        .map(|&(_, s)| s / block)
        .collect();
    assert_eq!(sizes, [2, 4, 8, 16, 16]);
    drop(log);
    // Reopened in a young segment, the log goes on at that segment's
    // size and keeps doubling.
    let disk = MemoryDisk::new();
    let (mut log, _, _) = open(&disk, config).unwrap();
    for commit in &all[..3] {
        block_on(log.append(commit)).unwrap();
    }
    drop(log);
    let (mut log, _, replayed) = open(&disk, config).unwrap();
    assert_eq!(replayed, all[..3].concat());
    for commit in &all[3..] {
        block_on(log.append(commit)).unwrap();
    }
    let sizes: Vec<u64> = segment_sizes(&disk)
        .iter()
        .map(|&(_, s)| s / block)
        .collect();
    assert_eq!(sizes[..4], [2, 4, 8, 16]);
    assert!(sizes[4..].iter().all(|&s| s == 16), "{sizes:?}");
    drop(log);
    let (_, _, replayed) = open(&disk, config).unwrap();
    assert_eq!(replayed, all.concat());
}

#[test]
fn a_batch_larger_than_a_young_segment_goes_to_one_that_holds_it() {
    // A first commit bigger than the first segment: that segment is closed
    // empty and the next one is made big enough, rather than the write
    // extending a file whose zeros were never written.
    let disk = MemoryDisk::new();
    let config = young(2);
    let (mut log, _, _) = open(&disk, config).unwrap();
    let big = vec![message(1, 1, 5 * BLOCK_BYTES)];
    block_on(log.append(&big)).unwrap();
    let small = commits(3);
    for commit in &small {
        block_on(log.append(commit)).unwrap();
    }
    let block = BLOCK_BYTES as u64;
    let sizes: Vec<u64> = segment_sizes(&disk)
        .iter()
        .map(|&(_, s)| s / block)
        .collect();
    // The big batch takes 6 blocks: a segment of 7 (its header and the
    // batch), then 14.
    assert_eq!(sizes, [2, 7, 14]);
    drop(log);
    let (_, recovery, replayed) = open(&disk, config).unwrap();
    assert_eq!(replayed, [big, small.concat()].concat());
    assert_eq!(recovery.torn_tail, None);
}

#[test]
fn the_first_segments_of_every_shard_fit_the_start_budget() {
    use storage::log::{
        first_segment_bytes, FIRST_SEGMENT_BYTES_MAX, FIRST_SEGMENT_BYTES_MIN,
        START_ZEROS_BYTES_MAX,
    };
    assert_eq!(first_segment_bytes(1), FIRST_SEGMENT_BYTES_MAX);
    assert_eq!(first_segment_bytes(64), FIRST_SEGMENT_BYTES_MAX);
    assert_eq!(first_segment_bytes(128), FIRST_SEGMENT_BYTES_MAX / 2);
    assert_eq!(first_segment_bytes(1024), FIRST_SEGMENT_BYTES_MIN);
    for shards in 1..=1024u16 {
        let bytes = first_segment_bytes(shards);
        assert!(
            u64::from(shards) * bytes <= START_ZEROS_BYTES_MAX,
            "{shards}"
        );
        assert_eq!(bytes % BLOCK_BYTES as u64, 0);
    }
}

// ---- truncation ------------------------------------------------------------

/// A log over several small segments: `count` commits of one block each,
/// 15 to a 64 KiB segment (the first frames of a young log are in smaller
/// ones).
fn truncation_log(disk: &MemoryDisk, all: &[Vec<Record>]) -> Log<MemoryDisk> {
    let (mut log, _, _) = open(disk, truncation_config()).unwrap();
    for commit in all {
        block_on(log.append(commit)).unwrap();
    }
    log
}

fn truncation_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        ..config()
    }
}

/// Which commits of `all` a replay holds, when it holds a prefix of them.
fn prefix_of(all: &[Vec<Record>], replayed: &[Record]) -> Option<usize> {
    (0..=all.len()).find(|&k| all[..k].concat() == replayed)
}

#[test]
fn a_truncation_cuts_batches_across_segments_and_the_log_goes_on_after_it() {
    let all = commits(60);
    for keep in [0u64, 1, 14, 15, 16, 30, 44, 59] {
        let disk = MemoryDisk::new();
        let mut log = truncation_log(&disk, &all);
        let segments = log.segments();
        assert!(segments.clone().count() > 3, "{segments:?}");
        assert_eq!(
            block_on(log.truncate_after(keep)).unwrap(),
            60 - keep,
            "{keep}"
        );
        assert_eq!(log.next_seq(), keep + 1);
        assert_eq!(log.last_batch(), keep);
        // Appends go on after the cut, across new segments.
        let more = commits(40);
        for commit in &more {
            block_on(log.append(commit)).unwrap();
        }
        drop(log);
        let (log, recovery, replayed) = open(&disk, truncation_config()).unwrap();
        let expected = [all[..keep as usize].concat(), more.concat()].concat();
        assert!(replayed == expected, "keep {keep}: replay differs");
        assert_eq!(recovery.torn_tail, None, "keep {keep}");
        assert_eq!(log.next_seq(), keep + 41);
    }
}

#[test]
fn a_truncation_at_or_past_the_end_changes_nothing_and_one_before_the_log_is_refused() {
    let disk = MemoryDisk::new();
    let all = commits(40);
    let mut log = truncation_log(&disk, &all);
    assert_eq!(block_on(log.truncate_after(40)).unwrap(), 0);
    assert_eq!(block_on(log.truncate_after(99)).unwrap(), 0);
    // A checkpoint took the first segments: their batches are gone.
    let removed = block_on(log.remove_through(30)).unwrap();
    assert!(removed > 0);
    let first = *log.segments().start();
    let error = block_on(log.truncate_after(0)).unwrap_err();
    assert!(
        matches!(error, LogError::TruncateBeforeLog { keep: 0, .. }),
        "{error}"
    );
    assert!(!log.is_poisoned(), "a refused cut touches nothing");
    assert_eq!(log.segments().start(), &first);
    block_on(log.append(&all[0])).unwrap();
}

/// A crash at any point of a truncation (an I/O error at each of its
/// operations in turn, then the power lost, keeping any prefix of what
/// was not synced) leaves a log that opens and holds a prefix of what was
/// written, at least what was kept; the same truncation after the
/// restart finishes the cut.
#[test]
fn a_truncation_interrupted_anywhere_leaves_a_valid_log_and_finishes_when_repeated() {
    let all = commits(50);
    let keep = 12u64;
    let mut step = 1;
    loop {
        let mut finished = false;
        for torn in [0, 100, 4096, 1 << 20] {
            let disk = MemoryDisk::new();
            let mut log = truncation_log(&disk, &all);
            disk.inject(disk.operations() + step, Fault::Errno(libc::EIO));
            finished = block_on(log.truncate_after(keep)).is_ok();
            drop(log);
            disk.crash(torn);
            let (mut log, _, replayed) = open(&disk, truncation_config())
                .unwrap_or_else(|e| panic!("step {step}, torn {torn}: {e}"));
            let kept = prefix_of(&all, &replayed)
                .unwrap_or_else(|| panic!("step {step}, torn {torn}: not a prefix"));
            assert!(kept >= keep as usize, "step {step}, torn {torn}: {kept}");
            if finished {
                assert_eq!(kept, keep as usize, "step {step}: finished");
            }
            block_on(log.truncate_after(keep)).unwrap();
            drop(log);
            let (_, _, replayed) = open(&disk, truncation_config()).unwrap();
            assert_eq!(prefix_of(&all, &replayed), Some(keep as usize));
        }
        if finished {
            break;
        }
        step += 1;
        assert!(step < 200, "the truncation never finished");
    }
    assert!(step > 5, "the cut took {step} operations: too few to test");
}

// ---- shipping to a replica -------------------------------------------------

use storage::log::shipping::{ShipError, ShippedBatch};

/// A primary's batches shipped to a secondary, in shipments of varying
/// size, large commits split in several frames included: both logs replay
/// the same records, and the secondary's log goes on from there.
#[test]
fn shipped_batches_make_the_same_log_on_the_replica() {
    let (primary_disk, replica_disk) = (MemoryDisk::new(), MemoryDisk::new());
    let config = truncation_config();
    let (mut primary, _, _) = open(&primary_disk, config).unwrap();
    let (mut replica, _, _) = open(&replica_disk, config).unwrap();
    let mut all = commits(40);
    all.insert(7, (0..200).map(|i| message(3, i + 1, 60 * 1024)).collect());
    let mut shipped = Vec::new();
    for commit in &all {
        block_on(primary.append_shipping(commit, &mut shipped)).unwrap();
    }
    assert!(
        shipped.len() > all.len(),
        "the large commit took several frames"
    );
    // Shipments of 1, 2, 3, 4, 1, ... batches.
    let (mut at, mut size) = (0, 1);
    while at < shipped.len() {
        let end = (at + size).min(shipped.len());
        block_on(replica.append_shipped(&shipped[at..end])).unwrap();
        (at, size) = (end, size % 4 + 1);
    }
    assert_eq!(replica.next_seq(), primary.next_seq());
    drop((primary, replica));
    let (_, _, from_primary) = open(&primary_disk, config).unwrap();
    let (mut replica, _, from_replica) = open(&replica_disk, config).unwrap();
    assert!(from_primary == all.concat(), "the primary's replay differs");
    assert!(from_replica == from_primary, "the replica's replay differs");
    block_on(replica.append(&commits(1)[0])).unwrap();
}

/// A gap, a repeat, a damaged frame or one that names another batch is
/// refused with nothing written and the log not poisoned; a commit that
/// failed on the primary ships nothing.
#[test]
fn a_replica_refuses_what_is_not_the_next_whole_batch() {
    let (primary_disk, replica_disk) = (MemoryDisk::new(), MemoryDisk::new());
    let config = truncation_config();
    let (mut primary, _, _) = open(&primary_disk, config).unwrap();
    let (mut replica, _, _) = open(&replica_disk, config).unwrap();
    let mut shipped = Vec::new();
    for commit in &commits(5) {
        block_on(primary.append_shipping(commit, &mut shipped)).unwrap();
    }
    block_on(replica.append_shipped(&shipped[..2])).unwrap();
    let refused = |replica: &mut Log<MemoryDisk>, batches: &[ShippedBatch]| {
        block_on(replica.append_shipped(batches)).unwrap_err()
    };
    assert!(matches!(
        refused(&mut replica, &shipped[3..4]),
        ShipError::NotNext {
            expected: 3,
            found: 4
        }
    ));
    assert!(matches!(
        refused(&mut replica, &shipped[1..3]),
        ShipError::NotNext {
            expected: 3,
            found: 2
        }
    ));
    let mut flipped = shipped[2].clone();
    let last = flipped.frame.len() - 1;
    flipped.frame[last] ^= 1;
    assert!(matches!(
        refused(&mut replica, &[flipped]),
        ShipError::Invalid { seq: 3, .. }
    ));
    let mut renamed = shipped[3].clone();
    renamed.seq = 3;
    assert!(matches!(
        refused(&mut replica, &[renamed]),
        ShipError::Invalid { seq: 3, .. }
    ));
    let mut padded = shipped[2].clone();
    padded.frame.extend_from_slice(&[0; 8]);
    assert!(matches!(
        refused(&mut replica, &[padded]),
        ShipError::Invalid { seq: 3, .. }
    ));
    // A good batch after a bad one in the same shipment: none is written.
    let mut bad_second = shipped[3].clone();
    bad_second.frame[30] ^= 0x40;
    assert!(matches!(
        refused(&mut replica, &[shipped[2].clone(), bad_second]),
        ShipError::Invalid { seq: 4, .. }
    ));
    assert!(!replica.is_poisoned());
    assert_eq!(replica.next_seq(), 3);
    block_on(replica.append_shipped(&shipped[2..])).unwrap();

    // The primary's sync fails: the commit is not shipped.
    primary_disk.inject(primary_disk.operations() + 2, Fault::Errno(libc::EIO));
    let before = shipped.len();
    assert!(block_on(primary.append_shipping(&commits(1)[0], &mut shipped)).is_err());
    assert_eq!(shipped.len(), before);
    drop(replica);
    let (_, _, replayed) = open(&replica_disk, config).unwrap();
    assert!(
        replayed == commits(5).concat(),
        "the replica's replay differs"
    );
}

/// Batches read back from the segments are the frames the commits
/// shipped, across segments and a reopen, within a byte budget; the ones
/// a checkpoint took are gone.
#[test]
fn batches_read_back_for_a_replica_are_the_ones_shipped() {
    let disk = MemoryDisk::new();
    let config = truncation_config();
    let (mut log, _, _) = open(&disk, config).unwrap();
    let mut all = commits(50);
    all.insert(20, (0..40).map(|i| message(4, i + 1, 30 * 1024)).collect());
    let mut shipped = Vec::new();
    for commit in &all {
        block_on(log.append_shipping(commit, &mut shipped)).unwrap();
    }
    let last = log.last_batch();
    assert_eq!(shipped.len() as u64, last);
    let read = |log: &Log<MemoryDisk>, from: u64, upto: u64, max: usize| {
        block_on(log.read_batches(from, upto, max)).unwrap()
    };
    for (from, upto) in [
        (1, last),
        (1, 1),
        (7, 30),
        (last, last),
        (last - 3, last + 10),
    ] {
        let got = read(&log, from, upto, usize::MAX);
        let want = &shipped[from as usize - 1..upto.min(last) as usize];
        assert!(got == want, "{from}..={upto}");
    }
    // A budget stops the read, but never before one batch.
    let got = read(&log, 1, last, 10_000);
    assert!(!got.is_empty() && got.len() < last as usize);
    assert!(
        got[..got.len() - 1]
            .iter()
            .map(|b| b.frame.len())
            .sum::<usize>()
            < 10_000
    );
    assert_eq!(read(&log, 5, last, 1).len(), 1);
    // After a reopen, from the segments the log found.
    drop(log);
    let (mut log, _, _) = open(&disk, config).unwrap();
    assert!(read(&log, 1, last, usize::MAX) == shipped);
    // A replica fed from what was read back holds the same log.
    let replica_disk = MemoryDisk::new();
    let (mut replica, _, _) = open(&replica_disk, config).unwrap();
    block_on(replica.append_shipped(&read(&log, 1, last, usize::MAX))).unwrap();
    drop(replica);
    let (_, _, replayed) = open(&replica_disk, config).unwrap();
    assert!(replayed == all.concat(), "the replica's replay differs");
    // A checkpoint took the first segments.
    block_on(log.remove_through(40)).unwrap();
    let first = *log.segments().start();
    assert!(first > 1);
    assert!(matches!(
        block_on(log.read_batches(1, 5, usize::MAX)),
        Err(storage::log::shipping::ReadError::Gone { from: 1, .. })
    ));
}
