//! Links between shards: what this shard stages for each other shard, the
//! task that forwards it in batches, and the task that receives batches
//! from each other shard and hands them to the shard.
//!
//! A link is bounded by its staging limit (`peer_staging_messages_max`),
//! not by the queue below it: while the queue is full the forwarder waits
//! and staging grows, and a connection whose input took a link over the
//! limit stops reading until the link drains (see `server::flow`). Only the
//! connections that feed that destination pause.

use std::{
    cell::{Cell, RefCell},
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    rc::Rc,
    task::Waker,
};

use glommio::net::TcpStream;
use rustls::ServerConnection;
use shard::{island::IslandId, ConnSnapshot, PeerMessage, Shard};

use super::{connection::spawn_connection, Reach, Runtime, Signal};
use crate::transport::Transport;
use server::peer_queue;

/// What crosses from one shard to another, in batches, each for a tablet
/// of the destination shard (the island names it).
pub enum Mail {
    Peer(IslandId, PeerMessage),
    /// A message from another node, whose link waits until what it
    /// causes here is durable (see `remote::Durable`).
    Tracked(IslandId, PeerMessage, super::remote::Durable),
    Adopt(IslandId, Adoption),
}

/// A connection moving to its home shard: the socket, its TLS state, and
/// the bytes already read but not yet handled (starting with the frame
/// that caused the move).
pub struct Adoption {
    pub fd: OwnedFd,
    pub tls: Option<Box<ServerConnection>>,
    pub snapshot: ConnSnapshot,
    pub pending: Vec<u8>,
}

pub type Batch = Vec<Mail>;

/// The outgoing side of every (this shard, destination) queue.
pub struct Links {
    /// One per shard, indexed by destination; this shard's own is unused.
    links: Vec<Link>,
    /// Messages a link stages before the connections feeding it pause.
    staging_max: usize,
}

/// The outgoing side of one (this shard, destination) queue.
#[derive(Default)]
struct Link {
    staging: RefCell<Vec<Mail>>,
    /// Raised when mail is staged: the forwarder has something to send.
    signal: Signal,
    /// Connections paused because this link is over its staging limit. Each
    /// registers at most once per drain, so the list never holds more than
    /// one waker per connection.
    blocked: RefCell<Vec<Waker>>,
    /// How many times `blocked` has been drained.
    drains: Cell<u64>,
}

/// What became of a peer message handed to [`Links::stage`].
#[derive(Debug, PartialEq, Eq)]
pub enum Staged {
    Queued,
    /// Queued, and the link is now over its staging limit.
    OverLimit,
    /// A signal (presence, typing) dropped at a backed-up link.
    Dropped,
}

impl Links {
    pub fn new(shard_count: usize, staging_max: usize) -> Links {
        Links {
            links: (0..shard_count).map(|_| Link::default()).collect(),
            staging_max,
        }
    }

    /// Stages `message` for island `island`'s tablet on shard
    /// `destination`.
    pub fn stage(&self, destination: u16, island: IslandId, message: PeerMessage) -> Staged {
        self.stage_mail(destination, Mail::Peer(island, message))
    }

    fn stage_mail(&self, destination: u16, mail: Mail) -> Staged {
        let link = &self.links[destination as usize];
        let mut staging = link.staging.borrow_mut();
        // Presence and typing give way early, at a quarter of the bound, so
        // that a storm of them never delays a message.
        let signal = matches!(&mail, Mail::Peer(_, m) | Mail::Tracked(_, m, _) if m.is_signal());
        if signal && staging.len() >= self.staging_max / 4 {
            return Staged::Dropped;
        }
        staging.push(mail);
        let over = staging.len() > self.staging_max;
        link.signal.raise();
        if over {
            Staged::OverLimit
        } else {
            Staged::Queued
        }
    }

    /// Stages a message from another node for `destination`, like `stage`
    /// (a signal may be dropped: it owes nothing, and `durable` is done
    /// as it drops).
    pub fn stage_tracked(
        &self,
        (destination, island): (u16, IslandId),
        message: PeerMessage,
        durable: super::remote::Durable,
    ) -> Staged {
        self.stage_mail(destination, Mail::Tracked(island, message, durable))
    }

    /// Stages a connection moving to island `island`'s tablet on shard
    /// `destination`. Not bounded: it is one connection's own move, which
    /// that connection has stopped reading for.
    pub fn stage_adoption(&self, destination: u16, island: IslandId, adoption: Adoption) {
        let link = &self.links[destination as usize];
        link.staging
            .borrow_mut()
            .push(Mail::Adopt(island, adoption));
        link.signal.raise();
    }

    /// Wakes the connections paused on `destination`'s link once it is
    /// back within its limit.
    fn drained(&self, destination: usize) {
        let link = &self.links[destination];
        if link.staging.borrow().len() <= self.staging_max {
            link.drains.set(link.drains.get() + 1);
            for waker in link.blocked.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// Messages staged for all other shards, and the most for any one.
    pub fn staged(&self) -> (u64, u64) {
        self.links.iter().fold((0, 0), |(total, max), link| {
            let len = link.staging.borrow().len() as u64;
            (total + len, max.max(len))
        })
    }

    /// True while `destination`'s link holds more than its staging limit.
    pub fn is_congested(&self, destination: u16) -> bool {
        self.links[destination as usize].staging.borrow().len() > self.staging_max
    }

    /// How many times `destination`'s paused connections have been woken:
    /// a connection registered at the current count is still registered.
    pub fn drains(&self, destination: u16) -> u64 {
        self.links[destination as usize].drains.get()
    }

    /// Wakes `waker` once `destination`'s link is back within its limit.
    pub fn wake_when_drained(&self, destination: u16, waker: Waker) {
        self.links[destination as usize]
            .blocked
            .borrow_mut()
            .push(waker);
    }
}

/// Sends staged mail to one other shard, a batch at a time. While the queue
/// is full this task waits; only connections feeding this destination pause.
pub async fn forward(runtime: Rc<Runtime>, destination: usize, sender: peer_queue::Sender<Batch>) {
    let link = &runtime.links.links[destination];
    loop {
        link.signal.wait().await;
        loop {
            let batch = std::mem::take(&mut *link.staging.borrow_mut());
            if batch.is_empty() {
                break;
            }
            if sender.send(batch).await.is_err() {
                // The destination shard has stopped; nothing more can reach it.
                return;
            }
            runtime.links.drained(destination);
        }
    }
}

/// Hands each batch from one other shard to this executor's tablets.
pub async fn receive(runtime: Rc<Runtime>, receiver: peer_queue::Receiver<Batch>) {
    while let Some(batch) = receiver.recv().await {
        deliver(&runtime, batch);
    }
}

/// Carries what one tablet of this executor staged for another (its own
/// link, which no queue backs): a message to an island taken over, or a
/// connection moving there.
pub async fn deliver_local(runtime: Rc<Runtime>) {
    let own = usize::from(runtime.shard_id);
    loop {
        runtime.links.links[own].signal.wait().await;
        loop {
            let batch = std::mem::take(&mut *runtime.links.links[own].staging.borrow_mut());
            if batch.is_empty() {
                break;
            }
            deliver(&runtime, batch);
            runtime.links.drained(own);
        }
    }
}

/// Hands a batch to the tablets it is for. Peer messages go in runs, one
/// tablet's at a time, and what a run produced is distributed once, at
/// its end. A connection moving here ends a run: its task starts, and
/// glommio polls a task it spawns at once, so no shard may be borrowed
/// then.
pub(super) fn deliver(runtime: &Rc<Runtime>, batch: Batch) {
    let mut mails = batch.into_iter().peekable();
    while let Some(island) = mails.peek().map(Mail::island) {
        let run = std::iter::from_fn(|| mails.next_if(|m| m.island() == island));
        match runtime.reach(island) {
            Reach::Tablet(tablet) => {
                let adoption = tablet.with_shard(|shard| hand_in_run(&tablet, shard, run));
                if let Some(adoption) = adoption {
                    adopt(&tablet, adoption);
                }
            }
            Reach::Park => run.for_each(|mail| runtime.park(island, mail)),
            Reach::Forward(own) => {
                let tablet = (island, runtime.shard_id);
                let adoptions = own.with_shard(|shard| forward_run(shard, tablet, run));
                // A phone of an island served elsewhere: the own tablet
                // redirects it as it would a new connection.
                for adoption in adoptions {
                    adopt(&own, adoption);
                }
            }
        }
    }
}

/// Sends mail for a tablet this node does not serve on to where it goes
/// now (see `Shard::forward_peer`); returns the connections among it.
fn forward_run(
    shard: &mut Shard,
    tablet: (IslandId, u16),
    mails: impl Iterator<Item = Mail>,
) -> Vec<Adoption> {
    let mut adoptions = Vec::new();
    for mail in mails {
        match mail {
            Mail::Peer(_, message) => {
                shard.forward_peer(message, tablet);
            }
            Mail::Tracked(_, message, durable) => {
                shard.forward_peer(message, tablet);
                // Released now: the tablet forwarding it may be a stale
                // copy, which never commits, and the sender's link
                // releases in order. What it carried is on its way on
                // this node's link; a phone whose request it was asks
                // again if this node dies first.
                drop(durable);
            }
            Mail::Adopt(_, adoption) => adoptions.push(adoption),
        }
    }
    adoptions
}

impl Mail {
    /// The island whose tablet the mail is for.
    fn island(&self) -> IslandId {
        match self {
            Mail::Peer(island, _) | Mail::Tracked(island, ..) | Mail::Adopt(island, _) => *island,
        }
    }
}

/// Hands peer messages to the shard up to the next adoption, which it
/// returns.
fn hand_in_run(
    runtime: &Runtime,
    shard: &mut Shard,
    mails: impl Iterator<Item = Mail>,
) -> Option<Adoption> {
    let mut durables = Vec::new();
    let mut adoption = None;
    for mail in mails {
        match mail {
            Mail::Peer(_, message) => shard.handle_peer(message, runtime.now_ms()),
            Mail::Tracked(_, message, durable) => {
                shard.handle_peer(message, runtime.now_ms());
                durables.push(durable);
            }
            Mail::Adopt(_, taken) => {
                adoption = Some(taken);
                break;
            }
        }
    }
    runtime.after_next_commit_all(shard, durables);
    adoption
}

/// Takes in a connection another shard handed over and starts its task.
fn adopt(runtime: &Rc<Runtime>, adoption: Adoption) {
    let Adoption {
        fd,
        tls,
        snapshot,
        pending,
    } = adoption;
    // SAFETY: the fd is a connected TCP socket whose only other owner
    // closed its copy before sending this one.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    // Adopting arms the connection's login deadline and makes no outputs.
    let now_ms = runtime.now_ms();
    let adopted = runtime.with_shard_no_outputs(|shard| shard.adopt(snapshot, now_ms));
    // Refused (too many anonymous connections here): the stream closes as
    // it drops.
    if let Ok(id) = adopted {
        let transport = tls.map_or(Transport::Plain, Transport::Tls);
        spawn_connection(runtime, id, stream, transport, pending);
    }
}
