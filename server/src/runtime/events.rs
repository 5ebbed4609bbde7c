//! The log lines a shard's connection events become (see
//! `shard::ConnEvent`): logins, moves and closes at debug, protocol errors
//! at info with where they came from; and what the I/O layer sees of its
//! own: a phone hanging up (debug) and a failed TLS handshake (warn,
//! counted for `/metrics`). Protocol errors and TLS failures are what a
//! hostile or broken client makes at will, so their lines are capped per
//! shard per second (`PROTOCOL_ERROR_LINES_PER_S`,
//! `TLS_FAILURE_LINES_PER_S`) and the rest summed up in one line: a flood
//! of bad frames or handshakes cannot flood the log.
//!
//! Every line carries its shard, the peer's address with its port and,
//! once the connection is logged in, the phone as key-value fields
//! (`shard`, `peer`, `phone`), which `--log-format json` writes as keys
//! of their own and text writes after the message.

use std::{
    cell::Cell,
    fmt::Display,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use log::Level;
use shard::{ConnEvent, ConnEventKind};
use wire::Phone;

/// Protocol-error lines one shard writes per second, at most.
const PROTOCOL_ERROR_LINES_PER_S: u32 = 20;
/// Failed-handshake lines one shard writes per second, at most: a warning
/// an operator should see (an expired certificate, phones pinning another
/// one), not a line per scanner that probes the port.
const TLS_FAILURE_LINES_PER_S: u32 = 5;

/// One shard's event log and its budgets.
pub struct EventLog {
    shard_id: u16,
    protocol_errors: LineBudget,
    tls_failures: LineBudget,
    /// TLS handshakes that failed since start.
    tls_handshake_failures: Cell<u64>,
}

impl EventLog {
    pub fn new(shard_id: u16) -> EventLog {
        EventLog {
            shard_id,
            protocol_errors: LineBudget::new(PROTOCOL_ERROR_LINES_PER_S),
            tls_failures: LineBudget::new(TLS_FAILURE_LINES_PER_S),
            tls_handshake_failures: Cell::new(0),
        }
    }

    /// Writes `event`'s line, if its level is on (and, for a protocol
    /// error, the budget allows). `peer` is the connection's address with
    /// its port, when its task knows it (else the source address the
    /// shard kept).
    pub fn log(&self, event: ConnEvent, peer: Option<SocketAddr>) {
        let shard = self.shard_id;
        let peer = match peer {
            Some(peer) => Peer::Addr(peer),
            None => Peer::Source(event.source.addr()),
        };
        let phone = event.phone;
        match event.kind {
            ConnEventKind::LoggedIn => line(Level::Debug, shard, phone, &peer, "logged in"),
            ConnEventKind::Moving { shard: to } => {
                let moving = format!("moves to shard {to}, the home of the account it names");
                line(Level::Debug, shard, phone, &peer, &moving);
            }
            ConnEventKind::Closing(reason) => {
                let closing = match phone {
                    Some(_) => format!("logged out: the server closes the session: {reason:?}"),
                    None => format!("the server closes the connection: {reason:?}"),
                };
                line(Level::Debug, shard, phone, &peer, &closing);
            }
            ConnEventKind::ProtocolError { kind, detail } => {
                let (write, left_out) = self.protocol_errors.take();
                if left_out > 0 {
                    log::info!(shard; "{left_out} more protocol errors not logged");
                }
                if write {
                    let error = format!("protocol error: {kind:?}: {detail}");
                    line(Level::Info, shard, phone, &peer, &error);
                }
            }
        }
    }

    /// The phone at `peer` ended its connection (`how`: closed, reset, a
    /// failed write): routine, so at debug. `phone`: the account logged
    /// in on it, if one was (its session ends with it).
    pub fn hung_up(&self, peer: Option<SocketAddr>, phone: Option<Phone>, how: &dyn Display) {
        let peer = Peer::from(peer);
        let hung_up = match phone {
            Some(_) => format!("peer hung up, session ended: {how}"),
            None => format!("peer hung up: {how}"),
        };
        line(Level::Debug, self.shard_id, phone, &peer, &hung_up);
    }

    /// A TLS handshake with `peer` failed: counted, and a warning within
    /// the budget.
    pub fn tls_failed(&self, peer: Option<SocketAddr>, error: &dyn Display) {
        let count = &self.tls_handshake_failures;
        count.set(count.get() + 1);
        let shard = self.shard_id;
        let (write, left_out) = self.tls_failures.take();
        if left_out > 0 {
            log::warn!(shard; "{left_out} more failed TLS handshakes not logged");
        }
        if write {
            let peer = Peer::from(peer);
            log::warn!(shard, peer:% = peer; "TLS handshake failed: {error}");
        }
    }

    /// TLS handshakes that failed since start.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.get()
    }
}

/// One line about a connection, with `shard`, `peer` and (when logged
/// in) `phone` as key-value fields.
fn line(level: Level, shard: u16, phone: Option<Phone>, peer: &Peer, message: &str) {
    match phone {
        Some(phone) => log::log!(level, shard, phone:% = phone, peer:% = peer; "{message}"),
        None => log::log!(level, shard, peer:% = peer; "{message}"),
    }
}

/// A peer's address: with its port, or only the source address the shard
/// kept, or `unknown` when the socket no longer had one.
enum Peer {
    Addr(SocketAddr),
    Source(IpAddr),
    Unknown,
}

impl From<Option<SocketAddr>> for Peer {
    fn from(addr: Option<SocketAddr>) -> Peer {
        addr.map_or(Peer::Unknown, Peer::Addr)
    }
}

impl Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Addr(addr) => addr.fmt(f),
            Peer::Source(ip) => ip.fmt(f),
            Peer::Unknown => f.write_str("unknown"),
        }
    }
}

/// At most `lines_per_s` lines a second; the lines past it are counted,
/// and the count handed back once, when the next second begins.
struct LineBudget {
    lines_per_s: u32,
    /// The second the budget counts in, the lines written in it, and the
    /// lines left out since the count was last handed back.
    window: Cell<Option<Instant>>,
    lines: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LineBudget {
    fn new(lines_per_s: u32) -> LineBudget {
        LineBudget {
            lines_per_s,
            window: Cell::new(None),
            lines: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Whether one more line may be written now, and how many were left
    /// out before this second (to be said once, now).
    fn take(&self) -> (bool, u64) {
        let now = Instant::now();
        let fresh = self
            .window
            .get()
            .is_none_or(|start| now.duration_since(start).as_secs() >= 1);
        let mut left_out = 0;
        if fresh {
            left_out = self.suppressed.replace(0);
            self.window.set(Some(now));
            self.lines.set(0);
        }
        if self.lines.get() >= self.lines_per_s {
            self.suppressed.set(self.suppressed.get() + 1);
            return (false, left_out);
        }
        self.lines.set(self.lines.get() + 1);
        (true, left_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_counted_not_written() {
        let budget = LineBudget::new(PROTOCOL_ERROR_LINES_PER_S);
        let written = (0..100).filter(|_| budget.take().0).count();
        assert_eq!(written, PROTOCOL_ERROR_LINES_PER_S as usize);
        assert_eq!(
            budget.suppressed.get(),
            100 - u64::from(PROTOCOL_ERROR_LINES_PER_S)
        );
    }

    #[test]
    fn every_failed_handshake_is_counted_whether_written_or_not() {
        let log = EventLog::new(0);
        for _ in 0..50 {
            log.tls_failed(None, &"bad certificate");
        }
        assert_eq!(log.tls_handshake_failures(), 50);
    }
}
