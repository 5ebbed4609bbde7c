//! Links between nodes: one per (local shard, remote node), each a
//! resumable session over TCP to shard `local_shard % remote_shards` of
//! that node. Payloads are opaque bytes here; the routing side puts one
//! encoded message in each.
//!
//! The protocol is sans-IO and tested without sockets:
//! - `frame`: the frames on the wire and their bounded decoder
//!   (`docs/links.md` has the byte layout);
//! - `send`: [`send::SendSession`], the sending half: the bounded queue,
//!   which is also the retransmit buffer, sequence numbers, cumulative
//!   acks, resume, heartbeat;
//! - `receive`: which hellos are accepted ([`receive::check_hello`],
//!   [`receive::admit`]) and [`receive::ReceiveSession`], the receiving
//!   half: sequence checks, the window, acks released by the application;
//! - `backoff`: the jittered exponential redial delay.
//!
//! The I/O around it runs on the shard's glommio executor and never
//! blocks it:
//! - `links`: [`RemoteLinks`], this shard's links and the receive state of
//!   the senders that dial it, with the narrow API the runtime uses;
//! - `dial`: the task of one outgoing link (dial under a cap, handshake,
//!   write data, read acks, redial);
//! - `accept`: the peer listener's accept loop and each incoming
//!   connection (hello, welcome, read data, write acks);
//! - `handover`: [`Handovers`], the bounded inboxes through which a
//!   connection that the kernel's `SO_REUSEPORT` gave to the wrong shard
//!   reaches the one its hello names;
//! - `io`: what both sides share (the framed reader, the kill switch of a
//!   connection, waits with a deadline).
//!
//! A link never declares a node dead: it counts how long its peer has been
//! silent, closes a silent connection and dials again, and keeps what it
//! queued. Whether a node is gone is etcd's to say (its lease), and the
//! caller's to act on ([`RemoteLinks::forget`]).

mod accept;
mod backoff;
mod dial;
pub mod frame;
mod handover;
mod handshakes;
mod io;
mod links;
pub mod proof;
pub mod receive;
pub mod send;
#[cfg(test)]
mod sim;

use serde::Serialize;

pub use self::{
    frame::{Endpoint, Refusal, PAYLOAD_BYTES_MAX},
    handover::Handovers,
    io::{Killer, Signal},
    links::{RemoteLinks, RemoteSetup, TakeReplication},
    proof::{ClusterSecret, SecretError},
};

/// One message's bytes, as the routing side encoded it.
pub type Payload = Vec<u8>;

/// The bound of a link's queue, which is also its retransmit buffer: what
/// a sender may hold unacknowledged, and what a receiver accepts to hold
/// unreleased from one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub messages_max: usize,
    /// Payload bytes (frame headers not counted).
    pub bytes_max: usize,
}

impl Default for QueueLimits {
    /// 8,192 messages or 32 MiB: at about 200 bytes a message, a few
    /// seconds of a saturated shard's traffic to one node.
    fn default() -> QueueLimits {
        QueueLimits {
            messages_max: 8 * 1024,
            bytes_max: 32 * 1024 * 1024,
        }
    }
}

/// The clocks of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A side that wrote nothing for this long writes a heartbeat.
    pub heartbeat_ms: u64,
    /// A connection on which nothing arrived for this long is closed and
    /// dialed again (the node is not declared dead).
    pub silent_close_ms: u64,
    /// A release is acknowledged at the latest this long after it.
    pub ack_delay_ms: u64,
    /// ... or as soon as this many releases wait for their ack.
    pub ack_batch_messages: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat_ms: 1_000,
            silent_close_ms: 10_000,
            ack_delay_ms: 5,
            ack_batch_messages: 64,
        }
    }
}

/// Every limit of the links of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    pub queue: QueueLimits,
    pub timing: Timing,
    /// A connection whose hello (or welcome) has not arrived after this
    /// long is closed.
    pub handshake_timeout_ms: u64,
    /// A TCP connect that has not completed after this long fails.
    pub dial_timeout_ms: u64,
    /// The first redial delay after a failure, doubling up to the max;
    /// each delay is drawn at random from its upper half.
    pub redial_min_ms: u64,
    pub redial_max_ms: u64,
    /// Links of one shard dialing (connect and handshake) at once.
    pub dials_max: usize,
    /// Incoming connections of one shard that have not said hello yet,
    /// and of those, from one source address. A new connection past
    /// either takes the place of the oldest (of its source, else of all):
    /// see `handshakes`.
    pub handshakes_max: usize,
    pub handshakes_per_source_max: usize,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            queue: QueueLimits::default(),
            timing: Timing::default(),
            handshake_timeout_ms: 3_000,
            dial_timeout_ms: 2_000,
            redial_min_ms: 100,
            redial_max_ms: 5_000,
            dials_max: 4,
            handshakes_max: 64,
            handshakes_per_source_max: 16,
        }
    }
}

/// A [`LinkConfig`] whose limits contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkConfigError {
    #[error(
        "the queue must hold at least one message and one byte, and at most {} messages",
        u32::MAX
    )]
    Queue,
    #[error(
        "silent_close_ms ({silent_close_ms}) must be at least two heartbeats \
         ({heartbeat_ms} ms each), or healthy idle connections close"
    )]
    Silence {
        silent_close_ms: u64,
        heartbeat_ms: u64,
    },
    #[error("ack_delay_ms ({ack_delay_ms}) must be shorter than a heartbeat ({heartbeat_ms} ms)")]
    AckDelay {
        ack_delay_ms: u64,
        heartbeat_ms: u64,
    },
    #[error(
        "redial delays must be at least 1 ms and the min ({min_ms}) at most the max ({max_ms})"
    )]
    Redial { min_ms: u64, max_ms: u64 },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl LinkConfig {
    /// Checks the relations between the limits that the sessions rely on.
    pub fn validate(&self) -> Result<(), LinkConfigError> {
        let (queue, timing) = (self.queue, self.timing);
        if queue.messages_max == 0 || queue.bytes_max == 0 || queue.messages_max > u32::MAX as usize
        {
            return Err(LinkConfigError::Queue);
        }
        if timing.silent_close_ms < 2 * timing.heartbeat_ms {
            return Err(LinkConfigError::Silence {
                silent_close_ms: timing.silent_close_ms,
                heartbeat_ms: timing.heartbeat_ms,
            });
        }
        if timing.ack_delay_ms >= timing.heartbeat_ms {
            return Err(LinkConfigError::AckDelay {
                ack_delay_ms: timing.ack_delay_ms,
                heartbeat_ms: timing.heartbeat_ms,
            });
        }
        if self.redial_min_ms == 0 || self.redial_min_ms > self.redial_max_ms {
            return Err(LinkConfigError::Redial {
                min_ms: self.redial_min_ms,
                max_ms: self.redial_max_ms,
            });
        }
        let positive = [
            ("timing.heartbeat_ms", timing.heartbeat_ms),
            ("timing.ack_batch_messages", timing.ack_batch_messages),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("dial_timeout_ms", self.dial_timeout_ms),
            ("dials_max", self.dials_max as u64),
            ("handshakes_max", self.handshakes_max as u64),
            (
                "handshakes_per_source_max",
                self.handshakes_per_source_max as u64,
            ),
        ];
        match positive.into_iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(LinkConfigError::Zero(name)),
            None => Ok(()),
        }
    }
}

/// Who this shard is: its cluster, node, incarnation and shard, and how
/// many shards its node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The cluster's name (its etcd prefix): a peer of another is refused.
    pub cluster: String,
    pub node: u16,
    pub incarnation: i64,
    pub shard: u16,
    pub shards: u16,
}

/// A [`Local`] that cannot be put in a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("cluster name of {0} bytes is over {max}", max = frame::CLUSTER_NAME_BYTES_MAX)]
    ClusterName(usize),
    #[error("shard {shard} of {shards}")]
    Shard { shard: u16, shards: u16 },
}

impl Local {
    pub fn new(
        cluster: &str,
        node: u16,
        incarnation: i64,
        shard: u16,
        shards: u16,
    ) -> Result<Local, LocalError> {
        if cluster.len() > frame::CLUSTER_NAME_BYTES_MAX {
            return Err(LocalError::ClusterName(cluster.len()));
        }
        if shard >= shards {
            return Err(LocalError::Shard { shard, shards });
        }
        Ok(Local {
            cluster: cluster.to_owned(),
            node,
            incarnation,
            shard,
            shards,
        })
    }
}

/// Where received payloads came from: one session of one sender. Handed
/// back in [`RemoteLinks::released`], so that a release meant for a
/// session that has since started over acknowledges nothing in the new
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub sender: Endpoint,
    pub session: u64,
}

/// Payloads received in order from one origin, numbered from `first_seq`.
#[derive(Debug)]
pub struct Delivery {
    pub origin: Origin,
    pub first_seq: u64,
    pub payloads: Vec<Payload>,
}

impl Delivery {
    /// The number of the last payload: what to release once all of them
    /// are durable.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.payloads.len() as u64 - 1
    }
}

/// Why [`RemoteLinks::push`] did not take a payload; each gives it back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The link's queue is at a bound: pause what feeds this node and wait
    /// for room ([`RemoteLinks::wait_room`]).
    #[error("the link to node {node} is full")]
    Full { node: u16, payload: Payload },
    /// No link to this node ([`RemoteLinks::ensure`] makes one).
    #[error("no link to node {node}")]
    UnknownNode { node: u16, payload: Payload },
    #[error("a payload of {bytes} bytes is over {PAYLOAD_BYTES_MAX}")]
    TooLarge { bytes: usize, payload: Payload },
}

impl PushError {
    /// The payload that was not taken.
    pub fn into_payload(self) -> Payload {
        match self {
            PushError::Full { payload, .. }
            | PushError::UnknownNode { payload, .. }
            | PushError::TooLarge { payload, .. } => payload,
        }
    }
}

/// A peer broke the session's rules; the connection is closed. Only
/// `ReceiverRestarted` and `Silent` are not the peer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the receiver is incarnation {found}, not {expected}: its state is gone")]
    ReceiverRestarted { expected: i64, found: i64 },
    #[error("resume point received {received} released {released} is past the {sent_max} sent")]
    ResumeAhead {
        received: u64,
        released: u64,
        sent_max: u64,
    },
    #[error("ack {got} goes back behind {acked}")]
    AckRewind { acked: u64, got: u64 },
    #[error("ack {seq} is past the {written} written")]
    AckAhead { seq: u64, written: u64 },
    #[error("data {got} where {expected} was due (a gap or a rewind)")]
    OutOfSequence { expected: u64, got: u64 },
    #[error("data past the window ({messages} messages, {bytes} bytes unreleased)")]
    WindowOverrun { messages: usize, bytes: usize },
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("a frame outside a connection")]
    NotConnected,
    #[error("nothing heard for {ms} ms")]
    Silent { ms: u64 },
}

/// One outgoing link, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub node: u16,
    pub connected: bool,
    /// What the queue holds (all of it unacknowledged).
    pub queue_messages: usize,
    pub queue_bytes: usize,
    /// Written on the current connection and not acknowledged.
    pub in_flight: u64,
    pub pushed: u64,
    pub acked: u64,
    pub retransmitted: u64,
    /// Times the session started over for a new receiver incarnation.
    pub resets: u64,
    /// Connections that completed their handshake.
    pub connects: u64,
    pub dial_failures: u64,
    /// Connections closed because the receiver broke the protocol.
    pub frames_refused: u64,
    /// Since anything arrived from the receiver (`None`: never).
    pub silent_ms: Option<u64>,
}

/// One sender's session with this shard, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InboundStats {
    pub node: u16,
    pub shard: u16,
    pub incarnation: i64,
    pub connected: bool,
    pub received: u64,
    pub unreleased_messages: usize,
    pub unreleased_bytes: usize,
    pub silent_ms: Option<u64>,
}

/// Everything a shard's links report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteStats {
    pub links: Vec<LinkStats>,
    pub inbound: Vec<InboundStats>,
    /// Incoming hellos refused (strangers, other clusters, old
    /// incarnations, stale sessions) and handshakes that failed.
    pub handshakes_refused: u64,
    /// Of those, hellos without a valid proof of the cluster's secret...
    pub hellos_unproven: u64,
    /// ... and hellos from a node etcd does not list, or not at that
    /// incarnation.
    pub hellos_not_approved: u64,
    /// Connections that had not said hello, shut down to make room for
    /// newer ones (`LinkConfig::handshakes_max`).
    pub handshakes_evicted: u64,
    /// Incoming connections closed for a bad frame or a broken rule.
    pub frames_refused: u64,
    /// Incoming connections passed to the shard their hello named, and
    /// those refused because its inbox was full.
    pub handovers: u64,
    pub handovers_refused: u64,
    /// Senders whose new incarnation replaced the receive state of an old.
    pub sender_resets: u64,
    /// Log lines left out by the per-second limit.
    pub log_lines_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_together_and_contradictions_are_named() {
        assert_eq!(LinkConfig::default().validate(), Ok(()));
        let mut config = LinkConfig::default();
        config.timing.silent_close_ms = 1_500;
        assert!(matches!(
            config.validate(),
            Err(LinkConfigError::Silence { .. })
        ));
        let config = LinkConfig {
            redial_min_ms: 6_000,
            ..LinkConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(LinkConfigError::Redial { .. })
        ));
        let config = LinkConfig {
            dials_max: 0,
            ..LinkConfig::default()
        };
        assert_eq!(config.validate(), Err(LinkConfigError::Zero("dials_max")));
    }
}
