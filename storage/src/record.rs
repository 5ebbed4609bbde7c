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

impl Record {
    /// The account the record belongs to, and so the shard that keeps it.
    pub fn owner(&self) -> Phone {
        match self {
            Record::AccountKey { phone, .. } => *phone,
            Record::MailboxPut { owner, .. }
            | Record::MailboxAck { owner, .. }
            | Record::MailboxStart { owner, .. }
            | Record::Dedup { owner, .. } => *owner,
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
