//! Recently accepted `(recipient, sender, client_id)` triples, so a resend is
//! answered with the id the first copy got instead of being stored twice.
//! The recipient is an account for 1:1 messages and a group for group posts.
//! Each keeps the message's `sent_at_ms` too: its read receipt carries it,
//! so the sender's home can tell a deleted predecessor's messages from its
//! account's own (`storage::Record::AccountSince`).

use std::collections::VecDeque;
use std::hash::Hash;

use std::collections::hash_map::Entry;

use ahash::AHashMap;
use wire::Phone;

/// Set in a stored id once the entry's read receipt was passed on, or it
/// expired undelivered (see [`DedupTable::mark_read`]); written with it in
/// checkpoints. Ids (mailbox seqs, group post numbers) never come near it.
const READ_BIT: u64 = storage::DEDUP_READ_BIT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key<T> {
    to: T,
    from: Phone,
    client_id: u64,
}

/// What a key maps to: the id its first copy got (with [`READ_BIT`]),
/// and when the message was sent (Unix ms; 0: not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    id: u64,
    sent_at_ms: u64,
}

/// An entry as [`DedupTable::iter`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<T> {
    pub to: T,
    pub from: Phone,
    pub client_id: u64,
    /// With `DEDUP_READ_BIT` set when no read may pass any more.
    pub id: u64,
    pub sent_at_ms: u64,
}

/// Bounded two ways: entries older than `ttl_ms` are dropped, and past
/// `entries_max` the oldest go first. A phone resends within seconds of a
/// reconnect, so both bounds sit far above what a retry needs.
#[derive(Debug)]
pub struct DedupTable<T = Phone> {
    ids: AHashMap<Key<T>, Stamp>,
    order: VecDeque<(u64, Key<T>)>,
    /// Entries from a replay, newest last, not yet in `ids`. A replay
    /// passes every message the log holds (tens of millions after a long
    /// outage), and only the newest `entries_max` survive it: keeping them
    /// in a plain ring and indexing only the survivors afterwards saves a
    /// hash insert and a hash removal, each a cache miss, per evicted one.
    replayed: VecDeque<(Key<T>, Stamp)>,
    /// The age `replayed` entries get once indexed: when the replay ran.
    replayed_at_ms: u64,
    ttl_ms: u64,
    entries_max: usize,
}

impl<T: Copy + Eq + Hash> DedupTable<T> {
    pub fn new(ttl_ms: u64, entries_max: usize) -> DedupTable<T> {
        DedupTable {
            ids: AHashMap::new(),
            order: VecDeque::new(),
            replayed: VecDeque::new(),
            replayed_at_ms: 0,
            ttl_ms,
            entries_max,
        }
    }

    /// Entries indexed, plus an upper bound on those a replay left.
    pub fn len(&self) -> usize {
        self.ids.len() + self.replayed.len().min(self.entries_max)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&mut self, to: T, from: Phone, client_id: u64) -> Option<u64> {
        self.get_since(to, from, client_id, 0)
    }

    /// `get` for a sender whose account was created at Unix ms
    /// `since_ms`: an entry for a message sent before that is its
    /// deleted predecessor's, not a resend, and is not found. (An entry
    /// whose sent time is not known counts as the sender's own.)
    pub fn get_since(&mut self, to: T, from: Phone, client_id: u64, since_ms: u64) -> Option<u64> {
        self.settle();
        let key = Key {
            to,
            from,
            client_id,
        };
        self.ids
            .get(&key)
            .filter(|stamp| stamp.sent_at_ms == 0 || stamp.sent_at_ms >= since_ms)
            .map(|stamp| stamp.id & !READ_BIT)
    }

    /// The rule for a read receipt `to` sends about `from`'s `client_id`:
    /// it passes when the entry is known, its id is at most
    /// `delivered_up_to` (the reader was given it), and no read receipt
    /// for it was passed on before; it is then marked as read, and the
    /// message's `sent_at_ms` returned for the receipt. The mark lives in
    /// memory only, so after a restart one more receipt per entry can
    /// pass.
    pub fn mark_read(
        &mut self,
        to: T,
        from: Phone,
        client_id: u64,
        delivered_up_to: u64,
    ) -> Option<u64> {
        self.settle();
        let key = Key {
            to,
            from,
            client_id,
        };
        match self.ids.get_mut(&key) {
            Some(stamp) if stamp.id & READ_BIT == 0 && stamp.id <= delivered_up_to => {
                stamp.id |= READ_BIT;
                Some(stamp.sent_at_ms)
            }
            _ => None,
        }
    }

    /// The entry will never be readable (it expired undelivered): marks it
    /// as if its read receipt had been passed on.
    pub fn forbid_read(&mut self, to: T, from: Phone, client_id: u64) {
        self.settle();
        let key = Key {
            to,
            from,
            client_id,
        };
        if let Some(stamp) = self.ids.get_mut(&key) {
            stamp.id |= READ_BIT;
        }
    }

    /// `from`'s message `client_id`, sent at `sent_at_ms`, was accepted
    /// for `to` as `id` at `now_ms` (the shard's clock: the entry's age).
    pub fn insert(&mut self, to: T, from: Phone, client_id: u64, stamp: (u64, u64), now_ms: u64) {
        let (id, sent_at_ms) = stamp;
        debug_assert!(id & READ_BIT == 0, "ids stay below the read mark");
        self.settle();
        let key = Key {
            to,
            from,
            client_id,
        };
        self.insert_key(key, Stamp { id, sent_at_ms }, now_ms);
    }

    /// An entry read back from the log while the shard restores: the same
    /// as `insert`, but indexed only when the table is next used.
    /// `stamp` is `(id, sent_at_ms)`, the id with `READ_BIT` if set.
    pub fn replay(&mut self, to: T, from: Phone, client_id: u64, stamp: (u64, u64), now_ms: u64) {
        let (id, sent_at_ms) = stamp;
        self.replayed_at_ms = now_ms;
        // A checkpoint names a queued message twice (its `MailboxPut` and
        // its `Dedup` record), so twice the bound still holds the newest
        // `entries_max` distinct keys.
        if self.replayed.len() >= self.entries_max.saturating_mul(2) {
            self.replayed.pop_front();
        }
        if self.entries_max > 0 {
            let key = Key {
                to,
                from,
                client_id,
            };
            self.replayed.push_back((key, Stamp { id, sent_at_ms }));
        }
    }

    /// Indexes what a replay left. Every method that reads or changes the
    /// index settles first, so no caller sees the table half-restored.
    ///
    /// Walks the replay newest first, so a key named twice keeps its
    /// newest id and place, and stops at `entries_max` distinct keys.
    pub fn settle(&mut self) {
        if self.replayed.is_empty() {
            return;
        }
        let replayed = std::mem::take(&mut self.replayed);
        let mut kept = Vec::with_capacity(replayed.len().min(self.entries_max));
        self.ids.reserve(kept.capacity());
        for (key, stamp) in replayed.into_iter().rev() {
            if kept.len() == self.entries_max {
                break;
            }
            if let Entry::Vacant(vacant) = self.ids.entry(key) {
                vacant.insert(stamp);
                kept.push(key);
            }
        }
        self.order.reserve(kept.len());
        let at = self.replayed_at_ms;
        self.order
            .extend(kept.into_iter().rev().map(|key| (at, key)));
        while self.order.len() > self.entries_max {
            self.evict_oldest();
        }
    }

    /// Inserts or (a predecessor's entry) replaces; a replaced entry keeps
    /// its place in the age order.
    fn insert_key(&mut self, key: Key<T>, stamp: Stamp, now_ms: u64) {
        if self.ids.insert(key, stamp).is_none() {
            self.order.push_back((now_ms, key));
        }
        while self.order.len() > self.entries_max {
            self.evict_oldest();
        }
    }

    /// Every entry, oldest first, as a checkpoint keeps it (`replay`
    /// takes it back the same way).
    pub fn iter(&mut self) -> impl Iterator<Item = Listed<T>> + '_ {
        self.settle();
        self.order.iter().filter_map(|(_, key)| {
            let stamp = *self.ids.get(key)?;
            Some(Listed {
                to: key.to,
                from: key.from,
                client_id: key.client_id,
                id: stamp.id,
                sent_at_ms: stamp.sent_at_ms,
            })
        })
    }

    /// Forgets every entry for recipient `to` (its account was deleted).
    /// A pass over the whole table: for an operator's rare request, not
    /// for the message path.
    pub fn forget_recipient(&mut self, to: T) {
        self.replayed.retain(|(key, _)| key.to != to);
        self.ids.retain(|key, _| key.to != to);
        self.order.retain(|(_, key)| key.to != to);
    }

    pub fn expire(&mut self, now_ms: u64) {
        self.settle();
        while self
            .order
            .front()
            .is_some_and(|(at, _)| at + self.ttl_ms <= now_ms)
        {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.ids.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_age_and_count() {
        let a = Phone::parse("+15550000001").unwrap();
        let b = Phone::parse("+15550000002").unwrap();
        let mut table: DedupTable = DedupTable::new(1_000, 3);
        table.insert(b, a, 1, (10, 0), 0);
        table.insert(b, a, 2, (11, 0), 500);
        assert_eq!(table.get(b, a, 1), Some(10));
        assert_eq!(table.get(a, b, 1), None, "direction matters");
        table.expire(1_000);
        assert_eq!(table.get(b, a, 1), None);
        assert_eq!(table.get(b, a, 2), Some(11));
        for id in 3..6 {
            table.insert(b, a, id, (id, 0), 600);
        }
        assert_eq!(table.len(), 3);
        assert_eq!(
            table.get(b, a, 2),
            None,
            "oldest evicted past the count bound"
        );
    }

    /// A replay keeps the newest `entries_max` entries, in order, and they
    /// answer lookups and age out as if they had been inserted one by one.
    #[test]
    fn a_replay_keeps_the_newest_entries_and_indexes_them_on_use() {
        let a = Phone::parse("+15550000001").unwrap();
        let b = Phone::parse("+15550000002").unwrap();
        let mut table: DedupTable = DedupTable::new(1_000, 3);
        for client_id in 1..=5 {
            table.replay(b, a, client_id, (100 + client_id, 0), 50);
        }
        let listed: Vec<u64> = table.iter().map(|e| e.client_id).collect();
        assert_eq!(listed, [3, 4, 5], "oldest first, the two oldest gone");
        assert_eq!(table.get(b, a, 2), None);
        assert_eq!(table.get(b, a, 4), Some(104));
        table.insert(b, a, 6, (106, 0), 500);
        assert_eq!(table.get(b, a, 3), None, "replayed entries are the oldest");
        table.expire(1_050);
        assert_eq!(table.get(b, a, 5), None, "aged from the replay time");
        assert_eq!(table.get(b, a, 6), Some(106));

        // A checkpoint names each queued message twice: that does not
        // push out keys the bound has room for.
        let mut table: DedupTable = DedupTable::new(1_000, 2);
        for round in 0..2 {
            for client_id in 1..=2 {
                table.replay(b, a, client_id, (10 * round + client_id, 0), 0);
            }
        }
        table.settle();
        assert_eq!(table.len(), 2);
        let listed: Vec<(u64, u64)> = table.iter().map(|e| (e.client_id, e.id)).collect();
        assert_eq!(listed, [(1, 11), (2, 12)], "the newest id and place");
    }

    #[test]
    fn a_read_passes_once_and_only_for_what_was_delivered() {
        let a = Phone::parse("+15550000001").unwrap();
        let b = Phone::parse("+15550000002").unwrap();
        let mut table: DedupTable = DedupTable::new(1_000, 10);
        table.insert(b, a, 1, (7, 1_234), 0);
        assert_eq!(table.mark_read(b, a, 1, 6), None, "not delivered yet");
        assert_eq!(table.mark_read(b, a, 2, 100), None, "never sent");
        assert_eq!(table.mark_read(a, b, 1, 100), None, "not the reader's");
        assert_eq!(
            table.mark_read(b, a, 1, 7),
            Some(1_234),
            "with its sent time"
        );
        assert_eq!(
            table.mark_read(b, a, 1, 7),
            None,
            "a second read is dropped"
        );
        assert_eq!(table.get(b, a, 1), Some(7), "the mark hides from resends");
        let listed: Vec<u64> = table.iter().map(|e| e.id).collect();
        assert_eq!(listed, [7 | READ_BIT], "a checkpoint keeps the mark");
        let mut restored: DedupTable = DedupTable::new(1_000, 10);
        restored.replay(b, a, 1, (7, 0), 0);
        restored.replay(b, a, 1, (7 | READ_BIT, 0), 0);
        assert_eq!(restored.get(b, a, 1), Some(7));
        assert_eq!(
            restored.mark_read(b, a, 1, 7),
            None,
            "the newest record wins"
        );
    }
}
