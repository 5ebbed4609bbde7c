//! Recently accepted `(recipient, sender, client_id)` triples, so a resend is
//! answered with the id the first copy got instead of being stored twice.

use std::collections::VecDeque;

use ahash::AHashMap;
use wire::Phone;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    to: Phone,
    from: Phone,
    client_id: u64,
}

/// Bounded two ways: entries older than `ttl_ms` are dropped, and past
/// `entries_max` the oldest go first. A phone resends within seconds of a
/// reconnect, so both bounds sit far above what a retry needs.
#[derive(Debug)]
pub struct DedupTable {
    ids: AHashMap<Key, u64>,
    order: VecDeque<(u64, Key)>,
    ttl_ms: u64,
    entries_max: usize,
}

impl DedupTable {
    pub fn new(ttl_ms: u64, entries_max: usize) -> DedupTable {
        DedupTable {
            ids: AHashMap::new(),
            order: VecDeque::new(),
            ttl_ms,
            entries_max,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, to: Phone, from: Phone, client_id: u64) -> Option<u64> {
        self.ids
            .get(&Key {
                to,
                from,
                client_id,
            })
            .copied()
    }

    pub fn insert(&mut self, to: Phone, from: Phone, client_id: u64, id: u64, now_ms: u64) {
        let key = Key {
            to,
            from,
            client_id,
        };
        if self.ids.insert(key, id).is_none() {
            self.order.push_back((now_ms, key));
        }
        while self.order.len() > self.entries_max {
            self.evict_oldest();
        }
    }

    /// Every entry, oldest first: `(to, from, client_id, id)`.
    pub fn iter(&self) -> impl Iterator<Item = (Phone, Phone, u64, u64)> + '_ {
        self.order.iter().filter_map(|(_, key)| {
            let id = *self.ids.get(key)?;
            Some((key.to, key.from, key.client_id, id))
        })
    }

    pub fn expire(&mut self, now_ms: u64) {
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
        let mut table = DedupTable::new(1_000, 3);
        table.insert(b, a, 1, 10, 0);
        table.insert(b, a, 2, 11, 500);
        assert_eq!(table.get(b, a, 1), Some(10));
        assert_eq!(table.get(a, b, 1), None, "direction matters");
        table.expire(1_000);
        assert_eq!(table.get(b, a, 1), None);
        assert_eq!(table.get(b, a, 2), Some(11));
        for id in 3..6 {
            table.insert(b, a, id, id, 600);
        }
        assert_eq!(table.len(), 3);
        assert_eq!(
            table.get(b, a, 2),
            None,
            "oldest evicted past the count bound"
        );
    }
}
