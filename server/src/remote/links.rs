//! [`RemoteLinks`]: one shard's links to the other nodes and the receive
//! state of the senders that dial it, behind the API the runtime uses.
//!
//! Commands: [`RemoteLinks::ensure`] (a node to link to, or its new
//! incarnation or address), [`RemoteLinks::forget`] (a node left),
//! [`RemoteLinks::push`] (a payload for a node), [`RemoteLinks::released`]
//! (what a delivery caused is durable), [`RemoteLinks::stop`]. Queries:
//! [`RemoteLinks::is_full`], [`RemoteLinks::takes_signals`],
//! [`RemoteLinks::stats`]. Wake-ups: [`RemoteLinks::wait_room`]. Output:
//! the `deliver` callback of [`RemoteSetup`], called from this shard's
//! tasks with nothing of the links borrowed, so it may call back in.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::Future,
    net::SocketAddr,
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    rc::Rc,
    task::Waker,
};

use ahash::AHashMap;
use glommio::{net::TcpListener, sync::Semaphore, TaskQueueHandle};

use super::{
    accept, dial,
    handshakes::HandshakePlaces,
    io::{Clock, Killer, LogLimit, Signal},
    proof::ClusterSecret,
    receive::ReceiveSession,
    send::SendSession,
    Delivery, Handovers, InboundStats, LinkConfig, LinkConfigError, LinkStats, Local, Origin,
    Payload, PushError, RemoteStats, PAYLOAD_BYTES_MAX,
};

/// What a shard's links are made from.
/// Takes a replication connection: its socket and the bytes read so far.
pub type TakeReplication = Box<dyn Fn(OwnedFd, Vec<u8>)>;

pub struct RemoteSetup {
    pub local: Local,
    pub config: LinkConfig,
    /// This shard's socket on the node's peer address, bound with
    /// `SO_REUSEPORT` like every other shard's and listening; `None`: this
    /// shard takes incoming connections only by handover.
    pub listener: Option<OwnedFd>,
    /// The node's handover inboxes (one `Handovers` shared by its shards).
    pub handovers: Handovers,
    /// The cluster's shared secret: with one, a hello or welcome must
    /// carry its proof; without, any host that names a member is taken
    /// for it (docs/security.md).
    pub secret: Option<ClusterSecret>,
    /// Whether a peer's (node, incarnation) may link with this node: the
    /// routing side refuses unknown nodes and old incarnations. Asked of
    /// every hello and every welcome.
    pub approve: Box<dyn Fn(u16, i64) -> bool>,
    /// Takes payloads received in order; each must later be released
    /// ([`RemoteLinks::released`]) on this shard.
    pub deliver: Box<dyn Fn(Delivery)>,
    /// Takes a replication connection (docs/islands.md) for a tablet of
    /// this shard: its socket, and the bytes read from it so far (its
    /// hello). `None`: the node does not replicate, and such connections
    /// are refused.
    pub replication: Option<TakeReplication>,
    /// Where the links' tasks run (a latency-sensitive queue, like the
    /// links between shards); `None`: the executor's default.
    pub task_queue: Option<TaskQueueHandle>,
}

/// One shard's links to other nodes (see the module doc).
pub struct RemoteLinks {
    pub(super) local: Local,
    /// This node's incarnation now: `local`'s at the start, a new one after
    /// the node's lease was lost and granted again.
    incarnation: Cell<i64>,
    pub(super) config: LinkConfig,
    pub(super) clock: Clock,
    pub(super) secret: Option<ClusterSecret>,
    pub(super) approve: Box<dyn Fn(u16, i64) -> bool>,
    pub(super) deliver: Box<dyn Fn(Delivery)>,
    pub(super) replication: Option<TakeReplication>,
    links: RefCell<AHashMap<u16, Rc<OutLink>>>,
    inbound: RefCell<AHashMap<(u16, u16), Rc<InLink>>>,
    pub(super) handovers: Handovers,
    /// Dials in progress (connect and handshake), at most `dials_max`.
    pub(super) dials: Semaphore,
    /// Incoming connections that have not said hello yet.
    pub(super) places: Rc<HandshakePlaces>,
    /// The session number the next new or reset session takes: they only
    /// grow, so a receiver can tell an old connection from a new one.
    next_session: Cell<u64>,
    pub(super) stopping: Cell<bool>,
    /// Ends the accept loop.
    pub(super) stop_accepting: Signal,
    pub(super) counters: Counters,
    pub(super) log_limit: LogLimit,
    task_queue: Option<TaskQueueHandle>,
    /// Seeds each link's redial jitter.
    seed: u64,
}

/// Shard-wide counts (see [`RemoteStats`]).
#[derive(Default)]
pub(super) struct Counters {
    pub handshakes_refused: Cell<u64>,
    pub hellos_unproven: Cell<u64>,
    pub hellos_not_approved: Cell<u64>,
    pub frames_refused: Cell<u64>,
    pub handovers: Cell<u64>,
    pub handovers_refused: Cell<u64>,
    pub sender_resets: Cell<u64>,
}

pub(super) fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// Where an outgoing link dials, and whom it expects there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    pub addr: SocketAddr,
    pub incarnation: i64,
    pub shard: u16,
}

/// One outgoing link: its session and what its task and the runtime share.
pub(super) struct OutLink {
    pub node: u16,
    pub target: Cell<Target>,
    pub session: RefCell<SendSession>,
    /// Raised when there is something to write (a push).
    pub wake_writer: Signal,
    /// Raised to cut a redial wait short (forgotten, a new target).
    pub wake_task: Signal,
    /// Waiting for room in the queue; one waker per waiter.
    pub room: RefCell<Vec<Waker>>,
    /// The current connection's kill switch.
    pub connection: RefCell<Option<Killer>>,
    pub forgotten: Cell<bool>,
    pub connects: Cell<u64>,
    pub dial_failures: Cell<u64>,
    pub frames_refused: Cell<u64>,
}

impl OutLink {
    pub fn kill_connection(&self) {
        if let Some(killer) = self.connection.borrow().as_ref() {
            killer.kill();
        }
    }

    pub fn wake_room(&self) {
        for waker in self.room.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// The receive state of one sender (node, shard), kept across its
/// connections; a newer connection replaces the one before.
pub(super) struct InLink {
    pub session: RefCell<ReceiveSession>,
    /// Counts the connections admitted; a connection whose number is no
    /// longer current stops at once.
    pub generation: Cell<u64>,
    pub connection: RefCell<Option<Killer>>,
    /// Raised when the application released something (an ack to write).
    pub wake_writer: Signal,
}

impl InLink {
    pub fn kill_connection(&self) {
        if let Some(killer) = self.connection.borrow().as_ref() {
            killer.kill();
        }
    }
}

impl RemoteLinks {
    /// Starts this shard's links: the accept loop on its listener and the
    /// task that takes connections other shards hand over. Links to nodes
    /// come with [`RemoteLinks::ensure`]. Refuses a configuration whose
    /// limits contradict each other.
    pub fn start(setup: RemoteSetup) -> Result<Rc<RemoteLinks>, LinkConfigError> {
        setup.config.validate()?;
        let mut seed = [0; 8];
        // Jitter only: a fixed seed would do if the OS had no randomness.
        let _ = getrandom::getrandom(&mut seed);
        let links = Rc::new(RemoteLinks {
            dials: Semaphore::new(setup.config.dials_max.max(1) as u64),
            incarnation: Cell::new(setup.local.incarnation),
            local: setup.local,
            config: setup.config,
            clock: Clock::new(),
            secret: setup.secret,
            approve: setup.approve,
            deliver: setup.deliver,
            replication: setup.replication,
            links: RefCell::new(AHashMap::new()),
            inbound: RefCell::new(AHashMap::new()),
            handovers: setup.handovers,
            places: HandshakePlaces::new(
                setup.config.handshakes_max,
                setup.config.handshakes_per_source_max,
            ),
            next_session: Cell::new(1),
            stopping: Cell::new(false),
            stop_accepting: Signal::default(),
            counters: Counters::default(),
            log_limit: LogLimit::new(),
            task_queue: setup.task_queue,
            seed: u64::from_le_bytes(seed),
        });
        if let Some(fd) = setup.listener {
            // SAFETY: the fd is a bound, listening TCP socket the caller
            // gave us to own.
            let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
            links.spawn(accept::accept_loop(links.clone(), listener));
        }
        links.spawn(accept::take_handovers(links.clone()));
        Ok(links)
    }

    pub(super) fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        let task = match self.task_queue {
            Some(queue) => glommio::spawn_local_into(future, queue),
            None => Ok(glommio::spawn_local(future)),
        };
        match task {
            Ok(task) => {
                task.detach();
            }
            Err(error) => log::error!("remote links: cannot start a task: {error}"),
        };
    }

    pub fn local(&self) -> &Local {
        &self.local
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(super) fn take_session_number(&self) -> u64 {
        let number = self.next_session.get();
        self.next_session.set(number + 1);
        number
    }

    /// Makes sure this shard links to `node` (incarnation `incarnation`,
    /// peer address `addr`, running `remote_shards` shards): a new link
    /// dials shard `local shard % remote_shards`. For a link that exists, a
    /// new incarnation starts its session over (the old receiver's state
    /// is gone; what is queued is sent again, numbered anew) and a new
    /// address or shard count dials again; what is queued stays.
    pub fn ensure(
        self: &Rc<Self>,
        node: u16,
        incarnation: i64,
        addr: SocketAddr,
        remote_shards: u16,
    ) {
        if node == self.local.node {
            // Its own shards are reached through the runtime's links.
            return;
        }
        let target = Target {
            addr,
            incarnation,
            shard: self.local.shard % remote_shards.max(1),
        };
        if let Some(link) = self.links.borrow().get(&node) {
            self.retarget(link, target);
            return;
        }
        if self.stopping.get() {
            return;
        }
        let session = SendSession::new(
            self.config.queue,
            self.config.timing,
            self.take_session_number(),
            Some(incarnation),
        );
        let link = Rc::new(OutLink {
            node,
            target: Cell::new(target),
            session: RefCell::new(session),
            wake_writer: Signal::default(),
            wake_task: Signal::default(),
            room: RefCell::new(Vec::new()),
            connection: RefCell::new(None),
            forgotten: Cell::new(false),
            connects: Cell::new(0),
            dial_failures: Cell::new(0),
            frames_refused: Cell::new(0),
        });
        self.links.borrow_mut().insert(node, link.clone());
        let seed = self.seed ^ (u64::from(node) << 32) ^ u64::from(self.local.shard);
        self.spawn(dial::run_link(self.clone(), link, seed));
    }

    /// A known node's new target. Another incarnation than the session's
    /// starts it over; another address or shard dials again. The
    /// incarnation the link already found by itself (a welcome) changes
    /// nothing.
    fn retarget(&self, link: &OutLink, target: Target) {
        let old = link.target.replace(target);
        let mut session = link.session.borrow_mut();
        let reset = session.receiver_incarnation() != Some(target.incarnation);
        if reset {
            // Incarnation 0: etcd holds no lease of the node now (it is
            // down); what is queued waits for the next one.
            match target.incarnation {
                0 => log::info!(
                    "shard {}: node {} holds no lease now: its link waits, its session \
                     to start over with the node's next incarnation",
                    self.local.shard,
                    link.node
                ),
                incarnation => log::info!(
                    "shard {}: node {} is now incarnation {incarnation:x}: its link starts \
                     its session over",
                    self.local.shard,
                    link.node
                ),
            }
            session.reset(self.take_session_number(), Some(target.incarnation));
        }
        drop(session);
        if reset || (old.addr, old.shard) != (target.addr, target.shard) {
            link.kill_connection();
            link.wake_task.raise();
        }
    }

    /// Drops the link to `node` and the receive state of its senders: the
    /// node left the cluster (etcd says so; a link never decides it).
    /// Returns what its queue held, never acknowledged, oldest first: the
    /// caller sends each on to where it goes now.
    pub fn forget(&self, node: u16) -> VecDeque<Payload> {
        let mut unacked = VecDeque::new();
        if let Some(link) = self.links.borrow_mut().remove(&node) {
            unacked = link.session.borrow_mut().take_unacked();
            link.forgotten.set(true);
            link.kill_connection();
            link.wake_task.raise();
            link.wake_writer.raise();
            link.wake_room();
        }
        self.inbound.borrow_mut().retain(|&(from, _), link| {
            if from == node {
                link.generation.set(link.generation.get() + 1);
                link.kill_connection();
            }
            from != node
        });
        unacked
    }

    /// Queues `payload` for `node`. A full queue gives it back
    /// ([`PushError::Full`]): the caller keeps it, pauses what feeds this
    /// node and waits for room ([`RemoteLinks::wait_room`]).
    pub fn push(&self, node: u16, payload: Payload) -> Result<(), PushError> {
        if payload.len() > PAYLOAD_BYTES_MAX {
            let bytes = payload.len();
            return Err(PushError::TooLarge { bytes, payload });
        }
        let links = self.links.borrow();
        let Some(link) = links.get(&node) else {
            return Err(PushError::UnknownNode { node, payload });
        };
        let pushed = link.session.borrow_mut().push(payload);
        match pushed {
            Ok(()) => {
                link.wake_writer.raise();
                Ok(())
            }
            Err(full) => Err(PushError::Full {
                node,
                payload: full.0,
            }),
        }
    }

    /// Queues payloads from the front of `payloads` until the link is
    /// full; returns how many it took. Those left stay in `payloads`.
    pub fn push_batch(
        &self,
        node: u16,
        payloads: &mut VecDeque<Payload>,
    ) -> Result<usize, PushError> {
        let mut taken = 0;
        while let Some(payload) = payloads.pop_front() {
            match self.push(node, payload) {
                Ok(()) => taken += 1,
                Err(PushError::Full { payload, .. }) => {
                    payloads.push_front(payload);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(taken)
    }

    /// Whether `node`'s queue is at a bound (false for an unknown node).
    pub fn is_full(&self, node: u16) -> bool {
        self.links
            .borrow()
            .get(&node)
            .is_some_and(|link| link.session.borrow().is_full())
    }

    /// Whether signals (presence, typing) may still be queued for `node`:
    /// below a quarter of both bounds, so that they never take the room
    /// messages need.
    pub fn takes_signals(&self, node: u16) -> bool {
        let limits = self.config.queue;
        self.links.borrow().get(&node).is_some_and(|link| {
            let (messages, bytes) = link.session.borrow().depth();
            messages < limits.messages_max / 4 && bytes < limits.bytes_max / 4
        })
    }

    /// Wakes `waker` once `node`'s queue has room again (acks freed some),
    /// or the node is forgotten. A waker already waiting is not added
    /// twice.
    pub fn wait_room(&self, node: u16, waker: &Waker) {
        let links = self.links.borrow();
        let Some(link) = links.get(&node) else {
            waker.wake_by_ref();
            return;
        };
        let mut room = link.room.borrow_mut();
        if !room.iter().any(|w| w.will_wake(waker)) {
            room.push(waker.clone());
        }
    }

    /// The application released everything from `origin` up to `seq`:
    /// what those payloads caused is durable. Acks go out in batches. A
    /// release for a session that has since started over is ignored.
    pub fn released(&self, origin: &Origin, seq: u64) {
        let key = (origin.sender.node, origin.sender.shard);
        let inbound = self.inbound.borrow();
        let Some(link) = inbound.get(&key) else {
            return;
        };
        let mut session = link.session.borrow_mut();
        if session.sender() != origin.sender || session.session() != origin.session {
            return;
        }
        if let Err(error) = session.released(seq, self.now_ms()) {
            log::error!("shard {}: from {:?}: {error}", self.local.shard, origin);
            return;
        }
        drop(session);
        link.wake_writer.raise();
    }

    /// This shard's side of a handshake: its node at its incarnation now.
    pub(super) fn endpoint(&self) -> super::frame::Endpoint {
        super::frame::Endpoint {
            node: self.local.node,
            incarnation: self.incarnation.get(),
            shard: self.local.shard,
        }
    }

    /// This node is `incarnation` now (its lease was lost and a new one
    /// granted): every link starts its session over under the new name
    /// and sends its whole queue again, numbered anew (receivers approve
    /// only the incarnation etcd shows, and drop repeats by their dedup),
    /// and the connections from other nodes close, to be dialed again to
    /// the new incarnation. Nothing queued is dropped.
    pub fn renew_incarnation(&self, incarnation: i64) {
        if self.incarnation.replace(incarnation) == incarnation {
            return;
        }
        log::warn!(
            "shard {}: this node is incarnation {incarnation:x} now: its links start over",
            self.local.shard
        );
        for link in self.links.borrow().values() {
            let receiver = link.session.borrow().receiver_incarnation();
            let session = self.take_session_number();
            link.session.borrow_mut().reset(session, receiver);
            link.kill_connection();
            link.wake_task.raise();
        }
        for link in self.inbound.borrow().values() {
            link.kill_connection();
        }
    }

    /// Closes the current connections to and from `node` as a network
    /// failure would (both links dial or are dialed again and resume).
    /// For tests and operators.
    pub fn drop_connections(&self, node: u16) {
        if let Some(link) = self.links.borrow().get(&node) {
            link.kill_connection();
        }
        for (&(from, _), link) in self.inbound.borrow().iter() {
            if from == node {
                link.kill_connection();
            }
        }
    }

    /// Stops every link: connections close, tasks end, nothing more is
    /// dialed or accepted. Queued payloads are dropped with the links.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.dials.close();
        self.stop_accepting.raise();
        let nodes: Vec<u16> = self.links.borrow().keys().copied().collect();
        for node in nodes {
            // Stopping: what is queued goes with the process, as what is
            // staged does (the obligations behind it are in the logs).
            drop(self.forget(node));
        }
        for link in self.inbound.borrow_mut().drain().map(|(_, link)| link) {
            link.generation.set(link.generation.get() + 1);
            link.kill_connection();
        }
    }

    /// The receive state of `key`, made on first use.
    pub(super) fn inbound(
        &self,
        key: (u16, u16),
        make: impl FnOnce() -> ReceiveSession,
    ) -> Rc<InLink> {
        let mut inbound = self.inbound.borrow_mut();
        inbound
            .entry(key)
            .or_insert_with(|| {
                Rc::new(InLink {
                    session: RefCell::new(make()),
                    generation: Cell::new(0),
                    connection: RefCell::new(None),
                    wake_writer: Signal::default(),
                })
            })
            .clone()
    }

    pub(super) fn held_inbound(&self, key: (u16, u16)) -> Option<Rc<InLink>> {
        self.inbound.borrow().get(&key).cloned()
    }

    /// What the links report, for metrics.
    pub fn stats(&self) -> RemoteStats {
        let now_ms = self.now_ms();
        let mut links: Vec<LinkStats> = self
            .links
            .borrow()
            .values()
            .map(|link| link_stats(link, now_ms))
            .collect();
        links.sort_by_key(|l| l.node);
        let mut inbound: Vec<InboundStats> = self
            .inbound
            .borrow()
            .values()
            .map(|link| inbound_stats(&link.session.borrow(), now_ms))
            .collect();
        inbound.sort_by_key(|l| (l.node, l.shard));
        let c = &self.counters;
        RemoteStats {
            links,
            inbound,
            handshakes_refused: c.handshakes_refused.get(),
            hellos_unproven: c.hellos_unproven.get(),
            hellos_not_approved: c.hellos_not_approved.get(),
            handshakes_evicted: self.places.evicted(),
            frames_refused: c.frames_refused.get(),
            handovers: c.handovers.get(),
            handovers_refused: c.handovers_refused.get(),
            sender_resets: c.sender_resets.get(),
            log_lines_dropped: self.log_limit.dropped(),
        }
    }
}

fn link_stats(link: &OutLink, now_ms: u64) -> LinkStats {
    let session = link.session.borrow();
    let (queue_messages, queue_bytes) = session.depth();
    let counters = session.counters();
    LinkStats {
        node: link.node,
        connected: session.is_connected(),
        queue_messages,
        queue_bytes,
        in_flight: session.in_flight(),
        pushed: counters.pushed,
        acked: counters.acked,
        retransmitted: counters.retransmitted,
        resets: counters.resets,
        connects: link.connects.get(),
        dial_failures: link.dial_failures.get(),
        frames_refused: link.frames_refused.get(),
        silent_ms: session.silent_ms(now_ms),
    }
}

fn inbound_stats(session: &ReceiveSession, now_ms: u64) -> InboundStats {
    let sender = session.sender();
    let (unreleased_messages, unreleased_bytes) = session.unreleased();
    InboundStats {
        node: sender.node,
        shard: sender.shard,
        incarnation: sender.incarnation,
        connected: session.is_connected(),
        received: session.counters().received,
        unreleased_messages,
        unreleased_bytes,
        silent_ms: session.silent_ms(now_ms),
    }
}
