//! Islands in the runtime (docs/islands.md): what a node keeps and does
//! for the tablets it is secondary of. The protocol's core is
//! `shard::island`; this is the I/O around it.
//!
//! - [`standby`]: a secondary's tablet, its log of shipped batches and the
//!   shard state restored from them.

pub mod standby;
