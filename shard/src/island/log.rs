//! What a member knows of its local log without holding it: where it
//! ends, what is durable, and which epoch wrote which range (the epoch
//! history that decides where two logs diverge).

use super::Epoch;

/// A batch's position in a tablet's log, from 1.
pub type Seq = u64;

/// A local log's shape: `epochs` holds `(epoch, first seq)` in ascending
/// order, each epoch's batches running to the next one's first seq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogInfo {
    pub last: Seq,
    pub durable: Seq,
    pub epochs: Vec<(Epoch, Seq)>,
}

impl LogInfo {
    /// A log read back from disk: everything on it is durable.
    pub fn restored(epochs: Vec<(Epoch, Seq)>, last: Seq) -> LogInfo {
        LogInfo {
            last,
            durable: last,
            epochs,
        }
    }

    /// The epoch that wrote the last batch (0: empty).
    pub fn last_epoch(&self) -> Epoch {
        self.epochs.last().map_or(0, |&(epoch, _)| epoch)
    }

    /// The epoch that wrote `seq` (0: none).
    pub fn epoch_of(&self, seq: Seq) -> Epoch {
        if seq == 0 || seq > self.last {
            return 0;
        }
        let at = self.epochs.partition_point(|&(_, first)| first <= seq);
        at.checked_sub(1).map_or(0, |i| self.epochs[i].0)
    }

    /// Batch `seq` of `epoch` was appended.
    pub fn appended(&mut self, seq: Seq, epoch: Epoch) {
        assert_eq!(seq, self.last + 1, "a log grows one batch at a time");
        assert!(epoch >= self.last_epoch(), "epochs never go back in a log");
        if epoch != self.last_epoch() {
            self.epochs.push((epoch, seq));
        }
        self.last = seq;
    }

    /// Everything above `after` is gone.
    pub fn truncated(&mut self, after: Seq) {
        self.last = self.last.min(after);
        self.durable = self.durable.min(after);
        self.epochs.retain(|&(_, first)| first <= after);
    }

    /// Where a log whose last batch was written in `epoch` stops agreeing
    /// with this one: this log's last seq of `epoch` or of the newest
    /// epoch before it (the seq before the first epoch after it).
    pub fn end_of(&self, epoch: Epoch) -> Seq {
        match self.epochs.iter().find(|&&(e, _)| e > epoch) {
            Some(&(_, first)) => first - 1,
            None => self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_says_where_two_logs_part() {
        let mut log = LogInfo::default();
        for seq in 1..=5 {
            log.appended(seq, 1);
        }
        for seq in 6..=8 {
            log.appended(seq, 3);
        }
        assert_eq!(log.epoch_of(5), 1);
        assert_eq!(log.epoch_of(6), 3);
        assert_eq!(log.end_of(1), 5);
        assert_eq!(log.end_of(2), 5, "an epoch this log never wrote");
        assert_eq!(log.end_of(3), 8);
        log.truncated(6);
        assert_eq!((log.last, log.last_epoch()), (6, 3));
        log.truncated(4);
        assert_eq!((log.last, log.last_epoch()), (4, 1));
    }
}
