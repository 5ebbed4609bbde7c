//! Islands: one tablet's log replicated from a primary node to a
//! secondary, failover decided through the lease store (etcd), as a
//! sans-IO state machine. `docs/islands.md` is the protocol; this module
//! is its core, driven by the runtime (and by the deterministic
//! simulation in `shard/tests/island_sim.rs`).
//!
//! A [`Member`] is one node's part in one island. It never touches a disk,
//! a socket or etcd: it is told what the store shows ([`Member::view`]),
//! what its disk made durable ([`Member::durable`]), what peers sent
//! ([`Member::receive`]) and the time ([`Member::tick`]), and it says what
//! to do as [`Output`]s: append or truncate the local log, send a
//! [`ReplMsg`], run a store transaction, and which batches may be
//! acknowledged to phones.
//!
//! The rules (numbers as in `docs/islands.md`):
//! 1. in `sync` mode a batch is acknowledged once the local log and the
//!    secondary's hold it; in `solo`, once the local log does;
//! 2. a secondary stops acknowledging its epoch before it asks the store
//!    for the next one;
//! 3. a primary enters `solo` only by a store transaction that compares
//!    the same revision as the secondary's promotion;
//! 4. a solo primary past its lease's validity acknowledges nothing;
//! 5. a node truncates what its log holds beyond the primary's history for
//!    the epoch it last wrote, before it takes anything new.

pub mod codec;
mod log;
mod member;

pub use log::{LogInfo, Seq};
pub use member::{Member, MemberConfig, NotPrimary, PlantedBug};

/// A node of the cluster.
pub type NodeId = u16;
/// An island, named by its number.
pub type IslandId = u16;
/// Bumped by every change of who may acknowledge for an island.
pub type Epoch = u64;

/// Whether the primary needs the secondary's disk before acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Local and replica durability (the default).
    Sync,
    /// Local durability only: the secondary is out of `insync`.
    Solo,
}

/// An island as the store keeps it (`islands/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IslandRecord {
    pub epoch: Epoch,
    pub primary: NodeId,
    pub secondary: NodeId,
    /// The nodes that hold every acknowledged batch: only they may be
    /// promoted.
    pub insync: Vec<NodeId>,
    pub mode: Mode,
}

impl IslandRecord {
    /// A new island's first record: epoch 1, both nodes in sync.
    pub fn first(primary: NodeId, secondary: NodeId) -> IslandRecord {
        IslandRecord {
            epoch: 1,
            primary,
            secondary,
            insync: vec![primary, secondary],
            mode: Mode::Sync,
        }
    }
}

/// What the store shows of an island: its record at a revision, which
/// nodes hold a live lease, and whether the running process of the member's
/// node wrote that record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub record: IslandRecord,
    pub revision: u64,
    pub live: Vec<NodeId>,
    /// This record was written by this node's running process (asked by
    /// any of its members: one per shard). A member named primary of such
    /// an epoch serves it, though another shard's member asked for it: no
    /// earlier process of the node can have served that epoch (rule 7).
    pub made_here: bool,
}

/// Messages on a replication connection (one per tablet pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMsg {
    /// Batch `seq`, written in `written` (its epoch in the log), shipped
    /// by the primary of `epoch`.
    Ship {
        epoch: Epoch,
        seq: Seq,
        written: Epoch,
        bytes: Vec<u8>,
    },
    /// Everything up to `seq` is durable at the sender (cumulative).
    Ack { epoch: Epoch, seq: Seq },
    /// A gap: ship again from `seq`.
    Expect { epoch: Epoch, seq: Seq },
    /// The sender knows `epoch`, newer than the receiver's: it must stop
    /// and read the island again.
    Fenced { epoch: Epoch },
    /// A secondary joining `epoch` says where its log ends.
    CatchUp {
        epoch: Epoch,
        last_epoch: Epoch,
        last_seq: Seq,
    },
    /// The primary's answer: your log agrees with mine up to `upto`;
    /// truncate the rest and ask again.
    Diverge { epoch: Epoch, upto: Seq },
    /// Bytes `offset..offset + bytes.len()` of the primary's checkpoint
    /// after batch `batch`, `total` bytes long: sent to a secondary whose
    /// next batch the primary's log no longer holds (rule 5's transfer).
    Snapshot {
        epoch: Epoch,
        batch: Seq,
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    },
    /// The secondary has written the checkpoint of `batch` up to `offset`.
    SnapshotAck {
        epoch: Epoch,
        batch: Seq,
        offset: u64,
    },
}

/// What a [`Member`] asks of its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append batch `seq` of `epoch` to the local log; report
    /// [`Member::durable`] once it is on disk.
    Append {
        seq: Seq,
        epoch: Epoch,
        bytes: Vec<u8>,
    },
    /// Drop every local batch above `after`, durably, before anything
    /// else; then call [`Member::truncated`].
    Truncate {
        after: Seq,
    },
    Send {
        to: NodeId,
        msg: ReplMsg,
    },
    /// Read local batches `from..=upto` and pass them to
    /// [`Member::ship_read`] for `to`.
    Read {
        to: NodeId,
        from: Seq,
        upto: Seq,
    },
    /// Compare-and-swap `islands/<id>`: put `record` if its revision is
    /// still `expect_revision` (and, with `absent`, that node holds no
    /// lease). Answer with [`Member::txn_result`].
    Txn {
        id: u64,
        expect_revision: u64,
        absent: Option<NodeId>,
        record: IslandRecord,
    },
    /// The replies of every batch up to `upto` may go: acknowledged at
    /// `epoch` by this node.
    Acknowledged {
        epoch: Epoch,
        upto: Seq,
    },
    /// The log no longer holds what `to` needs next: send it the latest
    /// checkpoint as [`ReplMsg::Snapshot`] chunks (paced by its
    /// [`ReplMsg::SnapshotAck`]s); it asks to catch up from there once
    /// installed.
    SendSnapshot {
        to: NodeId,
    },
    /// Write this chunk of the checkpoint of `batch` at `offset` (the
    /// first at 0 starts the file over); report [`Member::snapshot_written`].
    /// Once `offset + bytes.len() == total`, make the file durable, check
    /// it, make it the tablet's only state (every segment goes; the log
    /// starts again after `batch`) and report [`Member::installed`].
    SnapshotChunk {
        batch: Seq,
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    },
}
