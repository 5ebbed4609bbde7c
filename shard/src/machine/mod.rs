//! The shard state machine: frames, peer messages and time go in; bytes for
//! connections, messages for other shards and records for the journal come
//! out. No I/O, no clock, no executor.
//!
//! [`Shard`] is a coordinator over parts that each own their state behind
//! a narrow API, in the way quinn-proto's `Connection` holds its packet
//! spaces and streams:
//!
//! | part | owns |
//! |---|---|
//! | `connections::Connections` | the slab of connections, generations, outboxes, idle deadlines, the woken list |
//! | `durability::Durability` | records for the next commit, replies held for it, the write-back cache, the journal's state |
//! | `account::Account` (one per account) | key, mailbox, session, its `WriteBack`, `Social` and `PushState` values, allowances |
//! | `signup::Signups` | codes sent and the numbers' allowances |
//! | `anonymous::Anonymous` | what work before login may cost, by source and range |
//! | `groups::Groups` | groups owned here, post copies for members here, their resend and read tables |
//! | `deletions::Deletions` | account deletions not yet answered by every shard (tombstones) |
//! | `owed::OwedReceipts` | receipts kept on disk until their recipient's shard has them (a deleted account's, those to a node that is down) |
//! | `epochs::EpochHistory` | which epoch of the shard's island wrote which batches of its log |
//! | `social::{Follows, Rewatches, Lookups}` | who follows whom, follows to send again to a node that came back, contact lookups in flight |
//! | `order::OrderGaps` (two) | conversations waiting for a refused send |
//! | `refusals::Refusals` | the last requests refused, for an operator's trace |
//! | `expiry::Sweep`, `clock::WallClock`, the timer wheel, the resend table | |
//!
//! The handlers that make parts work together live by path: `login` (the
//! anonymous phase), `messages` (1:1 messages, acks, receipts),
//! `group_posts` (a group post's travel), `presence` (presence, typing,
//! contacts, profiles), `push`, `expiry` and `recovery` (restore and
//! checkpoints). Replies that promise durability are held by `durability`
//! until the batch holding their records commits.

mod account;
mod anonymous;
mod connections;
mod counters;
mod deletions;
mod durability;
mod epochs;
mod expiry;
mod group_posts;
mod groups;
mod in_flight;
mod login;
mod messages;
mod operator;
mod owed;
mod peer;
mod presence;
mod push;
mod recovery;
mod refusals;
mod routing;
mod signup;
mod social;

use std::collections::VecDeque;

use ahash::AHashMap;
use storage::{EntryRecord, Post, Record};
use wire::{
    ByeReason, Chat, ClientFrame, ErrorKind, GroupChange, GroupId, Phone, ServerFrame,
    BODY_BYTES_MAX, PROTOCOL_VERSION, SERVER_CLIENT_ID,
};

pub use anonymous::Refused;
pub use connections::{ConnEvent, ConnEventKind, ConnId, ConnSnapshot};
pub use counters::ShardCounters;
pub use deletions::DELETION_RESEND_MS;
pub use epochs::{EpochHistory, EPOCH_STARTS_MAX};
pub use groups::GroupAction;
use groups::Groups;
pub use operator::{AccountInfo, AccountRefused, Deleted, TraceHit, TraceRefusal};
pub use owed::{OwedKey, OwedReceipt, OWED_RESEND_MS, RECEIPTS_PER_MESSAGE_MAX};
pub use peer::PeerMessage;
pub use push::Push;
pub use recovery::RestoreError;
pub use routing::Dest;

use account::Account;
use connections::{Connections, Deadlines, IdleVerdict, Phase, Session};
use durability::{Durability, Held, PutWrite, Refusal};
use signup::Signups;
use social::{Follows, Lookups, Rewatches};

use crate::{
    clock::{ClockNote, ClockState, WallClock},
    dedup::DedupTable,
    order::OrderGaps,
    source::Source,
    timer_wheel::TimerWheel,
    Env, ShardConfig,
};

/// How often the per-source and per-range allowance tables drop buckets
/// that refilled.
const SOURCE_TABLES_PRUNE_MS: u64 = 60_000;

/// Slots of the shard's timer wheel: deadlines farther than this many
/// ticks ahead wait in their slot for more turns (see `timer_wheel`).
const TIMER_WHEEL_SLOTS: usize = 4096;

/// How much waits in a shard's queues, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueLengths {
    /// Encoded bytes in connections' outboxes, not yet taken by the I/O
    /// layer.
    pub outbox_bytes: u64,
    /// Entries in this shard's mailboxes, and their body bytes.
    pub mailbox_entries: u64,
    pub mailbox_bytes: u64,
    /// What the write-back cache counts against `sync_delay_bytes_max`.
    pub write_back_bytes: u64,
    /// Replies (to phones and to other shards) held for a commit.
    pub held_replies: u64,
}

/// What the caller must do after handing a frame to the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOutcome {
    Continue,
    /// The frame names an account of tablet (`island`, `shard`) of this
    /// node: move the connection there (see [`Shard::hand_over`]) and
    /// replay this frame on arrival.
    HandOver {
        island: crate::island::IslandId,
        shard: u16,
    },
}

#[derive(Debug, Clone, Copy)]
enum TimerEvent {
    Idle(ConnId),
    Signup(Phone),
    /// The coalescing interval after `Phone`'s last push ended.
    Push(Phone),
}

/// One core's share of the service: its accounts, their mailboxes and
/// connections, the groups it owns, and what it owes the journal.
///
/// Its methods are of three kinds:
///
/// - **Inputs**, each with the time it happens at (ms on the clock every
///   shard of the process shares): [`open`](Shard::open) and
///   [`adopt`](Shard::adopt) a connection, [`handle_frame`](Shard::handle_frame),
///   [`protocol_error`](Shard::protocol_error), [`flushed`](Shard::flushed),
///   [`closed`](Shard::closed), [`handle_peer`](Shard::handle_peer),
///   [`tick`](Shard::tick), [`committed`](Shard::committed),
///   [`journal_failed`](Shard::journal_failed) and the journal's state
///   (`set_disk_full`, `set_storage_unavailable`); before any of them,
///   [`restore`](Shard::restore) for every journal record, then
///   [`restored`](Shard::restored).
/// - **Outputs to drain**: [`drain_peer_messages`](Shard::drain_peer_messages)
///   (to other shards' queues, or back to `handle_peer` for this one),
///   [`drain_woken`](Shard::drain_woken) then [`take_outbox`](Shard::take_outbox)
///   per connection, [`take_records`](Shard::take_records) for the next
///   commit, [`take_clock_note`](Shard::take_clock_note) for the operator.
/// - **Queries**: `counters`, `queued`, `wants_input`, `is_closing`,
///   `is_abandoned`, `has_pending_records`, `awaits_next_commit`, ...
///
/// After every input the caller drains, in this order: peer messages (so
/// that answers leave before a connection is woken for them), woken
/// connections, and, when `has_pending_records`, starts a commit with
/// `take_records` whose batch number it passes to `committed` once the
/// records are durable. Nothing is lost by draining late, but replies held
/// for a commit wait for it.
pub struct Shard {
    config: ShardConfig,
    env: Box<dyn Env>,
    conns: Connections,
    accounts: AHashMap<Phone, Account>,
    signups: Signups,
    dedup: DedupTable,
    /// Groups this shard owns, and post copies for its members.
    groups: Groups,
    /// Who follows whose presence, and contact lookups in flight.
    follows: Follows,
    rewatches: Rewatches,
    lookups: Lookups,
    /// Conversations waiting for a refused send to come again: those this
    /// shard refused as the sender's home (rate limits, lookups), and
    /// those it refused as the shard that stores or owns (a full mailbox
    /// or disk). Kept apart so that one check never sees the other's
    /// gaps for the same send.
    order_out: OrderGaps,
    order_in: OrderGaps,
    /// Wall time for stamps and expiry (see `clock`).
    clock: WallClock,
    expiry: expiry::Sweep,
    anonymous: anonymous::Anonymous,
    /// Logins this shard takes (`logins_admitted_per_s`).
    login_admission: crate::TokenBucket,
    /// When `anonymous` was last pruned.
    pruned_at_ms: u64,
    timers: TimerWheel<TimerEvent>,
    /// Peer messages addressed to this shard itself, run before returning so
    /// that local delivery keeps the same order as remote delivery.
    local: VecDeque<PeerMessage>,
    peer_out: Vec<(Dest, PeerMessage)>,
    /// Where accounts and groups live in the cluster (`None`: a single
    /// node; see `routing`).
    placement: Option<std::sync::Arc<crate::Placement>>,
    /// Another node has served this shard's island since this shard was
    /// made: its state is a stale copy for good (the island comes back
    /// to this node only through a standby, which is another shard).
    superseded: bool,
    /// Requests out to other nodes' tablets, refused at once when their
    /// island moves (see `in_flight`).
    in_flight: in_flight::InFlight,
    /// Records, replies held for a commit, the write-back cache and the
    /// journal's state.
    durability: Durability,
    /// Deletions of this shard's accounts not yet finished on every shard.
    deletions: deletions::Deletions,
    /// Receipts kept until their recipients' shards have them on disk.
    owed: owed::OwedReceipts,
    /// Which epoch of its island wrote which batches of the log.
    epochs: epochs::EpochHistory,
    /// The time of the input being handled.
    now_ms: u64,
    counters: ShardCounters,
    /// `Error` frames sent, by kind: a few dozen kinds at most.
    errors_sent: Vec<(ErrorKind, u64)>,
    /// The last requests refused (bounded), for an operator's trace.
    refusals: refusals::Refusals,
    /// Entries in all mailboxes and their body bytes, kept as each
    /// mailbox changes (a sum over a million accounts once a second
    /// would stall the shard for milliseconds).
    mailbox_totals: MailboxTotals,
}

/// The sum of the shard's mailboxes' sizes.
#[derive(Debug, Default)]
struct MailboxTotals {
    entries: u64,
    bytes: u64,
}

impl MailboxTotals {
    /// A mailbox went from `before` to `after` (entries, body bytes).
    fn moved(&mut self, before: (usize, usize), after: (usize, usize)) {
        self.entries = self.entries + after.0 as u64 - before.0 as u64;
        self.bytes = self.bytes + after.1 as u64 - before.1 as u64;
    }
}

impl Shard {
    /// Replaces what the shard reaches the world through: a standby's
    /// shard, silent while it restores, gets the node's when it is
    /// promoted to serve (docs/islands.md).
    pub fn set_env(&mut self, env: Box<dyn Env>) {
        self.env = env;
    }

    pub fn new(config: ShardConfig, env: Box<dyn Env>, now_ms: u64) -> Shard {
        let timers = TimerWheel::new(TIMER_WHEEL_SLOTS, now_ms / config.tick_ms);
        let dedup = DedupTable::new(config.dedup_ttl_ms, config.dedup_entries_max);
        let config_dedup = (config.dedup_ttl_ms, config.dedup_entries_max);
        let anonymous = anonymous::Anonymous::new(&config, now_ms);
        let clock = WallClock::new(config.wall_clock_offset_ms);
        Shard {
            config,
            env,
            conns: Connections::default(),
            accounts: AHashMap::new(),
            signups: Signups::default(),
            dedup,
            groups: Groups::new(config_dedup.0, config_dedup.1),
            follows: Follows::default(),
            rewatches: Rewatches::default(),
            lookups: Lookups::default(),
            order_out: OrderGaps::default(),
            order_in: OrderGaps::default(),
            clock,
            expiry: expiry::Sweep::default(),
            anonymous,
            pruned_at_ms: now_ms,
            login_admission: crate::TokenBucket::full(),
            timers,
            local: VecDeque::new(),
            peer_out: Vec::new(),
            placement: None,
            superseded: false,
            in_flight: in_flight::InFlight::default(),
            durability: Durability::default(),
            deletions: Default::default(),
            owed: Default::default(),
            epochs: Default::default(),
            now_ms,
            counters: ShardCounters::default(),
            errors_sent: Vec::new(),
            refusals: Default::default(),
            mailbox_totals: MailboxTotals::default(),
        }
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// New limits while running (a reload): the `[limits]` keys of
    /// `limits` apply from their next use; what the shard cannot change
    /// while it runs is kept (see [`ShardConfig::keep_fixed`]). The
    /// caller validated `limits`.
    pub fn set_limits(&mut self, mut limits: ShardConfig) {
        limits.keep_fixed(&self.config);
        debug_assert!(limits.validate().is_ok(), "validated by the caller");
        self.config = limits;
    }

    pub fn counters(&self) -> ShardCounters {
        ShardCounters {
            connections_anonymous: self.anonymous.open() as u64,
            groups: self.groups.owned() as u64,
            ..self.counters
        }
    }

    /// The lengths of this shard's queues now (see [`QueueLengths`]). The
    /// mailbox totals are kept as mailboxes change; the outboxes cost a
    /// pass over the connections: for metrics, once a second, not per
    /// message.
    pub fn queue_lengths(&self) -> QueueLengths {
        let totals = &self.mailbox_totals;
        debug_assert_eq!(
            (totals.entries, totals.bytes),
            self.queued(),
            "the running totals are the sum of the mailboxes"
        );
        QueueLengths {
            outbox_bytes: self.conns.outbox_bytes() as u64,
            mailbox_entries: totals.entries,
            mailbox_bytes: totals.bytes,
            write_back_bytes: self.durability.deferred_bytes() as u64,
            held_replies: self.durability.held_len() as u64,
        }
    }

    /// Mailbox entries queued on this shard, and their body bytes.
    pub fn queued(&self) -> (u64, u64) {
        self.accounts.values().fold((0, 0), |(n, b), a| {
            (n + a.mailbox.len() as u64, b + a.mailbox.bytes() as u64)
        })
    }

    /// The system's wall clock reads `system_ms` (Unix ms) at `now_ms`:
    /// stamps follow it within `clock::STEP_TOLERANCE_MS`; a larger step
    /// holds expiry until it is trusted (see `clock`). Call it every tick.
    pub fn observe_wall_clock(&mut self, system_ms: u64, now_ms: u64) {
        self.clock
            .observe(system_ms, now_ms, self.config.clock_settle_ms);
    }

    /// What the operator should be told about the clock, oldest first.
    pub fn take_clock_note(&mut self) -> Option<ClockNote> {
        self.clock.take_note()
    }

    /// Whether expiry is held because the clock is in doubt.
    pub fn clock_in_doubt(&self) -> bool {
        self.clock.in_doubt()
    }

    // ---- connections -------------------------------------------------------

    /// A new connection from `source` arrived on this shard's listener.
    /// Err: too many connections that have not logged in are open here
    /// (in all, or from `source`); the caller closes it unread.
    pub fn open(&mut self, source: Source, now_ms: u64) -> Result<ConnId, Refused> {
        self.insert_conn(ConnSnapshot::new(source, now_ms), now_ms)
    }

    /// A connection handed over by another shard arrived here. Err as for
    /// `open`: the bounds hold wherever a connection lives.
    pub fn adopt(&mut self, snapshot: ConnSnapshot, now_ms: u64) -> Result<ConnId, Refused> {
        self.counters.handovers_in += 1;
        self.insert_conn(snapshot, now_ms)
    }

    fn insert_conn(&mut self, snapshot: ConnSnapshot, now_ms: u64) -> Result<ConnId, Refused> {
        if let Err(refused) = self.anonymous.admit(&self.config, snapshot.source) {
            self.counters.connections_refused += 1;
            return Err(refused);
        }
        let id = self.conns.insert(snapshot, now_ms);
        self.counters.connections += 1;
        // A hard deadline from accept, whatever the phone sends meanwhile.
        let deadline_ms = snapshot.opened_ms + self.config.login_timeout_ms;
        self.arm_idle(id, deadline_ms.max(now_ms));
        Ok(id)
    }

    /// Removes a connection that has not logged in, to move it to `shard`.
    pub fn hand_over(&mut self, id: ConnId) -> Option<ConnSnapshot> {
        debug_assert!(
            self.conns.account(id).is_none(),
            "logged-in connections live on their home shard"
        );
        let snapshot = self.conns.snapshot(id)?;
        self.closed(id, self.now_ms);
        self.counters.handovers_out += 1;
        Some(snapshot)
    }

    /// The connection is gone (closed by either side, or failed) at
    /// `now_ms`, which stamps the account's last-seen time.
    pub fn closed(&mut self, id: ConnId, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(conn) = self.conns.remove(id, &mut self.timers) else {
            return;
        };
        if conn.account().is_none() {
            self.anonymous.left(conn.source());
        }
        if let Some(phone) = conn.account() {
            if let Some(account) = self.accounts.get_mut(&phone) {
                if account.session == Some(id) {
                    account.session = None;
                    self.counters.sessions -= 1;
                    self.session_ended(phone);
                }
            }
        }
        self.counters.connections -= 1;
    }

    /// Takes the bytes queued for a connection.
    pub fn take_outbox(&mut self, id: ConnId) -> Vec<u8> {
        self.conns.take_outbox(id)
    }

    /// Bytes waiting in a connection's outbox.
    pub fn outbox_len(&self, id: ConnId) -> usize {
        self.conns.get(id).map_or(0, |conn| conn.outbox_len())
    }

    /// True once the connection must be closed after its outbox is flushed.
    pub fn is_closing(&self, id: ConnId) -> bool {
        self.conns.get(id).is_none_or(|conn| conn.is_closing())
    }

    /// True while the connection has room for its own replies: the I/O layer
    /// stops reading from a phone whose outbox is over the limit.
    pub fn wants_input(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some_and(|conn| {
            !conn.is_closing() && conn.outbox_len() <= self.config.outbox_bytes_max
        })
    }

    /// The I/O layer wrote the connection's outbox out: feed it more.
    pub fn flushed(&mut self, id: ConnId) {
        self.pump(id);
    }

    /// Connections with new output (or newly closing) since the last call.
    pub fn drain_woken(&mut self) -> std::vec::Drain<'_, ConnId> {
        self.conns.drain_woken()
    }

    /// Connection events for the log (logins, closes and why, protocol
    /// errors, moves) since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, ConnEvent> {
        self.conns.drain_events()
    }

    /// Signals (see [`PeerMessage::is_signal`]) the I/O layer dropped
    /// because their destination's queue was backed up.
    pub fn signals_dropped(&mut self, count: u64) {
        self.counters.signals_dropped_queue_full += count;
    }

    /// Peer messages ready to go to other shards.
    pub fn drain_peer_messages(&mut self) -> std::vec::Drain<'_, (Dest, PeerMessage)> {
        self.peer_out.drain(..)
    }

    /// Records to commit, and the batch number to report to `committed`.
    pub fn take_records(&mut self) -> (u64, Vec<Record>) {
        self.durability.take_batch()
    }

    /// Hands back a committed batch's vector so the next batch reuses its
    /// memory instead of growing a new one record by record.
    pub fn recycle_records(&mut self, records: Vec<Record>) {
        self.durability.recycle(records);
    }

    /// The journal cannot commit anything any more. Replies that waited for
    /// it become errors, and from now on whatever needs durability (sends,
    /// signups) is refused; deliveries and acks of what is stored go on.
    /// Records still come out of `take_records`; the caller drops them.
    pub fn journal_failed(&mut self) {
        for account in self.accounts.values_mut() {
            account.write_back.cache_dropped();
        }
        for held in self.durability.fail() {
            self.release_failed(held);
        }
        self.run_local();
    }

    /// A held reply whose batch will never be durable.
    fn release_failed(&mut self, held: Held) {
        let failed = Refusal::Failed;
        match held {
            Held::Frame { conn, .. } => {
                self.reply_error(conn, failed.kind(), None, failed.detail());
            }
            Held::Peer {
                dest,
                message:
                    PeerMessage::Stored {
                        reply,
                        sender,
                        client_id,
                        ..
                    },
            } => {
                let answer = PeerMessage::Stored {
                    reply,
                    sender,
                    client_id,
                    result: Err(failed.kind()),
                };
                self.route(dest, answer);
            }
            // A post whose record was not made durable must not reach
            // members (a restart could number another post the same),
            // and a copy that is not durable must not be confirmed. A
            // deletion that is not durable did not happen (the account is
            // back after a restart): nobody is told of it, and what was
            // not stored is not confirmed.
            Held::Peer {
                message:
                    PeerMessage::GroupFanout { .. }
                    | PeerMessage::GroupStored { .. }
                    | PeerMessage::AccountGone { .. }
                    | PeerMessage::GroupsLeft { .. }
                    | PeerMessage::ReceiptsOwed { .. }
                    | PeerMessage::OwedStored { .. },
                ..
            } => {}
            Held::Peer { dest, message } => self.route(dest, message),
        }
    }

    pub fn is_journal_failed(&self) -> bool {
        self.durability.is_failed()
    }

    /// The journal's disk is full (or has room again). While it is full,
    /// sends and signups are refused with `DiskFull`; acknowledgements,
    /// deliveries, receipts and resends of stored messages go on.
    pub fn set_disk_full(&mut self, full: bool) {
        self.durability.set_disk_full(full);
    }

    pub fn is_disk_full(&self) -> bool {
        self.durability.is_disk_full()
    }

    /// The journal is short of a resource (or has it again). While it is,
    /// sends and signups are refused with `Overloaded`; the rest goes on as
    /// with a full disk.
    pub fn set_storage_unavailable(&mut self, unavailable: bool) {
        self.durability.set_storage_unavailable(unavailable);
    }

    pub fn is_storage_unavailable(&self) -> bool {
        self.durability.is_storage_unavailable()
    }

    /// Records up to `batch` are durable: release the replies that waited.
    pub fn committed(&mut self, batch: u64) {
        for held in self.durability.committed(batch) {
            match held {
                Held::Frame { conn, bytes } => self.conns.append(conn, &bytes),
                Held::Peer { dest, message } => self.route(dest, message),
            }
        }
        self.run_local();
    }

    /// True while records wait to be taken or replies wait for a commit.
    pub fn has_pending_records(&self) -> bool {
        self.durability.has_pending()
    }

    /// True when something waits for a commit not yet begun (records not
    /// taken, or replies held for the next batch); false when only the
    /// commit in flight, if any, is awaited. Always false for a tablet
    /// whose island another node serves: it commits nothing more, and
    /// its connections' output (a `Redirect`, a `Bye`) must not wait for
    /// a commit that never comes.
    pub fn awaits_next_commit(&self) -> bool {
        self.leads_own_island() && self.durability.awaits_next_commit()
    }

    // ---- input -------------------------------------------------------------

    /// A frame that could not be decoded (or framed): answer and close.
    pub fn protocol_error(&mut self, id: ConnId, kind: ErrorKind, detail: String) {
        self.fail(id, kind, detail);
    }

    /// A frame from a connection at `now_ms`. What it needs is dispatched
    /// by the connection's phase: the handshake, the anonymous phase
    /// (signup, login, handover; see `login`) or a session, whose handlers
    /// get the logged-in account as a value.
    pub fn handle_frame(
        &mut self,
        id: ConnId,
        frame: ClientFrame<'_>,
        now_ms: u64,
    ) -> FrameOutcome {
        self.now_ms = now_ms;
        let Some(conn) = self.conns.get_mut(id) else {
            return FrameOutcome::Continue;
        };
        if conn.is_closing() {
            return FrameOutcome::Continue;
        }
        conn.touch(now_ms);
        let outcome = match conn.phase() {
            Phase::Handshake => {
                self.handshake(id, frame);
                FrameOutcome::Continue
            }
            Phase::Anonymous => self.anonymous_frame(id, frame),
            Phase::Session(phone) => {
                self.session_frame(Session { id, phone }, frame);
                FrameOutcome::Continue
            }
        };
        self.run_local();
        outcome
    }

    /// The first frame must be a `Hello` with this server's version.
    fn handshake(&mut self, id: ConnId, frame: ClientFrame<'_>) {
        match frame {
            ClientFrame::Hello { version } if version == PROTOCOL_VERSION => {
                self.conns
                    .get_mut(id)
                    .expect("the caller found it")
                    .said_hello();
                let welcome = ServerFrame::Welcome {
                    version: PROTOCOL_VERSION,
                };
                self.reply(id, &welcome);
            }
            ClientFrame::Hello { version } => {
                let detail =
                    format!("version {version} unsupported; this server speaks {PROTOCOL_VERSION}");
                self.fail(id, ErrorKind::UnsupportedVersion, detail);
            }
            _ => {
                let detail = "the first frame must be Hello".into();
                self.fail(id, ErrorKind::HelloRequired, detail);
            }
        }
    }

    /// A frame on a logged-in connection.
    fn session_frame(&mut self, session: Session, frame: ClientFrame<'_>) {
        let Session { id, phone } = session;
        match frame {
            ClientFrame::Hello { .. } => {
                self.fail(id, ErrorKind::Malformed, "Hello sent twice".into());
            }
            ClientFrame::Ping { nonce } => self.reply(id, &ServerFrame::Pong { nonce }),
            ClientFrame::RequestCode { .. }
            | ClientFrame::Verify { .. }
            | ClientFrame::Login { .. } => {
                let detail = "this connection is logged in";
                self.reply_error(id, ErrorKind::AlreadyLoggedIn, None, detail);
            }
            ClientFrame::Send {
                client_id,
                to,
                body,
            } => self.send(session, client_id, to, body),
            ClientFrame::Ack { up_to } => self.ack(session, up_to),
            ClientFrame::Read { from, client_id } => self.read(session, from, client_id),
            ClientFrame::CreateGroup { .. }
            | ClientFrame::GroupSend { .. }
            | ClientFrame::ChangeGroup { .. } => self.group_frame(session, frame),
            ClientFrame::Subscribe { phone: target } => self.subscribe(id, phone, target),
            ClientFrame::Unsubscribe { phone: target } => self.unsubscribe(phone, target),
            ClientFrame::SetPresence { available } => self.set_presence(id, phone, available),
            ClientFrame::Typing { chat, state } => self.typing(id, phone, chat, state),
            ClientFrame::SyncContacts {
                client_id,
                full,
                add,
                remove,
            } => self.sync_contacts(id, phone, client_id, full, add, remove),
            ClientFrame::GetProfile { phone: target } => self.get_profile(id, phone, target),
            // Each writes a record (and a profile reaches every follower):
            // they cost a send token like a message.
            ClientFrame::SetProfile { client_id, .. }
            | ClientFrame::SetPrivacy { client_id, .. }
            | ClientFrame::RegisterPush { client_id, .. }
                if !self.take_send_token(id, client_id) => {}
            ClientFrame::SetProfile { client_id, profile } => {
                self.set_profile(id, phone, client_id, profile);
            }
            ClientFrame::SetPrivacy {
                client_id,
                hide_last_seen,
            } => self.set_privacy(id, phone, client_id, hide_last_seen),
            ClientFrame::RegisterPush {
                client_id,
                platform,
                token,
            } => self.register_push(id, phone, client_id, platform, token),
        }
    }

    /// `CreateGroup`, `GroupSend` and `ChangeGroup`: checked here, then
    /// passed to the group's owner (see `ask_group`).
    fn group_frame(&mut self, session: Session, frame: ClientFrame<'_>) {
        let id = session.id;
        let (client_id, group, action) = match frame {
            ClientFrame::CreateGroup {
                client_id,
                subject,
                members,
            } => {
                let group = GroupId::derive(session.phone, client_id);
                let subject = subject.to_owned();
                (client_id, group, GroupAction::Create { subject, members })
            }
            ClientFrame::GroupSend {
                client_id, body, ..
            } if body.len() > BODY_BYTES_MAX => {
                let detail = format!("body of {} bytes exceeds {BODY_BYTES_MAX}", body.len());
                self.reply_error(id, ErrorKind::BodyTooLarge, Some(client_id), &detail);
                return;
            }
            ClientFrame::GroupSend {
                client_id,
                group,
                body,
            } => (client_id, group, GroupAction::Send { body: body.into() }),
            ClientFrame::ChangeGroup {
                client_id,
                change: GroupChange::Created { .. },
                ..
            } => {
                let detail = "groups are created with CreateGroup";
                self.reply_error(id, ErrorKind::BadRequest, Some(client_id), detail);
                return;
            }
            ClientFrame::ChangeGroup {
                client_id,
                group,
                change,
            } => (client_id, group, GroupAction::Change(change)),
            _ => unreachable!("session_frame passes group frames only"),
        };
        if client_id == SERVER_CLIENT_ID {
            let detail = "client_id 2^64-1 is the server's own";
            self.reply_error(id, ErrorKind::BadRequest, Some(client_id), detail);
            return;
        }
        self.ask_group(session, client_id, group, action);
    }

    /// A message from another shard (or, for local delivery, from this one).
    pub fn handle_peer(&mut self, message: PeerMessage, now_ms: u64) {
        self.now_ms = now_ms;
        self.apply_peer(message);
        self.run_local();
    }

    /// Advances the timer wheel to `now_ms`.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let mut due = Vec::new();
        self.timers
            .advance(now_ms / self.config.tick_ms, |event| due.push(event));
        for event in due {
            match event {
                TimerEvent::Idle(id) => self.idle_check(id, now_ms),
                TimerEvent::Signup(phone) => self.signup_timer(phone),
                TimerEvent::Push(phone) => self.push_due(phone),
            }
        }
        self.dedup.expire(now_ms);
        self.groups.expire_reads(now_ms);
        if now_ms >= self.pruned_at_ms + SOURCE_TABLES_PRUNE_MS {
            self.pruned_at_ms = now_ms;
            let wall_ms = self.clock.wall_ms(now_ms);
            self.anonymous.prune(&self.config, now_ms, wall_ms);
            self.order_out.prune(now_ms);
            self.order_in.prune(now_ms);
        }
        if !self.leads_own_island() {
            // A stale copy of an island served elsewhere (this node was
            // away while it was taken over): its state answers for
            // nothing, so nothing of it expires, is told again or is
            // recorded. Only its connections' deadlines run: it is the
            // door new phones come in by, and are redirected from.
            return;
        }
        if !self.durability.is_failed() {
            if let Some(state) = self.clock.to_record(false) {
                self.durability.record(clock_record(state));
            }
        }
        self.expiry_tick();
        self.deletions_tick();
        self.owed_tick();
        self.rewatch_tick();
        self.lookups_tick();
        self.write_due(now_ms);
    }

    // ---- write-back cache ----------------------------------------------------

    /// Sends a mailbox record to the journal, or with `sync_delay_ms` to the
    /// write-back cache.
    fn record_mailbox(&mut self, record: Record) {
        if self.config.sync_delay_ms == 0 {
            self.write_mailbox_record(record, false);
            return;
        }
        self.counters.records_cached += 1;
        let per_account_max = self.config.sync_delay_entries_per_account_max;
        let heavy = match &record {
            Record::MailboxPut { owner, .. } => self.accounts.get_mut(owner).and_then(|a| {
                a.write_back.cache_entered();
                (a.write_back.cached() > per_account_max).then_some(*owner)
            }),
            _ => None,
        };
        let due_ms = self.now_ms + self.config.sync_delay_ms;
        self.durability.defer(record, due_ms);
        while self.durability.deferred_bytes() > self.config.sync_delay_bytes_max {
            self.write_oldest_cached();
        }
        if let Some(owner) = heavy {
            // Records stay in order, so the way to get this account's out
            // is to write the cache from its oldest record on.
            let half = per_account_max / 2;
            while self
                .accounts
                .get(&owner)
                .is_some_and(|a| a.write_back.cached() > half)
            {
                self.write_oldest_cached();
            }
        }
    }

    /// Writes the cached records that are due (all of them for `u64::MAX`).
    fn write_due(&mut self, now_ms: u64) {
        while let Some(record) = self.durability.take_due(now_ms) {
            self.write_mailbox_record(record, true);
        }
    }

    /// Writes the write-back cache out, oldest first, until none of
    /// `owner`'s entries is left in it.
    fn write_cached_of(&mut self, owner: Phone) {
        while self
            .accounts
            .get(&owner)
            .is_some_and(|a| a.write_back.cached() > 0)
        {
            self.write_oldest_cached();
        }
    }

    fn write_oldest_cached(&mut self) {
        if let Some(record) = self.durability.take_oldest_deferred() {
            self.write_mailbox_record(record, true);
        }
    }

    /// Hands a mailbox record to the journal, unless the mailbox has made it
    /// moot (see `WriteBack`).
    pub(super) fn write_mailbox_record(&mut self, record: Record, from_cache: bool) {
        let (Record::MailboxPut { owner, .. } | Record::MailboxAck { owner, .. }) = &record else {
            self.durability.record(record);
            return;
        };
        let owner = *owner;
        let Some(account) = self.accounts.get_mut(&owner) else {
            return;
        };
        let acked_up_to = account.mailbox.acked_up_to();
        match record {
            Record::MailboxPut { seq, entry, .. } => {
                match account.write_back.put(seq, acked_up_to, from_cache) {
                    PutWrite::Moot => self.put_never_written(owner, seq, &entry),
                    PutWrite::Write { ack_before } => {
                        if let Some(up_to) = ack_before {
                            self.durability.record(Record::MailboxAck { owner, up_to });
                        }
                        let record = Record::MailboxPut { owner, seq, entry };
                        self.durability.record(record);
                    }
                }
            }
            Record::MailboxAck { up_to, .. } => {
                if account.write_back.ack(up_to) {
                    self.durability.record(record);
                }
            }
            _ => unreachable!("matched above"),
        }
    }

    /// An entry acknowledged before it was due: its body is never written.
    /// What must outlive it is written instead: its client id for resend
    /// detection (here), and the seq it took (by the ack that covers it).
    fn put_never_written(&mut self, owner: Phone, seq: u64, entry: &EntryRecord) {
        if let EntryRecord::Message {
            from,
            client_id,
            sent_at_ms,
            ..
        } = *entry
        {
            self.counters.messages_never_written += 1;
            self.durability.record(Record::DedupSent {
                owner,
                from,
                client_id,
                seq,
                sent_at_ms,
            });
        }
    }

    /// A message from another shard (or this one), by kind.
    fn apply_peer(&mut self, message: PeerMessage) {
        match message {
            PeerMessage::Deliver {
                from,
                to,
                client_id,
                sent_at_ms,
                sender_since_ms,
                body,
                reply,
            } => {
                let stamps = (sent_at_ms, sender_since_ms);
                let result = self.store_message(from, to, client_id, stamps, body, reply);
                self.note_refusal(from, Chat::Direct(to), client_id, reply, &result);
                self.answer_stored(reply, from, client_id, result);
            }
            PeerMessage::Stored {
                reply,
                sender,
                client_id,
                result,
            } => self.stored(reply, sender, client_id, result),
            PeerMessage::Receipt {
                to,
                by,
                client_id,
                kind,
                sent_at_ms,
            } => self.receipt_arrived(to, (by, client_id, sent_at_ms), kind),
            PeerMessage::GroupRequest {
                group,
                from,
                client_id,
                at_ms,
                sender_since_ms,
                reply,
                action,
            } => {
                let chat = action.in_conversation().then_some(Chat::Group(group));
                let times = (at_ms, sender_since_ms);
                let result = self.group_request(group, (from, client_id), times, action, reply);
                if let Some(chat) = chat {
                    self.note_refusal(from, chat, client_id, reply, &result);
                }
                self.answer_stored(reply, from, client_id, result);
            }
            PeerMessage::GroupFanout {
                group,
                gseq,
                post,
                members,
            } => self.group_fanout(group, gseq, post, members),
            PeerMessage::GroupStored { group, gseq } => self.group_stored(group, gseq),
            social @ (PeerMessage::Watch { .. }
            | PeerMessage::Unwatch { .. }
            | PeerMessage::PresenceOf { .. }
            | PeerMessage::ProfileQuery { .. }
            | PeerMessage::ProfileOf { .. }
            | PeerMessage::TypingTo { .. }
            | PeerMessage::GroupTyping { .. }
            | PeerMessage::LookupAccounts { .. }
            | PeerMessage::AccountsFound { .. }) => self.apply_social(social),
            PeerMessage::AccountGone { phone } => self.account_gone(phone),
            PeerMessage::GroupsLeft {
                phone,
                island,
                shard,
            } => self.groups_left(phone, island, shard),
            PeerMessage::ReceiptsOwed { receipts } => self.receipts_owed(receipts),
            PeerMessage::OwedStored { stored } => self.owed_stored(&stored),
        }
    }

    // ---- plumbing ----------------------------------------------------------

    /// The account of `phone`, which the caller knows exists: it has a
    /// session, or was just found. Accounts are removed only by an
    /// operator's deletion, which closes their session first.
    fn account(&self, phone: Phone) -> &Account {
        self.accounts
            .get(&phone)
            .unwrap_or_else(|| panic!("{phone} has no account"))
    }

    fn account_mut(&mut self, phone: Phone) -> &mut Account {
        self.accounts
            .get_mut(&phone)
            .unwrap_or_else(|| panic!("{phone} has no account"))
    }

    fn route(&mut self, dest: Dest, message: PeerMessage) {
        // A stale copy of its island (see `leads_own_island`) is not
        // where its island's accounts live: mail for them goes through
        // the executor, to the tablet that serves the island.
        if dest == self.own_dest() && self.leads_own_island() {
            self.local.push_back(message);
        } else {
            self.peer_out.push((dest, message));
        }
    }

    fn run_local(&mut self) {
        while let Some(message) = self.local.pop_front() {
            self.apply_peer(message);
        }
    }

    fn reply(&mut self, id: ConnId, frame: &ServerFrame<'_>) {
        self.conns.reply(id, frame);
    }

    fn hold_reply(&mut self, id: ConnId, frame: &ServerFrame<'_>) {
        self.durability.hold_frame(id, frame);
    }

    fn reply_error(&mut self, id: ConnId, kind: ErrorKind, client_id: Option<u64>, detail: &str) {
        self.count_error(kind);
        if let (Some(client_id), Some(sender)) = (client_id, self.conns.account(id)) {
            self.refusals
                .note((sender, client_id), kind, detail, self.now_ms);
        }
        self.reply(
            id,
            &ServerFrame::Error {
                kind,
                client_id,
                detail: detail.to_owned(),
            },
        );
    }

    /// Counts an `Error` frame of `kind` sent to a phone.
    fn count_error(&mut self, kind: ErrorKind) {
        match self.errors_sent.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => self.errors_sent.push((kind, 1)),
        }
    }

    /// `Error` frames sent to phones, by kind (kinds never sent are left
    /// out), for metrics.
    pub fn errors_sent(&self) -> &[(ErrorKind, u64)] {
        &self.errors_sent
    }

    /// Sends an error and closes: for requests that break the protocol.
    fn fail(&mut self, id: ConnId, kind: ErrorKind, detail: String) {
        self.counters.protocol_errors += 1;
        self.count_error(kind);
        let event = ConnEventKind::ProtocolError {
            kind,
            detail: detail.clone(),
        };
        self.conns.note(id, event);
        self.reply(
            id,
            &ServerFrame::Error {
                kind,
                client_id: None,
                detail,
            },
        );
        self.close_with(id, ByeReason::ProtocolError);
    }

    /// Sends `Bye` and closes once it is written, or at
    /// `close_flush_timeout_ms` whether it is or not: a phone that stops
    /// reading must not keep its connection (and what it holds) by never
    /// taking the last bytes.
    /// Writes `frame`, then closes the connection as `close_with` does but
    /// with no `Bye` (a `Redirect` or `TryLater` is the last word).
    fn close_after(&mut self, id: ConnId, frame: &ServerFrame<'_>) {
        self.reply(id, frame);
        if !self.conns.start_closing(id, self.now_ms) {
            return;
        }
        self.conns
            .note(id, ConnEventKind::Closing(ByeReason::ShuttingDown));
        self.arm_idle(id, self.now_ms + self.config.close_flush_timeout_ms);
    }

    fn close_with(&mut self, id: ConnId, reason: ByeReason) {
        if !self.conns.start_closing(id, self.now_ms) {
            return;
        }
        self.conns.note(id, ConnEventKind::Closing(reason));
        self.reply(id, &ServerFrame::Bye { reason });
        self.arm_idle(id, self.now_ms + self.config.close_flush_timeout_ms);
    }

    /// True once a closing connection ran out of time to flush: the I/O
    /// layer drops it without writing the rest.
    pub fn is_abandoned(&self, id: ConnId) -> bool {
        self.conns.get(id).is_none_or(|conn| conn.is_abandoned())
    }

    /// Closes every connection with `ShuttingDown`, and writes out the
    /// write-back cache: a clean stop loses nothing.
    pub fn close_all(&mut self) {
        self.write_due(u64::MAX);
        for id in self.conns.ids() {
            self.close_with(id, ByeReason::ShuttingDown);
        }
    }

    fn arm_idle(&mut self, id: ConnId, deadline_ms: u64) {
        let tick_ms = self.config.tick_ms;
        self.conns
            .arm_idle(id, deadline_ms, tick_ms, &mut self.timers);
    }

    /// A connection's timer fired (see `Connections::idle_expired`).
    fn idle_check(&mut self, id: ConnId, now_ms: u64) {
        let deadlines = Deadlines {
            idle_timeout_ms: self.config.idle_timeout_ms,
            login_timeout_ms: self.config.login_timeout_ms,
            close_flush_timeout_ms: self.config.close_flush_timeout_ms,
        };
        match self.conns.idle_expired(id, now_ms, deadlines) {
            None => {}
            Some(IdleVerdict::Rearm(deadline_ms)) => self.arm_idle(id, deadline_ms),
            Some(IdleVerdict::Close) => {
                self.counters.idle_closed += 1;
                self.close_with(id, ByeReason::IdleTimeout);
            }
            Some(IdleVerdict::Abandon) => self.counters.closes_abandoned += 1,
        }
    }
}

/// The frame a member's mailbox entry for a group post becomes.
fn group_frame(seq: u64, group: GroupId, gseq: u64, post: &Post) -> ServerFrame<'_> {
    match post {
        Post::Message {
            from,
            client_id,
            sent_at_ms,
            body,
        } => ServerFrame::GroupMessage {
            seq,
            group,
            gseq,
            from: *from,
            client_id: *client_id,
            sent_at_ms: *sent_at_ms,
            body: body[..].into(),
        },
        Post::Change {
            by, at_ms, change, ..
        } => ServerFrame::GroupNotice {
            seq,
            group,
            gseq,
            by: *by,
            at_ms: *at_ms,
            change: change.clone(),
        },
    }
}

fn clock_record(state: ClockState) -> Record {
    Record::Clock {
        latest_ms: state.latest_ms,
        floor_ms: state.floor_ms,
    }
}
