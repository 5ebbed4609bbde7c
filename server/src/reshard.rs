//! Changing the shard count of a data dir.
//!
//! A shard's log holds the accounts of the partitions it owns (`partition %
//! shards`), so a data dir written by N shards cannot be read by M. When the
//! server starts with a different count it re-partitions before any shard
//! runs: each old shard's log is replayed into a `Shard` (the same code a
//! normal start runs), its state taken as checkpoint records, and each record
//! sent to the new shard that owns its account. Every new shard then gets a
//! log directory holding just that checkpoint.
//!
//! Crash safety rests on renames of whole directories:
//!
//! 1. the new logs are written under `log.new/`, each file synced;
//! 2. `log.new/RESHARDED` is written and synced: from here the new layout is
//!    complete;
//! 3. `log/` is renamed to `log.old/`, then `log.new/` to `log/`, and the
//!    data dir synced;
//! 4. `log.old/` and the marker are deleted.
//!
//! A start that finds `log.new/` without the marker deletes it and begins
//! again; one that finds the marker finishes step 3; leftovers of step 4 are
//! deleted. At no point is the only copy of a record in a file that is not
//! yet synced.

use std::{fs, path::Path, sync::Arc, time::Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use shard::{PartitionMap, Shard, ShardConfig, PARTITIONS_DEFAULT};
use storage::{
    log::{checkpoint, LogConfig},
    Owner, Record,
};

use crate::{
    config::JournalKind,
    runtime::{self, StorageSetup},
};

/// Written into `log.new/` once every new log in it is durable.
const COMPLETE_MARKER: &str = "RESHARDED";

/// What the re-partitioning needs from the server's configuration.
pub struct Reshard<'a> {
    pub data_dir: &'a Path,
    pub shard_count: usize,
    /// Segment size and salvage, as the shards will open their logs.
    pub log: LogConfig,
    pub io_memory_bytes: usize,
    pub io_ring_depth: usize,
    /// Makes the environment for a shard that only replays (it sends no SMS
    /// and draws no randomness, but `Shard` needs one).
    pub env: Arc<dyn Fn() -> Box<dyn shard::Env> + Send + Sync>,
}

/// Brings `data_dir/log` to `shard_count` shards if it was written by
/// another count. Returns a line for the server's log when it did anything.
pub fn reshard_if_needed(job: Reshard<'_>) -> anyhow::Result<Option<String>> {
    let log = job.data_dir.join("log");
    let finished = finish_interrupted(job.data_dir)?;
    let found = shard_dirs(&log)?;
    if found == 0 || found == job.shard_count {
        return Ok(finished.then(|| "finished an interrupted re-partitioning".to_string()));
    }
    let (from, to) = (found, job.shard_count);
    log::warn!(
        "data dir {} was written by {from} shard(s); re-partitioning it for {to}",
        job.data_dir.display()
    );
    let started = Instant::now();
    let staging = job.data_dir.join("log.new");
    let records = rebuild(&job, from, to, &staging)?;
    fs::write(
        staging.join(COMPLETE_MARKER),
        format!("from {from} to {to} shards\n"),
    )?;
    sync(&staging.join(COMPLETE_MARKER))?;
    sync(&staging)?;
    finish_interrupted(job.data_dir)?;
    Ok(Some(format!(
        "re-partitioned {records} records from {from} shard(s) to {to} in {:.3} s",
        started.elapsed().as_secs_f64()
    )))
}

/// Replays every old shard and writes the new logs under `staging`; returns
/// the number of records written.
fn rebuild(job: &Reshard<'_>, from: usize, to: usize, staging: &Path) -> anyhow::Result<u64> {
    if staging.exists() {
        fs::remove_dir_all(staging).context("removing an unfinished log.new")?;
    }
    let old_map = PartitionMap::new(PARTITIONS_DEFAULT, from as u16);
    let new_map = PartitionMap::new(PARTITIONS_DEFAULT, to as u16);
    let mut buckets: Vec<Vec<Record>> = (0..to).map(|_| Vec::new()).collect();
    for old in 0..from {
        let dir = job.data_dir.join("log").join(format!("shard-{old}"));
        let storage = StorageSetup {
            journal: JournalKind::Log,
            dir: dir.clone(),
            checkpoint_segments: 1,
            replica_retain_segments: 0,
            log: LogConfig {
                shard: old as u16,
                shard_count: from as u16,
                ..job.log
            },
        };
        let env = job.env.clone();
        // The log code runs on glommio files: replay on an executor of its
        // own, one old shard at a time, before the shards start.
        let records = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("isle-reshard-{old}"))
            .io_memory(job.io_memory_bytes)
            .ring_depth(job.io_ring_depth)
            .spawn(move || async move {
                let mut shard = Shard::new(ShardConfig::new(old as u16, old_map), env(), 0);
                let (journal, report) =
                    runtime::open_journal(&mut shard, &storage, &Default::default()).await?;
                drop(journal);
                log::info!("{report}");
                anyhow::Ok(shard.checkpoint())
            })
            .map_err(|e| anyhow::anyhow!("starting the replay of shard {old}: {e}"))?
            .join()
            .map_err(|e| anyhow::anyhow!("replaying shard {old}: {e}"))?
            .with_context(|| format!("replaying {}", dir.display()))?;
        for record in records {
            match record.owner() {
                Owner::Account(phone) => buckets[usize::from(new_map.shard_of(phone))].push(record),
                Owner::Group(group) => {
                    buckets[usize::from(new_map.shard_of_group(group))].push(record)
                }
                // A copy of a group post may be referred to by accounts that
                // now live on any shard: each new shard gets it, and drops
                // it after its restore if none of its mailboxes refers to it.
                Owner::Local => {
                    for bucket in &mut buckets {
                        bucket.push(record.clone());
                    }
                }
            }
        }
    }
    let mut written = 0;
    for (new, records) in buckets.iter().enumerate() {
        let dir = staging.join(format!("shard-{new}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A checkpoint after batch 0: the new log's batches start at 1.
        checkpoint::write(&dir, new as u16, to as u16, 0, records)
            .with_context(|| format!("writing the checkpoint in {}", dir.display()))?;
        written += records.len() as u64;
    }
    // The new shard directories' own entries.
    sync(staging)?;
    Ok(written)
}

/// Completes or discards a re-partitioning a crash interrupted. True if
/// it completed one.
fn finish_interrupted(data_dir: &Path) -> anyhow::Result<bool> {
    let log = data_dir.join("log");
    let staging = data_dir.join("log.new");
    let old = data_dir.join("log.old");
    let mut finished = false;
    if staging.exists() {
        if staging.join(COMPLETE_MARKER).exists() {
            if log.exists() {
                if old.exists() {
                    fs::remove_dir_all(&old).context("removing log.old")?;
                }
                fs::rename(&log, &old).context("moving log aside")?;
            }
            fs::rename(&staging, &log).context("moving log.new into place")?;
            sync(data_dir)?;
            finished = true;
        } else {
            // Never complete, so nothing in it is the only copy of anything.
            fs::remove_dir_all(&staging).context("removing an unfinished log.new")?;
        }
    }
    if old.exists() {
        fs::remove_dir_all(&old).context("removing log.old")?;
    }
    let marker = log.join(COMPLETE_MARKER);
    if marker.exists() {
        fs::remove_file(&marker)?;
        sync(&log)?;
    }
    Ok(finished)
}

/// How many shards wrote `log`: its `shard-<n>` directories, which must be
/// numbered from 0 without a gap.
pub fn shard_dirs(log: &Path) -> anyhow::Result<usize> {
    let Ok(entries) = fs::read_dir(log) else {
        return Ok(0);
    };
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(index) = name.to_str().and_then(|n| n.strip_prefix("shard-")) {
            if let Ok(index) = index.parse::<usize>() {
                found.push(index);
            }
        }
    }
    found.sort_unstable();
    if found.iter().enumerate().any(|(at, &index)| at != index) {
        bail!(
            "{} holds shard directories {found:?}, not shard-0 to shard-{}: \
             a shard's log is missing, so its accounts would be lost; restore it from a backup",
            log.display(),
            found.len().saturating_sub(1)
        );
    }
    Ok(found.len())
}

fn sync(path: &Path) -> anyhow::Result<()> {
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}
