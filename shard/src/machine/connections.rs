//! The connections of one shard: a slab of [`Conn`]s addressed by
//! [`ConnId`], their outboxes, their idle deadlines, and the list of those
//! with new output for the I/O layer.
//!
//! A slot's generation changes every time it is reused, so an id that
//! outlived its connection (a late answer from another shard, a timer)
//! finds nothing instead of someone else's connection.

use wire::{encode_server, Phone, ServerFrame};

use super::TimerEvent;
use crate::{
    source::Source,
    timer_wheel::{TimerId, TimerWheel},
};

/// A connection on this shard. The generation makes ids of closed
/// connections harmless when a reply for them arrives late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    #[cfg(test)]
    pub(crate) fn for_tests(index: u32, generation: u32) -> ConnId {
        ConnId { index, generation }
    }
}

/// The state of a connection that moves with it to another shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub hello: bool,
    pub handovers: u8,
    pub login_failures: u8,
    pub code_requests: u8,
    pub code_attempts: u8,
    pub source: Source,
    /// When the connection was accepted (ms on the clock every shard of
    /// the process shares): its login deadline runs from there.
    pub opened_ms: u64,
}

impl ConnSnapshot {
    /// A connection just accepted from `source` at `opened_ms`.
    pub fn new(source: Source, opened_ms: u64) -> ConnSnapshot {
        ConnSnapshot {
            hello: false,
            handovers: 0,
            login_failures: 0,
            code_requests: 0,
            code_attempts: 0,
            source,
            opened_ms,
        }
    }
}

/// One connection's state on its shard.
#[derive(Debug)]
pub(super) struct Conn {
    generation: u32,
    /// `Hello` was answered.
    hello: bool,
    /// The account logged in on it, once one is.
    account: Option<Phone>,
    last_activity_ms: u64,
    timer: Option<TimerId>,
    /// Encoded frames not yet taken by the I/O layer.
    outbox: Vec<u8>,
    /// Highest mailbox sequence written to this connection.
    delivered_up_to: u64,
    /// Closing: nothing is read or written to it but what is queued.
    closing: bool,
    /// When `closing` was set, and whether the time to flush ran out.
    closing_at_ms: u64,
    abandoned: bool,
    handovers: u8,
    login_failures: u8,
    /// Codes asked for, and guessed, on this connection.
    code_requests: u8,
    code_attempts: u8,
    source: Source,
    opened_ms: u64,
}

/// Something worth a line in the server's log about one connection, with
/// where it came from; drained with [`Shard::drain_events`](super::Shard::drain_events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    pub conn: ConnId,
    pub source: Source,
    /// The account logged in on it, if one is.
    pub phone: Option<Phone>,
    pub kind: ConnEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEventKind {
    LoggedIn,
    /// The shard closes it, telling the phone why.
    Closing(wire::ByeReason),
    /// It broke the protocol (it is closed, `Closing` follows).
    ProtocolError {
        kind: wire::ErrorKind,
        detail: String,
    },
    /// It names an account of `shard` and moves there.
    Moving {
        shard: u16,
    },
}

/// Where a connection is in its life, which decides what its frames may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nothing but `Hello` yet.
    Handshake,
    /// Said `Hello`; not logged in.
    Anonymous,
    /// Logged in to this account.
    Session(Phone),
}

/// A logged-in connection and its account, handed to session handlers as
/// a value so that none of them asks again whether there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Session {
    pub(super) id: ConnId,
    pub(super) phone: Phone,
}

/// How long a connection may stay as it is, by phase (ms).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    pub(super) idle_timeout_ms: u64,
    pub(super) login_timeout_ms: u64,
    pub(super) close_flush_timeout_ms: u64,
}

/// What an expired idle timer means for its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdleVerdict {
    /// Still in time: the timer is armed again for this deadline.
    Rearm(u64),
    /// Idle (or not logged in) too long: close it.
    Close,
    /// Closing, and the phone did not take its last bytes in time.
    Abandon,
}

impl Conn {
    pub(super) fn phase(&self) -> Phase {
        match (self.hello, self.account) {
            (false, _) => Phase::Handshake,
            (true, None) => Phase::Anonymous,
            (true, Some(phone)) => Phase::Session(phone),
        }
    }

    /// The account logged in on it, once one is.
    pub(super) fn account(&self) -> Option<Phone> {
        self.account
    }

    pub(super) fn source(&self) -> Source {
        self.source
    }

    /// Times it moved between shards.
    pub(super) fn handovers(&self) -> u8 {
        self.handovers
    }

    /// A frame arrived at `now_ms`.
    pub(super) fn touch(&mut self, now_ms: u64) {
        self.last_activity_ms = now_ms;
    }

    /// `Hello` was answered.
    pub(super) fn said_hello(&mut self) {
        self.hello = true;
    }

    /// Counts a code request against `max` per connection: false (and
    /// nothing counted) when it has had them all.
    pub(super) fn charge_code_request(&mut self, max: u8) -> bool {
        let allowed = self.code_requests < max;
        self.code_requests += u8::from(allowed);
        allowed
    }

    /// Counts a code guess against `max` per connection, like
    /// `charge_code_request`.
    pub(super) fn charge_code_attempt(&mut self, max: u8) -> bool {
        let allowed = self.code_attempts < max;
        self.code_attempts += u8::from(allowed);
        allowed
    }

    /// A login with a wrong key: true once it has failed `max` times.
    pub(super) fn login_failed(&mut self, max: u8) -> bool {
        self.login_failures = self.login_failures.saturating_add(1);
        self.login_failures >= max
    }

    /// `phone` logged in on it; everything after `acked_up_to` in its
    /// mailbox is written to it again.
    pub(super) fn logged_in(&mut self, phone: Phone, acked_up_to: u64) {
        debug_assert!(self.account.is_none(), "one login per connection");
        self.account = Some(phone);
        self.delivered_up_to = acked_up_to;
    }

    /// Highest mailbox seq written to it.
    pub(super) fn delivered_up_to(&self) -> u64 {
        self.delivered_up_to
    }

    /// The mailbox entry `seq` was written to it.
    pub(super) fn delivered(&mut self, seq: u64) {
        debug_assert!(seq > self.delivered_up_to, "entries are written in order");
        self.delivered_up_to = seq;
    }

    /// Bytes waiting for the I/O layer.
    pub(super) fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Appends an encoded frame to the outbox.
    pub(super) fn write(&mut self, frame: &ServerFrame<'_>) {
        encode_server(frame, &mut self.outbox);
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing
    }

    pub(super) fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    /// What moves with the connection to another shard.
    fn snapshot(&self) -> ConnSnapshot {
        ConnSnapshot {
            hello: self.hello,
            handovers: self.handovers + 1,
            login_failures: self.login_failures,
            code_requests: self.code_requests,
            code_attempts: self.code_attempts,
            source: self.source,
            opened_ms: self.opened_ms,
        }
    }

    /// The deadline that applies now: to flush while closing, to log in
    /// (from accept: activity does not move it, so a connection that only
    /// pings must still log in in time), or to show activity.
    fn deadline_ms(&self, deadlines: Deadlines) -> u64 {
        match self.account {
            _ if self.closing => self.closing_at_ms + deadlines.close_flush_timeout_ms,
            Some(_) => self.last_activity_ms + deadlines.idle_timeout_ms,
            None => self.opened_ms + deadlines.login_timeout_ms,
        }
    }
}

/// The slab of connections.
#[derive(Debug, Default)]
pub(super) struct Connections {
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    generation: u32,
    /// Connections with new output (or newly closing) since the I/O layer
    /// last looked.
    woken: Vec<ConnId>,
    /// Events for the log since the I/O layer last looked.
    events: Vec<ConnEvent>,
}

impl Connections {
    /// Adds a connection as `snapshot` describes it; `now_ms` is its last
    /// activity.
    pub(super) fn insert(&mut self, snapshot: ConnSnapshot, now_ms: u64) -> ConnId {
        self.generation = self.generation.wrapping_add(1);
        let conn = Conn {
            generation: self.generation,
            hello: snapshot.hello,
            account: None,
            last_activity_ms: now_ms,
            timer: None,
            outbox: Vec::new(),
            delivered_up_to: 0,
            closing: false,
            closing_at_ms: 0,
            abandoned: false,
            handovers: snapshot.handovers,
            login_failures: snapshot.login_failures,
            code_requests: snapshot.code_requests,
            code_attempts: snapshot.code_attempts,
            source: snapshot.source,
            opened_ms: snapshot.opened_ms,
        };
        let index = match self.free.pop() {
            Some(index) => {
                debug_assert!(self.slots[index as usize].is_none());
                self.slots[index as usize] = Some(conn);
                index
            }
            None => {
                self.slots.push(Some(conn));
                (self.slots.len() - 1) as u32
            }
        };
        ConnId {
            index,
            generation: self.generation,
        }
    }

    /// Removes a connection, cancelling its timer. `None` when `id` is
    /// gone already.
    pub(super) fn remove(
        &mut self,
        id: ConnId,
        timers: &mut TimerWheel<TimerEvent>,
    ) -> Option<Conn> {
        let conn = self
            .slots
            .get_mut(id.index as usize)
            .and_then(|slot| slot.take_if(|c| c.generation == id.generation))?;
        if let Some(timer) = conn.timer {
            timers.cancel(timer);
        }
        self.free.push(id.index);
        Some(conn)
    }

    /// What a handover carries of the connection.
    pub(super) fn snapshot(&self, id: ConnId) -> Option<ConnSnapshot> {
        self.get(id).map(Conn::snapshot)
    }

    pub(super) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slots
            .get(id.index as usize)?
            .as_ref()
            .filter(|c| c.generation == id.generation)
    }

    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slots
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|c| c.generation == id.generation)
    }

    /// The account logged in on `id`, if it is open and logged in.
    pub(super) fn account(&self, id: ConnId) -> Option<Phone> {
        self.get(id)?.account()
    }

    /// True when `id` is open and logged in to `phone`: answers that
    /// arrive late go only to the session that asked.
    pub(super) fn is_session_of(&self, id: ConnId, phone: Phone) -> bool {
        self.account(id) == Some(phone)
    }

    /// Bytes waiting in every outbox (a pass over the slab).
    pub(super) fn outbox_bytes(&self) -> usize {
        self.slots.iter().flatten().map(|c| c.outbox.len()).sum()
    }

    /// Every open connection.
    pub(super) fn ids(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, c)| {
                c.as_ref().map(|c| ConnId {
                    index: index as u32,
                    generation: c.generation,
                })
            })
            .collect()
    }

    /// Encodes a frame into `id`'s outbox; false when `id` is gone.
    pub(super) fn reply(&mut self, id: ConnId, frame: &ServerFrame<'_>) -> bool {
        let Some(conn) = self.get_mut(id) else {
            return false;
        };
        conn.write(frame);
        self.woken.push(id);
        true
    }

    /// Appends frames encoded earlier (held for a commit) to `id`'s outbox.
    pub(super) fn append(&mut self, id: ConnId, bytes: &[u8]) {
        if let Some(conn) = self.get_mut(id) {
            conn.outbox.extend_from_slice(bytes);
            self.woken.push(id);
        }
    }

    /// Takes the bytes queued for `id`.
    pub(super) fn take_outbox(&mut self, id: ConnId) -> Vec<u8> {
        self.get_mut(id)
            .map(|conn| std::mem::take(&mut conn.outbox))
            .unwrap_or_default()
    }

    /// Tells the I/O layer to look at `id`.
    pub(super) fn wake(&mut self, id: ConnId) {
        self.woken.push(id);
    }

    pub(super) fn drain_woken(&mut self) -> std::vec::Drain<'_, ConnId> {
        self.woken.drain(..)
    }

    /// Notes `kind` about `id`, if it is open.
    pub(super) fn note(&mut self, id: ConnId, kind: ConnEventKind) {
        if let Some(conn) = self.get(id) {
            let (source, phone) = (conn.source, conn.account);
            self.events.push(ConnEvent {
                conn: id,
                source,
                phone,
                kind,
            });
        }
    }

    pub(super) fn drain_events(&mut self) -> std::vec::Drain<'_, ConnEvent> {
        self.events.drain(..)
    }

    /// Marks `id` closing at `now_ms`: false when it is gone or closing
    /// already. The caller queues the last frame and arms the flush
    /// deadline.
    pub(super) fn start_closing(&mut self, id: ConnId, now_ms: u64) -> bool {
        match self.get_mut(id) {
            Some(conn) if !conn.closing => {
                conn.closing = true;
                conn.closing_at_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Arms `id`'s one timer for `deadline_ms`, replacing the one it had.
    pub(super) fn arm_idle(
        &mut self,
        id: ConnId,
        deadline_ms: u64,
        tick_ms: u64,
        timers: &mut TimerWheel<TimerEvent>,
    ) {
        let Some(conn) = self.get_mut(id) else {
            debug_assert!(false, "arming the timer of a closed connection");
            return;
        };
        if let Some(old) = conn.timer.take() {
            timers.cancel(old);
        }
        let tick = deadline_ms.div_ceil(tick_ms);
        conn.timer = Some(timers.arm(tick, TimerEvent::Idle(id)));
    }

    /// `id`'s timer fired at `now_ms`. One timer per connection, re-armed
    /// only when it fires: activity just moves `last_activity_ms`, so reads
    /// never touch the wheel. `None` when `id` is gone.
    pub(super) fn idle_expired(
        &mut self,
        id: ConnId,
        now_ms: u64,
        deadlines: Deadlines,
    ) -> Option<IdleVerdict> {
        let conn = self.get_mut(id)?;
        conn.timer = None;
        let deadline_ms = conn.deadline_ms(deadlines);
        Some(if deadline_ms > now_ms {
            IdleVerdict::Rearm(deadline_ms)
        } else if conn.closing {
            conn.abandoned = true;
            self.woken.push(id);
            IdleVerdict::Abandon
        } else {
            IdleVerdict::Close
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(opened_ms: u64) -> ConnSnapshot {
        ConnSnapshot::new(Source::UNKNOWN, opened_ms)
    }

    const DEADLINES: Deadlines = Deadlines {
        idle_timeout_ms: 100,
        login_timeout_ms: 50,
        close_flush_timeout_ms: 10,
    };

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let mut conns = Connections::default();
        let mut timers = TimerWheel::new(16, 0);
        let old = conns.insert(snapshot(0), 0);
        assert!(conns.remove(old, &mut timers).is_some());
        let new = conns.insert(snapshot(0), 0);
        assert_eq!(new.index, old.index);
        assert!(conns.get(old).is_none());
        assert!(!conns.reply(old, &ServerFrame::Pong { nonce: 1 }));
        assert!(conns.reply(new, &ServerFrame::Pong { nonce: 1 }));
        assert_eq!(conns.drain_woken().collect::<Vec<_>>(), vec![new]);
        assert!(conns.remove(old, &mut timers).is_none());
    }

    #[test]
    fn the_login_deadline_runs_from_accept_whatever_the_activity() {
        let mut conns = Connections::default();
        let id = conns.insert(snapshot(0), 0);
        conns.get_mut(id).unwrap().last_activity_ms = 40;
        assert_eq!(
            conns.idle_expired(id, 49, DEADLINES),
            Some(IdleVerdict::Rearm(50))
        );
        assert_eq!(
            conns.idle_expired(id, 50, DEADLINES),
            Some(IdleVerdict::Close)
        );
    }

    #[test]
    fn a_closing_connection_is_abandoned_at_its_flush_deadline() {
        let mut conns = Connections::default();
        let id = conns.insert(snapshot(0), 0);
        conns.get_mut(id).unwrap().account = Some(Phone::from_u64(15550000001).unwrap());
        assert!(conns.start_closing(id, 20));
        assert!(!conns.start_closing(id, 21), "closing twice");
        assert_eq!(
            conns.idle_expired(id, 25, DEADLINES),
            Some(IdleVerdict::Rearm(30))
        );
        assert_eq!(
            conns.idle_expired(id, 30, DEADLINES),
            Some(IdleVerdict::Abandon)
        );
        assert!(conns.get(id).unwrap().is_abandoned());
    }
}
