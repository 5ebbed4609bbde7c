//! isle's per-core logic, as sans-IO state machines.
//!
//! A [`Shard`] owns the accounts, signups and mailboxes whose phone numbers
//! hash to it, and the connections logged in to those accounts. It takes
//! decoded frames, messages from other shards and the current time, and
//! produces encoded bytes for connections, messages for other shards and
//! records for the journal. Sockets, executors and files stay in `server`,
//! which is what lets these rules be tested on one thread with a fake clock.

mod allowance;
mod clock;
mod config;
mod dedup;
mod env;
pub mod island;
mod machine;
mod mailbox;
mod order;
mod partition;
mod placement;
mod source;
mod timer_wheel;

pub use crate::machine::{
    AccountInfo, AccountRefused, ConnEvent, ConnEventKind, ConnId, ConnSnapshot, Deleted, Dest,
    EpochHistory, FrameOutcome, GroupAction, OwedKey, OwedReceipt, PeerMessage, Push, QueueLengths,
    Refused, RestoreError, Shard, ShardCounters, TraceHit, TraceRefusal, DELETION_RESEND_MS,
    EPOCH_STARTS_MAX, OWED_RESEND_MS, RECEIPTS_PER_MESSAGE_MAX,
};
pub use allowance::{Exhausted, Rate, TokenBucket};
pub use clock::{ClockNote, ClockState, WallClock, CLOCK_RECORD_INTERVAL_MS, STEP_TOLERANCE_MS};
pub use config::{duration, LimitsError, ShardConfig, TestNumbers};
pub use dedup::DedupTable;
pub use env::Env;
pub use mailbox::{Entry, Mailbox};
pub use order::{Blocked, OrderGaps, GAPS_PER_SENDER_MAX, GAP_TTL_MS};
pub use partition::{stable_hash, PartitionMap, PARTITIONS_DEFAULT};
pub use placement::{Home, PlacedNode, Placement};
pub use source::{number_range, Buckets, Source};
pub use timer_wheel::{TimerId, TimerWheel};
