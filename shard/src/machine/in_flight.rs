//! Requests out to another node's tablet and not answered yet, so that a
//! failover does not leave them hanging, nor let later sends overtake them.
//!
//! A message or group request to an island's primary waits on the link to
//! that node until the node answers. When the island is taken over by
//! another node (docs/islands.md, rule 2), the old primary answers nothing
//! more (its lease is gone, or it is fenced) and what waits for it stays
//! on its link until it comes back, if it ever does; meanwhile the phone's
//! later sends in the same conversation would go to the new primary and
//! be stored ahead of the one that waits. So when a placement moves an
//! island, the requests still out to its old primary are refused
//! `Unavailable` at once, opening their conversations' gaps (see `order`):
//! the phone sends again from them on, in order, to the new primary. The
//! first copy, if the old primary delivers it later (forwarded to the new
//! one), is a resend there and is stored once; its late answer is dropped
//! here, the phone having been told already.

use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use wire::{Chat, Phone};

use super::ConnId;
use crate::island::IslandId;

/// Requests tracked at once, at most; past it a request goes untracked (it
/// waits for its node as before). About 48 bytes each.
pub const IN_FLIGHT_MAX: usize = 65_536;

/// Refused requests whose late answer is still dropped, at most: the
/// oldest are forgotten first (a late answer then reaches the phone as a
/// second `Sent` for the same client id, which it ignores).
const CANCELLED_MAX: usize = 16_384;

/// A request out to another node, by (sender, client id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    pub island: IslandId,
    /// The node it went to: the island's primary then.
    pub node: u16,
    pub conn: ConnId,
    /// Its conversation, when it has one (see `order`).
    pub chat: Option<Chat>,
}

/// What became of a request's answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Pass it on to the phone.
    Deliver,
    /// The request was refused when its island moved: drop the answer.
    Drop,
}

#[derive(Debug, Default)]
pub(super) struct InFlight {
    requests: AHashMap<(Phone, u64), Request>,
    cancelled: AHashSet<(Phone, u64)>,
    cancelled_order: VecDeque<(Phone, u64)>,
}

impl InFlight {
    /// A request went out. False: the table is full and it is not tracked.
    pub fn sent(&mut self, key: (Phone, u64), request: Request) -> bool {
        if self.requests.len() >= IN_FLIGHT_MAX && !self.requests.contains_key(&key) {
            return false;
        }
        self.cancelled.remove(&key);
        self.requests.insert(key, request);
        true
    }

    /// A request went to a tablet of this node, which is not tracked: if
    /// it sends again one refused when its island moved (the island moved
    /// here), its answer is the phone's again.
    pub fn sent_here(&mut self, key: (Phone, u64)) {
        self.cancelled.remove(&key);
    }

    /// The answer to request `key` arrived.
    pub fn answered(&mut self, key: (Phone, u64)) -> Answer {
        if self.requests.remove(&key).is_some() {
            return Answer::Deliver;
        }
        if self.cancelled.remove(&key) {
            Answer::Drop
        } else {
            Answer::Deliver
        }
    }

    /// Takes out the requests whose island `still_there` says is no longer
    /// served by the node they went to, remembering each so that its late
    /// answer is dropped.
    pub fn moved(
        &mut self,
        still_there: impl Fn(IslandId, u16) -> bool,
    ) -> Vec<((Phone, u64), Request)> {
        let gone: Vec<_> = self
            .requests
            .iter()
            .filter(|(_, r)| !still_there(r.island, r.node))
            .map(|(&key, &request)| (key, request))
            .collect();
        for (key, _) in &gone {
            self.requests.remove(key);
            if self.cancelled.insert(*key) {
                self.cancelled_order.push_back(*key);
            }
        }
        while self.cancelled_order.len() > CANCELLED_MAX {
            if let Some(old) = self.cancelled_order.pop_front() {
                self.cancelled.remove(&old);
            }
        }
        gone
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u64) -> Phone {
        Phone::parse(&format!("+1555000{n:04}")).unwrap()
    }

    fn request(island: IslandId, node: u16) -> Request {
        Request {
            island,
            node,
            conn: ConnId::for_tests(1, 1),
            chat: Some(Chat::Direct(phone(9))),
        }
    }

    #[test]
    fn a_moved_island_s_requests_are_taken_out_and_their_late_answers_dropped() {
        let mut in_flight = InFlight::default();
        assert!(in_flight.sent((phone(1), 1), request(1, 1)));
        assert!(in_flight.sent((phone(1), 2), request(2, 2)));
        let moved = in_flight.moved(|island, node| !(island == 1 && node == 1));
        assert_eq!(moved, vec![((phone(1), 1), request(1, 1))]);
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight.answered((phone(1), 1)), Answer::Drop);
        // Sent again (to the new primary) and answered: told.
        assert!(in_flight.sent((phone(1), 1), request(1, 2)));
        assert_eq!(in_flight.answered((phone(1), 1)), Answer::Deliver);
        assert_eq!(in_flight.answered((phone(1), 2)), Answer::Deliver);
        // Sent again to a tablet of this node (the island moved here):
        // its answer is told too.
        assert!(in_flight.sent((phone(1), 4), request(3, 3)));
        in_flight.moved(|_, _| false);
        in_flight.sent_here((phone(1), 4));
        assert_eq!(in_flight.answered((phone(1), 4)), Answer::Deliver);
        assert_eq!(
            in_flight.answered((phone(1), 3)),
            Answer::Deliver,
            "untracked"
        );
        assert_eq!(in_flight.len(), 0);
    }

    #[test]
    fn the_table_and_the_cancelled_set_are_bounded() {
        let mut in_flight = InFlight::default();
        for n in 0..IN_FLIGHT_MAX as u64 {
            assert!(in_flight.sent((phone(1), n), request(1, 1)));
        }
        assert!(!in_flight.sent((phone(1), u64::MAX), request(1, 1)));
        let moved = in_flight.moved(|_, _| false);
        assert_eq!(moved.len(), IN_FLIGHT_MAX);
        assert!(in_flight.cancelled.len() <= CANCELLED_MAX);
        assert_eq!(in_flight.cancelled.len(), in_flight.cancelled_order.len());
    }
}
