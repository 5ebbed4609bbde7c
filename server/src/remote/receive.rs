//! The receiving half of a link, without I/O: which hellos are accepted
//! and where each resumes, the sequence check on every data frame, the
//! bound on what is received and not yet released, and the acks, batched
//! and released by the application rather than by the socket.
//!
//! Inputs: [`check_hello`] and [`admit`] (a dialer's hello),
//! [`ReceiveSession::on_frame`] (the sender), [`ReceiveSession::released`]
//! (the application), `on_connect`/`on_disconnect` (the I/O layer).
//! Outputs: payloads from `on_frame`, ack and heartbeat bytes from
//! [`ReceiveSession::poll_transmit`], the next deadline from
//! [`ReceiveSession::poll_timeout`], and [`ReceiveSession::check_silence`].

use std::collections::VecDeque;

use super::{
    frame::{self, Endpoint, Frame, Hello, Refusal, VERSION},
    proof::{proofs_match, ClusterSecret},
    send::kind_name,
    Local, QueueLimits, SessionError, Timing,
};

/// Checks a hello against this shard's node: protocol version, cluster,
/// its proof of membership (when this node has the cluster's secret), the
/// node and shard it wants, the window it asks for, and whether the
/// application approves the sender's (node, incarnation): a member etcd
/// lists, at the incarnation it lists. The shard it wants may be another
/// of this node's: the connection is then handed to it.
pub fn check_hello(
    hello: &Hello<'_>,
    local: &Local,
    secret: Option<&ClusterSecret>,
    window: QueueLimits,
    approve: impl FnOnce(u16, i64) -> bool,
) -> Result<(), Refusal> {
    if hello.version != VERSION {
        return Err(Refusal::Version);
    }
    if hello.cluster != local.cluster.as_bytes() {
        return Err(Refusal::OtherCluster);
    }
    if let Some(secret) = secret {
        if !proofs_match(&secret.prove_hello(hello), &hello.proof) {
            return Err(Refusal::Unproven);
        }
    }
    if hello.to.node != local.node || hello.from.node == local.node {
        return Err(Refusal::WrongNode);
    }
    if hello.to.shard >= local.shards {
        return Err(Refusal::NoSuchShard);
    }
    if hello.window_messages as usize > window.messages_max
        || hello.window_bytes > window.bytes_max as u64
    {
        return Err(Refusal::WindowTooLarge);
    }
    if !approve(hello.from.node, hello.from.incarnation) {
        return Err(Refusal::NotApproved);
    }
    Ok(())
}

/// What a checked hello does to the receive state of its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The same session: it resumes where the state says.
    Resume,
    /// A new session: the state starts over. `replaced` names the
    /// incarnation whose state is dropped, if it was another.
    Fresh { replaced: Option<i64> },
}

/// Decides whether a hello from `sender` for its session number `session`
/// resumes the session held for that sender or
/// starts a new one. Within one incarnation a sender's session numbers
/// only grow, so a lower one is a connection from the past (refused);
/// another incarnation always starts over (the application approved it,
/// and an approved incarnation replaces an older one).
pub fn admit(
    held: Option<&ReceiveSession>,
    sender: Endpoint,
    session: u64,
) -> Result<Admission, Refusal> {
    let Some(held) = held else {
        return Ok(Admission::Fresh { replaced: None });
    };
    if held.sender.incarnation != sender.incarnation {
        return Ok(Admission::Fresh {
            replaced: Some(held.sender.incarnation),
        });
    }
    match session.cmp(&held.session) {
        std::cmp::Ordering::Equal => Ok(Admission::Resume),
        std::cmp::Ordering::Greater => Ok(Admission::Fresh { replaced: None }),
        std::cmp::Ordering::Less => Err(Refusal::StaleSession),
    }
}

/// The receiving half of one sender's session (see the module doc).
pub struct ReceiveSession {
    sender: Endpoint,
    session: u64,
    /// The most this side holds received and not released.
    window: QueueLimits,
    timing: Timing,
    /// The last sequence number handed to the application.
    received: u64,
    /// The last sequence number the application released.
    released: u64,
    /// The last released number an ack carried on this connection.
    ack_sent: u64,
    /// The payload sizes of what is received and not released, oldest
    /// first: the front is `released + 1`.
    unreleased: VecDeque<u32>,
    unreleased_bytes: usize,
    /// When the released-but-unacknowledged must be acknowledged at the
    /// latest.
    ack_due_ms: Option<u64>,
    connection: Option<Connection>,
    last_heard_ms: Option<u64>,
    counters: ReceiveCounters,
}

#[derive(Debug, Clone, Copy)]
struct Connection {
    last_written_ms: u64,
    last_heard_ms: u64,
}

/// What a receive session has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveCounters {
    /// Messages handed to the application.
    pub received: u64,
    /// Ack frames written (heartbeats included).
    pub acks_sent: u64,
}

/// A release the session cannot take: a number it never handed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("released {seq} but only {received} were received")]
pub struct ReleaseAhead {
    pub seq: u64,
    pub received: u64,
}

impl ReceiveSession {
    /// A fresh session for `sender`'s session number `session`.
    pub fn new(sender: Endpoint, session: u64, window: QueueLimits, timing: Timing) -> Self {
        ReceiveSession {
            sender,
            session,
            window,
            timing,
            received: 0,
            released: 0,
            ack_sent: 0,
            unreleased: VecDeque::new(),
            unreleased_bytes: 0,
            ack_due_ms: None,
            connection: None,
            last_heard_ms: None,
            counters: ReceiveCounters::default(),
        }
    }

    pub fn sender(&self) -> Endpoint {
        self.sender
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// Where the sender resumes: (received, released), for the welcome.
    pub fn resume_point(&self) -> (u64, u64) {
        (self.received, self.released)
    }

    /// Messages and payload bytes received and not yet released.
    pub fn unreleased(&self) -> (usize, usize) {
        (self.unreleased.len(), self.unreleased_bytes)
    }

    pub fn counters(&self) -> ReceiveCounters {
        self.counters
    }

    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    pub fn silent_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_heard_ms.map(|t| now_ms.saturating_sub(t))
    }

    /// A connection for this session is up; its welcome carried
    /// everything released so far.
    pub fn on_connect(&mut self, now_ms: u64) {
        self.ack_sent = self.released;
        self.ack_due_ms = None;
        self.connection = Some(Connection {
            last_written_ms: now_ms,
            last_heard_ms: now_ms,
        });
        self.last_heard_ms = Some(now_ms);
    }

    pub fn on_disconnect(&mut self) {
        self.connection = None;
    }

    /// Takes a frame from the sender; a data frame's payload comes back
    /// with its number, to hand to the application. Out-of-sequence data
    /// (a gap or a rewind) and data past the window are protocol errors.
    pub fn on_frame<'a>(
        &mut self,
        frame: &Frame<'a>,
        now_ms: u64,
    ) -> Result<Option<(u64, &'a [u8])>, SessionError> {
        let connection = self.connection.as_mut().ok_or(SessionError::NotConnected)?;
        connection.last_heard_ms = now_ms;
        self.last_heard_ms = Some(now_ms);
        match *frame {
            Frame::Data { seq, payload } => {
                let expected = self.received + 1;
                if seq != expected {
                    return Err(SessionError::OutOfSequence { expected, got: seq });
                }
                let (messages, bytes) = self.unreleased();
                if messages > 0
                    && (messages >= self.window.messages_max
                        || bytes + payload.len() > self.window.bytes_max)
                {
                    return Err(SessionError::WindowOverrun { messages, bytes });
                }
                self.received = seq;
                self.unreleased.push_back(payload.len() as u32);
                self.unreleased_bytes += payload.len();
                self.counters.received += 1;
                Ok(Some((seq, payload)))
            }
            Frame::Ping => Ok(None),
            _ => Err(SessionError::Unexpected(kind_name(frame))),
        }
    }

    /// The application released everything up to `seq`: what it caused is
    /// durable, so the sender may forget it. Cumulative: a number at or
    /// below one released before changes nothing. The ack goes out once
    /// `ack_batch_messages` are released or `ack_delay_ms` after the first.
    pub fn released(&mut self, seq: u64, now_ms: u64) -> Result<(), ReleaseAhead> {
        if seq > self.received {
            return Err(ReleaseAhead {
                seq,
                received: self.received,
            });
        }
        if seq <= self.released {
            return Ok(());
        }
        let count = (seq - self.released) as usize;
        for bytes in self.unreleased.drain(..count) {
            self.unreleased_bytes -= bytes as usize;
        }
        self.released = seq;
        self.ack_due_ms
            .get_or_insert(now_ms + self.timing.ack_delay_ms);
        Ok(())
    }

    /// Appends an ack when one is due (enough released, or the delay
    /// passed), or a heartbeat ack when nothing was written for a
    /// heartbeat. Returns the frames appended (0 or 1).
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut Vec<u8>) -> usize {
        let Some(connection) = self.connection.as_mut() else {
            return 0;
        };
        let pending = self.released - self.ack_sent;
        let due = pending >= self.timing.ack_batch_messages
            || self.ack_due_ms.is_some_and(|due| now_ms >= due);
        let heartbeat = now_ms >= connection.last_written_ms + self.timing.heartbeat_ms;
        let ack = pending > 0 && due;
        if !ack && !heartbeat {
            return 0;
        }
        frame::encode_ack(out, self.released);
        self.ack_sent = self.released;
        self.ack_due_ms = None;
        connection.last_written_ms = now_ms;
        self.counters.acks_sent += 1;
        1
    }

    /// The next moment the session needs attention without input: an ack
    /// due, a heartbeat, or a silence to end the connection for.
    pub fn poll_timeout(&self) -> Option<u64> {
        let connection = self.connection?;
        let heartbeat = connection.last_written_ms + self.timing.heartbeat_ms;
        let silence = connection.last_heard_ms + self.timing.silent_close_ms;
        let ack = match self.released > self.ack_sent {
            true => self.ack_due_ms.unwrap_or(u64::MAX),
            false => u64::MAX,
        };
        Some(heartbeat.min(silence).min(ack))
    }

    /// `Err(Silent)` once the sender said nothing on this connection for
    /// `silent_close_ms` (it pings every heartbeat).
    pub fn check_silence(&self, now_ms: u64) -> Result<(), SessionError> {
        match self.connection {
            Some(c) if now_ms >= c.last_heard_ms + self.timing.silent_close_ms => {
                Err(SessionError::Silent {
                    ms: now_ms - c.last_heard_ms,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::frame::Decoded;

    const WINDOW: QueueLimits = QueueLimits {
        messages_max: 3,
        bytes_max: 30,
    };

    fn timing() -> Timing {
        Timing {
            ack_batch_messages: 4,
            ..Timing::default()
        }
    }

    fn local() -> Local {
        Local::new("/isle/v1/", 2, 20, 0, 2).unwrap()
    }

    fn sender(incarnation: i64) -> Endpoint {
        Endpoint {
            node: 1,
            incarnation,
            shard: 3,
        }
    }

    fn hello(incarnation: i64, session: u64) -> Hello<'static> {
        Hello {
            version: VERSION,
            cluster: b"/isle/v1/",
            from: sender(incarnation),
            to: Endpoint {
                node: 2,
                incarnation: 20,
                shard: 1,
            },
            session,
            window_messages: 3,
            window_bytes: 30,
            proof: [0; frame::PROOF_BYTES],
        }
    }

    fn data(seq: u64, payload: &[u8]) -> Frame<'_> {
        Frame::Data { seq, payload }
    }

    /// The ack numbers in `out`.
    fn acks(out: &[u8]) -> Vec<u64> {
        let (mut seqs, mut at) = (Vec::new(), 0);
        while at < out.len() {
            let Ok(Decoded::Frame(Frame::Ack { seq }, used)) = frame::decode(&out[at..]) else {
                panic!("acks only");
            };
            seqs.push(seq);
            at += used;
        }
        seqs
    }

    #[test]
    fn hellos_from_strangers_are_refused_with_their_reason() {
        let check = |hello: Hello<'_>| check_hello(&hello, &local(), None, WINDOW, |_, i| i != 5);
        assert_eq!(check(hello(9, 1)), Ok(()));
        let cases = [
            (
                Hello {
                    version: VERSION + 1,
                    ..hello(9, 1)
                },
                Refusal::Version,
            ),
            (
                Hello {
                    cluster: b"/other/",
                    ..hello(9, 1)
                },
                Refusal::OtherCluster,
            ),
            (
                Hello {
                    to: sender(9),
                    ..hello(9, 1)
                },
                Refusal::WrongNode,
            ),
            (
                Hello {
                    window_messages: 4,
                    ..hello(9, 1)
                },
                Refusal::WindowTooLarge,
            ),
            (hello(5, 1), Refusal::NotApproved),
        ];
        for (hello, refusal) in cases {
            assert_eq!(check(hello), Err(refusal), "{hello:?}");
        }
        let mut far = hello(9, 1);
        far.to.shard = 2;
        assert_eq!(check(far), Err(Refusal::NoSuchShard));
    }

    #[test]
    fn with_a_secret_only_a_hello_proven_with_it_is_accepted() {
        let secret = ClusterSecret::new(b"the cluster's secret").unwrap();
        let other = ClusterSecret::new(b"another cluster's secret").unwrap();
        let check =
            |hello: &Hello<'_>| check_hello(hello, &local(), Some(&secret), WINDOW, |_, _| true);
        let mut proven = hello(9, 1);
        assert_eq!(check(&proven), Err(Refusal::Unproven), "no proof");
        proven.proof = other.prove_hello(&proven);
        assert_eq!(check(&proven), Err(Refusal::Unproven), "another secret");
        proven.proof = secret.prove_hello(&proven);
        assert_eq!(check(&proven), Ok(()));
        // The proof covers every field: a forged session number breaks it.
        let forged = Hello {
            session: u64::MAX,
            ..proven
        };
        assert_eq!(check(&forged), Err(Refusal::Unproven));
    }

    #[test]
    fn a_session_resumes_a_newer_one_starts_over_an_older_one_is_refused() {
        let held = ReceiveSession::new(sender(9), 4, WINDOW, timing());
        assert_eq!(
            admit(None, sender(9), 4),
            Ok(Admission::Fresh { replaced: None })
        );
        assert_eq!(admit(Some(&held), sender(9), 4), Ok(Admission::Resume));
        assert_eq!(
            admit(Some(&held), sender(9), 5),
            Ok(Admission::Fresh { replaced: None })
        );
        assert_eq!(admit(Some(&held), sender(9), 3), Err(Refusal::StaleSession));
        assert_eq!(
            admit(Some(&held), sender(10), 1),
            Ok(Admission::Fresh { replaced: Some(9) })
        );
    }

    #[test]
    fn data_must_follow_in_sequence_and_within_the_window() {
        let mut r = ReceiveSession::new(sender(9), 1, WINDOW, timing());
        r.on_connect(0);
        assert_eq!(r.on_frame(&data(1, b"a"), 0), Ok(Some((1, &b"a"[..]))));
        assert_eq!(
            r.on_frame(&data(3, b"c"), 0),
            Err(SessionError::OutOfSequence {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            r.on_frame(&data(1, b"a"), 0),
            Err(SessionError::OutOfSequence {
                expected: 2,
                got: 1
            })
        );
        r.on_frame(&data(2, b"b"), 0).unwrap();
        r.on_frame(&data(3, b"c"), 0).unwrap();
        assert_eq!(
            r.on_frame(&data(4, b"d"), 0),
            Err(SessionError::WindowOverrun {
                messages: 3,
                bytes: 3
            })
        );
        r.released(1, 0).unwrap();
        r.on_frame(&data(4, &[0; 27]), 0).unwrap();
        assert_eq!(r.unreleased(), (3, 29));
        assert_eq!(r.resume_point(), (4, 1));
        assert_eq!(
            r.released(5, 0),
            Err(ReleaseAhead {
                seq: 5,
                received: 4
            })
        );
    }

    #[test]
    fn acks_are_batched_delayed_and_double_as_heartbeats() {
        let mut r = ReceiveSession::new(sender(9), 1, QueueLimits::default(), timing());
        r.on_connect(0);
        for seq in 1..=5 {
            r.on_frame(&data(seq, b"x"), 0).unwrap();
        }
        let mut out = Vec::new();
        r.released(2, 10).unwrap();
        assert_eq!(r.poll_transmit(10, &mut out), 0, "two of a batch of four");
        let delay = timing().ack_delay_ms;
        assert_eq!(r.poll_timeout(), Some(10 + delay));
        assert_eq!(r.poll_transmit(10 + delay, &mut out), 1);
        r.released(5, 20).unwrap();
        r.released(4, 20).unwrap();
        assert_eq!(r.poll_transmit(20, &mut out), 0, "three of four");
        r.released(5, 20).unwrap();
        assert_eq!(acks(&out), [2]);
        let heartbeat = timing().heartbeat_ms;
        r.poll_transmit(20 + delay, &mut out);
        r.poll_transmit(20 + delay + heartbeat, &mut out);
        assert_eq!(acks(&out), [2, 5, 5]);
        // A reconnect's welcome carries what was released.
        r.on_disconnect();
        assert_eq!(r.resume_point(), (5, 5));
    }
}
