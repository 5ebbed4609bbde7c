//! The records a shard's state is made of.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wire::{Phone, ReceiptKind};

/// Bytes of a device key hash (SHA-256).
pub const KEY_HASH_BYTES: usize = 32;

/// One durable change to a shard's state. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// `phone` signed up (again): `key_hash` is now its only valid key, and
    /// `generation` counts signups, so an older key's sessions are revoked.
    AccountKey {
        phone: Phone,
        key_hash: [u8; KEY_HASH_BYTES],
        generation: u64,
    },
    /// An entry was appended to `owner`'s mailbox at `seq`.
    MailboxPut {
        owner: Phone,
        seq: u64,
        entry: EntryRecord,
    },
    /// `owner` acknowledged everything up to and including `up_to`.
    MailboxAck { owner: Phone, up_to: u64 },
    /// In a checkpoint: `owner`'s mailbox, empty so far, gives its next
    /// entry `next_seq` (everything before was acknowledged). Its live
    /// entries follow as `MailboxPut`s.
    MailboxStart { owner: Phone, next_seq: u64 },
    /// In a checkpoint: a message to `owner` accepted recently enough that
    /// a resend must still be recognised, whether or not it is acknowledged.
    Dedup {
        owner: Phone,
        from: Phone,
        client_id: u64,
        seq: u64,
    },
}

/// What a mailbox entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryRecord {
    Message {
        from: Phone,
        client_id: u64,
        sent_at_ms: u64,
        /// Shared with the mailbox entry and the message in flight between
        /// shards: a body is copied once, when it is read off the socket.
        body: Arc<[u8]>,
    },
    Receipt {
        kind: ReceiptKind,
        by: Phone,
        client_id: u64,
    },
}
