//! [`EpochHistory`]: which epoch of its island wrote which range of the
//! shard's log (`docs/islands.md`, rule 5). Each epoch begins with a batch
//! holding only its `EpochStart` record; the history is kept in
//! checkpoints, so that a log whose early segments are gone still knows
//! where its epochs begin, and a rejoining replica can be told where two
//! logs part.

use storage::Record;

use crate::island::{Epoch, IslandId, LogInfo, Seq};

/// Epoch starts kept, at most: one is added per failover or switchover, and
/// only the newest matter to a replica that rejoins (the oldest are
/// dropped first; a replica further behind than that is rebuilt from a
/// checkpoint).
pub const EPOCH_STARTS_MAX: usize = 1_024;

/// The epochs of the shard's log, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EpochHistory {
    island: IslandId,
    /// `(epoch, first seq)`, ascending in both.
    starts: Vec<(Epoch, Seq)>,
}

impl EpochHistory {
    /// An `EpochStart` replayed (from the log or a checkpoint). A start
    /// that does not move both epoch and seq forward is a repeat (a
    /// checkpoint's copy of one the log holds too) and changes nothing.
    pub fn restore(&mut self, island: IslandId, epoch: Epoch, seq: Seq) {
        if self
            .starts
            .last()
            .is_some_and(|&(last, first)| epoch <= last || seq <= first)
        {
            return;
        }
        self.island = island;
        self.starts.push((epoch, seq));
        if self.starts.len() > EPOCH_STARTS_MAX {
            self.starts.remove(0);
        }
    }

    /// Batch `seq` of the log begins `epoch`: the record to write, alone,
    /// as that batch.
    pub fn start(&mut self, island: IslandId, epoch: Epoch, seq: Seq) -> Record {
        assert!(
            self.starts
                .last()
                .is_none_or(|&(last, first)| epoch > last && seq > first),
            "epoch {epoch} at batch {seq} after {:?}",
            self.starts.last()
        );
        self.restore(island, epoch, seq);
        Record::EpochStart { island, epoch, seq }
    }

    /// The log's shape for its island member, given its last batch.
    pub fn log_info(&self, last: Seq) -> LogInfo {
        let starts = self.starts.iter().copied().filter(|&(_, s)| s <= last);
        LogInfo::restored(starts.collect(), last)
    }

    /// The history as checkpoint records.
    pub fn checkpoint(&self, records: &mut Vec<Record>) {
        let island = self.island;
        for &(epoch, seq) in &self.starts {
            records.push(Record::EpochStart { island, epoch, seq });
        }
    }

    /// The epoch that wrote the log's last batch (0: none yet).
    pub fn last_epoch(&self) -> Epoch {
        self.starts.last().map_or(0, |&(epoch, _)| epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_survive_a_checkpoint_and_repeats_change_nothing() {
        let mut history = EpochHistory::default();
        history.restore(3, 1, 1);
        let record = history.start(3, 4, 20);
        assert_eq!(
            record,
            Record::EpochStart {
                island: 3,
                epoch: 4,
                seq: 20
            }
        );
        let mut records = Vec::new();
        history.checkpoint(&mut records);
        let mut restored = EpochHistory::default();
        for record in records.iter().chain([&record]) {
            let Record::EpochStart { island, epoch, seq } = *record else {
                unreachable!()
            };
            restored.restore(island, epoch, seq);
        }
        assert_eq!(restored.log_info(25).epochs, [(1, 1), (4, 20)]);
        assert_eq!(restored.log_info(25).end_of(1), 19);
        assert_eq!(restored.log_info(10).epochs, [(1, 1)], "past the log's end");
        assert_eq!(restored.last_epoch(), 4);
    }

    #[test]
    fn the_oldest_starts_go_first() {
        let mut history = EpochHistory::default();
        for n in 1..=EPOCH_STARTS_MAX as u64 + 5 {
            history.restore(1, n, n * 10);
        }
        let info = history.log_info(u64::MAX);
        assert_eq!(info.epochs.len(), EPOCH_STARTS_MAX);
        assert_eq!(info.epochs[0], (6, 60));
    }
}
