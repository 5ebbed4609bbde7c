//! The runtime's side of the links between nodes (`server::remote`): what
//! this shard stages for each other node, the forwarder that moves it onto
//! that node's link, and what arrives from other nodes.
//!
//! Staging works as between shards (`links`): each node has its own
//! staging bound (`peer_staging_messages_max`); a connection whose input
//! took it over the bound stops reading until it drains, so only the
//! connections that feed that node pause. Signals give way at a quarter of
//! the bound, or when the link itself no longer takes them. Nothing else
//! is ever dropped here: what waits for a node that is down waits on its
//! link until it is back.
//!
//! The links start once the coordinator has registered this node (its
//! incarnation is part of every handshake). A payload is an
//! [`Envelope`]: the destination shard on that node, and for an answer
//! the incarnation it is meant for. What arrives is checked and handed to
//! its shard (this one, or another of this node through the links
//! between shards); a delivery is released only once everything it
//! caused is durable (each part's shard finished its next commit: see
//! [`Durable`]). Until then the sender's queue keeps it, and sends it
//! again to this node's next incarnation if this one dies: a receipt or a
//! message crossing nodes survives a crash of either, and a repeat is
//! absorbed by the resend tables.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    os::fd::OwnedFd,
    rc::{Rc, Weak},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Poll, Waker},
};

use ahash::AHashMap;
use glommio::TaskQueueHandle;
use server::remote::{
    ClusterSecret, Delivery, Handovers, LinkConfig, Local, Origin, Payload, PushError, RemoteLinks,
    RemoteSetup,
};
use shard::{island::IslandId, PeerMessage, Placement};

use super::{
    links::{Mail, Staged},
    Runtime, Signal,
};
use crate::cluster::envelope::Envelope;

/// Keys from here on name another node's staging in the connections'
/// pause bookkeeping (`server::flow`), which names shards below it.
pub const NODE_KEY_BASE: u16 = 1 << 15;

/// The flow key of node `node`'s staging.
pub fn node_key(node: u16) -> u16 {
    NODE_KEY_BASE + node
}

/// What this shard stages for one other node.
#[derive(Default)]
struct Outbound {
    payloads: RefCell<VecDeque<Payload>>,
    /// Raised when a payload is staged: the forwarder has work.
    signal: Signal,
    /// Connections paused on this node, at most once each per drain.
    blocked: RefCell<Vec<Waker>>,
    drains: Cell<u64>,
}

/// The cluster as this shard's links see it.
pub struct Remote {
    cluster: String,
    secret: Option<ClusterSecret>,
    staging_max: usize,
    /// This shard's peer listener, until the links start.
    listener: RefCell<Option<OwnedFd>>,
    handovers: Handovers,
    links: RefCell<Option<Rc<RemoteLinks>>>,
    outbound: RefCell<AHashMap<u16, Rc<Outbound>>>,
    /// Each other node's incarnation as the placement lists it: the only
    /// one whose links are accepted.
    incarnations: Rc<RefCell<AHashMap<u16, i64>>>,
    /// Each other node's latest incarnation the placement listed, kept
    /// while the node's lease is gone: what an answer to it is meant for.
    /// A node stopped past its lease comes back as the same process under
    /// a new lease and takes the answers to what it asked before.
    answers_for: RefCell<AHashMap<u16, i64>>,
    /// The incarnations this process has been, the current one last (at
    /// most [`OWN_INCARNATIONS_MAX`]): answers meant for any of them are
    /// its own.
    own_incarnations: RefCell<Vec<i64>>,
    /// Envelopes refused on arrival (each logged).
    refused: Cell<u64>,
    /// Deliveries not yet released, in arrival order.
    pending: RefCell<VecDeque<Pending>>,
}

/// This shard's part of the node's peer listener and handovers.
pub struct RemoteSetupParts {
    pub cluster: String,
    /// The cluster's shared secret, if it has one.
    pub secret: Option<ClusterSecret>,
    pub listener: Option<OwnedFd>,
    pub handovers: Handovers,
}

impl Remote {
    pub fn new(parts: RemoteSetupParts, staging_max: usize) -> Remote {
        Remote {
            cluster: parts.cluster,
            secret: parts.secret,
            staging_max,
            listener: RefCell::new(parts.listener),
            handovers: parts.handovers,
            links: RefCell::new(None),
            outbound: RefCell::new(AHashMap::new()),
            incarnations: Rc::default(),
            answers_for: RefCell::default(),
            own_incarnations: RefCell::default(),
            refused: Cell::new(0),
            pending: RefCell::new(VecDeque::new()),
        }
    }

    fn links(&self) -> Option<Rc<RemoteLinks>> {
        self.links.borrow().clone()
    }

    /// What the links report, once they started.
    pub(super) fn stats(&self) -> Option<server::remote::RemoteStats> {
        self.links().map(|links| links.stats())
    }

    /// Stages `message` for tablet (`island`, `shard`) of `node`.
    pub fn stage(
        &self,
        node: u16,
        (island, shard): (IslandId, u16),
        message: PeerMessage,
    ) -> Staged {
        let incarnation = self.answers_for.borrow().get(&node).copied().unwrap_or(0);
        let outbound = self.outbound.borrow().get(&node).cloned();
        let Some(outbound) = outbound else {
            // A node the placement never named: no link, nothing to wait
            // for (the shard only sends where the placement points).
            return Staged::Dropped;
        };
        let mut payloads = outbound.payloads.borrow_mut();
        let link_full = self.links().is_some_and(|l| !l.takes_signals(node));
        if message.is_signal() && (payloads.len() >= self.staging_max / 4 || link_full) {
            return Staged::Dropped;
        }
        let envelope = Envelope::new((island, shard), incarnation, message);
        payloads.push_back(envelope.encode());
        let over = payloads.len() > self.staging_max;
        outbound.signal.raise();
        if over {
            Staged::OverLimit
        } else {
            Staged::Queued
        }
    }

    pub fn is_congested(&self, node: u16) -> bool {
        self.outbound
            .borrow()
            .get(&node)
            .is_some_and(|o| o.payloads.borrow().len() > self.staging_max)
    }

    pub fn drains(&self, node: u16) -> u64 {
        self.outbound
            .borrow()
            .get(&node)
            .map_or(0, |o| o.drains.get())
    }

    pub fn wake_when_drained(&self, node: u16, waker: Waker) {
        match self.outbound.borrow().get(&node) {
            Some(outbound) => outbound.blocked.borrow_mut().push(waker),
            None => waker.wake(),
        }
    }

    /// Payloads staged for all other nodes, and the most for any one.
    pub fn staged(&self) -> (u64, u64) {
        self.outbound
            .borrow()
            .values()
            .fold((0, 0), |(total, max), o| {
                let len = o.payloads.borrow().len() as u64;
                (total + len, max.max(len))
            })
    }

    /// Stops the links (at shutdown).
    pub fn stop(&self) {
        if let Some(links) = self.links() {
            links.stop();
        }
    }
}

/// The incarnations of its own a process keeps answers for: each is a
/// lease it lost and was granted again while it ran.
const OWN_INCARNATIONS_MAX: usize = 16;

/// Follows a new placement: starts the links once this node is registered,
/// links to every other member (live or not: what is owed to one that is
/// down waits on its link), and forgets nodes no longer members.
pub fn place(runtime: &Rc<Runtime>, placement: &Arc<Placement>, queue: Option<TaskQueueHandle>) {
    let remote = &runtime.remote;
    let me = placement.node;
    {
        let mut incarnations = remote.incarnations.borrow_mut();
        let mut answers_for = remote.answers_for.borrow_mut();
        incarnations.clear();
        for (node, placed) in placement.nodes().filter(|(n, _)| *n != me) {
            incarnations.insert(node, placed.incarnation);
            if placed.incarnation != 0 {
                answers_for.insert(node, placed.incarnation);
            }
        }
        answers_for.retain(|node, _| incarnations.contains_key(node));
        let mut own = remote.own_incarnations.borrow_mut();
        if placement.incarnation != 0 && own.last() != Some(&placement.incarnation) {
            own.retain(|&held| held != placement.incarnation);
            own.push(placement.incarnation);
            let over = own.len().saturating_sub(OWN_INCARNATIONS_MAX);
            own.drain(..over);
        }
    }
    // Staging for every member from the first placement on: what is
    // owed to a node is kept even before the links start.
    let mut outbound = remote.outbound.borrow_mut();
    for (node, _) in placement.nodes().filter(|(n, _)| *n != me) {
        if !outbound.contains_key(&node) {
            let staging = Rc::new(Outbound::default());
            outbound.insert(node, staging.clone());
            spawn(forward(Rc::downgrade(runtime), node, staging), queue);
        }
    }
    let started = remote.links.borrow().is_none() && placement.incarnation != 0;
    if started {
        start(runtime, placement, queue);
    }
    let Some(links) = remote.links() else {
        return;
    };
    if placement.incarnation != 0 {
        // A lease lost and granted again makes this node a new
        // incarnation: its links carry the new name.
        links.renew_incarnation(placement.incarnation);
    }
    for (node, placed) in placement.nodes().filter(|(n, _)| *n != me) {
        links.ensure(node, placed.incarnation, placed.peer, placed.shards);
        if started {
            // What was staged before the links started may go now.
            outbound[&node].signal.raise();
        }
    }
    let gone: Vec<u16> = outbound
        .keys()
        .copied()
        .filter(|node| placement.node(*node).is_none())
        .collect();
    let mut left = Vec::new();
    for node in gone {
        let mut unsent = links.forget(node);
        if let Some(staging) = outbound.remove(&node) {
            unsent.extend(staging.payloads.take());
            staging.signal.raise();
            for waker in staging.blocked.take() {
                waker.wake();
            }
        }
        left.push((node, unsent));
    }
    drop(outbound);
    for (node, unsent) in left {
        reroute(runtime, node, unsent);
    }
}

/// Sends on what this shard had queued and staged for `node`, which left
/// the cluster (an operator removed it: etcd let it go only once no
/// island names it), to where each message's account, group or tablet
/// lives now. Answers to its connections are dropped with it.
fn reroute(runtime: &Rc<Runtime>, node: u16, unsent: VecDeque<Payload>) {
    if unsent.is_empty() {
        return;
    }
    let (mut sent_on, mut lost) = (0, 0);
    for payload in unsent {
        let Ok(envelope) = Envelope::decode_own(&payload) else {
            // This process encoded it: a payload that does not decode is
            // a bug, not input.
            debug_assert!(false, "an own envelope that does not decode");
            lost += 1;
            continue;
        };
        let tablet = (envelope.island, envelope.shard);
        let routed = runtime.with_shard(|shard| shard.reroute_peer(envelope.message, tablet));
        if routed {
            sent_on += 1;
        } else {
            lost += 1;
        }
    }
    log::warn!(
        shard = runtime.shard_id;
        "node {node} left the cluster: {sent_on} messages queued for it sent on to where \
         they go now, {lost} with nowhere to go"
    );
}

fn spawn(task: impl std::future::Future<Output = ()> + 'static, queue: Option<TaskQueueHandle>) {
    let task = match queue {
        Some(queue) => glommio::spawn_local_into(task, queue),
        None => Ok(glommio::spawn_local(task)),
    };
    if let Ok(task) = task {
        task.detach();
    }
}

/// Starts this shard's links as node `placement.node` at its incarnation.
fn start(runtime: &Rc<Runtime>, placement: &Placement, queue: Option<TaskQueueHandle>) {
    let remote = &runtime.remote;
    let shards = runtime.shard().config().map.shards();
    let local = match Local::new(
        &remote.cluster,
        placement.node,
        placement.incarnation,
        runtime.shard_id,
        shards,
    ) {
        Ok(local) => local,
        Err(error) => {
            log::error!("shard {}: links cannot start: {error}", runtime.shard_id);
            return;
        }
    };
    let incarnations = remote.incarnations.clone();
    let approve = Box::new(move |node: u16, incarnation: i64| {
        incarnations.borrow().get(&node) == Some(&incarnation)
    });
    let weak = Rc::downgrade(runtime);
    let deliver = Box::new(move |delivery: Delivery| {
        if let Some(runtime) = weak.upgrade() {
            receive(&runtime, delivery);
        }
    });
    let replication = runtime.islands.as_ref().map(|_| {
        let weak = Rc::downgrade(runtime);
        Box::new(move |fd: std::os::fd::OwnedFd, pending: Vec<u8>| {
            let islands = weak.upgrade().and_then(|r| r.islands.clone());
            if let Some(islands) = islands {
                islands.accept(fd, pending);
            }
        }) as server::remote::TakeReplication
    });
    let setup = RemoteSetup {
        replication,
        local,
        config: LinkConfig::default(),
        listener: remote.listener.borrow_mut().take(),
        handovers: remote.handovers.clone(),
        secret: remote.secret.clone(),
        approve,
        deliver,
        task_queue: queue,
    };
    match RemoteLinks::start(setup) {
        Ok(links) => *remote.links.borrow_mut() = Some(links),
        Err(error) => log::error!("shard {}: links cannot start: {error}", runtime.shard_id),
    }
}

/// Moves what is staged for `node` onto its link, waiting for room while
/// the link is full; wakes the connections paused on it as it drains.
async fn forward(runtime: Weak<Runtime>, node: u16, outbound: Rc<Outbound>) {
    loop {
        outbound.signal.wait().await;
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        if !runtime.remote.outbound.borrow().contains_key(&node) {
            return;
        }
        let Some(links) = runtime.remote.links() else {
            continue;
        };
        loop {
            let pushed = links.push_batch(node, &mut outbound.payloads.borrow_mut());
            if let Err(error) = pushed {
                // No link to it (forgotten meanwhile), or a payload over
                // the link's bound, which an envelope never is.
                log::error!("shard {}: to node {node}: {error}", runtime.shard_id);
                if let PushError::TooLarge { .. } = error {
                    continue;
                }
                break;
            }
            drained(&runtime.remote, &outbound);
            if outbound.payloads.borrow().is_empty() {
                break;
            }
            futures_lite::future::poll_fn(|cx| {
                if links.is_full(node) {
                    links.wait_room(node, cx.waker());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }
}

/// Wakes the connections paused on `outbound` once it is within bounds.
fn drained(remote: &Remote, outbound: &Outbound) {
    if outbound.payloads.borrow().len() <= remote.staging_max {
        outbound.drains.set(outbound.drains.get() + 1);
        for waker in outbound.blocked.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// One part of what a delivery from another node caused: done when it
/// drops, which a shard makes happen once that part is durable (its next
/// commit finished), or at once for what owed nothing (a dropped signal).
pub struct Durable(Arc<AtomicUsize>);

impl Drop for Durable {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A delivery whose parts are not all durable yet.
struct Pending {
    origin: Origin,
    last_seq: u64,
    parts: Arc<AtomicUsize>,
}

impl Remote {
    /// Releases, in arrival order, the deliveries whose every part is
    /// durable: the sender's queue keeps the rest, and sends them again to
    /// this node's next incarnation if this one dies first.
    pub fn release_durable(&self) {
        let Some(links) = self.links() else {
            return;
        };
        let mut pending = self.pending.borrow_mut();
        while pending
            .front()
            .is_some_and(|p| p.parts.load(Ordering::Acquire) == 0)
        {
            let done = pending.pop_front().expect("checked");
            links.released(&done.origin, done.last_seq);
        }
    }

    fn part(parts: &Arc<AtomicUsize>) -> Durable {
        parts.fetch_add(1, Ordering::AcqRel);
        Durable(parts.clone())
    }
}

/// Payloads from another node: each checked and handed to its shard; the
/// delivery is released once all of them are durable (`release_durable`).
fn receive(runtime: &Rc<Runtime>, delivery: Delivery) {
    let shards = runtime.shard().config().map.shards();
    let mine = runtime.remote.own_incarnations.borrow().clone();
    let parts = Arc::new(AtomicUsize::new(0));
    // This shard's own messages are handed in as one run per tablet: what
    // they make is distributed once, at its end.
    let mut here: BTreeMap<IslandId, Vec<PeerMessage>> = BTreeMap::new();
    for payload in &delivery.payloads {
        match Envelope::decode(payload, shards, &mine) {
            Ok(envelope) if envelope.shard == runtime.shard_id => here
                .entry(envelope.island)
                .or_default()
                .push(envelope.message),
            Ok(envelope) => {
                // On to another shard of this node, which tells when it is
                // durable there.
                let part = Remote::part(&parts);
                let _ = runtime.links.stage_tracked(
                    (envelope.shard, envelope.island),
                    envelope.message,
                    part,
                );
            }
            Err(refused) => {
                runtime.remote.refused.set(runtime.remote.refused.get() + 1);
                log::warn!(
                    "shard {}: from node {}: {refused}",
                    runtime.shard_id,
                    delivery.origin.sender.node
                );
            }
        }
    }
    for (island, messages) in here {
        // The same way as mail from another shard of this node, so that
        // a tablet not served here parks or forwards it alike.
        let batch = messages
            .into_iter()
            .map(|message| Mail::Tracked(island, message, Remote::part(&parts)))
            .collect();
        super::links::deliver(runtime, batch);
    }
    runtime.remote.pending.borrow_mut().push_back(Pending {
        origin: delivery.origin,
        last_seq: delivery.last_seq(),
        parts,
    });
    runtime.remote.release_durable();
}
