//! Waking phones that are away.
//!
//! An account may hold one push token (durable, `PushToken` records). When
//! a message or group post lands in the mailbox of an account with no
//! session, the shard hands a [`Push`] to `Env::push`, at most one per
//! account per `push_interval_ms`: what arrives within the interval after a
//! push is covered by one more push when it ends (a wheel timer), if the
//! phone is still away. Receipts wake no one. Sending, retrying and
//! learning that the gateway rejected a token happen off the shard; a
//! rejected token comes back through [`Shard::push_rejected`] and is
//! dropped.

use std::sync::Arc;

use storage::Record;
use wire::{ErrorKind, Phone, PushPlatform, ServerFrame, PUSH_TOKEN_BYTES_MAX};

use super::{ConnId, Shard, TimerEvent};

/// A wake-up for the push gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub phone: Phone,
    pub platform: PushPlatform,
    pub token: Arc<str>,
    /// Mailbox entries waiting for the phone.
    pub waiting: u64,
}

/// An account's push token and when it was last used.
#[derive(Debug)]
pub(super) struct PushState {
    platform: PushPlatform,
    token: Arc<str>,
    /// When the last push went out (shard ms), and whether one is due when
    /// the interval after it ends.
    sent_at_ms: Option<u64>,
    pending: bool,
}

/// What to do about something that arrived for an away account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// Push now.
    Now,
    /// A push is due when the interval ends already: nothing more.
    Coalesced,
    /// Within the interval after the last push: one more push is due at
    /// this time (shard ms), and a timer must be armed for it.
    At(u64),
}

impl PushState {
    fn new(platform: PushPlatform, token: String) -> PushState {
        PushState {
            platform,
            token: token.into(),
            sent_at_ms: None,
            pending: false,
        }
    }

    /// Something arrived at `now_ms`; pushes are at least `interval_ms`
    /// apart.
    pub(super) fn something_waits(&mut self, now_ms: u64, interval_ms: u64) -> Wake {
        if self.pending {
            return Wake::Coalesced;
        }
        match self.sent_at_ms {
            Some(sent) if now_ms < sent + interval_ms => {
                self.pending = true;
                Wake::At(sent + interval_ms)
            }
            _ => Wake::Now,
        }
    }

    /// The interval after the last push ended.
    fn interval_ended(&mut self) {
        self.pending = false;
    }

    /// A push goes out at `now_ms` for `phone`, with `waiting` entries.
    fn sent(&mut self, phone: Phone, waiting: u64, now_ms: u64) -> Push {
        self.sent_at_ms = Some(now_ms);
        Push {
            phone,
            platform: self.platform,
            token: self.token.clone(),
            waiting,
        }
    }
}

impl Shard {
    pub(super) fn register_push(
        &mut self,
        id: ConnId,
        owner: Phone,
        client_id: u64,
        platform: PushPlatform,
        token: String,
    ) {
        if token.len() > PUSH_TOKEN_BYTES_MAX {
            let detail = format!(
                "push token of {} bytes exceeds {PUSH_TOKEN_BYTES_MAX}",
                token.len()
            );
            self.reply_error(id, ErrorKind::BadRequest, Some(client_id), &detail);
            return;
        }
        if !self.social_writable(id, client_id) {
            return;
        }
        let token = (!token.is_empty()).then_some((platform, token));
        self.set_push_token(owner, token.clone());
        self.durability.record(Record::PushToken { owner, token });
        self.hold_reply(id, &ServerFrame::Done { client_id });
    }

    fn set_push_token(&mut self, owner: Phone, token: Option<(PushPlatform, String)>) {
        let account = self.account_mut(owner);
        account.push = token.map(|(platform, token)| Box::new(PushState::new(platform, token)));
    }

    /// Something arrived for `owner`, who has no session.
    pub(super) fn something_waits(&mut self, owner: Phone) {
        let (now_ms, interval) = (self.now_ms, self.config.push_interval_ms);
        let account = self.account_mut(owner);
        let Some(push) = account.push.as_mut() else {
            return;
        };
        match push.something_waits(now_ms, interval) {
            Wake::Now => self.send_push(owner),
            Wake::Coalesced => self.counters.pushes_coalesced += 1,
            Wake::At(due_ms) => {
                self.counters.pushes_coalesced += 1;
                let tick = due_ms.div_ceil(self.config.tick_ms);
                self.timers.arm(tick, TimerEvent::Push(owner));
            }
        }
    }

    /// The interval after a push ended with more waiting.
    pub(super) fn push_due(&mut self, owner: Phone) {
        let Some(account) = self.accounts.get_mut(&owner) else {
            return;
        };
        let Some(push) = account.push.as_mut() else {
            return;
        };
        push.interval_ended();
        if account.session.is_none() && !account.mailbox.is_empty() {
            self.send_push(owner);
        }
    }

    fn send_push(&mut self, owner: Phone) {
        let now_ms = self.now_ms;
        let account = self.account_mut(owner);
        let waiting = account.mailbox.len() as u64;
        let push = account.push.as_mut().expect("caller checked");
        let request = push.sent(owner, waiting, now_ms);
        if self.env.push(request) {
            self.counters.pushes_sent += 1;
        } else {
            self.counters.pushes_dropped_queue_full += 1;
        }
    }

    /// The gateway refused `token` for `phone` as invalid: forget it,
    /// unless the phone has registered another since.
    pub fn push_rejected(&mut self, phone: Phone, token: &str) {
        let current = self
            .accounts
            .get(&phone)
            .and_then(|a| a.push.as_ref())
            .is_some_and(|p| &*p.token == token);
        if !current {
            return;
        }
        self.counters.push_tokens_dropped += 1;
        self.set_push_token(phone, None);
        if self.durability.admit().is_ok() {
            self.durability.record(Record::PushToken {
                owner: phone,
                token: None,
            });
        }
    }

    pub(super) fn restore_push(&mut self, owner: Phone, token: Option<(PushPlatform, String)>) {
        self.set_push_token(owner, token);
    }

    pub(super) fn checkpoint_push(&self, owner: Phone, records: &mut Vec<Record>) {
        if let Some(push) = &self.accounts[&owner].push {
            records.push(Record::PushToken {
                owner,
                token: Some((push.platform, push.token.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_within_the_interval_coalesce_into_one_at_its_end() {
        let mut push = PushState::new(PushPlatform::Fcm, "t".into());
        assert_eq!(push.something_waits(0, 100), Wake::Now);
        let phone = Phone::from_u64(15550000001).unwrap();
        assert_eq!(push.sent(phone, 1, 0).waiting, 1);
        assert_eq!(push.something_waits(10, 100), Wake::At(100));
        assert_eq!(push.something_waits(20, 100), Wake::Coalesced);
        push.interval_ended();
        assert_eq!(push.something_waits(150, 100), Wake::Now);
    }
}
