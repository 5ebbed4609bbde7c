//! The log lines a shard's connection events become (see
//! `shard::ConnEvent`): logins, moves and closes at debug, protocol errors
//! at info with where they came from. Protocol errors are what a hostile
//! or broken client makes at will, so their lines are capped per shard per
//! second (`PROTOCOL_ERROR_LINES_PER_S`) and the rest summed up in one line:
//! a flood of bad frames cannot flood the log.

use std::{cell::Cell, time::Instant};

use shard::{ConnEvent, ConnEventKind};

/// Protocol-error lines one shard writes per second, at most.
const PROTOCOL_ERROR_LINES_PER_S: u32 = 20;

/// One shard's event log and its budget for protocol errors.
pub struct EventLog {
    shard_id: u16,
    /// The second the budget counts in, the lines written in it, and the
    /// lines left out since the last summary.
    window: Cell<Option<Instant>>,
    lines: Cell<u32>,
    suppressed: Cell<u64>,
}

impl EventLog {
    pub fn new(shard_id: u16) -> EventLog {
        EventLog {
            shard_id,
            window: Cell::new(None),
            lines: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Writes `event`'s line, if its level is on (and, for a protocol
    /// error, the budget allows).
    pub fn log(&self, event: ConnEvent) {
        let shard = self.shard_id;
        let source = event.source.addr();
        let who = match event.phone {
            Some(phone) => format!("{phone} from {source}"),
            None => format!("a connection from {source}"),
        };
        match event.kind {
            ConnEventKind::LoggedIn => log::debug!("shard {shard}: {who} logged in"),
            ConnEventKind::Moving { shard: to } => {
                log::debug!("shard {shard}: {who} moves to shard {to}");
            }
            ConnEventKind::Closing(reason) => {
                log::debug!("shard {shard}: closing {who}: {reason:?}");
            }
            ConnEventKind::ProtocolError { kind, detail } => {
                if self.within_budget() {
                    log::info!("shard {shard}: protocol error by {who}: {kind:?}: {detail}");
                }
            }
        }
    }

    /// Counts a protocol-error line against this second's budget; says how
    /// many were left out once a new second begins.
    fn within_budget(&self) -> bool {
        let now = Instant::now();
        let fresh = self
            .window
            .get()
            .is_none_or(|start| now.duration_since(start).as_secs() >= 1);
        if fresh {
            let suppressed = self.suppressed.replace(0);
            if suppressed > 0 {
                let shard = self.shard_id;
                log::info!("shard {shard}: {suppressed} more protocol errors not logged");
            }
            self.window.set(Some(now));
            self.lines.set(0);
        }
        if self.lines.get() >= PROTOCOL_ERROR_LINES_PER_S {
            self.suppressed.set(self.suppressed.get() + 1);
            return false;
        }
        self.lines.set(self.lines.get() + 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_errors_past_the_budget_are_counted_not_written() {
        let log = EventLog::new(0);
        let written = (0..100).filter(|_| log.within_budget()).count();
        assert_eq!(written, PROTOCOL_ERROR_LINES_PER_S as usize);
        assert_eq!(
            log.suppressed.get(),
            100 - u64::from(PROTOCOL_ERROR_LINES_PER_S)
        );
    }
}
