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
//! A shard keeps two tables, one for each place a refusal can happen: its
//! *outgoing* table for refusals it makes as the sender's home (rate
//! limits, lookups), checked before those; and its *incoming* table for
//! refusals it makes as the shard that stores the message or owns the
//! group (a full mailbox, a full disk), checked after resend detection and
//! before those. Kept apart, neither check ever sees a gap the other made
//! for the same send. This holds because a send passes its checks in the
//! order its connection wrote it: frames of one connection are handled in
//! order and travel to another shard through one FIFO queue.
//!
//! [`ErrorKind::is_retryable`]: wire::ErrorKind::is_retryable
//! [`ErrorKind::OutOfOrder`]: wire::ErrorKind::OutOfOrder

use ahash::AHashMap;
use wire::{Chat, Phone};

use crate::machine::ConnId;

/// Gaps one sender may have open on one shard. A refusal past it is not
/// recorded; instead the sender's session is *saturated*: every send of a
/// conversation without a gap is refused `OutOfOrder` too, until each gap
/// open when it saturated has been closed once (its refused send came
/// again). Those were all refused before the unrecorded ones, so a phone
/// sending again in order closes them first, and the unrecorded ones then
/// pass in their turn. So the table is bounded by the accounts that send,
/// not by their refusals (at most 256 gaps of about 56 bytes per sender
/// per table), and no gap is forgotten while its session lasts
/// (forgetting one let a later send overtake the refused one when a phone
/// retried more conversations than the bound).
///
/// Saturation is weaker than a gap: a conversation refused while
/// saturated has nothing recorded, so once the saturation ends a new send
/// in it that the phone wrote before it learned of the refusal would be
/// stored ahead of the refused one. With the bound at 16 and phones
/// writing new sends freely, `server/tests/order.rs` saw that; at 256 a
/// phone would need that many conversations refused at once.
pub const GAPS_PER_SENDER_MAX: usize = 256;

/// A gap no longer holds once this long has passed since its send was last
/// refused (ms): the phone has given that message up. A phone retrying by
/// the rule comes back well within it.
pub const GAP_TTL_MS: u64 = 60 * 60 * 1000;

/// The open gaps on one shard, by sender.
#[derive(Debug, Default)]
pub struct OrderGaps {
    by_sender: AHashMap<Phone, SenderGaps>,
}

/// One sender's gaps, all of one session.
#[derive(Debug)]
struct SenderGaps {
    gaps: Vec<Gap>,
    /// More refusals than gaps came on this session (see
    /// [`GAPS_PER_SENDER_MAX`]), and how many of the gaps open then are
    /// not closed yet.
    saturated: Option<(ConnId, usize)>,
}

/// Why a send must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// This client id of its conversation was refused and has not come
    /// again.
    By(u64),
    /// The sender has more conversations waiting than are remembered:
    /// every refused send must come again first.
    Saturated,
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
    /// Open when the sender saturated: closing it counts towards the end
    /// of the saturation.
    before_saturation: bool,
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
    ) -> Result<(), Blocked> {
        let Some(sender) = self.by_sender.get_mut(&from) else {
            return Ok(());
        };
        sender.forget_other_sessions(session);
        match sender.gaps.iter().position(|gap| gap.chat == chat) {
            Some(at) if sender.gaps[at].client_id != client_id => {
                return Err(Blocked::By(sender.gaps[at].client_id));
            }
            Some(at) => {
                let gap = sender.gaps.remove(at);
                if gap.before_saturation {
                    sender.closed_one_before_saturation();
                }
            }
            None if sender.saturated.is_some() => return Err(Blocked::Saturated),
            None => {}
        }
        if sender.gaps.is_empty() && sender.saturated.is_none() {
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
        let sender = self.by_sender.entry(from).or_insert_with(|| SenderGaps {
            gaps: Vec::new(),
            saturated: None,
        });
        sender.forget_other_sessions(session);
        if let Some(at) = sender.gaps.iter().position(|gap| gap.chat == chat) {
            if sender.gaps[at].client_id < client_id {
                // An earlier send of the conversation was refused and has
                // not come again: the phone sends again from that one on.
                // (Refusals come out of order when requests out to a node
                // are refused together, as their island moves.)
                return;
            }
            let gap = sender.gaps.remove(at);
            if gap.before_saturation {
                sender.closed_one_before_saturation();
            }
        }
        if sender.gaps.len() >= GAPS_PER_SENDER_MAX {
            if sender.saturated.is_none() {
                for gap in &mut sender.gaps {
                    gap.before_saturation = true;
                }
                sender.saturated = Some((session, sender.gaps.len()));
            }
            return;
        }
        sender.gaps.push(Gap {
            chat,
            client_id,
            session,
            refused_at_ms: now_ms,
            before_saturation: false,
        });
        debug_assert!(sender.gaps.len() <= GAPS_PER_SENDER_MAX);
    }

    /// Forgets gaps older than [`GAP_TTL_MS`] (and a saturation with
    /// them).
    pub fn prune(&mut self, now_ms: u64) {
        self.by_sender.retain(|_, sender| {
            let before = sender.gaps.len();
            sender
                .gaps
                .retain(|gap| now_ms.saturating_sub(gap.refused_at_ms) < GAP_TTL_MS);
            if sender.gaps.len() < before {
                // Given up: the saturation goes with what it waited for.
                sender.saturated = None;
                for gap in &mut sender.gaps {
                    gap.before_saturation = false;
                }
            }
            !sender.gaps.is_empty() || sender.saturated.is_some()
        });
    }

    /// Open gaps, over all senders.
    pub fn len(&self) -> usize {
        self.by_sender.values().map(|s| s.gaps.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sender.is_empty()
    }
}

impl SenderGaps {
    /// A new session starts its conversations afresh: what an earlier one
    /// left is forgotten.
    fn forget_other_sessions(&mut self, session: ConnId) {
        self.gaps.retain(|gap| gap.session == session);
        if self.saturated.is_some_and(|(s, _)| s != session) {
            self.saturated = None;
            for gap in &mut self.gaps {
                gap.before_saturation = false;
            }
        }
    }

    /// A gap open at the saturation was closed: once all are, the
    /// conversations refused without a gap may go on.
    fn closed_one_before_saturation(&mut self) {
        if let Some((session, left)) = self.saturated {
            debug_assert!(left > 0);
            self.saturated = (left > 1).then_some((session, left - 1));
        }
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
        assert_eq!(
            gaps.admit(a, Chat::Direct(b), 3, session),
            Err(Blocked::By(2))
        );
        // Other conversations of the same sender go on.
        assert_eq!(gaps.admit(a, Chat::Direct(c), 3, session), Ok(()));
        assert_eq!(gaps.admit(b, Chat::Direct(a), 3, session), Ok(()));
        assert_eq!(gaps.admit(a, Chat::Direct(b), 2, session), Ok(()));
        assert_eq!(gaps.admit(a, Chat::Direct(b), 3, session), Ok(()));
        assert!(gaps.is_empty());
    }

    /// Requests out to a node are refused together when their island
    /// moves, in any order, and after later sends of the conversation may
    /// have been refused already: the gap stays at the earliest, so the
    /// later one cannot pass before it comes again.
    #[test]
    fn the_gap_stays_at_the_earliest_refused_send_of_a_conversation() {
        let mut gaps = OrderGaps::default();
        let (a, b) = (phone(1), phone(2));
        let session = ConnId::for_tests(1, 1);
        gaps.refused(a, Chat::Direct(b), 3, session, 0);
        gaps.refused(a, Chat::Direct(b), 5, session, 0);
        assert_eq!(
            gaps.admit(a, Chat::Direct(b), 5, session),
            Err(Blocked::By(3))
        );
        gaps.refused(a, Chat::Direct(b), 2, session, 0);
        assert_eq!(
            gaps.admit(a, Chat::Direct(b), 3, session),
            Err(Blocked::By(2))
        );
        assert_eq!(gaps.admit(a, Chat::Direct(b), 2, session), Ok(()));
        assert_eq!(gaps.admit(a, Chat::Direct(b), 3, session), Ok(()));
        assert_eq!(gaps.admit(a, Chat::Direct(b), 5, session), Ok(()));
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
    fn past_the_bound_a_sender_waits_until_every_recorded_gap_is_closed() {
        let mut gaps = OrderGaps::default();
        let a = phone(1);
        let session = ConnId::for_tests(1, 1);
        let chat = |n: u64| Chat::Direct(phone(100 + n));
        let conversations = 2 * GAPS_PER_SENDER_MAX as u64;
        for n in 0..conversations {
            gaps.refused(a, chat(n), n, session, n);
        }
        assert_eq!(gaps.len(), GAPS_PER_SENDER_MAX, "bounded");
        // The first gaps are kept, and hold their conversations.
        assert_eq!(gaps.admit(a, chat(0), 1_000, session), Err(Blocked::By(0)));
        // An unrecorded conversation waits too, and so does a new one.
        let unrecorded = conversations - 1;
        assert_eq!(
            gaps.admit(a, chat(unrecorded), 1_000, session),
            Err(Blocked::Saturated)
        );
        assert_eq!(
            gaps.admit(a, chat(999), 1_000, session),
            Err(Blocked::Saturated)
        );
        // The phone sends again in order: the recorded ones first, each
        // refused again (and so recorded again) but closing its old gap.
        for n in 0..GAPS_PER_SENDER_MAX as u64 {
            assert_eq!(gaps.admit(a, chat(n), n, session), Ok(()));
            gaps.refused(a, chat(n), n, session, n);
        }
        // Every gap open at the saturation came again: the rest go on.
        assert_eq!(gaps.admit(a, chat(unrecorded), unrecorded, session), Ok(()));
        assert_eq!(gaps.admit(a, chat(0), 1_000, session), Err(Blocked::By(0)));
    }
}
