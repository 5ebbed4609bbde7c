//! Per-conversation order across refusals.
//!
//! What a recipient gets from a sender follows the order the sender wrote
//! it. A conversation is a sender and a [`Chat`] (a phone, or a group). A
//! send refused with a retryable error ([`ErrorKind::is_retryable`]) leaves
//! a gap in its conversation: every later send of that conversation from
//! the same session is refused [`ErrorKind::OutOfOrder`] until the refused
//! client id comes again. The phone's half of the rule (README, "Order
//! across refusals") is to send again from the refused one on, in order.
//!
//! The table is checked where a refusal can happen: on the sender's shard
//! before its own refusals (rate limits), and on the shard that stores the
//! message (a full mailbox, a full disk) or owns the group. One table per
//! shard serves both, keyed by sender, because a send passes its checks in
//! the order its connection wrote it: frames of one connection are handled
//! in order and travel to another shard through one FIFO queue.
//!
//! [`ErrorKind::is_retryable`]: wire::ErrorKind::is_retryable
//! [`ErrorKind::OutOfOrder`]: wire::ErrorKind::OutOfOrder

use ahash::AHashMap;
use wire::{Chat, Phone};

use crate::core::ConnId;

/// Gaps one sender may have open on one shard. Past it the oldest is
/// forgotten: a phone that follows the rule has one gap per conversation
/// it is retrying, and sixteen is more than a phone retries at once. So
/// the table is bounded by the accounts that send, not by their refusals.
pub const GAPS_PER_SENDER_MAX: usize = 16;

/// A gap no longer holds once this long has passed since its send was last
/// refused (ms): the phone has given that message up. A phone retrying by
/// the rule comes back well within it.
pub const GAP_TTL_MS: u64 = 60 * 60 * 1000;

/// The open gaps on one shard, by sender.
#[derive(Debug, Default)]
pub struct OrderGaps {
    by_sender: AHashMap<Phone, Vec<Gap>>,
}

/// A refused send that later sends of its conversation wait for.
#[derive(Debug, Clone, Copy)]
struct Gap {
    chat: Chat,
    client_id: u64,
    /// The sender's connection (on the sender's shard) that was refused: a
    /// new session starts its conversations afresh, resending in order.
    session: ConnId,
    refused_at_ms: u64,
}

impl OrderGaps {
    /// Whether the send `client_id` of `from` in `chat` on `session` may go
    /// on to its other checks. It may when its conversation has no gap,
    /// when it is the refused send coming again, or when the gap was left
    /// by an earlier session; each of these closes the gap. Otherwise
    /// `Err` carries the client id the conversation waits for.
    pub fn admit(
        &mut self,
        from: Phone,
        chat: Chat,
        client_id: u64,
        session: ConnId,
    ) -> Result<(), u64> {
        let Some(gaps) = self.by_sender.get_mut(&from) else {
            return Ok(());
        };
        let Some(at) = gaps.iter().position(|gap| gap.chat == chat) else {
            return Ok(());
        };
        let gap = gaps[at];
        if gap.session == session && gap.client_id != client_id {
            return Err(gap.client_id);
        }
        gaps.remove(at);
        if gaps.is_empty() {
            self.by_sender.remove(&from);
        }
        Ok(())
    }

    /// The send `client_id` of `from` in `chat` was refused with a
    /// retryable error after [`admit`](Self::admit) let it through: later
    /// sends of the conversation wait for it.
    pub fn refused(
        &mut self,
        from: Phone,
        chat: Chat,
        client_id: u64,
        session: ConnId,
        now_ms: u64,
    ) {
        let gaps = self.by_sender.entry(from).or_default();
        gaps.retain(|gap| gap.chat != chat);
        if gaps.len() >= GAPS_PER_SENDER_MAX {
            gaps.remove(0);
        }
        gaps.push(Gap {
            chat,
            client_id,
            session,
            refused_at_ms: now_ms,
        });
        debug_assert!(gaps.len() <= GAPS_PER_SENDER_MAX);
    }

    /// Forgets gaps older than [`GAP_TTL_MS`].
    pub fn prune(&mut self, now_ms: u64) {
        self.by_sender.retain(|_, gaps| {
            gaps.retain(|gap| now_ms.saturating_sub(gap.refused_at_ms) < GAP_TTL_MS);
            !gaps.is_empty()
        });
    }

    /// Open gaps, over all senders.
    pub fn len(&self) -> usize {
        self.by_sender.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sender.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u64) -> Phone {
        Phone::from_u64(15_550_000_000 + n).unwrap()
    }

    #[test]
    fn a_gap_holds_later_sends_until_the_refused_one_comes_again() {
        let mut gaps = OrderGaps::default();
        let (a, b, c) = (phone(1), phone(2), phone(3));
        let session = ConnId::for_tests(1, 1);
        gaps.refused(a, Chat::Direct(b), 2, session, 0);
        assert_eq!(gaps.admit(a, Chat::Direct(b), 3, session), Err(2));
        // Other conversations of the same sender go on.
        assert_eq!(gaps.admit(a, Chat::Direct(c), 3, session), Ok(()));
        assert_eq!(gaps.admit(b, Chat::Direct(a), 3, session), Ok(()));
        assert_eq!(gaps.admit(a, Chat::Direct(b), 2, session), Ok(()));
        assert_eq!(gaps.admit(a, Chat::Direct(b), 3, session), Ok(()));
        assert!(gaps.is_empty());
    }

    #[test]
    fn a_new_session_or_time_closes_a_gap() {
        let mut gaps = OrderGaps::default();
        let (a, b) = (phone(1), phone(2));
        let (old, new) = (ConnId::for_tests(1, 1), ConnId::for_tests(1, 2));
        gaps.refused(a, Chat::Direct(b), 2, old, 0);
        assert_eq!(gaps.admit(a, Chat::Direct(b), 3, new), Ok(()));
        gaps.refused(a, Chat::Direct(b), 2, old, 0);
        gaps.prune(GAP_TTL_MS - 1);
        assert_eq!(gaps.len(), 1);
        gaps.prune(GAP_TTL_MS);
        assert!(gaps.is_empty());
    }

    #[test]
    fn one_sender_holds_a_bounded_number_of_gaps() {
        let mut gaps = OrderGaps::default();
        let a = phone(1);
        let session = ConnId::for_tests(1, 1);
        for n in 0..3 * GAPS_PER_SENDER_MAX as u64 {
            gaps.refused(a, Chat::Direct(phone(100 + n)), n, session, n);
        }
        assert_eq!(gaps.len(), GAPS_PER_SENDER_MAX);
        // The newest are kept.
        let last = 3 * GAPS_PER_SENDER_MAX as u64 - 1;
        let chat = Chat::Direct(phone(100 + last));
        assert_eq!(gaps.admit(a, chat, last + 1, session), Err(last));
    }
}
