//! isle's durable state, as a journal of records.
//!
//! A shard's in-memory state (accounts, mailboxes, dedup entries) is a pure
//! function of the records it has written: the shard applies a change to
//! memory, emits the matching [`Record`], and holds every reply that promises
//! durability until the journal says the batch holding that record is
//! committed. Recovery is replay of the same records.
//!
//! [`MemoryJournal`] commits at once and keeps nothing across restarts;
//! [`log::Log`], the on-disk log, implements the same [`Journal`] trait.

pub mod log;
mod memory;
mod record;

pub use memory::MemoryJournal;
pub use record::{EntryRecord, Owner, Post, Record, DEDUP_READ_BIT, KEY_HASH_BYTES};

/// Counters a journal keeps about itself, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    pub records: u64,
    pub batches: u64,
    pub syncs: u64,
    pub bytes: u64,
    /// Time spent waiting for syncs (fdatasync), in µs, in all.
    pub sync_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal can no longer promise durability; the shard must stop
    /// acknowledging anything.
    #[error("journal failed and refuses further writes: {0}")]
    Failed(#[source] log::LogError),
    /// The batch was not written for lack of disk space; the journal is
    /// intact and the same batch may be committed again later.
    #[error("no space on the disk for the journal")]
    NoSpace,
    /// The batch was not written because a resource ran short while the
    /// journal prepared room for it (file descriptors, memory); the
    /// journal is intact and the same batch may be committed again later.
    #[error("the journal is short of a resource: {0}")]
    Unavailable(#[source] std::io::Error),
}

/// Deleting a segment that a checkpoint covers failed. Nothing is lost:
/// the journal is intact, the segment stays until a later call deletes it
/// (or the next open finds it obsolete), and what it costs is disk space.
#[derive(Debug, thiserror::Error)]
#[error("deleting log segment {segment}: {source}")]
pub struct RemoveError {
    pub segment: u64,
    #[source]
    pub source: std::io::Error,
}

/// Where a shard's records go.
///
/// `commit` makes a whole batch durable (as the journal's mode defines it)
/// before it returns; a batch is committed entirely or reported failed.
/// A journal kept in segments also says when a checkpoint would let some
/// go (`closed_segments`) and deletes those a durable checkpoint covers
/// (`remove_through`); one that keeps nothing has no segments to report.
pub trait Journal {
    /// Makes `records` durable, in order, as one batch.
    #[allow(async_fn_in_trait)] // Shards are single-threaded; no Send bound wanted.
    async fn commit(&mut self, records: &[Record]) -> Result<(), JournalError>;

    fn stats(&self) -> JournalStats;

    /// True while the disk has no room for another segment: what is left
    /// of the current one should go to acknowledgements, not new messages.
    fn disk_full(&self) -> bool;

    /// Segments written full and closed: what a checkpoint would free.
    fn closed_segments(&self) -> usize;

    /// Seq of the last batch written (0 before the first): a checkpoint
    /// captured now holds every batch up to it.
    fn last_batch(&self) -> u64;

    /// Deletes the closed segments whose batches are all at or before
    /// `batch` (a durable checkpoint holds them). Returns how many.
    #[allow(async_fn_in_trait)]
    async fn remove_through(&mut self, batch: u64) -> Result<usize, RemoveError>;

    /// [`Journal::commit`], also handing each batch frame written to
    /// `ship` for a replica (docs/islands.md). A journal that keeps no
    /// frames (in memory) hands none.
    #[allow(async_fn_in_trait)]
    async fn commit_shipping(
        &mut self,
        records: &[Record],
        ship: &mut Vec<log::shipping::ShippedBatch>,
    ) -> Result<(), JournalError> {
        let _ = ship;
        self.commit(records).await
    }

    /// Batches `from..=upto` as written, within about `bytes_max` (one at
    /// least), for a replica catching up. A journal that keeps no frames
    /// has none to give.
    #[allow(async_fn_in_trait)]
    async fn read_shipped(
        &self,
        from: u64,
        upto: u64,
        bytes_max: usize,
    ) -> Result<Vec<log::shipping::ShippedBatch>, log::shipping::ReadError> {
        let _ = (upto, bytes_max);
        Err(log::shipping::ReadError::Gone {
            from,
            first: u64::MAX,
        })
    }
}
