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

use super::{connection::spawn_connection, Runtime, Signal};
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
        link.staging.borrow_mut().push(Mail::Adopt(island, adoption));
        link.signal.raise();
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
            if link.staging.borrow().len() <= runtime.links.staging_max {
                link.drains.set(link.drains.get() + 1);
                for waker in link.blocked.borrow_mut().drain(..) {
                    waker.wake();
                }
            }
        }
    }
}

/// Hands each batch from one other shard to this shard. Peer messages
/// go in runs, and what a run produced is distributed once, at its end. A
/// connection moving here ends a run: its task starts, and glommio polls a
/// task it spawns at once, so the shard must not be borrowed then.
pub async fn receive(runtime: Rc<Runtime>, receiver: peer_queue::Receiver<Batch>) {
    while let Some(batch) = receiver.recv().await {
        let mut mails = batch.into_iter();
        while let Some(adoption) =
            runtime.with_shard(|shard| hand_in_run(&runtime, shard, &mut mails))
        {
            adopt(&runtime, adoption);
        }
    }
}

/// Hands peer messages to the shard up to the next adoption, which it
/// returns.
fn hand_in_run(
    runtime: &Runtime,
    shard: &mut Shard,
    mails: &mut impl Iterator<Item = Mail>,
) -> Option<Adoption> {
    for mail in mails {
        match mail {
            Mail::Peer(island, message) => {
                runtime.note_island(island);
                shard.handle_peer(message, runtime.now_ms());
            }
            Mail::Tracked(island, message, durable) => {
                runtime.note_island(island);
                shard.handle_peer(message, runtime.now_ms());
                runtime.after_next_commit(shard, durable);
            }
            Mail::Adopt(island, adoption) => {
                runtime.note_island(island);
                return Some(adoption);
            }
        }
    }
    None
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
