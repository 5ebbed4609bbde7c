//! `Refusals`: the last requests this shard refused with an `Error` that
//! named their `client_id`, so that an operator's trace can say a message
//! was refused, and why, instead of "not found". A bounded ring in memory
//! (nothing of it is durable): the oldest refusal goes when a new one
//! comes past `REFUSALS_REMEMBERED_MAX`, and a restart forgets them all.

use std::collections::VecDeque;

use wire::{ErrorKind, Phone};

/// Refusals a shard remembers, at most: an operator asks about what
/// happened lately, and a flood of refusals must not cost more than this.
pub const REFUSALS_REMEMBERED_MAX: usize = 1_024;

/// A refusal's detail is kept up to this many bytes (the detail phones
/// get is a sentence; this bounds what one refusal holds).
const DETAIL_BYTES_MAX: usize = 160;

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub sender: Phone,
    pub client_id: u64,
    pub kind: ErrorKind,
    pub detail: String,
    /// The shard's time when it was refused.
    pub at_ms: u64,
}

/// The refusals this shard made lately, oldest first.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    ring: VecDeque<Refusal>,
}

impl Refusals {
    /// Remembers that `sender`'s request `client_id` was refused `kind`
    /// at `at_ms`, telling the phone `detail`; forgets the oldest past
    /// the bound.
    pub fn note(
        &mut self,
        (sender, client_id): (Phone, u64),
        kind: ErrorKind,
        detail: &str,
        at_ms: u64,
    ) {
        if self.ring.len() >= REFUSALS_REMEMBERED_MAX {
            self.ring.pop_front();
        }
        let mut end = detail.len().min(DETAIL_BYTES_MAX);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        self.ring.push_back(Refusal {
            sender,
            client_id,
            kind,
            detail: detail[..end].to_owned(),
            at_ms,
        });
    }

    /// Every remembered refusal of `sender`'s `client_id`, oldest first.
    pub fn of(&self, sender: Phone, client_id: u64) -> impl Iterator<Item = &Refusal> {
        self.ring
            .iter()
            .filter(move |refusal| refusal.sender == sender && refusal.client_id == client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_refusal_goes_past_the_bound() {
        let alice = Phone::parse("+15550000001").unwrap();
        let mut refusals = Refusals::default();
        for client_id in 0..REFUSALS_REMEMBERED_MAX as u64 + 10 {
            refusals.note(
                (alice, client_id),
                ErrorKind::RateLimited,
                "slow down",
                client_id,
            );
        }
        assert_eq!(refusals.ring.len(), REFUSALS_REMEMBERED_MAX);
        assert_eq!(refusals.of(alice, 9).count(), 0);
        let kept: Vec<&Refusal> = refusals.of(alice, 10).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].kind, ErrorKind::RateLimited);
    }

    #[test]
    fn a_long_detail_is_cut_on_a_character_boundary() {
        let alice = Phone::parse("+15550000001").unwrap();
        let mut refusals = Refusals::default();
        let detail = "é".repeat(DETAIL_BYTES_MAX);
        refusals.note((alice, 1), ErrorKind::BadRequest, &detail, 0);
        let kept = &refusals.of(alice, 1).next().unwrap().detail;
        assert!(kept.len() <= DETAIL_BYTES_MAX && kept.chars().all(|c| c == 'é'));
    }
}
