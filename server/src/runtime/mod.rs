//! One shard's executor: its listeners, its connections, its links to the
//! other shards, and the glue that feeds them all through the sans-IO
//! [`shard::Shard`].
//!
//! Everything here runs on one glommio executor pinned to one core. State is
//! in `Rc`/`RefCell`; nothing is shared with other threads except the bounded
//! SPSC queues to other shards.
//!
//! [`Runtime`] is the coordinator. It owns the shard and one part per
//! concern, each in its own module with its own state and a narrow API:
//! - `links`: what is staged for each other shard, the task that forwards
//!   it and the task that receives from each other shard;
//! - `commit`: the commit task and checkpoints, and [`commit::Commits`],
//!   what connections see of the commits;
//! - `connection`: the task of each connection (reads, writes, hands over,
//!   lingers) and [`connection::ConnectionTasks`], what those tasks share;
//!   the decisions of when its bytes move are `server::flow`, sans-IO;
//! - `accept`: the accept loops;
//! - `replay`: opening the journal and replaying it before anything is
//!   served.
//!
//! Every input to the shard goes through [`Runtime::with_shard`], which
//! distributes what the input produced (peer messages to their links,
//! wake-ups to connection tasks, records to the commit task) before it
//! returns, so no caller can leave outputs behind until the next tick.

mod accept;
mod commit;
mod connection;
mod events;
mod islands;
mod links;
mod remote;
mod replay;

use std::{
    cell::{Cell, Ref, RefCell},
    collections::BTreeMap,
    future::Future,
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    rc::{Rc, Weak},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use glommio::{net::TcpListener, Latency, Shares, TaskQueueHandle};
use rustls::ServerConfig;
use shard::{island::IslandId, ClockNote, Dest, Shard};
use storage::log::LogConfig;
use tokio::sync::oneshot;

pub use islands::IslandSetup;
pub use links::Batch;
pub use remote::RemoteSetupParts;
pub(crate) use replay::{open_journal, ShardJournal};

use self::{
    commit::{CheckpointPlan, Commits},
    connection::ConnectionTasks,
    links::{Links, Staged},
};
use crate::control::{
    commands::{AccountView, Connection, Deletion, ShardCommand},
    snapshot::{JournalState, Queues, ShardReport, REPORT_INTERVAL_MS},
    Reporter,
};
use server::peer_queue;

/// How soon the executor turns to the tasks other executors wake (the
/// forwarders and receivers): a busy task queue is preempted for them
/// after at most this, where the default queue waits for its time slice.
/// Half the peer queue's first backstop (`peer_queue::BACKSTOP_MIN`, 1 ms),
/// so that a wake-up that does arrive is acted on before the backstop.
const PEER_TASKS_LATENCY_US: u64 = 500;

/// How long a stopping shard waits for its connections to take their last
/// bytes: a phone on a working network reads them in far less, and one
/// that does not must not hold the stop (SIGTERM expects an exit soon).
const STOP_CONNECTIONS_WAIT_MS: u64 = 2_000;
/// How long it then waits for its last commits alone: what phones were
/// told is stored must be on disk before the process ends, and a commit
/// larger than a segment can take seconds on a slow disk.
const STOP_COMMITS_WAIT_MS: u64 = 30_000;

/// How often a stopping shard looks whether its connections and commits
/// are done: short next to the waits above, long enough not to spin.
const STOP_POLL_MS: u64 = 20;

/// How often an accept loop looks whether the server serves yet: only
/// while starting, short next to a replay.
const SERVING_POLL_MS: u64 = 10;

/// A wake-up for one task on this executor.
#[derive(Default)]
struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(move |cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// One tablet's runtime: its shard state machine and the parts that
/// carry its outputs. An executor runs one per tablet it serves (its own
/// island's, and those of islands it took over; docs/islands.md); the
/// parts that are the executor's (links, accept loops, replication, TLS)
/// are shared by its tablets, behind `Rc`s.
pub struct Runtime {
    shard_id: u16,
    /// Borrowed mutably only by `with_shard` (and `with_shard_no_outputs`),
    /// immutably by `shard`.
    shard: RefCell<Shard>,
    started: Instant,
    /// Set once the shard stops, or drains: accept loops take no new
    /// connections.
    stopping: Rc<Cell<bool>>,
    /// Set once the process stops (not for a drain): a commit waiting for
    /// its island's secondary is given up on (`Commits::abandon`).
    exiting: Rc<Cell<bool>>,
    links: Rc<Links>,
    /// Links to the other nodes of the cluster (idle for a single node).
    remote: Rc<remote::Remote>,
    /// The shard's tablets, when the cluster replicates.
    islands: Option<Rc<islands::Islands>>,
    /// The latency-sensitive queue the links' tasks run in.
    peer_queue: Rc<Cell<Option<TaskQueueHandle>>>,
    commits: Commits,
    connections: ConnectionTasks,
    events: events::EventLog,
    /// What new TLS connections get; replaced by a reload.
    tls: Rc<RefCell<Option<Arc<ServerConfig>>>>,
    /// Every tablet this executor serves.
    tablets: Rc<Tablets>,
}

/// The tablets an executor serves, by island: the first is its own
/// island's, which also takes the connections its listeners accept.
#[derive(Default)]
struct Tablets {
    /// The executor's own tablet: the first served, whose accept loops
    /// take new connections. It stays the door even when it no longer
    /// leads its island.
    own: RefCell<Weak<Runtime>>,
    by_island: RefCell<BTreeMap<IslandId, Weak<Runtime>>>,
    /// Mail for an island this node is primary of and does not serve
    /// yet (its standby is being turned into a tablet): delivered once it
    /// is served. At most [`PARKED_MAX`].
    parked: RefCell<Vec<(IslandId, links::Mail)>>,
    /// Mail dropped because [`PARKED_MAX`] waited already.
    parked_dropped: Cell<u64>,
}

/// Mail parked for islands about to be served here, at most: the few
/// milliseconds between winning an island and serving it, at the highest
/// rates a shard takes.
const PARKED_MAX: usize = 65_536;

/// Where mail for a tablet of this shard goes.
enum Reach {
    /// The tablet, served here.
    Tablet(Rc<Runtime>),
    /// Nowhere yet: the island is this node's and about to be served,
    /// or its primary is down and it is about to move.
    Park,
    /// On, through the own tablet, to where its account or group lives
    /// now: this node does not serve the island.
    Forward(Rc<Runtime>),
}

impl Runtime {
    fn new(
        shard: Shard,
        started: Instant,
        (shard_count, staging_max): (usize, usize),
        remote: remote::RemoteSetupParts,
        islands: Option<islands::IslandSetup>,
    ) -> Runtime {
        let shard_id = shard.config().shard_id;
        Runtime {
            islands: islands.map(|setup| Rc::new(islands::Islands::new(setup, shard_id))),
            shard_id,
            shard: RefCell::new(shard),
            started,
            stopping: Rc::default(),
            exiting: Rc::default(),
            links: Rc::new(Links::new(shard_count, staging_max)),
            remote: Rc::new(remote::Remote::new(remote, staging_max)),
            peer_queue: Rc::default(),
            commits: Commits::default(),
            connections: ConnectionTasks::new(),
            events: events::EventLog::new(shard_id),
            tls: Rc::default(),
            tablets: Rc::default(),
        }
    }

    /// Another tablet on this executor, for `shard` (of the same shard
    /// number, another island), sharing the executor's parts.
    fn sibling(&self, shard: Shard) -> Runtime {
        debug_assert_eq!(shard.config().shard_id, self.shard_id);
        Runtime {
            islands: self.islands.clone(),
            shard_id: self.shard_id,
            shard: RefCell::new(shard),
            started: self.started,
            stopping: self.stopping.clone(),
            exiting: self.exiting.clone(),
            links: self.links.clone(),
            remote: self.remote.clone(),
            peer_queue: self.peer_queue.clone(),
            commits: Commits::default(),
            connections: ConnectionTasks::new(),
            events: events::EventLog::new(self.shard_id),
            tls: self.tls.clone(),
            tablets: self.tablets.clone(),
        }
    }

    /// Makes this runtime one of its executor's tablets (its island's),
    /// and hands it what was parked for it.
    fn serve(self: &Rc<Self>) {
        let island = self.shard().config().island;
        if self.tablets.own.borrow().upgrade().is_none() {
            *self.tablets.own.borrow_mut() = Rc::downgrade(self);
        }
        let old = self
            .tablets
            .by_island
            .borrow_mut()
            .insert(island, Rc::downgrade(self));
        // The own tablet's stale copy of an island this node serves again
        // (taken back from the node that took it over) stays the door new
        // connections come in by; the island's mail goes here.
        let old = old.and_then(|w| w.upgrade());
        assert!(
            old.is_none_or(|old| !old.shard().leads_own_island()),
            "one tablet per island"
        );
        self.unpark();
    }

    /// Where mail addressed to island `island`'s tablet on this shard
    /// goes. A tablet that does not lead its island any more (its node
    /// was away while the island was taken over) serves nothing.
    fn reach(self: &Rc<Self>, island: IslandId) -> Reach {
        if let Some(tablet) = self.tablet(island) {
            if tablet.shard().leads_own_island() {
                return Reach::Tablet(tablet);
            }
        }
        let own = self.own_tablet();
        // Without a map this node cannot tell yet where the island is, and
        // an island whose primary is not live is about to move (here,
        // if the sender's view is ahead of this node's): the mail waits
        // for the placement that says, rather than wait on the link to a
        // node that is down while later mail overtakes it.
        let wait = own.shard().placement().is_some_and(|p| {
            let primary = p.primary_of(island);
            !p.has_map() || primary == p.node || !p.node(primary).is_some_and(|n| n.live)
        });
        if wait {
            Reach::Park
        } else {
            Reach::Forward(own)
        }
    }

    /// Hands parked mail where the placement now says it goes (parked
    /// again if it still cannot go anywhere).
    fn unpark(self: &Rc<Self>) {
        let parked = std::mem::take(&mut *self.tablets.parked.borrow_mut());
        if !parked.is_empty() {
            links::deliver(self, parked.into_iter().map(|(_, mail)| mail).collect());
        }
    }

    /// Parks `mail` for island `island` until its tablet is served here
    /// (see [`Tablets::parked`]). Past the bound it is dropped, loudly:
    /// what it carried from another node is sent again by that node's
    /// link, which it never released.
    fn park(&self, island: IslandId, mail: links::Mail) {
        let mut parked = self.tablets.parked.borrow_mut();
        if parked.len() >= PARKED_MAX {
            let count = self.tablets.parked_dropped.get() + 1;
            self.tablets.parked_dropped.set(count);
            if count.is_power_of_two() {
                log::error!(
                    shard = self.shard_id; "{count} messages for island {island} dropped: \
                     it is this node's, not served yet, and {PARKED_MAX} wait for it"
                );
            }
            if let links::Mail::Tracked(_, _, durable) = mail {
                // Never released: the sending node keeps it and sends it
                // again to this node's next incarnation.
                std::mem::forget(durable);
            }
            return;
        }
        parked.push((island, mail));
    }

    /// The tablet of `island`, if this executor serves it.
    fn tablet(&self, island: IslandId) -> Option<Rc<Runtime>> {
        let tablets = self.tablets.by_island.borrow();
        tablets.get(&island).and_then(Weak::upgrade)
    }

    /// The executor's own tablet (see [`Tablets::own`]).
    fn own_tablet(self: &Rc<Self>) -> Rc<Runtime> {
        let own = self.tablets.own.borrow().upgrade();
        own.unwrap_or_else(|| self.clone())
    }

    /// Every tablet this executor serves, its own first.
    fn every_tablet(self: &Rc<Self>) -> Vec<Rc<Runtime>> {
        let own = self.own_tablet();
        let others = self.tablets_other_than(&own);
        std::iter::once(own).chain(others).collect()
    }

    /// The tablets this executor serves but `than`.
    fn tablets_other_than(&self, than: &Runtime) -> Vec<Rc<Runtime>> {
        let tablets = self.tablets.by_island.borrow();
        let served = tablets.values().filter_map(Weak::upgrade);
        served.filter(|t| !std::ptr::eq(t.as_ref(), than)).collect()
    }

    /// Whether the connections feeding `key` (a shard of this node, or
    /// `remote::node_key` of another node) must pause.
    fn is_congested(&self, key: u16) -> bool {
        match key.checked_sub(remote::NODE_KEY_BASE) {
            Some(node) => self.remote.is_congested(node),
            None => self.links.is_congested(key),
        }
    }

    fn drains(&self, key: u16) -> u64 {
        match key.checked_sub(remote::NODE_KEY_BASE) {
            Some(node) => self.remote.drains(node),
            None => self.links.drains(key),
        }
    }

    fn wake_when_drained(&self, key: u16, waker: std::task::Waker) {
        match key.checked_sub(remote::NODE_KEY_BASE) {
            Some(node) => self.remote.wake_when_drained(node, waker),
            None => self.links.wake_when_drained(key, waker),
        }
    }

    /// Milliseconds since the server started: the shard's clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The shard, for queries: its `&self` methods make no outputs.
    fn shard(&self) -> Ref<'_, Shard> {
        self.shard.borrow()
    }

    /// Hands the shard an input (`input` calls its `handle_*`, `tick` and
    /// the like), then distributes what the input produced.
    fn with_shard<R>(&self, input: impl FnOnce(&mut Shard) -> R) -> R {
        self.with_shard_congested(input).0
    }

    /// [`Runtime::with_shard`], also returning a destination whose link the
    /// input took over its staging limit, if it did.
    fn with_shard_congested<R>(&self, input: impl FnOnce(&mut Shard) -> R) -> (R, Option<u16>) {
        let (value, congested) = {
            let mut shard = self.shard.borrow_mut();
            let value = input(&mut shard);
            (value, self.distribute_outputs(&mut shard))
        };
        self.connections.wake_noted();
        (value, congested)
    }

    /// For calls that make no outputs: taking one the caller handles itself
    /// (an outbox, a batch of records, a checkpoint), telling the shard of
    /// the journal's state, opening or handing away a connection (a timer
    /// armed or cancelled). Nothing is distributed after them; in the
    /// commit task that would raise its own signal for replies held for
    /// the batch it is writing, and cost an empty commit after each.
    fn with_shard_no_outputs<R>(&self, call: impl FnOnce(&mut Shard) -> R) -> R {
        call(&mut self.shard.borrow_mut())
    }

    /// Moves the shard's outputs to where they go: peer messages to their
    /// links, wake-ups to connection tasks (noted, woken once the shard is
    /// released), records to the commit task. Returns a destination over
    /// its staging limit, if this call fed one.
    fn distribute_outputs(&self, shard: &mut Shard) -> Option<u16> {
        let mut congested = None;
        let mut signals_dropped = 0;
        for (destination, message) in shard.drain_peer_messages() {
            let (staged, key) = match destination {
                Dest::Shard { island, shard } => (self.links.stage(shard, island, message), shard),
                Dest::Node {
                    node,
                    island,
                    shard,
                } => (
                    self.remote.stage(node, (island, shard), message),
                    remote::node_key(node),
                ),
            };
            match staged {
                Staged::Queued => {}
                Staged::OverLimit => congested = Some(key),
                Staged::Dropped => signals_dropped += 1,
            }
        }
        if signals_dropped > 0 {
            shard.signals_dropped(signals_dropped);
        }
        self.connections.note_woken(shard.drain_woken());
        for event in shard.drain_events() {
            let peer = self.connections.peer(event.conn);
            self.events.log(event, peer);
        }
        if shard.has_pending_records() {
            self.commits.request();
        }
        congested
    }

    /// Carries out an operator's request (see `control::commands`). A
    /// reply the control thread stopped waiting for is dropped.
    fn obey(self: &Rc<Self>, command: ShardCommand) {
        if let Some(phone) = command.phone() {
            // An account's request goes to the tablet holding it.
            let home = self.shard().home_of(phone);
            if let shard::Home::Here { island, .. } = home {
                if let Reach::Tablet(tablet) = self.reach(island) {
                    if !Rc::ptr_eq(&tablet, self) {
                        return tablet.obey_here(command);
                    }
                }
            }
        }
        self.obey_here(command)
    }

    fn obey_here(self: &Rc<Self>, command: ShardCommand) {
        match command {
            ShardCommand::AccountShow { phone, reply } => {
                let shard = self.shard();
                let view = shard.account_info(phone).map(|info| AccountView {
                    info,
                    connection: shard.session_of(phone).map(|id| Connection {
                        shard: self.shard_id,
                        peer: self.connections.peer(id),
                    }),
                });
                let _ = reply.send(view);
            }
            ShardCommand::Revoke { phone, reply } => {
                let now_ms = self.now_ms();
                let revoked = self.with_shard(|shard| shard.revoke(phone, now_ms));
                if revoked.is_ok() {
                    log::warn!(shard = self.shard_id, phone:%; "revoked the account's key");
                }
                let _ = reply.send(revoked);
            }
            ShardCommand::DeleteAccount { phone, reply } => self.delete_account(phone, reply),
            ShardCommand::Trace {
                sender,
                client_id,
                reply,
            } => {
                // A message is in the tablets of its sender's and its
                // recipient's islands, which may both be served here.
                let hits = self
                    .every_tablet()
                    .iter()
                    .flat_map(|tablet| {
                        tablet.with_shard_no_outputs(|shard| shard.trace(sender, client_id))
                    })
                    .collect();
                let _ = reply.send(hits);
            }
            ShardCommand::ReloadTls { config, taken } => {
                *self.tls.borrow_mut() = Some(config);
                let _ = taken.send(());
            }
            ShardCommand::SetLimits { limits, taken } => {
                for tablet in self.every_tablet() {
                    tablet.with_shard(|shard| shard.set_limits((*limits).clone()));
                }
                let _ = taken.send(());
            }
            ShardCommand::Place(placement) => {
                for tablet in self.every_tablet() {
                    tablet.with_shard(|shard| shard.set_placement(Some(placement.clone())));
                }
                self.unpark();
                remote::place(self, &placement, self.peer_queue.get());
                if let Some(islands) = &self.islands {
                    islands.place(self, &placement);
                }
            }
            ShardCommand::Drain => {
                log::warn!(
                    shard = self.shard_id; "draining: closing every connection"
                );
                self.stopping.set(true);
                for tablet in self.every_tablet() {
                    tablet.with_shard(|shard| shard.close_all());
                }
            }
        }
    }

    /// Deletes an account and answers once the deletion is durable.
    fn delete_account(&self, phone: wire::Phone, reply: oneshot::Sender<Deletion>) {
        let now_ms = self.now_ms();
        let deleted = match self.with_shard(|shard| shard.delete_account(phone, now_ms)) {
            Ok(deleted) => deleted,
            Err(refused) => {
                let _ = reply.send(Deletion::Refused(refused));
                return;
            }
        };
        log::warn!(
            shard = self.shard_id, phone:%;
            "deleted the account ({} mailbox entries)",
            deleted.mailbox_entries
        );
        let answer = move |written: bool| {
            let _ = reply.send(match written {
                true => Deletion::Durable(deleted),
                false => Deletion::NotWritten,
            });
        };
        self.commits
            .after(self.commit_covering_now(), Box::new(answer));
    }

    /// Batches the own island's secondary does not hold yet.
    fn replica_lag(&self) -> u64 {
        let own = self.islands.as_ref().and_then(|islands| islands.own());
        own.map_or(0, |tablet| tablet.borrow().member().replica_lag())
    }

    /// What the shard tells the control thread (see `control::snapshot`).
    fn report(&self) -> ShardReport {
        let replication = self.islands.as_ref().map(|islands| islands.stats());
        let shard = self.shard();
        let (peer_staged_messages, peer_staged_messages_max) = self.links.staged();
        let (node_staged_messages, node_staged_messages_max) = self.remote.staged();
        let stats = self.commits.journal_stats();
        let (bytes_in, bytes_out) = self.connections.bytes();
        let errors_sent = shard
            .errors_sent()
            .iter()
            .map(|(kind, count)| (format!("{kind:?}"), *count))
            .collect();
        // The tablets of islands taken over count with the own one: the
        // shard's figures are its executor's.
        let (mut counters, mut lengths) = (shard.counters(), shard.queue_lengths());
        for other in &self.tablets_other_than(self) {
            let other = other.shard();
            counters = sum_fields(&counters, &other.counters());
            lengths = sum_fields(&lengths, &other.queue_lengths());
        }
        ShardReport {
            shard: self.shard_id,
            at: Instant::now(),
            interval_ms: REPORT_INTERVAL_MS.max(shard.config().tick_ms),
            counters,
            queues: Queues {
                shard: lengths,
                peer_staged_messages,
                peer_staged_messages_max,
                node_staged_messages,
                node_staged_messages_max,
                replica_lag_batches: self.replica_lag(),
                replica_lag_bytes: replication.map_or(0, |r| r.lag_bytes),
            },
            commits: self.commits.take_samples(),
            journal: JournalState {
                failed: shard.is_journal_failed(),
                disk_full: shard.is_disk_full(),
                unavailable: shard.is_storage_unavailable(),
                records: stats.records,
                bytes: stats.bytes,
                batches: stats.batches,
                syncs: stats.syncs,
                last_checkpoint_ms: self.commits.last_checkpoint_ms(),
            },
            errors_sent,
            bytes_in,
            bytes_out,
            remote: self.remote.stats(),
            tls_handshake_failures: self.events.tls_handshake_failures(),
            replication,
        }
    }

    /// The commit that makes durable everything recorded so far.
    fn commit_covering_now(&self) -> u64 {
        self.commits.covering_now(self.shard().awaits_next_commit())
    }

    /// Marks each of `durables` done once what `shard` recorded so far is
    /// on disk (for a caller that holds the shard already).
    fn after_next_commit_all(&self, shard: &Shard, durables: Vec<remote::Durable>) {
        if durables.is_empty() {
            return;
        }
        let target = self.commits.covering_now(shard.awaits_next_commit());
        self.commits
            .after(target, Box::new(move |_| drop(durables)));
    }
}

/// Two structs of `u64` fields (counters, queue lengths) added field by
/// field, through their serde forms: a field added to them is summed
/// without a line here.
fn sum_fields<T: serde::Serialize + serde::de::DeserializeOwned>(a: &T, b: &T) -> T {
    let (a, b) = (
        serde_json::to_value(a).expect("serializes"),
        serde_json::to_value(b).expect("serializes"),
    );
    let mut sum = serde_json::Map::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (name, value) in a {
            let other = b.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
            let total = value.as_u64().unwrap_or(0).saturating_add(other);
            sum.insert(name.clone(), total.into());
        }
    }
    serde_json::from_value(sum.into()).expect("the same fields deserialize")
}

/// The ends of the queues one shard owns: a sender to every other shard and a
/// receiver from every other shard (`None` at its own index).
pub struct PeerEnds {
    pub senders: Vec<Option<peer_queue::Sender<Batch>>>,
    pub receivers: Vec<Option<peer_queue::Receiver<Batch>>>,
}

pub struct Listeners {
    pub tls: Option<OwnedFd>,
    pub plain: Option<OwnedFd>,
}

/// Where a shard's commits go.
pub struct StorageSetup {
    pub journal: crate::config::JournalKind,
    /// The shard's log directory (segments and checkpoints).
    pub dir: std::path::PathBuf,
    /// Closed segments that call for a checkpoint.
    pub checkpoint_segments: usize,
    /// Closed segments kept past that for an island's secondary that does
    /// not hold them yet (`cluster.replica_retain_segments`).
    pub replica_retain_segments: usize,
    pub log: LogConfig,
}

pub struct ShardSetup {
    pub shard: Shard,
    pub storage: StorageSetup,
    /// Told once, when the shard has replayed its log (a line for the
    /// server's log) or failed to (why).
    pub recovered: std::sync::mpsc::Sender<Result<String, String>>,
    pub peers: PeerEnds,
    pub listeners: Listeners,
    pub tls: Option<Arc<ServerConfig>>,
    pub limits: crate::config::Limits,
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
    /// Push tokens the gateway refused, for accounts of this shard.
    pub push_rejected: crossbeam_channel::Receiver<crate::push::Rejected>,
    /// Where the shard sends its report once a second.
    pub reporter: Reporter,
    /// An operator's requests, from the control thread.
    pub commands: crossbeam_channel::Receiver<ShardCommand>,
    /// Records replayed so far, which the control thread shows while the
    /// shard starts.
    pub replayed: Arc<std::sync::atomic::AtomicU64>,
    /// Raised once every shard replayed and the listeners listen: the
    /// accept loops wait for it.
    pub serving: Arc<AtomicBool>,
    /// This shard's part of the links to other nodes.
    pub remote: remote::RemoteSetupParts,
    /// What the shard needs to replicate its log (`None`: it does not).
    pub islands: Option<islands::IslandSetup>,
}

/// Runs one shard until `stop` is raised and its connections are closed.
pub async fn run(setup: ShardSetup) {
    let ShardSetup {
        mut shard,
        storage,
        recovered,
        peers,
        listeners,
        tls,
        limits,
        stop,
        started,
        push_rejected,
        reporter,
        serving,
        commands,
        replayed,
        remote,
        islands,
    } = setup;
    let shard_id = shard.config().shard_id;
    let (journal, replay_line) = match open_journal(&mut shard, &storage, &replayed).await {
        Ok(opened) => opened,
        Err(error) => {
            let _ = recovered.send(Err(format!("shard {shard_id}: {error:#}")));
            return;
        }
    };
    log_clock_notes(shard_id, &mut shard);
    let tick_ms = shard.config().tick_ms;
    let shard_count = peers.senders.len();
    let staging_max = limits.peer_staging_messages_max;
    let runtime = Rc::new(Runtime::new(
        shard,
        started,
        (shard_count, staging_max),
        remote,
        islands,
    ));
    runtime.serve();
    *runtime.tls.borrow_mut() = tls;
    // A first report before the shard counts as recovered: the control
    // thread has one from every shard before the server says it is ready,
    // so `/health/ready` does not turn 503 ("has not reported") right
    // after the ready line.
    reporter.report(runtime.report());
    let _ = recovered.send(Ok(replay_line));
    let plan = CheckpointPlan::new(&storage);
    if let Some(islands) = &runtime.islands {
        islands.set_plan(plan.clone());
    }
    let tasks = spawn_tasks(&runtime, peers, journal, plan, (listeners, serving));
    let outside = Outside {
        stop: &stop,
        push_rejected: &push_rejected,
        reporter: &reporter,
        commands: &commands,
    };
    tick_until_stopped(&runtime, tick_ms, outside).await;
    stop_serving(&runtime).await;
    drop(tasks);
}

/// Starts the shard's tasks: a forwarder and a receiver per other shard,
/// the commit task, and an accept loop per listener.
fn spawn_tasks(
    runtime: &Rc<Runtime>,
    peers: PeerEnds,
    journal: ShardJournal,
    plan: CheckpointPlan,
    (listeners, serving): (Listeners, Arc<AtomicBool>),
) -> Vec<glommio::task::JoinHandle<()>> {
    // Queues that other executors wake must be latency-sensitive, or their
    // wake-ups wait for the scheduler's next time slice.
    let peer_queue = glommio::executor().create_task_queue(
        Shares::default(),
        Latency::Matters(Duration::from_micros(PEER_TASKS_LATENCY_US)),
        "peers",
    );
    runtime.peer_queue.set(Some(peer_queue));
    let mut tasks = Vec::new();
    for (destination, sender) in peers.senders.into_iter().enumerate() {
        if let Some(sender) = sender {
            let runtime = runtime.clone();
            let forward = links::forward(runtime, destination, sender);
            tasks.push(spawn_in(peer_queue, forward));
        }
    }
    for receiver in peers.receivers.into_iter().flatten() {
        let runtime = runtime.clone();
        tasks.push(spawn_in(peer_queue, links::receive(runtime, receiver)));
    }
    // Between this executor's own tablets.
    tasks.push(spawn_in(peer_queue, links::deliver_local(runtime.clone())));
    tasks.push(match journal {
        ShardJournal::Log(log) => glommio::spawn_local(commit::commit(
            runtime.clone(),
            *log,
            plan.clone(),
            commit::Replication::Own,
        ))
        .detach(),
        ShardJournal::Memory(memory) => glommio::spawn_local(commit::commit(
            runtime.clone(),
            memory,
            plan.clone(),
            commit::Replication::Own,
        ))
        .detach(),
    });
    for (fd, tls) in [(listeners.tls, true), (listeners.plain, false)] {
        if let Some(fd) = fd {
            // SAFETY: the fd is a bound, listening TCP socket we own.
            let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
            let (runtime, serving) = (runtime.clone(), serving.clone());
            let accept = async move {
                wait_until_serving(&serving).await;
                accept::accept(runtime, listener, tls).await;
            };
            tasks.push(glommio::spawn_local(accept).detach());
        }
    }
    tasks
}

fn spawn_in<F: Future<Output = ()> + 'static>(
    queue: TaskQueueHandle,
    future: F,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local_into(future, queue)
        .expect("the peer task queue exists")
        .detach()
}

/// The listeners are bound before the shards replay their logs but listen
/// only once every shard has (a phone connecting meanwhile is refused
/// rather than left hanging): the accept loops start then.
async fn wait_until_serving(serving: &AtomicBool) {
    while !serving.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(SERVING_POLL_MS)).await;
    }
}

/// What the tick deals with outside the shard.
struct Outside<'a> {
    stop: &'a AtomicBool,
    push_rejected: &'a crossbeam_channel::Receiver<crate::push::Rejected>,
    reporter: &'a Reporter,
    commands: &'a crossbeam_channel::Receiver<ShardCommand>,
}

/// The tick: one runtime timer per shard drives the shard's own wheel,
/// reads the wall clock, hands back push tokens the gateway refused, and
/// once a second reports to the control thread.
async fn tick_until_stopped(runtime: &Rc<Runtime>, tick_ms: u64, outside: Outside<'_>) {
    let Outside {
        stop,
        push_rejected,
        reporter,
        commands,
    } = outside;
    let tick = Duration::from_millis(tick_ms);
    let mut reported_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(tick).await;
        if reported_at.elapsed() >= Duration::from_millis(REPORT_INTERVAL_MS) {
            reported_at = Instant::now();
            reporter.report(runtime.report());
        }
        for command in commands.try_iter() {
            runtime.obey(command);
        }
        runtime.remote.release_durable();
        if let Some(islands) = &runtime.islands {
            islands.tick();
        }
        let rejected: Vec<_> = push_rejected.try_iter().collect();
        for tablet in runtime.every_tablet() {
            tablet.with_shard(|shard| {
                let now_ms = tablet.now_ms();
                shard.observe_wall_clock(unix_ms(), now_ms);
                log_clock_notes(tablet.shard_id, shard);
                shard.tick(now_ms);
                // A token is its account's: the tablet without it ignores
                // it.
                for (phone, token) in &rejected {
                    shard.push_rejected(*phone, token);
                }
            });
        }
    }
}

/// Drains the shard: tells every phone, gives the writes a moment, waits
/// for the last commits, then returns.
async fn stop_serving(runtime: &Rc<Runtime>) {
    let shard_id = runtime.shard_id;
    runtime.stopping.set(true);
    runtime.exiting.set(true);
    let tablets = runtime.every_tablet();
    for tablet in &tablets {
        tablet.with_shard(|shard| shard.close_all());
    }
    let deadline = Instant::now() + Duration::from_millis(STOP_CONNECTIONS_WAIT_MS);
    // Connections to close, and records (the write-back cache, written out
    // by `close_all`) to commit: taken by the commit task is not written,
    // so the commit in flight counts too.
    let unwritten = || {
        tablets.iter().any(|t| {
            !t.commits.abandoned() && (t.shard().has_pending_records() || t.commits.in_flight())
        })
    };
    let busy = || tablets.iter().any(|t| t.connections.live() > 0) || unwritten();
    while busy() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    // What phones were told is stored must be on disk before the process
    // ends: wait longer for the commits alone, and say so if they do not
    // finish (a full disk, say).
    let deadline = Instant::now() + Duration::from_millis(STOP_COMMITS_WAIT_MS);
    while unwritten() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    if unwritten() {
        log::error!(
            shard = shard_id; "stopping with records not yet written after {} s; what the \
             write-back cache held since the last commit is lost",
            STOP_COMMITS_WAIT_MS / 1_000
        );
    }
    runtime.remote.stop();
    let counters = runtime.shard().counters();
    let journal = runtime.commits.journal_stats();
    log::info!("shard {shard_id} stopped: {counters:?}; journal {journal:?}");
}

/// The system's wall clock, in Unix ms (0 before 1970).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tells the operator what the shard made of the wall clock: a clock in
/// doubt holds expiry, loudly, until it is trusted.
fn log_clock_notes(shard_id: u16, shard: &mut Shard) {
    while let Some(note) = shard.take_clock_note() {
        match note {
            ClockNote::InDoubt { ahead_ms, at_start } => log::error!(
                shard = shard_id; "the wall clock is {} {} the time {}; nothing expires \
                 until it is trusted: once it keeps step for [clock] settle_ms, what was \
                 queued before counts its age from the step; or start once with \
                 --clock-confirmed if this clock is right, and ages count by it (what it \
                 makes older than the retention then expires at once)",
                human_ms(ahead_ms.unsigned_abs()),
                if ahead_ms >= 0 { "ahead of" } else { "behind" },
                if at_start {
                    "the log last recorded"
                } else {
                    "the monotonic clock expected"
                },
            ),
            ClockNote::Accepted {
                confirmed,
                floor_ms,
            } => log::warn!(
                shard = shard_id; "the wall clock is trusted again ({}){}",
                if confirmed {
                    "--clock-confirmed"
                } else {
                    "it kept step"
                },
                match floor_ms {
                    Some(floor) => format!(
                        "; what was queued before the step counts its age from {floor} (Unix ms)"
                    ),
                    None => String::new(),
                }
            ),
        }
    }
}

/// `ms` for a log line: days, hours, minutes or seconds.
fn human_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "days"),
        (3_600_000, "hours"),
        (60_000, "minutes"),
        (1_000, "s"),
    ];
    for (unit, name) in UNITS {
        if ms >= unit {
            return format!("{:.1} {name}", ms as f64 / unit as f64);
        }
    }
    format!("{ms} ms")
}
