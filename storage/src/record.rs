//! The records a shard's state is made of.

use std::{net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use wire::{GroupChange, GroupId, Phone, Profile, PushPlatform, ReceiptKind};

/// Bytes of a device key hash (SHA-256).
pub const KEY_HASH_BYTES: usize = 32;

/// Set in the `seq` of a [`Record::Dedup`]: the message may not be marked
/// read any more. Mailbox seqs never come near it.
pub const DEDUP_READ_BIT: u64 = 1 << 63;

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
    /// In the log too, after the message expired undelivered. With
    /// [`DEDUP_READ_BIT`] set in `seq`, no `Read` of it is accepted (its
    /// read receipt was passed on, or it was never delivered).
    Dedup {
        owner: Phone,
        from: Phone,
        client_id: u64,
        seq: u64,
    },
    /// On the group's owning shard: `post` was accepted as `group`'s post
    /// `gseq`. Replayed in order, posts rebuild the group (a `Created`
    /// change creates it); a post below the group's `next_gseq` (after a
    /// `GroupState` in a checkpoint) is one whose copies were not all
    /// confirmed, and is fanned out again.
    GroupPost {
        group: GroupId,
        gseq: u64,
        post: Post,
    },
    /// In a checkpoint: a group as it stands, `members` with their admin
    /// flag in ascending order.
    GroupState {
        group: GroupId,
        subject: String,
        members: Vec<(Phone, bool)>,
        next_gseq: u64,
    },
    /// In a checkpoint: a group post accepted recently enough that a resend
    /// must still be recognised.
    GroupDedup {
        group: GroupId,
        from: Phone,
        client_id: u64,
        gseq: u64,
    },
    /// On a shard with members of `group`: the post arrived and is stored
    /// here once; the members' mailbox entries (`EntryRecord::Group`) refer
    /// to it. Copies arrive in `gseq` order, so it is also the shard's mark
    /// of how far `group` has been received.
    GroupCopy {
        group: GroupId,
        gseq: u64,
        post: Post,
    },
    /// In a checkpoint: `group`'s posts up to `gseq` were received here,
    /// whether or not a copy is still held.
    GroupMark { group: GroupId, gseq: u64 },
    /// `owner`'s contact list: with `full` it is now `add` (a checkpoint
    /// writes it so), otherwise `add` joins it and `remove` leaves it.
    Contacts {
        owner: Phone,
        full: bool,
        add: Vec<Phone>,
        remove: Vec<Phone>,
    },
    /// `owner`'s profile and privacy setting, each write the whole of both.
    Profile {
        owner: Phone,
        profile: Profile,
        hide_last_seen: bool,
    },
    /// `owner` was last connected and available at `at_ms` (Unix ms).
    LastSeen { owner: Phone, at_ms: u64 },
    /// `owner`'s push token now (`None`: it has none).
    PushToken {
        owner: Phone,
        token: Option<(PushPlatform, String)>,
    },
    /// A signup code was sent to `phone` (which may have no account) at
    /// `at_ms` (Unix ms), asked for from `source` (a connection's host).
    /// Replayed within the allowances' window, it spends them again (per
    /// number, per source host and network, per range of numbers) as of
    /// the restart, so a crash hands out no new SMS allowance.
    CodeSent {
        phone: Phone,
        source: IpAddr,
        at_ms: u64,
    },
    /// The latest wall time (Unix ms) the shard had used, and its expiry
    /// floor: entries stamped before `floor_ms` count their age from it.
    /// Written as the clock moves on and in checkpoints; replayed, the
    /// latest of each holds. At start a clock far from `latest_ms` holds
    /// expiry until it is trusted (`shard::WallClock`).
    Clock { latest_ms: u64, floor_ms: u64 },
    /// An operator deleted `phone`'s account: its key, mailbox (emptied
    /// by a `MailboxAck` before this record), contacts, profile, push
    /// token and resend-table entries are gone. Records of the account
    /// that come before it are replayed and then dropped with it; a later
    /// `AccountKey` is a new signup.
    AccountDeleted { phone: Phone },
    /// `Dedup` with the message's `sent_at_ms`, which its receipts carry
    /// so that its sender's home can tell the number's accounts apart
    /// (see `AccountSince`). Written instead of `Dedup`, which replays
    /// with a `sent_at_ms` of 0 (unknown: older than any account).
    DedupSent {
        owner: Phone,
        from: Phone,
        client_id: u64,
        seq: u64,
        sent_at_ms: u64,
    },
    /// `phone`'s account (made by the `AccountKey` before it) was created
    /// at Unix ms `since_ms`: receipts for messages sent before it are a
    /// deleted predecessor's, and are dropped. An account without it
    /// (made before this record existed) takes every receipt.
    AccountSince { phone: Phone, since_ms: u64 },
    /// `GroupDedup` with the post's sent time (Unix ms), written instead
    /// of it: a resend-table entry from before the sender's account was
    /// created is a deleted predecessor's, not a resend.
    GroupDedupSent {
        group: GroupId,
        from: Phone,
        client_id: u64,
        gseq: u64,
        sent_at_ms: u64,
    },
    /// A receipt this shard owes another: `by`'s, of `kind`, for `to`'s
    /// message `client_id` (sent at `sent_at_ms`, Unix ms). Written (and
    /// kept in checkpoints) for receipts nothing could make again after a
    /// crash (a deleted account's; one to a node that is down) until
    /// `to`'s home shard says it is durable there.
    ReceiptOwed {
        to: Phone,
        by: Phone,
        client_id: u64,
        kind: ReceiptKind,
        sent_at_ms: u64,
    },
    /// Batch `seq` of this log begins `epoch` of `island` (docs/islands.md):
    /// the batch holds this record alone. Kept in checkpoints, so the log
    /// knows which epoch wrote which of its batches.
    EpochStart { island: u16, epoch: u64, seq: u64 },
}

/// Which shard keeps a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The home shard of the account.
    Account(Phone),
    /// The shard the group's id hashes to.
    Group(GroupId),
    /// Whichever shard wrote it: copies of group posts, kept by every shard
    /// with members of the group.
    Local,
}

impl Record {
    /// The account or group the record belongs to, and so the shard that
    /// keeps it.
    pub fn owner(&self) -> Owner {
        match self {
            Record::AccountKey { phone, .. } => Owner::Account(*phone),
            Record::MailboxPut { owner, .. }
            | Record::MailboxAck { owner, .. }
            | Record::MailboxStart { owner, .. }
            | Record::Dedup { owner, .. }
            | Record::Contacts { owner, .. }
            | Record::Profile { owner, .. }
            | Record::LastSeen { owner, .. }
            | Record::PushToken { owner, .. } => Owner::Account(*owner),
            Record::CodeSent { phone, .. }
            | Record::AccountDeleted { phone }
            | Record::AccountSince { phone, .. } => Owner::Account(*phone),
            // Kept by the shard of the account whose receipt it is.
            Record::ReceiptOwed { by, .. } => Owner::Account(*by),
            Record::DedupSent { owner, .. } => Owner::Account(*owner),
            // Every shard keeps its own; a new shard takes the latest.
            Record::Clock { .. } => Owner::Local,
            // Each log's own history.
            Record::EpochStart { .. } => Owner::Local,
            Record::GroupPost { group, .. }
            | Record::GroupState { group, .. }
            | Record::GroupDedup { group, .. }
            | Record::GroupDedupSent { group, .. } => Owner::Group(*group),
            Record::GroupCopy { .. } | Record::GroupMark { .. } => Owner::Local,
        }
    }
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
        #[serde(with = "body_bytes")]
        body: Arc<[u8]>,
    },
    Receipt {
        kind: ReceiptKind,
        by: Phone,
        client_id: u64,
    },
    /// `group`'s post `gseq`, held once per shard in a `GroupCopy`.
    Group { group: GroupId, gseq: u64 },
}

/// What a group post carries: a message, or a change to the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Post {
    Message {
        from: Phone,
        client_id: u64,
        sent_at_ms: u64,
        #[serde(with = "body_bytes")]
        body: Arc<[u8]>,
    },
    Change {
        by: Phone,
        client_id: u64,
        at_ms: u64,
        change: GroupChange,
    },
}

impl Post {
    /// The account that made the post, and its request's `client_id`.
    pub fn author(&self) -> (Phone, u64) {
        match self {
            Post::Message {
                from, client_id, ..
            } => (*from, *client_id),
            Post::Change { by, client_id, .. } => (*by, *client_id),
        }
    }

    /// When its author sent it (Unix ms, the author's home's stamp).
    pub fn sent_at_ms(&self) -> u64 {
        match *self {
            Post::Message { sent_at_ms, .. } => sent_at_ms,
            Post::Change { at_ms, .. } => at_ms,
        }
    }

    /// Body bytes held.
    pub fn body_bytes(&self) -> usize {
        match self {
            Post::Message { body, .. } => body.len(),
            Post::Change { .. } => 0,
        }
    }
}

/// A body as one byte string rather than a sequence of `u8`s. Postcard
/// writes both the same way (a varint length, then the bytes), so the
/// format is unchanged; what changes is that decoding copies the bytes
/// once into the `Arc` instead of visiting them one at a time into a `Vec`
/// and then copying that into a new allocation.
mod body_bytes {
    use std::fmt;
    use std::sync::Arc;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Arc<[u8]>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(body)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<[u8]>, D::Error> {
        deserializer.deserialize_bytes(BodyVisitor)
    }

    struct BodyVisitor;

    impl<'de> Visitor<'de> for BodyVisitor {
        type Value = Arc<[u8]>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a message body")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Arc<[u8]>, E> {
            Ok(Arc::from(bytes))
        }

        // Self-describing formats may hand bytes over as a sequence.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Arc<[u8]>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(Arc::from(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-string encoding of a body is what postcard wrote for the
    /// plain `Arc<[u8]>` sequence, so logs written before still decode.
    #[test]
    fn body_encoding_matches_a_byte_sequence() {
        let phone = Phone::from_u64(15_550_000_001).unwrap();
        let body: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let entry = EntryRecord::Message {
            from: phone,
            client_id: 7,
            sent_at_ms: 9,
            body: Arc::from(body.clone()),
        };
        let ours = postcard::to_allocvec(&entry).unwrap();
        let plain = postcard::to_allocvec(&(0u32, phone, 7u64, 9u64, body)).unwrap();
        assert_eq!(ours, plain);
        let back: EntryRecord = postcard::from_bytes(&ours).unwrap();
        assert_eq!(back, entry);
    }
}
