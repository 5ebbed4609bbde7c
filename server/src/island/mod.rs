//! Islands in the runtime (docs/islands.md): the I/O around the
//! protocol's core (`shard::island`).
//!
//! - [`tablet`]: one shard's part in one island, the core's outputs sorted
//!   by who acts on them;
//! - [`connection`]: the replication connection of a tablet pair, its
//!   hellos and frames;
//! - [`standby`]: a secondary's tablet, its log of shipped batches and the
//!   shard state restored from them.

pub mod connection;
pub mod standby;
pub mod tablet;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

/// The node's lease as the shards' island members see it (rule 4): one
/// monotonic time base for the process, and until when (ms on it) the
/// lease is known held. The control thread writes it after each answered
/// keepalive; the shards read it on their ticks.
#[derive(Debug)]
pub struct LeaseClock {
    base: Instant,
    valid_until_ms: AtomicU64,
}

impl Default for LeaseClock {
    fn default() -> LeaseClock {
        LeaseClock {
            base: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }
    }
}

impl LeaseClock {
    /// Ms since the process's base.
    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The lease is held until `until` (`None`: not held).
    pub fn held_until(&self, until: Option<Instant>) {
        let ms = until.map_or(0, |u| {
            u.saturating_duration_since(self.base).as_millis() as u64
        });
        self.valid_until_ms.store(ms, Ordering::Relaxed);
    }

    pub fn valid_until_ms(&self) -> u64 {
        self.valid_until_ms.load(Ordering::Relaxed)
    }
}
