//! What the SMS and push senders did, counted on their own threads with
//! atomics and read by the control thread for `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One gateway's counts since start.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Delivered to the gateway (or, for SMS without one, to the outbox).
    sent: AtomicU64,
    /// Given up on: refused, or out of attempts.
    failed: AtomicU64,
    /// Attempts that failed and were tried again.
    retried: AtomicU64,
}

/// [`GatewayStats`] as read at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCounts {
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
}

impl GatewayStats {
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> GatewayCounts {
        GatewayCounts {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }
}
