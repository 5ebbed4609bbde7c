//! Deleting what waited too long.
//!
//! A message or group post still in a mailbox `message_retention_ms` after
//! it was sent is deleted, and its sender gets an `Expired` receipt instead
//! of silence. Mailboxes are in arrival order, so what expires is always a
//! prefix: the sweep walks each mailbox from its oldest entry and stops at
//! the first one still young. Receipts carry no time of their own; one
//! ahead of an expired message arrived before it and goes with it.
//!
//! Ages are measured against the shard's `WallClock`: nothing expires while
//! it is in doubt, and what was queued before an accepted forward step
//! counts its age from the step, so a clock step never deletes messages.
//!
//! Accounts with a session are left alone: what waits for them is on its
//! way down the connection, and their acknowledgement settles it.
//!
//! The sweep is spread over ticks: once per interval it lists the accounts
//! with anything queued (one pass over the account map, no mailbox read),
//! then walks the mailboxes of a bounded number of them each tick.

use storage::{EntryRecord, Post};
use wire::{Phone, ReceiptKind};

use super::Shard;

/// Accounts one tick looks at.
const SWEEP_ACCOUNTS_PER_TICK: usize = 1024;
/// The longest and shortest time between sweeps; in between, a tenth of
/// the retention, so that a short retention (in tests) is honoured closely.
const SWEEP_INTERVAL_MS_MAX: u64 = 60_000;
const SWEEP_INTERVAL_MS_MIN: u64 = 100;

/// Where the sweep is: the accounts it still has to look at, and when the
/// next one starts.
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// Accounts still to look at in this sweep.
    pending: Vec<Phone>,
    next_at_ms: u64,
}

impl Sweep {
    /// Whether a new sweep starts at `now_ms` (none is under way and its
    /// time came); if so, the next one is scheduled a tenth of
    /// `retention_ms` later, within the interval bounds.
    fn starts(&mut self, now_ms: u64, retention_ms: u64) -> bool {
        if !self.pending.is_empty() || now_ms < self.next_at_ms {
            return false;
        }
        let interval = (retention_ms / 10).clamp(SWEEP_INTERVAL_MS_MIN, SWEEP_INTERVAL_MS_MAX);
        self.next_at_ms = now_ms + interval;
        true
    }

    /// This tick's share of the accounts still to look at.
    fn next_batch(&mut self) -> Vec<Phone> {
        let start = self.pending.len().saturating_sub(SWEEP_ACCOUNTS_PER_TICK);
        self.pending.drain(start..).collect()
    }
}

impl Shard {
    pub(super) fn expiry_tick(&mut self) {
        if self.durability.is_failed() {
            return;
        }
        let retention_ms = self.config.message_retention_ms;
        if self.expiry.starts(self.now_ms, retention_ms) {
            self.expiry.pending = self
                .accounts
                .iter()
                .filter(|(_, a)| a.session.is_none() && !a.mailbox.is_empty())
                .map(|(&phone, _)| phone)
                .collect();
        }
        for owner in self.expiry.next_batch() {
            self.expire(owner);
        }
    }

    fn expire(&mut self, owner: Phone) {
        // Nothing expires while the clock is in doubt (see `clock`).
        let retention = self.config.message_retention_ms;
        let Some(cutoff) = self.clock.expiry_cutoff(self.now_ms, retention) else {
            return;
        };
        let Some(account) = self.accounts.get(&owner) else {
            return;
        };
        if account.session.is_some() {
            return;
        }
        let mut up_to = None;
        for entry in account.mailbox.after(0) {
            let sent_at_ms = match &entry.record {
                EntryRecord::Message { sent_at_ms, .. } => Some(*sent_at_ms),
                EntryRecord::Group { group, gseq } => {
                    self.groups.post(*group, *gseq).map(|post| match post {
                        Post::Message { sent_at_ms, .. } => *sent_at_ms,
                        Post::Change { at_ms, .. } => *at_ms,
                    })
                }
                EntryRecord::Receipt { .. } => None,
            };
            match sent_at_ms.map(|at| self.clock.expiry_stamp(at)) {
                Some(at) if at < cutoff => up_to = Some(entry.seq),
                Some(_) => break,
                None => {}
            }
        }
        if let Some(up_to) = up_to {
            self.release_entries(owner, up_to, ReceiptKind::Expired);
        }
    }
}
