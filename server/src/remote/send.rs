//! The sending half of a link, without I/O: the bounded queue (which is the
//! retransmit buffer), sequence numbers, cumulative acks, the resume after
//! a reconnect, the heartbeat and the silence a connection is closed after.
//!
//! Inputs: [`SendSession::push`] (the application), [`SendSession::on_welcome`]
//! and [`SendSession::on_frame`] (the receiver), [`SendSession::on_disconnect`]
//! and [`SendSession::reset`] (the I/O layer). Outputs: bytes from
//! [`SendSession::poll_transmit`], the next deadline from
//! [`SendSession::poll_timeout`], and [`SendSession::check_silence`]. After
//! any input the I/O layer polls `poll_transmit` until it writes nothing.
//!
//! A message enters the queue with the next sequence number and leaves it
//! only when the receiver acknowledges it: once its application released
//! it (made durable whatever the message caused). Across a reconnect the
//! queue is sent again from the receiver's resume point, so while both
//! processes live every message pushed arrives once and in order.

use std::collections::VecDeque;

use super::{
    frame::{self, Frame, Welcome},
    Payload, QueueLimits, SessionError, Timing,
};

/// The sending half of one link (see the module doc).
pub struct SendSession {
    limits: QueueLimits,
    timing: Timing,
    /// Every message not yet acknowledged, oldest first: the front has
    /// sequence number `acked + 1`.
    queue: VecDeque<Payload>,
    /// The payload bytes `queue` holds.
    queue_bytes: usize,
    /// The receiver acknowledged every sequence number up to this one.
    acked: u64,
    /// Which of this shard's sessions this is: a new number tells the
    /// receiver the sequence starts over.
    session: u64,
    /// The receiver incarnation this session's numbers belong to, once
    /// known (or as etcd named it).
    receiver_incarnation: Option<i64>,
    /// Present while a connection is up.
    connection: Option<Connection>,
    /// The last time anything arrived from the receiver, on any connection.
    last_heard_ms: Option<u64>,
    /// The highest sequence number ever written, to count retransmissions.
    written_max: u64,
    counters: SendCounters,
}

/// The state of the current connection.
#[derive(Debug, Clone, Copy)]
struct Connection {
    /// The sequence number to write next.
    next: u64,
    last_written_ms: u64,
    last_heard_ms: u64,
}

/// What a session has done since it was made (resets included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendCounters {
    /// Messages taken into the queue.
    pub pushed: u64,
    /// Messages the receiver acknowledged.
    pub acked: u64,
    /// Data frames written again after a reconnect.
    pub retransmitted: u64,
    /// Times the session started over because the receiver's incarnation
    /// changed (its state is gone).
    pub resets: u64,
}

/// What a push into a full queue gives back: the payload, untouched.
#[derive(Debug, PartialEq, Eq)]
pub struct Full(pub Payload);

impl SendSession {
    /// An empty session numbered `session`, for a receiver of
    /// `receiver_incarnation` if it is known.
    pub fn new(
        limits: QueueLimits,
        timing: Timing,
        session: u64,
        receiver_incarnation: Option<i64>,
    ) -> SendSession {
        SendSession {
            limits,
            timing,
            queue: VecDeque::new(),
            queue_bytes: 0,
            acked: 0,
            session,
            receiver_incarnation,
            connection: None,
            last_heard_ms: None,
            written_max: 0,
            counters: SendCounters::default(),
        }
    }

    /// Takes `payload` into the queue, or gives it back while the queue is
    /// at either bound. A payload is never larger than
    /// [`frame::PAYLOAD_BYTES_MAX`] (checked by the caller).
    pub fn push(&mut self, payload: Payload) -> Result<(), Full> {
        debug_assert!(payload.len() <= frame::PAYLOAD_BYTES_MAX);
        if !self.has_room_for(payload.len()) {
            return Err(Full(payload));
        }
        self.queue_bytes += payload.len();
        self.queue.push_back(payload);
        self.counters.pushed += 1;
        Ok(())
    }

    /// Whether a payload of `bytes` fits. An empty queue takes any payload,
    /// so a payload larger than the byte bound cannot wedge the link.
    pub fn has_room_for(&self, bytes: usize) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < self.limits.messages_max
                && self.queue_bytes + bytes <= self.limits.bytes_max)
    }

    /// Whether the queue is at either bound.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.limits.messages_max || self.queue_bytes >= self.limits.bytes_max
    }

    /// Empties the queue and gives back what it held, oldest first: the
    /// receiver left the cluster, so nothing queued for it will be
    /// acknowledged, and its sender sends each on to where it goes now.
    /// A connection still up is the caller's to close.
    pub fn take_unacked(&mut self) -> VecDeque<Payload> {
        self.queue_bytes = 0;
        self.acked += self.queue.len() as u64;
        self.connection = None;
        std::mem::take(&mut self.queue)
    }

    /// Messages and payload bytes queued (sent or not, all unacknowledged).
    pub fn depth(&self) -> (usize, usize) {
        (self.queue.len(), self.queue_bytes)
    }

    /// Messages written on the current connection and not acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.connection.map_or(0, |c| c.next - 1 - self.acked)
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn receiver_incarnation(&self) -> Option<i64> {
        self.receiver_incarnation
    }

    pub fn counters(&self) -> SendCounters {
        self.counters
    }

    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Milliseconds since anything arrived from the receiver (`None`:
    /// never).
    pub fn silent_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_heard_ms.map(|t| now_ms.saturating_sub(t))
    }

    /// The highest sequence number given to a message so far.
    fn last_seq(&self) -> u64 {
        self.acked + self.queue.len() as u64
    }

    /// Starts the session over as `session`: the receiver's state is gone,
    /// so what is queued is numbered again from 1 and sent again in full.
    /// Nothing queued is dropped: a message the old receiver took but did
    /// not acknowledge reaches the new one too (its dedup absorbs it).
    pub fn reset(&mut self, session: u64, receiver_incarnation: Option<i64>) {
        self.session = session;
        self.receiver_incarnation = receiver_incarnation;
        self.acked = 0;
        self.written_max = 0;
        self.connection = None;
        self.counters.resets += 1;
    }

    /// Takes the receiver's answer to this session's hello. On `Ok` the
    /// connection is up and sending resumes after `welcome.received`.
    ///
    /// `Err(ReceiverRestarted)`: the receiver is another incarnation than
    /// the one this session's numbers belong to. The caller resets the
    /// session ([`SendSession::reset`]) and dials again at once, so that
    /// the new hello names the new session. Any other error is the
    /// receiver breaking the protocol.
    pub fn on_welcome(&mut self, welcome: &Welcome<'_>, now_ms: u64) -> Result<(), SessionError> {
        let incarnation = welcome.from.incarnation;
        if let Some(expected) = self.receiver_incarnation {
            if expected != incarnation {
                return Err(SessionError::ReceiverRestarted {
                    expected,
                    found: incarnation,
                });
            }
        }
        let (received, released) = (welcome.received, welcome.released);
        if released > received || received > self.last_seq() {
            return Err(SessionError::ResumeAhead {
                received,
                released,
                sent_max: self.last_seq(),
            });
        }
        if released < self.acked {
            return Err(SessionError::AckRewind {
                acked: self.acked,
                got: released,
            });
        }
        self.receiver_incarnation = Some(incarnation);
        self.acknowledge(released);
        self.connection = Some(Connection {
            next: received + 1,
            last_written_ms: now_ms,
            last_heard_ms: now_ms,
        });
        self.last_heard_ms = Some(now_ms);
        Ok(())
    }

    /// Takes a frame from the receiver on the current connection; returns
    /// how many messages left the queue.
    pub fn on_frame(&mut self, frame: &Frame<'_>, now_ms: u64) -> Result<usize, SessionError> {
        let connection = self.connection.as_mut().ok_or(SessionError::NotConnected)?;
        connection.last_heard_ms = now_ms;
        self.last_heard_ms = Some(now_ms);
        match *frame {
            Frame::Ack { seq } => {
                let written = connection.next - 1;
                if seq > written {
                    return Err(SessionError::AckAhead { seq, written });
                }
                if seq < self.acked {
                    return Err(SessionError::AckRewind {
                        acked: self.acked,
                        got: seq,
                    });
                }
                Ok(self.acknowledge(seq))
            }
            Frame::Ping => Ok(0),
            _ => Err(SessionError::Unexpected(kind_name(frame))),
        }
    }

    /// Drops every message up to `seq` from the queue.
    fn acknowledge(&mut self, seq: u64) -> usize {
        let count = seq.saturating_sub(self.acked) as usize;
        for payload in self.queue.drain(..count) {
            self.queue_bytes -= payload.len();
        }
        self.acked = seq;
        self.counters.acked += count as u64;
        count
    }

    /// Appends to `out` the data frames not yet written on this
    /// connection, until `out` holds at least `bytes_target` bytes; or a
    /// ping when nothing was written for a heartbeat. Returns the frames
    /// appended.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut Vec<u8>, bytes_target: usize) -> usize {
        let Some(connection) = self.connection.as_mut() else {
            return 0;
        };
        let mut frames = 0;
        while out.len() < bytes_target {
            let index = (connection.next - self.acked - 1) as usize;
            let Some(payload) = self.queue.get(index) else {
                break;
            };
            frame::encode_data(out, connection.next, payload);
            if connection.next <= self.written_max {
                self.counters.retransmitted += 1;
            }
            self.written_max = self.written_max.max(connection.next);
            connection.next += 1;
            frames += 1;
        }
        if frames == 0 && now_ms >= connection.last_written_ms + self.timing.heartbeat_ms {
            frame::encode_ping(out);
            frames = 1;
        }
        if frames > 0 {
            connection.last_written_ms = now_ms;
        }
        frames
    }

    /// When the session next needs attention without any input: a
    /// heartbeat to write, or a silence to end the connection for.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.connection.map(|c| {
            (c.last_written_ms + self.timing.heartbeat_ms)
                .min(c.last_heard_ms + self.timing.silent_close_ms)
        })
    }

    /// `Err(Silent)` once the receiver has said nothing on this connection
    /// for `silent_close_ms`: the connection is closed and dialed again.
    /// The node is not declared dead; that is etcd's to say.
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

    /// The connection ended: what it carried unacknowledged stays queued
    /// and is sent again from the next welcome's resume point.
    pub fn on_disconnect(&mut self) {
        self.connection = None;
    }
}

/// A frame's kind, for errors.
pub fn kind_name(frame: &Frame<'_>) -> &'static str {
    match frame {
        Frame::Hello(_) => "hello",
        Frame::Welcome(_) => "welcome",
        Frame::Refused(_) => "refused",
        Frame::Data { .. } => "data",
        Frame::Ack { .. } => "ack",
        Frame::Ping => "ping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::frame::{Decoded, Endpoint, VERSION};

    const LIMITS: QueueLimits = QueueLimits {
        messages_max: 4,
        bytes_max: 100,
    };

    fn session() -> SendSession {
        SendSession::new(LIMITS, Timing::default(), 1, Some(7))
    }

    fn welcome(incarnation: i64, received: u64, released: u64) -> Welcome<'static> {
        Welcome {
            version: VERSION,
            cluster: b"c",
            from: Endpoint {
                node: 2,
                incarnation,
                shard: 0,
            },
            received,
            released,
            proof: [0; crate::remote::frame::PROOF_BYTES],
        }
    }

    /// The (seq, payload) of every data frame in `bytes`, and the pings.
    fn frames(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, usize) {
        let (mut data, mut pings, mut at) = (Vec::new(), 0, 0);
        while at < bytes.len() {
            let Ok(Decoded::Frame(frame, used)) = frame::decode(&bytes[at..]) else {
                panic!("whole frames only");
            };
            match frame {
                Frame::Data { seq, payload } => data.push((seq, payload.to_vec())),
                Frame::Ping => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
            at += used;
        }
        (data, pings)
    }

    fn transmit(session: &mut SendSession, now_ms: u64) -> (Vec<(u64, Vec<u8>)>, usize) {
        let mut out = Vec::new();
        session.poll_transmit(now_ms, &mut out, usize::MAX);
        frames(&out)
    }

    #[test]
    fn the_queue_refuses_past_either_bound_and_gives_the_payload_back() {
        let mut s = session();
        for n in 0..4u8 {
            s.push(vec![n; 10]).unwrap();
        }
        assert!(s.is_full());
        assert_eq!(s.push(vec![9]), Err(Full(vec![9])));
        let mut s = session();
        s.push(vec![0; 60]).unwrap();
        assert_eq!(s.push(vec![1; 41]), Err(Full(vec![1; 41])));
        s.push(vec![1; 40]).unwrap();
        assert_eq!(s.depth(), (2, 100));
        // Alone, a payload over the byte bound is taken.
        let mut s = session();
        s.push(vec![0; 101]).unwrap();
    }

    #[test]
    fn acks_free_the_queue_and_a_reconnect_resends_from_the_resume_point() {
        let mut s = session();
        for n in 1..=4u8 {
            s.push(vec![n]).unwrap();
        }
        s.on_welcome(&welcome(7, 0, 0), 0).unwrap();
        let (data, _) = transmit(&mut s, 0);
        assert_eq!(data.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(s.on_frame(&Frame::Ack { seq: 2 }, 1), Ok(2));
        assert_eq!(s.depth(), (2, 2));
        s.push(vec![5]).unwrap();
        s.on_disconnect();
        // The receiver had taken 3 of them and released 2.
        s.on_welcome(&welcome(7, 3, 2), 5).unwrap();
        let (data, _) = transmit(&mut s, 5);
        assert_eq!(data, [(4, vec![4]), (5, vec![5])]);
        assert_eq!(s.counters().retransmitted, 1);
    }

    #[test]
    fn what_was_never_acknowledged_is_given_back_in_order_and_sent_no_more() {
        let mut s = session();
        for n in 1..=3u8 {
            s.push(vec![n]).unwrap();
        }
        s.on_welcome(&welcome(7, 0, 0), 0).unwrap();
        transmit(&mut s, 0);
        assert_eq!(s.on_frame(&Frame::Ack { seq: 1 }, 1), Ok(1));
        assert_eq!(s.take_unacked(), [vec![2], vec![3]]);
        assert_eq!(s.depth(), (0, 0));
        assert_eq!(transmit(&mut s, 2).0, []);
        assert!(!s.is_connected());
    }

    #[test]
    fn a_ping_goes_out_after_a_quiet_heartbeat_and_silence_ends_the_connection() {
        let mut s = session();
        s.on_welcome(&welcome(7, 0, 0), 0).unwrap();
        assert_eq!(transmit(&mut s, 999).1, 0);
        assert_eq!(transmit(&mut s, 1_000).1, 1);
        assert_eq!(s.poll_timeout(), Some(2_000));
        assert_eq!(s.check_silence(9_999), Ok(()));
        assert_eq!(
            s.check_silence(10_000),
            Err(SessionError::Silent { ms: 10_000 })
        );
        s.on_frame(&Frame::Ack { seq: 0 }, 9_999).unwrap();
        assert_eq!(s.check_silence(10_000), Ok(()));
        assert_eq!(s.silent_ms(10_500), Some(501));
    }

    #[test]
    fn acks_ahead_or_behind_and_bad_resume_points_are_protocol_errors() {
        let mut s = session();
        s.push(vec![1]).unwrap();
        s.push(vec![2]).unwrap();
        assert!(matches!(
            s.on_welcome(&welcome(7, 3, 0), 0),
            Err(SessionError::ResumeAhead { .. })
        ));
        assert!(matches!(
            s.on_welcome(&welcome(7, 1, 2), 0),
            Err(SessionError::ResumeAhead { .. })
        ));
        s.on_welcome(&welcome(7, 0, 0), 0).unwrap();
        transmit(&mut s, 0);
        assert_eq!(
            s.on_frame(&Frame::Ack { seq: 3 }, 0),
            Err(SessionError::AckAhead { seq: 3, written: 2 })
        );
        s.on_frame(&Frame::Ack { seq: 2 }, 0).unwrap();
        assert_eq!(
            s.on_frame(&Frame::Ack { seq: 1 }, 0),
            Err(SessionError::AckRewind { acked: 2, got: 1 })
        );
        assert_eq!(
            s.on_frame(
                &Frame::Data {
                    seq: 1,
                    payload: b""
                },
                0
            ),
            Err(SessionError::Unexpected("data"))
        );
    }

    #[test]
    fn another_receiver_incarnation_resets_and_renumbers_what_is_queued() {
        let mut s = session();
        for n in 1..=3u8 {
            s.push(vec![n]).unwrap();
        }
        s.on_welcome(&welcome(7, 0, 0), 0).unwrap();
        transmit(&mut s, 0);
        s.on_frame(&Frame::Ack { seq: 1 }, 0).unwrap();
        s.on_disconnect();
        assert_eq!(
            s.on_welcome(&welcome(8, 0, 0), 1),
            Err(SessionError::ReceiverRestarted {
                expected: 7,
                found: 8
            })
        );
        s.reset(2, None);
        assert_eq!(s.counters().resets, 1);
        s.on_welcome(&welcome(8, 0, 0), 2).unwrap();
        let (data, _) = transmit(&mut s, 2);
        assert_eq!(data, [(1, vec![2]), (2, vec![3])]);
        assert_eq!(s.receiver_incarnation(), Some(8));
    }
}
