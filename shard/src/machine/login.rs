//! The anonymous phase of a connection: after `Hello` and before a login.
//! It may ask for a code, prove a number with it (signup), or log in with
//! a device key; a frame naming an account of another shard moves the
//! connection there first, and one naming an account of another node of
//! the cluster is answered `Redirect` (or `TryLater` while that node is
//! down). Logins pass the shard's admission bucket
//! (`logins_admitted_per_s`); the overflow is answered `TryLater`.
//! Everything else waits for a login.
//!
//! What this phase may cost is bounded by [`Anonymous`](super::anonymous)
//! (per connection, source, network, number range, SMS budget) and by the
//! number's own allowance in [`Signups`](super::signup).

use sha2::{Digest, Sha256};
use storage::{Record, KEY_HASH_BYTES};
use subtle::ConstantTimeEq;
use wire::{ByeReason, ClientFrame, DeviceKey, ErrorKind, Phone, ServerFrame, DEVICE_KEY_BYTES};

use super::{
    account::Account,
    connections::ConnEventKind,
    durability::Refusal,
    signup::{CodeRefusal, CodeRules},
    ConnId, FrameOutcome, Shard,
};
use crate::{island::IslandId, source::Source, Env, Home};

/// A `TryLater` asks for at least this long, plus what the admission
/// bucket needs to refill, plus a random part of up to
/// `TRY_LATER_JITTER_MS`.
const TRY_LATER_BASE_MS: u64 = 1_000;
const TRY_LATER_JITTER_MS: u64 = 4_000;

/// The one answer to a wrong code, an expired one, a used-up one and a
/// code never sent: no one learns for free whether a number asked for a
/// code lately.
const WRONG_CODE: &str = "wrong or no longer valid code (a code lives ten minutes \
                          and takes five wrong tries); request a new one";

impl Shard {
    /// A frame on a connection that said `Hello` and has not logged in.
    pub(super) fn anonymous_frame(&mut self, id: ConnId, frame: ClientFrame<'_>) -> FrameOutcome {
        if let ClientFrame::RequestCode { phone }
        | ClientFrame::Verify { phone, .. }
        | ClientFrame::Login { phone, .. } = frame
        {
            match self.home_of(phone) {
                Home::Here { island, shard }
                    if (island, shard) == (self.config.island, self.config.shard_id)
                        && self.leads_own_island() => {}
                Home::Here { island, shard } => return self.hand_over_for(id, (island, shard)),
                Home::Away {
                    node, live: true, ..
                } => {
                    self.redirect(id, node);
                    return FrameOutcome::Continue;
                }
                Home::Away { .. } | Home::Unknown => {
                    // Its node is down, or the cluster has no map yet.
                    self.try_later(id, 0);
                    return FrameOutcome::Continue;
                }
            }
        }
        match frame {
            ClientFrame::Hello { .. } => {
                self.fail(id, ErrorKind::Malformed, "Hello sent twice".into());
            }
            ClientFrame::Ping { nonce } => self.reply(id, &ServerFrame::Pong { nonce }),
            ClientFrame::RequestCode { phone } => self.request_code(id, phone),
            ClientFrame::Verify { phone, code } => self.verify(id, phone, code),
            ClientFrame::Login { phone, key } => self.login(id, phone, key),
            other => {
                let client_id = other.client_id();
                self.reply_error(id, ErrorKind::NotLoggedIn, client_id, "log in first");
            }
        }
        FrameOutcome::Continue
    }

    /// The connection names an account of another node: it is told where
    /// that node is, and closed.
    fn redirect(&mut self, id: ConnId, node: u16) {
        let placement = self
            .placement
            .as_ref()
            .expect("a node away has a placement");
        let addr = placement
            .node(node)
            .expect("a live node is placed")
            .advertise
            .clone();
        let revision = placement.revision;
        self.counters.redirects += 1;
        self.close_after(id, &ServerFrame::Redirect { addr, revision });
    }

    /// The connection cannot be served now: told to come back after
    /// `wait_ms` and a random part of `TRY_LATER_JITTER_MS` (so that phones
    /// turned away together do not come back together), and closed.
    fn try_later(&mut self, id: ConnId, wait_ms: u64) {
        let mut random = [0u8; 4];
        self.env.random(&mut random);
        let jitter = u64::from(u32::from_le_bytes(random)) % (TRY_LATER_JITTER_MS + 1);
        let after_ms = (TRY_LATER_BASE_MS + wait_ms + jitter).min(u64::from(u32::MAX)) as u32;
        self.counters.try_laters += 1;
        self.close_after(id, &ServerFrame::TryLater { after_ms });
    }

    /// The connection names an account of another tablet of this node (of
    /// another shard, or of another island on this one): it moves there,
    /// unless it has moved too often (each move costs a handover).
    fn hand_over_for(&mut self, id: ConnId, (island, shard): (IslandId, u16)) -> FrameOutcome {
        let handovers_max = self.config.handovers_max;
        if self
            .conns
            .get(id)
            .is_some_and(|c| c.handovers() >= handovers_max)
        {
            let detail = "too many account changes on one connection";
            self.fail(id, ErrorKind::Overloaded, detail.into());
            return FrameOutcome::Continue;
        }
        self.conns.note(id, ConnEventKind::Moving { shard });
        FrameOutcome::HandOver { island, shard }
    }

    fn is_test_number(&self, phone: Phone) -> Option<u32> {
        let test = self.config.test_numbers.as_ref()?;
        phone.has_prefix(&test.prefix).then_some(test.code)
    }

    /// True when `phone` is in the test-number range (see `TestNumbers`).
    pub(super) fn is_test_phone(&self, phone: Phone) -> bool {
        self.is_test_number(phone).is_some()
    }

    fn code_rules(&self) -> CodeRules {
        CodeRules {
            number_rate: self.config.code_number_rate(),
            code_ttl_ms: self.config.code_ttl_ms,
            code_attempts_max: self.config.code_attempts_max,
            signups_max: self.config.signups_max,
            tick_ms: self.config.tick_ms,
        }
    }

    /// A code for `phone`. Every limit is checked before anything is
    /// spent or remembered: per connection, then (for numbers outside the
    /// test range) the number's own allowance and the table's bound, then
    /// per source host, source network, number range and the shard's SMS
    /// budget ([`Anonymous::charge_code`](super::anonymous::Anonymous)). A
    /// pending signup is made only for a code that went out, so a flood
    /// that is refused leaves nothing behind.
    fn request_code(&mut self, id: ConnId, phone: Phone) {
        let per_connection_max = self.config.code_requests_per_connection_max;
        let conn = self.conns.get_mut(id).expect("the caller found it");
        if !conn.charge_code_request(per_connection_max) {
            self.refuse_code(id, "code_requests_per_connection_max", u64::MAX);
            return;
        }
        let source = conn.source();
        let expires_in_s = (self.config.code_ttl_ms / 1000) as u32;
        let sent = ServerFrame::CodeSent {
            phone,
            expires_in_s,
        };
        if self.is_test_phone(phone) {
            // Test numbers are for load generators: a fixed code, no SMS,
            // no limit, no table entry (so others cannot crowd them out).
            self.reply(id, &sent);
            return;
        }
        let (rules, now_ms) = (self.code_rules(), self.now_ms);
        match self.signups.may_send(phone, rules, now_ms) {
            Ok(()) => {}
            Err(CodeRefusal::Number(exhausted)) => {
                self.refuse_code(id, "code_requests_max", exhausted.retry_after_ms);
                return;
            }
            Err(CodeRefusal::TableFull) => {
                let detail = "too many signups in progress; retry later";
                self.reply_error(id, ErrorKind::Overloaded, None, detail);
                return;
            }
        }
        if let Err(refused) = self
            .anonymous
            .charge_code(&self.config, source, phone, now_ms)
        {
            self.refuse_code(id, refused.limit, refused.retry_after_ms);
            return;
        }
        let code = random_code(&mut *self.env);
        if !self.env.send_sms(phone, code) {
            let detail = "SMS gateway busy; retry later";
            self.reply_error(id, ErrorKind::SmsUnavailable, None, detail);
            return;
        }
        self.counters.codes_sent += 1;
        let wall_ms = self.clock.wall_ms(now_ms);
        let record = self.anonymous.sent(phone, source, wall_ms);
        self.durability.record(record);
        self.signups
            .sent(phone, code, (rules, now_ms), &mut self.timers);
        self.reply(id, &sent);
    }

    /// A replayed `CodeSent`: the number's allowance is spent again (as
    /// of now) if the code is still inside the window, like the source's
    /// and the range's.
    pub(super) fn restore_code_sent(&mut self, phone: Phone, source: Source, at_ms: u64) {
        let now_ms = self.now_ms;
        let times = (now_ms, self.clock.wall_ms(now_ms));
        if self
            .anonymous
            .restore_sent(&self.config, (phone, source, at_ms), times)
        {
            let rules = self.code_rules();
            self.signups
                .restore_sent(phone, (rules, now_ms), &mut self.timers);
        }
    }

    /// A signup's timer fired.
    pub(super) fn signup_timer(&mut self, phone: Phone) {
        let (rules, now_ms) = (self.code_rules(), self.now_ms);
        self.signups
            .timer_fired(phone, (rules, now_ms), &mut self.timers);
    }

    /// Spends a code guess from the connection's and its source's
    /// allowances (`code_attempts_per_connection_max`,
    /// `code_attempts_per_source_per_hour`). Err: the limit, and when to
    /// retry (`u64::MAX`: not on this connection).
    fn charge_verify(&mut self, id: ConnId) -> Result<(), (&'static str, u64)> {
        let per_connection_max = self.config.code_attempts_per_connection_max;
        let conn = self.conns.get_mut(id).expect("the caller found it");
        if !conn.charge_code_attempt(per_connection_max) {
            return Err(("code_attempts_per_connection_max", u64::MAX));
        }
        let source = conn.source();
        self.anonymous
            .charge_attempt(&self.config, source, self.now_ms)
    }

    /// Answers a code request or guess with `RateLimited`, naming the
    /// limit.
    fn refuse_code(&mut self, id: ConnId, limit: &str, retry_after_ms: u64) {
        self.counters.codes_refused += 1;
        self.counters.rate_limited += 1;
        let detail = match retry_after_ms {
            u64::MAX => format!("over a signup limit ({limit}); use another connection"),
            ms => format!(
                "over a signup limit ({limit}); retry in {} s",
                ms.div_ceil(1000)
            ),
        };
        self.reply_error(id, ErrorKind::RateLimited, None, &detail);
    }

    fn verify(&mut self, id: ConnId, phone: Phone, code: u32) {
        // A new key that could not be stored would be lost on restart.
        if let Err(refusal) = self.durability.admit() {
            if refusal != Refusal::Failed {
                self.counters.signups_refused_disk_full += 1;
            }
            self.reply_error(id, refusal.kind(), None, refusal.detail());
            return;
        }
        // The number's previous account is still leaving its groups: a
        // new account now could be put in them.
        if self.deletions.is_pending(phone) {
            self.counters.signups_refused_deletion_pending += 1;
            let detail = "this number's previous account is still being deleted; retry shortly";
            self.reply_error(id, ErrorKind::Unavailable, None, detail);
            return;
        }
        if let Some(test_code) = self.is_test_number(phone) {
            if code == test_code {
                self.register(id, phone);
            } else {
                self.reply_error(id, ErrorKind::BadCode, None, "wrong code");
            }
            return;
        }
        // Guesses cost the guesser: per connection and per source host.
        if let Err((limit, retry_after_ms)) = self.charge_verify(id) {
            self.refuse_code(id, limit, retry_after_ms);
            return;
        }
        if self.signups.check(phone, code, self.now_ms) {
            self.register(id, phone);
        } else {
            self.reply_error(id, ErrorKind::BadCode, None, WRONG_CODE);
        }
    }

    /// `phone` proved it owns its number: a new key, and a new account
    /// or the old one with the key replaced (its old device logged out).
    fn register(&mut self, id: ConnId, phone: Phone) {
        let mut key = [0u8; DEVICE_KEY_BYTES];
        self.env.random(&mut key);
        let key_hash = hash_key(&key);
        let generation = match self.accounts.get_mut(&phone) {
            Some(account) => {
                account.key_hash = key_hash;
                account.generation += 1;
                let generation = account.generation;
                // The old device's key is dead; so is its connection.
                if let Some(old) = account.session.take() {
                    self.counters.sessions -= 1;
                    self.close_with(old, ByeReason::Revoked);
                }
                generation
            }
            None => {
                let mut account = Account::new(key_hash, 1);
                account.since_ms = self.clock.wall_ms(self.now_ms);
                self.accounts.insert(phone, account);
                self.counters.accounts += 1;
                1
            }
        };
        self.counters.signups += 1;
        self.durability.record(Record::AccountKey {
            phone,
            key_hash,
            generation,
        });
        if generation == 1 {
            let since_ms = self.accounts[&phone].since_ms;
            self.durability
                .record(Record::AccountSince { phone, since_ms });
        }
        self.hold_reply(
            id,
            &ServerFrame::Registered {
                phone,
                key: DeviceKey(key),
            },
        );
    }

    fn login(&mut self, id: ConnId, phone: Phone, key: DeviceKey) {
        // Admission comes first: a storm of logins is turned away before
        // each costs a key hash.
        let (admission, now_ms) = (self.config.login_admission_rate(), self.now_ms);
        if let Err(exhausted) = self.login_admission.take(1, admission, now_ms) {
            self.try_later(id, exhausted.retry_after_ms);
            return;
        }
        let presented = hash_key(&key.0);
        let accepted = self
            .accounts
            .get(&phone)
            .is_some_and(|a| bool::from(a.key_hash.ct_eq(&presented)));
        if !accepted {
            self.login_failed(id);
            return;
        }
        let (rate, now_ms) = (self.config.login_rate(), self.now_ms);
        let account = self.account_mut(phone);
        if let Err(exhausted) = account.logins.take(1, rate, now_ms) {
            // Each login closes the last session, whose socket lives on
            // until it is flushed: a storm of them would hold descriptors.
            let retry_s = exhausted.retry_after_ms.div_ceil(1000);
            let detail = format!("too many logins to this account; retry in {retry_s} s");
            self.counters.rate_limited += 1;
            self.reply_error(id, ErrorKind::RateLimited, None, &detail);
            return;
        }
        let acked_up_to = account.mailbox.acked_up_to();
        match account.session.replace(id) {
            Some(old) => self.close_with(old, ByeReason::Replaced),
            None => {
                self.counters.sessions += 1;
                self.session_began(phone);
            }
        }
        self.counters.logins += 1;
        let conn = self.conns.get_mut(id).expect("the caller found it");
        // Everything not yet acknowledged is sent again on a new session.
        conn.logged_in(phone, acked_up_to);
        let source = conn.source();
        self.anonymous.left(source);
        self.arm_idle(id, now_ms + self.config.idle_timeout_ms);
        self.conns.note(id, ConnEventKind::LoggedIn);
        self.reply(id, &ServerFrame::LoggedIn { phone });
        self.pump(id);
    }

    /// A wrong key: answered, and after `login_failures_max` the
    /// connection closes.
    fn login_failed(&mut self, id: ConnId) {
        self.counters.login_failures += 1;
        let conn = self.conns.get_mut(id).expect("the caller found it");
        let give_up = conn.login_failed(self.config.login_failures_max);
        let detail = "unknown number or wrong key";
        self.reply_error(id, ErrorKind::BadCredentials, None, detail);
        if give_up {
            self.close_with(id, ByeReason::ProtocolError);
        }
    }
}

fn hash_key(key: &[u8; DEVICE_KEY_BYTES]) -> [u8; KEY_HASH_BYTES] {
    Sha256::digest(key).into()
}

/// A uniform six-digit code: rejection sampling keeps `% 1_000_000` unbiased.
fn random_code(env: &mut dyn Env) -> u32 {
    const CODES: u32 = 1_000_000;
    let limit = u32::MAX - u32::MAX % CODES;
    loop {
        let mut bytes = [0u8; 4];
        env.random(&mut bytes);
        let value = u32::from_le_bytes(bytes);
        if value < limit {
            return value % CODES;
        }
    }
}
