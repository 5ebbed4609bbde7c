//! A phone's mailbox: what is waiting for it, in sequence order.

use std::collections::VecDeque;

use storage::EntryRecord;

/// One thing waiting for a phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub record: EntryRecord,
}

#[derive(Debug, Default)]
pub struct Mailbox {
    entries: VecDeque<Entry>,
    /// The sequence number the next entry gets. Starts at 1 so that
    /// `Ack { up_to: 0 }` means "nothing".
    next_seq: u64,
    bytes: usize,
}

impl Mailbox {
    pub fn new() -> Mailbox {
        Mailbox {
            entries: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Body bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest sequence number ever assigned (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Everything up to and including this seq has been acknowledged (and
    /// deleted): the seq just before the oldest entry still held.
    pub fn acked_up_to(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last_seq(), |entry| entry.seq - 1)
    }

    pub fn push(&mut self, record: EntryRecord) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += record_bytes(&record);
        self.entries.push_back(Entry { seq, record });
        seq
    }

    /// Removes every entry up to and including `up_to`, oldest first.
    pub fn ack(&mut self, up_to: u64, mut removed: impl FnMut(Entry)) {
        while self.entries.front().is_some_and(|entry| entry.seq <= up_to) {
            let entry = self.entries.pop_front().expect("front checked");
            self.bytes -= record_bytes(&entry.record);
            removed(entry);
        }
        if self.entries.is_empty() && self.entries.capacity() > 16 {
            // An emptied mailbox of a once-busy phone should not pin memory.
            self.entries = VecDeque::new();
        }
    }

    /// Entries with `seq > after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let start = self.entries.partition_point(|entry| entry.seq <= after);
        self.entries.range(start..)
    }
}

fn record_bytes(record: &EntryRecord) -> usize {
    match record {
        EntryRecord::Message { body, .. } => body.len(),
        EntryRecord::Receipt { .. } => 0,
    }
}
