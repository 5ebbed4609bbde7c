//! Opening a shard's journal and replaying it into the shard, before the
//! shard serves anything (and, for a change of shard count, before any
//! shard runs: `reshard` replays each old log through the same code).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use shard::Shard;
use storage::{
    log::{checkpoint, glommio_disk::GlommioDisk, Log},
    MemoryJournal,
};

use super::StorageSetup;

/// How many records a replay takes between two updates of its progress.
const REPLAY_PROGRESS_EVERY: u64 = 4_096;

/// The journal a shard commits to.
pub(crate) enum ShardJournal {
    Log(Box<Log<GlommioDisk>>),
    Memory(MemoryJournal),
}

/// Opens the shard's journal and replays it into `shard`, counting the
/// records replayed in `replayed` as it goes (for the metrics of a start).
pub(crate) async fn open_journal(
    shard: &mut Shard,
    storage: &StorageSetup,
    replayed: &AtomicU64,
) -> anyhow::Result<(ShardJournal, String)> {
    use crate::config::JournalKind;
    let shard_id = shard.config().shard_id;
    if storage.journal == JournalKind::Memory {
        let report = format!("shard {shard_id}: in-memory journal, nothing to replay");
        return Ok((ShardJournal::Memory(MemoryJournal::default()), report));
    }
    let started = Instant::now();
    let disk = GlommioDisk::open(&storage.dir)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", storage.dir.display()))?;
    let mut restore_error = None;
    let mut count: u64 = 0;
    let mut restore = |record| {
        // Published now and then, not per record: a locked add for each of
        // ten million records is a start-up cost of its own.
        count += 1;
        if count.is_multiple_of(REPLAY_PROGRESS_EVERY) {
            replayed.store(count, Ordering::Relaxed);
        }
        if restore_error.is_none() {
            restore_error = shard.restore(record).err();
        }
    };
    // Startup, before any connection: blocking reads cost nobody.
    let config = storage.log;
    let checkpoint = checkpoint::load(&storage.dir, config.shard, config.shard_count, &mut restore)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let after = checkpoint.map_or(0, |c| c.batch);
    let (log, recovery) = Log::open_after(disk, config, after, &mut restore)
        .await
        .map_err(|e| anyhow::anyhow!("log {}: {e}", storage.dir.display()))?;
    replayed.store(count, Ordering::Relaxed);
    if let Some(error) = restore_error {
        anyhow::bail!("log {}: {error}", storage.dir.display());
    }
    shard.restored();
    for salvaged in &recovery.salvaged {
        log::error!(shard = shard_id; "salvaged past damage in {salvaged}");
    }
    if let Some((segment, offset)) = recovery.torn_tail {
        log::warn!(shard = shard_id; "cut a torn write at segment {segment} byte {offset}");
    }
    let (entries, bytes) = shard.queued();
    let from_checkpoint = match checkpoint {
        Some(c) => format!(
            "a checkpoint of {} records (to batch {}) and ",
            c.records, c.batch
        ),
        None => String::new(),
    };
    let report = format!(
        "shard {shard_id}: replayed {from_checkpoint}{} records in {} batches from {} segments \
         in {:.3} s; {entries} mailbox entries ({bytes} body bytes) queued",
        recovery.records,
        recovery.batches,
        recovery.segments,
        started.elapsed().as_secs_f64()
    );
    Ok((ShardJournal::Log(Box::new(log)), report))
}
