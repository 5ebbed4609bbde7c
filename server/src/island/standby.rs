//! A warm standby: the secondary's tablet of one (island, shard). It keeps
//! its own log of the batches the primary shipped (byte for byte, see
//! `storage::log::shipping`) and a [`Shard`] that has restored every one
//! of them, as a restart would, but never stops restoring: it takes no
//! connection until it is promoted. Promotion then costs no replay.
//!
//! A restart of the secondary opens the tablet's log and replays it into
//! a fresh standby, exactly as a shard's start replays its own log.

use shard::{RestoreError, Shard};
use storage::log::{
    backend::Backend,
    format::{self, Frame},
    shipping::{ShipError, ShippedBatch},
    Log, LogConfig, LogError, Recovery,
};

/// Why a standby cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The shipment was refused (not the next batch, not whole) or the
    /// tablet's log failed; see [`ShipError`].
    #[error("tablet log: {0}")]
    Ship(#[from] ShipError),
    #[error("tablet log: {0}")]
    Log(#[from] LogError),
    /// A batch's records do not apply to the state before them: the
    /// primary's stream and this tablet disagree. The standby stops
    /// taking batches; it must be rebuilt from the primary.
    #[error("batch {seq} does not apply to the standby: {source}")]
    Restore { seq: u64, source: RestoreError },
    /// A record of the tablet's own log does not apply on replay.
    #[error("replaying the tablet: {0}")]
    Replay(RestoreError),
    #[error("the standby failed earlier and takes no more batches")]
    Failed,
    /// The batches kept by a truncation could not be read back.
    #[error("reading the tablet back after a truncation: {0}")]
    Rebuild(String),
    /// Deleting the segments a checkpoint covers failed: disk space, not
    /// data, is lost until the next checkpoint.
    #[error("deleting segments a checkpoint covers: {0}")]
    Remove(String),
}

/// A secondary's tablet: its log, and the shard state restored from it.
pub struct Standby<B: Backend> {
    log: Log<B>,
    shard: Shard,
    failed: bool,
}

impl<B: Backend> Standby<B> {
    /// Opens the tablet's log on `backend` and restores `shard` (a new
    /// shard, made with the primary's shard layout) from it. Errors: the
    /// log's (see [`Log::open`]), or a record that does not apply.
    pub async fn open(
        backend: B,
        config: LogConfig,
        shard: Shard,
    ) -> Result<(Standby<B>, Recovery), StandbyError> {
        Standby::open_after(backend, config, 0, shard).await
    }

    /// [`Standby::open`] for a tablet with a checkpoint: `shard` holds the
    /// state after batch `checkpoint` already (the caller restored it from
    /// the checkpoint file), and only the batches after it are replayed.
    pub async fn open_after(
        backend: B,
        config: LogConfig,
        checkpoint: u64,
        mut shard: Shard,
    ) -> Result<(Standby<B>, Recovery), StandbyError> {
        let mut refused = None;
        let (log, recovery) = Log::open_after(backend, config, checkpoint, |record| {
            if refused.is_none() {
                refused = shard.restore(record).err();
            }
        })
        .await?;
        if let Some(source) = refused {
            return Err(StandbyError::Replay(source));
        }
        let standby = Standby {
            log,
            shard,
            failed: false,
        };
        Ok((standby, recovery))
    }

    /// The batch the tablet expects next from the primary.
    pub fn next_seq(&self) -> u64 {
        self.log.next_seq()
    }

    /// Appends shipped batches to the tablet's log (one commit, one sync;
    /// nothing of them when they are refused) and restores their records.
    /// On `Ok`, everything up to `next_seq() - 1` is durable here: what
    /// the secondary acknowledges to the primary.
    pub async fn append(&mut self, batches: &[ShippedBatch]) -> Result<(), StandbyError> {
        if self.failed {
            return Err(StandbyError::Failed);
        }
        if let Err(error) = self.log.append_shipped(batches).await {
            // Refused shipments leave the tablet as it was; a failed write
            // poisons its log, and the log says so next time.
            return Err(error.into());
        }
        self.apply_all(batches)
    }

    /// Drops every batch after `after` (a tail the primary's history does
    /// not hold; docs/islands.md rule 5), durably, and rebuilds the state
    /// from what is left: records cannot be taken back out of a state.
    /// `fresh` is a shard of the same layout holding the state after batch
    /// `checkpoint` (the tablet's last checkpoint; 0 and a new shard
    /// without one). A cut never goes below it (checkpoints are only of
    /// acknowledged batches, rule 6).
    pub async fn truncate_after(
        &mut self,
        after: u64,
        (fresh, checkpoint): (Shard, u64),
    ) -> Result<(), StandbyError> {
        if after < checkpoint {
            return Err(StandbyError::Rebuild(format!(
                "a cut after batch {after} would cross the checkpoint of batch {checkpoint}"
            )));
        }
        self.log.truncate_after(after).await?;
        self.shard = fresh;
        self.failed = false;
        let kept = self
            .log
            .read_batches(checkpoint + 1, after, usize::MAX)
            .await
            .map_err(|error| StandbyError::Rebuild(error.to_string()))?;
        self.apply_all(&kept)
    }

    /// Restores `batches` in order; the first that does not apply stops
    /// the standby for good.
    fn apply_all(&mut self, batches: &[ShippedBatch]) -> Result<(), StandbyError> {
        for batch in batches {
            if let Err(source) = self.apply(batch) {
                self.failed = true;
                return Err(StandbyError::Restore {
                    seq: batch.seq,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Restores the records of a batch the log took (so whole, and
    /// decodable: `append_shipped` checked both).
    fn apply(&mut self, batch: &ShippedBatch) -> Result<(), RestoreError> {
        let Frame::Batch { count, payload, .. } = format::parse_frame(&batch.frame) else {
            unreachable!("the log took batch {} as whole", batch.seq);
        };
        let mut result = Ok(());
        format::decode_records(batch.seq, count, payload, |record| {
            if result.is_ok() {
                result = self.shard.restore(record);
            }
        })
        .expect("the log checked that its records decode");
        result
    }

    /// Log segments written full: what a checkpoint would free.
    pub fn closed_segments(&self) -> usize {
        self.log.closed_segments()
    }

    /// The state as checkpoint records, and the batch it is the state
    /// after (the last one appended).
    pub fn checkpoint(&mut self) -> (u64, Vec<storage::Record>) {
        (self.log.last_batch(), self.shard.checkpoint())
    }

    /// A checkpoint of batch `batch` is durable: the segments it covers go.
    pub async fn remove_through(&mut self, batch: u64) -> Result<usize, StandbyError> {
        self.log
            .remove_through(batch)
            .await
            .map_err(|error| StandbyError::Remove(error.to_string()))
    }

    /// The standby's state, to look at (checkpoints, counters).
    pub fn shard(&mut self) -> &mut Shard {
        &mut self.shard
    }

    /// Ends the standby: the tablet's log, to go on writing as a primary,
    /// and its shard, restored and ready to serve.
    pub fn promote(mut self) -> (Log<B>, Shard) {
        self.shard.restored();
        (self.log, self.shard)
    }
}
