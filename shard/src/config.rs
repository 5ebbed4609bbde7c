//! The limits and timings a shard runs with. Every limit names its unit.

pub mod duration;

use serde::{Deserialize, Serialize};

use crate::{allowance::Rate, PartitionMap};

/// A range of phone numbers (by prefix) that sign up with a fixed code and
/// no SMS, for automated clients. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNumbers {
    pub prefix: String,
    pub code: u32,
}

/// Everything a shard runs with. The limits an operator tunes are read
/// from the `[limits]` section of the server's config file, which embeds
/// this struct (`#[serde(flatten)]`): a field added here without
/// `#[serde(skip)]` is a config key, with its default in
/// [`ShardConfig::new`], and nothing else to write. A `_ms` key takes a
/// duration with a unit too (`30s`, `10m`: [`duration::ms`]).
///
/// Fields marked `#[serde(skip)]` are not `[limits]` keys: the shard's
/// identity, set by whoever starts it; settings the server reads from
/// sections of their own (`[storage]`, `[push]`, `[clock]`) or derives
/// (`prelogin_connections_max`); and limits that are fixed for now.
///
/// [`ShardConfig::validate`] checks the relations between limits that the
/// shard relies on; the server calls it before it starts a shard.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    // ---- The shard's identity: per process, never in a config file. ----
    #[serde(skip)]
    pub shard_id: u16,
    /// The island whose tablet this shard is (docs/islands.md): a
    /// cluster node's own island has the node's id; a single node's only
    /// island is 0.
    #[serde(skip)]
    pub island: crate::island::IslandId,
    #[serde(skip)]
    pub map: PartitionMap,
    /// Added to the shard's monotonic `now_ms` to get Unix time, for the
    /// `sent_at_ms` stamped on messages. Timers never look at it.
    #[serde(skip)]
    pub wall_clock_offset_ms: u64,
    #[serde(skip)]
    pub test_numbers: Option<TestNumbers>,

    // ---- `[limits]` keys. ----
    /// Resolution of the shard's timer wheel (ms): deadlines, sweeps and
    /// the clock check run this often. At least 1. Also the longest any
    /// wake-up glommio loses can delay a shard, since its tick wakes it.
    #[serde(with = "duration::ms")]
    pub tick_ms: u64,
    /// Codes one phone number may request per `code_request_window_ms`.
    pub code_requests_max: u32,
    /// A logged-in connection that sends nothing for this long is closed.
    #[serde(with = "duration::ms")]
    pub idle_timeout_ms: u64,
    /// A connection that has not logged in within this long after it was
    /// accepted is closed.
    #[serde(with = "duration::ms")]
    pub login_timeout_ms: u64,
    /// A connection being closed is dropped this long after its `Bye`,
    /// whether or not the phone took its last bytes.
    #[serde(with = "duration::ms")]
    pub close_flush_timeout_ms: u64,
    /// Messages written to a phone and not yet acknowledged, at most. At
    /// least 1.
    pub unacked_messages_max: u64,
    /// Sustained messages (and read receipts) per second one account may
    /// send, and the burst (at least 1: a send takes one token).
    pub send_rate_per_s: u32,
    pub send_burst: u32,
    /// Messages (1:1 and group posts) one account may have queued, and
    /// their body bytes: a message past either bound is refused with
    /// `MailboxFull`. Receipts do not count (see `receipts_max`).
    pub mailbox_entries_max: usize,
    pub mailbox_bytes_max: usize,
    /// Receipts (`Delivered`, `Read`, `Expired`) one account may have
    /// queued, counted apart from messages so that receipts never make
    /// an account refuse messages. Past it new receipts are dropped and
    /// counted (`receipts_dropped_mailbox_full`): a sender who never reads
    /// loses only receipts of its own messages.
    pub receipts_max: usize,
    /// Group posts one account may have queued, and the body bytes they
    /// stand for (each member's share of the post's copy), apart from its
    /// 1:1 messages: a group someone added it to can neither make it
    /// refuse 1:1 messages nor hold unbounded memory for it. Past either,
    /// the member's entry is not made (counted in
    /// `group_entries_dropped_mailbox_full`).
    pub group_entries_max: usize,
    pub group_bytes_max: usize,
    /// Members one group may have, its creator included.
    pub group_members_max: usize,
    /// Numbers one account's contact list may hold.
    pub contacts_max: usize,
    /// Contact syncs one account may make per hour, and numbers it has not
    /// looked up before it may look up per day (on top of a first
    /// `contacts_max`): what keeps an account from walking the number
    /// space to learn who is registered.
    pub contact_syncs_per_hour: u32,
    pub contact_lookups_per_day: u32,
    /// Phones one connection may follow the presence of at once.
    pub presence_subscriptions_max: usize,
    /// Messages (and group posts) not delivered within this long are
    /// deleted, and each sender gets an `Expired` receipt.
    #[serde(with = "duration::ms")]
    pub message_retention_ms: u64,
    /// Connections that have not logged in, at most, from one source host
    /// (an IPv4 address or an IPv6 /64) on one shard (see
    /// `prelogin_connections_max`).
    pub prelogin_per_source_max: u32,
    /// Codes one connection may ask for (it has no account to charge).
    pub code_requests_per_connection_max: u8,
    /// Code guesses (`Verify`) one connection may make, and one source
    /// host per hour on one shard: a guess costs the guesser, not only the
    /// number whose code it spends.
    pub code_attempts_per_connection_max: u8,
    pub code_attempts_per_source_per_hour: u32,
    /// Logins one shard takes per second, and its burst: past them a
    /// login is answered `TryLater` with a randomized wait, so that a whole
    /// node's phones arriving at once cannot melt the shard they land on.
    pub logins_admitted_per_s: u32,
    pub logins_admitted_burst: u32,
    /// Logins to one account per minute (at least 1: a login takes one):
    /// each closes the last session, whose socket lives until flushed, so
    /// a storm of them would hold descriptors.
    pub logins_per_minute: u32,
    /// Groups one account may create per day.
    pub groups_created_per_day: u32,
    /// Codes per hour one source host, one source network (IPv4 /24,
    /// IPv6 /48) and one range of 10,000 destination numbers may ask for
    /// on one shard, and SMS messages one shard sends per minute in all
    /// (made spent at start, so a restart hands out no new burst). Test
    /// numbers skip all of these; they send no SMS.
    pub code_requests_per_source_per_hour: u32,
    pub code_requests_per_prefix_per_hour: u32,
    pub code_requests_per_range_per_hour: u32,
    pub sms_per_minute: u32,

    // ---- Set by the server from other sections of its config. ----
    /// Connections that have not logged in, at most, on one shard: below
    /// the open-file limit, so that flooding connections never keeps
    /// phones from logging in (the server's default is half its open-file
    /// limit shared among the shards). Past it, or past
    /// `prelogin_per_source_max`, a new connection is closed at once.
    #[serde(skip)]
    pub prelogin_connections_max: usize,
    /// Write-back cache (`[storage]`): mailbox records (entries and acks)
    /// wait this long in memory before they are written, and an entry
    /// acknowledged in the meantime is never written at all. 0: every
    /// record is written (and synced) before the reply that depends on it.
    #[serde(skip)]
    pub sync_delay_ms: u64,
    /// At most one push per account per this long (`[push]`): what arrives
    /// within it is covered by one push when it ends.
    #[serde(skip)]
    pub push_interval_ms: u64,
    /// At start, how far past the latest wall time the journal recorded
    /// the clock may be (the server was down that long) and be trusted;
    /// further, or behind it, expiry is held until the clock is trusted
    /// (see `clock`; `[clock]`, like the next two).
    #[serde(skip)]
    pub clock_jump_max_ms: u64,
    /// How long a clock in doubt must keep step with the monotonic clock
    /// before it is trusted.
    #[serde(skip)]
    pub clock_settle_ms: u64,
    /// The operator says the clock at start is right, whatever the journal
    /// last recorded: ages count by it.
    #[serde(skip)]
    pub clock_confirmed: bool,

    // ---- Fixed for now: not in the config file. ----
    /// How long a signup code stays valid.
    #[serde(skip)]
    pub code_ttl_ms: u64,
    /// Wrong guesses allowed per code.
    #[serde(skip)]
    pub code_attempts_max: u32,
    #[serde(skip)]
    pub code_request_window_ms: u64,
    /// Signups a shard tracks at once (pending codes and rate windows), so
    /// requests for endless made-up numbers cannot grow memory without bound.
    #[serde(skip)]
    pub signups_max: usize,
    /// Mailbox entries are moved into a connection's outbox only while the
    /// outbox holds fewer bytes than this (at least 1, and at most
    /// `outbox_bytes_max`).
    #[serde(skip)]
    pub outbox_feed_bytes_max: usize,
    /// While a connection's outbox holds more than this, the server stops
    /// reading from it: a phone that does not read cannot make it buffer more.
    #[serde(skip)]
    pub outbox_bytes_max: usize,
    /// How long, and how many, `(recipient, sender, client_id)` entries are kept
    /// for resend detection.
    #[serde(skip)]
    pub dedup_ttl_ms: u64,
    #[serde(skip)]
    pub dedup_entries_max: usize,
    /// Body bytes the write-back cache may hold; past it the oldest records
    /// are written early.
    #[serde(skip)]
    pub sync_delay_bytes_max: usize,
    /// Entries of one account the write-back cache may hold; past it the
    /// cache is written out from its oldest record until the account is
    /// back under half, so a recipient that never reads cannot crowd it.
    #[serde(skip)]
    pub sync_delay_entries_per_account_max: u32,
    /// Keys each per-source or per-range table of allowances holds; past
    /// it new keys share one bucket (see `source::Buckets`).
    #[serde(skip)]
    pub source_table_entries_max: usize,
    /// Moves of one connection between shards before login.
    #[serde(skip)]
    pub handovers_max: u8,
    /// Failed logins on one connection before it is closed.
    #[serde(skip)]
    pub login_failures_max: u8,
}

impl ShardConfig {
    /// The defaults, for shard `shard_id` of `map`. This is the one place
    /// a limit's default is written.
    pub fn new(shard_id: u16, map: PartitionMap) -> ShardConfig {
        ShardConfig {
            shard_id,
            island: 0,
            map,
            wall_clock_offset_ms: 0,
            tick_ms: 100,
            code_ttl_ms: 10 * 60 * 1000,
            code_attempts_max: 5,
            code_requests_max: 5,
            code_request_window_ms: 60 * 60 * 1000,
            signups_max: 100_000,
            test_numbers: None,
            idle_timeout_ms: 5 * 60 * 1000,
            login_timeout_ms: 30 * 1000,
            close_flush_timeout_ms: 5_000,
            unacked_messages_max: 256,
            sync_delay_ms: 0,
            sync_delay_bytes_max: 64 * 1024 * 1024,
            sync_delay_entries_per_account_max: 256,
            mailbox_entries_max: 100_000,
            mailbox_bytes_max: 256 * 1024 * 1024,
            receipts_max: 100_000,
            group_entries_max: 200_000,
            group_bytes_max: 256 * 1024 * 1024,
            outbox_feed_bytes_max: 64 * 1024,
            outbox_bytes_max: 1024 * 1024,
            send_rate_per_s: 1_000,
            send_burst: 2_000,
            dedup_ttl_ms: 24 * 60 * 60 * 1000,
            dedup_entries_max: 2_000_000,
            group_members_max: 1024,
            contacts_max: 5_000,
            contact_syncs_per_hour: 60,
            contact_lookups_per_day: 1_000,
            presence_subscriptions_max: 256,
            push_interval_ms: 30_000,
            message_retention_ms: 30 * 24 * 60 * 60 * 1000,
            clock_jump_max_ms: 24 * 60 * 60 * 1000,
            clock_settle_ms: 10 * 60 * 1000,
            clock_confirmed: false,
            prelogin_connections_max: 4_096,
            prelogin_per_source_max: 128,
            code_requests_per_connection_max: 3,
            code_attempts_per_connection_max: 5,
            code_attempts_per_source_per_hour: 30,
            logins_per_minute: 20,
            logins_admitted_per_s: 5_000,
            logins_admitted_burst: 20_000,
            groups_created_per_day: 100,
            code_requests_per_source_per_hour: 10,
            code_requests_per_prefix_per_hour: 60,
            code_requests_per_range_per_hour: 30,
            sms_per_minute: 600,
            source_table_entries_max: 65_536,
            handovers_max: 4,
            login_failures_max: 3,
        }
    }

    /// Checks the relations between limits that the shard relies on, and
    /// returns the first one that does not hold, with the values involved.
    /// Limits that only make the shard stricter or looser (a small mailbox,
    /// a large burst) are the operator's choice and are not checked.
    pub fn validate(&self) -> Result<(), LimitsError> {
        // A limit of 0 that divides time, or that shuts what the shard is
        // for: delivering messages, taking them, logging in.
        let at_least_one = [
            (
                "tick_ms",
                self.tick_ms,
                "the timer wheel counts time in ticks of it",
            ),
            (
                "unacked_messages_max",
                self.unacked_messages_max,
                "no message would ever be written to a phone",
            ),
            (
                "outbox_feed_bytes_max",
                self.outbox_feed_bytes_max as u64,
                "no message would ever be moved into an outbox",
            ),
            (
                "send_burst",
                self.send_burst.into(),
                "a send takes one token, and the bucket would hold none",
            ),
            (
                "logins_per_minute",
                self.logins_per_minute.into(),
                "a login takes one token, and the bucket would hold none",
            ),
            (
                "idle_timeout_ms",
                self.idle_timeout_ms,
                "every logged-in connection would be closed at once",
            ),
            (
                "login_timeout_ms",
                self.login_timeout_ms,
                "every connection would be closed before it could log in",
            ),
            (
                "logins_admitted_burst",
                self.logins_admitted_burst.into(),
                "a login takes one token, and the bucket would hold none",
            ),
        ];
        if let Some(&(limit, _, consequence)) = at_least_one.iter().find(|(_, v, _)| *v == 0) {
            return Err(LimitsError::Zero { limit, consequence });
        }
        if self.tick_ms > TICK_MS_MAX {
            return Err(LimitsError::TickTooLong {
                tick_ms: self.tick_ms,
            });
        }
        // Deliveries fill an outbox only up to the feed limit, so that the
        // phone's own replies still fit under the outbox limit: a phone
        // that reads is never stopped being read because of what it was
        // sent.
        if self.outbox_feed_bytes_max > self.outbox_bytes_max {
            return Err(LimitsError::FeedAboveOutbox {
                outbox_feed_bytes_max: self.outbox_feed_bytes_max,
                outbox_bytes_max: self.outbox_bytes_max,
            });
        }
        Ok(())
    }
}

impl ShardConfig {
    /// `[limits]` keys a running shard cannot take a new value of: the
    /// timer wheel counts in ticks of `tick_ms`. Every other `[limits]`
    /// key is read where it is used, so a new value applies from the
    /// next use (a lower bound does not undo what it already let in).
    pub const RESTART_ONLY: &'static [&'static str] = &["tick_ms"];

    /// Takes from `running` what a running shard keeps whatever a reload
    /// says: its identity, [`ShardConfig::RESTART_ONLY`], the settings of
    /// other config sections (`[storage]`, `[push]`, `[clock]`, test
    /// numbers), which change only with a restart, and the limits fixed
    /// for now, some of which sized tables at start. What is left is the
    /// `[limits]` keys and `prelogin_connections_max`.
    pub fn keep_fixed(&mut self, running: &ShardConfig) {
        self.shard_id = running.shard_id;
        self.island = running.island;
        self.map = running.map;
        self.wall_clock_offset_ms = running.wall_clock_offset_ms;
        self.test_numbers.clone_from(&running.test_numbers);
        self.tick_ms = running.tick_ms;
        self.sync_delay_ms = running.sync_delay_ms;
        self.push_interval_ms = running.push_interval_ms;
        self.clock_jump_max_ms = running.clock_jump_max_ms;
        self.clock_settle_ms = running.clock_settle_ms;
        self.clock_confirmed = running.clock_confirmed;
        self.code_ttl_ms = running.code_ttl_ms;
        self.code_attempts_max = running.code_attempts_max;
        self.code_request_window_ms = running.code_request_window_ms;
        self.signups_max = running.signups_max;
        self.outbox_feed_bytes_max = running.outbox_feed_bytes_max;
        self.outbox_bytes_max = running.outbox_bytes_max;
        self.dedup_ttl_ms = running.dedup_ttl_ms;
        self.dedup_entries_max = running.dedup_entries_max;
        self.sync_delay_bytes_max = running.sync_delay_bytes_max;
        self.sync_delay_entries_per_account_max = running.sync_delay_entries_per_account_max;
        self.source_table_entries_max = running.source_table_entries_max;
        self.handovers_max = running.handovers_max;
        self.login_failures_max = running.login_failures_max;
    }
}

/// The defaults for shard 0 of one: what a server's `[limits]` starts
/// from before it sets each shard's identity.
impl Default for ShardConfig {
    fn default() -> ShardConfig {
        ShardConfig::new(0, PartitionMap::new(1, 1))
    }
}

/// A relation between limits that [`ShardConfig::validate`] found broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("{limit} is 0: it must be at least 1 ({consequence})")]
    Zero {
        limit: &'static str,
        consequence: &'static str,
    },
    #[error(
        "outbox_feed_bytes_max ({outbox_feed_bytes_max}) is above outbox_bytes_max \
         ({outbox_bytes_max}): deliveries alone would stop a connection being read"
    )]
    FeedAboveOutbox {
        outbox_feed_bytes_max: usize,
        outbox_bytes_max: usize,
    },
    #[error(
        "tick_ms is {tick_ms}: at most {TICK_MS_MAX} (deadlines, sweeps and a stop wait for the tick)"
    )]
    TickTooLong { tick_ms: u64 },
}

/// The longest tick: a shard notices a stop, and fires its deadlines, a
/// tick late at worst. (The stall test stretches it this far on purpose.)
pub const TICK_MS_MAX: u64 = 10_000;

const HOUR_MS: u64 = 60 * 60 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;

impl ShardConfig {
    /// Each account's send allowance: `send_rate_per_s` a second, bursts
    /// of `send_burst`. Messages, read receipts, group requests, typing
    /// and presence changes each take one token.
    pub fn send_rate(&self) -> Rate {
        Rate::per_second(self.send_rate_per_s.into(), self.send_burst.into())
    }

    /// Each account's contact syncs: `contact_syncs_per_hour`, all of it
    /// at once at most.
    pub fn contact_sync_rate(&self) -> Rate {
        let per_hour = self.contact_syncs_per_hour.into();
        Rate::new(per_hour, HOUR_MS, per_hour)
    }

    /// Each account's lookups of numbers it did not list before (by
    /// contact sync, or by sending to a number outside its contacts):
    /// `contact_lookups_per_day`, after a first `contacts_max`.
    pub fn contact_lookup_rate(&self) -> Rate {
        Rate::new(
            self.contact_lookups_per_day.into(),
            DAY_MS,
            self.contacts_max as u64,
        )
    }

    /// Codes per source host (`code_requests_per_source_per_hour`).
    pub fn code_source_rate(&self) -> Rate {
        per_hour(self.code_requests_per_source_per_hour)
    }

    /// Codes per source network (`code_requests_per_prefix_per_hour`).
    pub fn code_prefix_rate(&self) -> Rate {
        per_hour(self.code_requests_per_prefix_per_hour)
    }

    /// Codes per range of numbers (`code_requests_per_range_per_hour`).
    pub fn code_range_rate(&self) -> Rate {
        per_hour(self.code_requests_per_range_per_hour)
    }

    /// Codes one number may be sent: `code_requests_max` per
    /// `code_request_window_ms`, all of them at once at most.
    pub fn code_number_rate(&self) -> Rate {
        let count = self.code_requests_max.into();
        Rate::new(count, self.code_request_window_ms, count)
    }

    /// Code guesses per source host (`code_attempts_per_source_per_hour`).
    pub fn code_attempt_source_rate(&self) -> Rate {
        per_hour(self.code_attempts_per_source_per_hour)
    }

    /// Logins per account (`logins_per_minute`, all at once at most).
    pub fn login_rate(&self) -> Rate {
        let count = self.logins_per_minute.into();
        Rate::new(count, 60_000, count)
    }

    /// Logins a shard takes (`logins_admitted_per_s`, `_burst`).
    pub fn login_admission_rate(&self) -> Rate {
        Rate::per_second(
            self.logins_admitted_per_s.into(),
            self.logins_admitted_burst.into(),
        )
    }

    /// Groups created per account (`groups_created_per_day`).
    pub fn group_create_rate(&self) -> Rate {
        let count = self.groups_created_per_day.into();
        Rate::new(count, DAY_MS, count)
    }

    /// The shard's SMS budget (`sms_per_minute`).
    pub fn sms_rate(&self) -> Rate {
        let per_minute = self.sms_per_minute.into();
        Rate::new(per_minute, 60_000, per_minute)
    }
}

/// `count` an hour, all of it at once at most.
fn per_hour(count: u32) -> Rate {
    Rate::new(count.into(), HOUR_MS, count.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload takes the `[limits]` keys but `tick_ms`, and keeps what a
    /// running shard cannot change.
    #[test]
    fn a_reload_keeps_what_cannot_change_live() {
        let mut running = ShardConfig::new(3, PartitionMap::new(64, 4));
        running.wall_clock_offset_ms = 1_234;
        running.sync_delay_ms = 50;
        running.dedup_entries_max = 7;
        let mut reloaded = ShardConfig {
            tick_ms: 5,
            send_burst: 9,
            mailbox_entries_max: 11,
            prelogin_connections_max: 13,
            ..ShardConfig::default()
        };
        reloaded.keep_fixed(&running);
        assert_eq!(reloaded.shard_id, 3);
        assert_eq!(reloaded.map, running.map);
        assert_eq!(reloaded.wall_clock_offset_ms, 1_234);
        assert_eq!(reloaded.sync_delay_ms, 50);
        assert_eq!(reloaded.dedup_entries_max, 7);
        assert_eq!(reloaded.tick_ms, running.tick_ms, "restart only");
        assert_eq!(reloaded.send_burst, 9);
        assert_eq!(reloaded.mailbox_entries_max, 11);
        assert_eq!(reloaded.prelogin_connections_max, 13);
    }

    fn check(adjust: impl Fn(&mut ShardConfig), expected: Result<(), LimitsError>) {
        let mut config = ShardConfig::default();
        adjust(&mut config);
        assert_eq!(config.validate(), expected);
    }

    #[test]
    fn the_defaults_hold_every_relation() {
        check(|_| {}, Ok(()));
    }

    /// The limit `validate` names as 0, if it names one.
    fn zero(adjust: impl Fn(&mut ShardConfig)) -> Option<&'static str> {
        let mut config = ShardConfig::default();
        adjust(&mut config);
        match config.validate() {
            Err(LimitsError::Zero { limit, .. }) => Some(limit),
            _ => None,
        }
    }

    #[test]
    fn a_limit_the_shard_cannot_work_with_at_zero_is_named() {
        assert_eq!(zero(|c| c.tick_ms = 0), Some("tick_ms"));
        let unacked = zero(|c| c.unacked_messages_max = 0);
        assert_eq!(unacked, Some("unacked_messages_max"));
        let feed = zero(|c| c.outbox_feed_bytes_max = 0);
        assert_eq!(feed, Some("outbox_feed_bytes_max"));
        assert_eq!(zero(|c| c.send_burst = 0), Some("send_burst"));
        assert_eq!(zero(|c| c.logins_per_minute = 0), Some("logins_per_minute"));
        // What only makes the shard stricter is the operator's choice.
        check(|c| c.send_rate_per_s = 0, Ok(()));
        check(|c| c.sync_delay_entries_per_account_max = 0, Ok(()));
        check(|c| c.mailbox_entries_max = 0, Ok(()));
    }

    #[test]
    fn the_feed_limit_may_reach_but_not_pass_the_outbox_limit() {
        check(|c| c.outbox_feed_bytes_max = c.outbox_bytes_max, Ok(()));
        check(
            |c| {
                c.outbox_bytes_max = 1000;
                c.outbox_feed_bytes_max = 1001;
            },
            Err(LimitsError::FeedAboveOutbox {
                outbox_feed_bytes_max: 1001,
                outbox_bytes_max: 1000,
            }),
        );
    }

    #[test]
    fn the_error_says_which_limit_and_its_values() {
        let mut config = ShardConfig {
            outbox_feed_bytes_max: 2 * 1024 * 1024,
            ..ShardConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("outbox_feed_bytes_max (2097152)"),
            "{message}"
        );
        assert!(message.contains("outbox_bytes_max (1048576)"), "{message}");
        config.tick_ms = 0;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.starts_with("tick_ms is 0"), "{message}");
    }
}
