//! The limits and timings a shard runs with. Every limit names its unit.

use crate::{allowance::Rate, PartitionMap};

/// A range of phone numbers (by prefix) that sign up with a fixed code and
/// no SMS, for automated clients. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNumbers {
    pub prefix: String,
    pub code: u32,
}

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard_id: u16,
    pub map: PartitionMap,
    /// Added to the shard's monotonic `now_ms` to get Unix time, for the
    /// `sent_at_ms` stamped on messages. Timers never look at it.
    pub wall_clock_offset_ms: u64,
    /// Resolution of the shard's timer wheel.
    pub tick_ms: u64,
    /// How long a signup code stays valid.
    pub code_ttl_ms: u64,
    /// Wrong guesses allowed per code.
    pub code_attempts_max: u32,
    /// Codes one phone number may request per `code_request_window_ms`.
    pub code_requests_max: u32,
    pub code_request_window_ms: u64,
    /// Signups a shard tracks at once (pending codes and rate windows), so
    /// requests for endless made-up numbers cannot grow memory without bound.
    pub signups_max: usize,
    pub test_numbers: Option<TestNumbers>,
    /// A logged-in connection that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// A connection that has not logged in within this long after it was
    /// accepted is closed.
    pub login_timeout_ms: u64,
    /// A connection being closed is dropped this long after its `Bye`,
    /// whether or not the phone took its last bytes.
    pub close_flush_timeout_ms: u64,
    /// Messages written to a phone and not yet acknowledged, at most.
    pub unacked_messages_max: u64,
    /// Mailbox entries are moved into a connection's outbox only while the
    /// outbox holds fewer bytes than this.
    pub outbox_feed_bytes_max: usize,
    /// While a connection's outbox holds more than this, the server stops
    /// reading from it: a phone that does not read cannot make it buffer more.
    pub outbox_bytes_max: usize,
    /// Sustained messages (and read receipts) per second one account may
    /// send, and the burst.
    pub send_rate_per_s: u32,
    pub send_burst: u32,
    /// How long, and how many, `(recipient, sender, client_id)` entries are kept
    /// for resend detection.
    pub dedup_ttl_ms: u64,
    pub dedup_entries_max: usize,
    /// Write-back cache: mailbox records (entries and acks) wait this long
    /// in memory before they are written, and an entry acknowledged in the
    /// meantime is never written at all. 0: every record is written (and
    /// synced) before the reply that depends on it.
    pub sync_delay_ms: u64,
    /// Body bytes the write-back cache may hold; past it the oldest records
    /// are written early.
    pub sync_delay_bytes_max: usize,
    /// Entries of one account the write-back cache may hold; past it the
    /// cache is written out from its oldest record until the account is
    /// back under half, so a recipient that never reads cannot crowd it.
    pub sync_delay_entries_per_account_max: u32,
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
    /// At most one push per account per this long: what arrives within it
    /// is covered by one push when it ends.
    pub push_interval_ms: u64,
    /// Messages (and group posts) not delivered within this long are
    /// deleted, and each sender gets an `Expired` receipt.
    pub message_retention_ms: u64,
    /// At start, how far past the latest wall time the journal recorded
    /// the clock may be (the server was down that long) and be trusted;
    /// further, or behind it, expiry is held until the clock is trusted
    /// (see `clock`).
    pub clock_jump_max_ms: u64,
    /// How long a clock in doubt must keep step with the monotonic clock
    /// before it is trusted.
    pub clock_settle_ms: u64,
    /// The operator says the clock at start is right, whatever the journal
    /// last recorded: ages count by it.
    pub clock_confirmed: bool,
    /// Connections that have not logged in, at most, on one shard and
    /// from one source host (an IPv4 address or an IPv6 /64) on one
    /// shard: below the open-file limit, so that flooding connections
    /// never keeps phones from logging in (the server's default for the
    /// first is half its open-file limit shared among the shards). Past
    /// either, a new connection is closed at once.
    pub prelogin_connections_max: usize,
    pub prelogin_per_source_max: u32,
    /// Codes one connection may ask for (it has no account to charge).
    pub code_requests_per_connection_max: u8,
    /// Code guesses (`Verify`) one connection may make, and one source
    /// host per hour on one shard: a guess costs the guesser, not only the
    /// number whose code it spends.
    pub code_attempts_per_connection_max: u8,
    pub code_attempts_per_source_per_hour: u32,
    /// Logins to one account per minute: each closes the last session,
    /// whose socket lives until flushed, so a storm of them would hold
    /// descriptors.
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
    /// Keys each per-source or per-range table of allowances holds; past
    /// it new keys share one bucket (see `source::Buckets`).
    pub source_table_entries_max: usize,
    /// Moves of one connection between shards before login.
    pub handovers_max: u8,
    /// Failed logins on one connection before it is closed.
    pub login_failures_max: u8,
}

impl ShardConfig {
    pub fn new(shard_id: u16, map: PartitionMap) -> ShardConfig {
        ShardConfig {
            shard_id,
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
}

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
