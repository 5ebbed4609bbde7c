//! A journal that keeps nothing: state lives only in the shard's memory.

use crate::{Journal, JournalError, JournalStats, Record, RemoveError};

/// Commits every batch at once and forgets it. A restart loses everything;
/// this is the store for benchmarks of the message path alone, and for the
/// server until it is configured with a data log.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    stats: JournalStats,
}

impl Journal for MemoryJournal {
    async fn commit(&mut self, records: &[Record]) -> Result<(), JournalError> {
        self.stats.records += records.len() as u64;
        self.stats.batches += 1;
        Ok(())
    }

    fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Never: nothing is written.
    fn disk_full(&self) -> bool {
        false
    }

    /// None: there are no segments, so no checkpoint is ever due.
    fn closed_segments(&self) -> usize {
        0
    }

    fn last_batch(&self) -> u64 {
        0
    }

    async fn remove_through(&mut self, _batch: u64) -> Result<usize, RemoveError> {
        Ok(0)
    }
}
