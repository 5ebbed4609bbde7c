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
    /// Entries that are receipts, and entries that are group posts with
    /// the body bytes of those posts (held once per shard in the group's
    /// copy, counted here per member): each kind has bounds of its own.
    receipts: usize,
    group_entries: usize,
    group_bytes: usize,
}

impl Mailbox {
    pub fn new() -> Mailbox {
        Mailbox {
            entries: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            receipts: 0,
            group_entries: 0,
            group_bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries that are 1:1 messages.
    pub fn messages(&self) -> usize {
        self.entries.len() - self.receipts - self.group_entries
    }

    /// Entries that are group posts, and the body bytes they stand for.
    pub fn group_entries(&self) -> usize {
        self.group_entries
    }

    pub fn group_bytes(&self) -> usize {
        self.group_bytes
    }

    /// A group entry stands for `bytes` of body: its owner counts them
    /// here when it appends the entry, and takes them back with
    /// `group_entry_gone` when the entry goes (the mailbox cannot see the
    /// post's body).
    pub fn group_entry_bytes(&mut self, bytes: usize) {
        self.group_bytes += bytes;
    }

    pub fn group_entry_gone(&mut self, bytes: usize) {
        debug_assert!(self.group_bytes >= bytes, "group bytes taken back twice");
        self.group_bytes = self.group_bytes.saturating_sub(bytes);
    }

    /// Entries that are receipts.
    pub fn receipts(&self) -> usize {
        self.receipts
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

    /// Makes an empty mailbox give its next entry `next_seq`, as if the
    /// ones before had come and been acknowledged. False if not empty.
    /// Entries and body bytes: what a shard's totals sum (see `bytes`).
    pub fn size(&self) -> (usize, usize) {
        (self.len(), self.bytes())
    }

    pub fn start_at(&mut self, next_seq: u64) -> bool {
        if !self.entries.is_empty() || next_seq == 0 {
            return false;
        }
        self.next_seq = next_seq;
        true
    }

    pub fn push(&mut self, record: EntryRecord) -> u64 {
        let seq = self.next_seq;
        debug_assert!(
            self.entries.back().is_none_or(|last| last.seq + 1 == seq),
            "mailbox seqs are contiguous"
        );
        self.next_seq += 1;
        self.bytes += record_bytes(&record);
        self.receipts += usize::from(matches!(record, EntryRecord::Receipt { .. }));
        self.group_entries += usize::from(matches!(record, EntryRecord::Group { .. }));
        self.entries.push_back(Entry { seq, record });
        seq
    }

    /// Removes every entry up to and including `up_to`, oldest first.
    pub fn ack(&mut self, up_to: u64, mut removed: impl FnMut(Entry)) {
        while self.entries.front().is_some_and(|entry| entry.seq <= up_to) {
            let entry = self.entries.pop_front().expect("front checked");
            self.bytes -= record_bytes(&entry.record);
            self.receipts -= usize::from(matches!(entry.record, EntryRecord::Receipt { .. }));
            self.group_entries -= usize::from(matches!(entry.record, EntryRecord::Group { .. }));
            removed(entry);
        }
        debug_assert!(self.entries.front().is_none_or(|e| e.seq > up_to));
        debug_assert!(!self.entries.is_empty() || (self.bytes, self.receipts) == (0, 0));
        if self.entries.is_empty() && self.entries.capacity() > 16 {
            // An emptied mailbox of a once-busy phone should not pin memory.
            self.entries = VecDeque::new();
        }
    }

    /// Entries with `seq > after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        // Seqs are consecutive from the front (pushes take the next seq, acks
        // remove from the front), so the position is arithmetic: no search
        // through entries that are likely out of cache.
        let start = match self.entries.front() {
            Some(front) => (after + 1)
                .saturating_sub(front.seq)
                .min(self.entries.len() as u64),
            None => 0,
        } as usize;
        debug_assert!(self
            .entries
            .get(start)
            .is_none_or(|entry| entry.seq > after));
        self.entries.range(start..)
    }
}

fn record_bytes(record: &EntryRecord) -> usize {
    match record {
        EntryRecord::Message { body, .. } => body.len(),
        // The body is held once per shard, in the group's copy.
        EntryRecord::Receipt { .. } | EntryRecord::Group { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Phone, ReceiptKind};

    fn receipt(client_id: u64) -> EntryRecord {
        EntryRecord::Receipt {
            kind: ReceiptKind::Delivered,
            by: Phone::from_u64(15_550_000_001).unwrap(),
            client_id,
        }
    }

    /// `after` (arithmetic) agrees with a scan of the entries, for every
    /// cursor, through a pseudo-random mix of pushes and acks.
    #[test]
    fn after_matches_a_scan() {
        let mut mailbox = Mailbox::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for step in 0..600u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state.is_multiple_of(3) {
                let up_to = mailbox.acked_up_to() + state % 5;
                mailbox.ack(up_to, |_| {});
            } else {
                mailbox.push(receipt(step));
            }
            for cursor in 0..=mailbox.last_seq() + 2 {
                let fast: Vec<u64> = mailbox.after(cursor).map(|e| e.seq).collect();
                let scan: Vec<u64> = mailbox
                    .entries
                    .iter()
                    .filter(|e| e.seq > cursor)
                    .map(|e| e.seq)
                    .collect();
                assert_eq!(fast, scan, "cursor {cursor} at step {step}");
            }
        }
    }
}
