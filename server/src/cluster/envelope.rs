//! A peer message as it crosses to another node: the shard it is for on
//! that node, the incarnation of that node it was meant for when it
//! answers something only that process knows (a connection, a lookup),
//! and the message, encoded with postcard into one link payload.
//!
//! The receiving node checks an envelope before a shard sees it: the
//! shard must exist, and an answer meant for an incarnation this process
//! never was is dropped (its connection ids and query numbers name
//! nothing in this process, or worse, something else). A process whose
//! lease was lost and granted again is a new incarnation with the same
//! connections and lookups: answers meant for its earlier incarnations
//! are its own.

use serde::{Deserialize, Serialize};
use shard::{island::IslandId, PeerMessage};

/// Bytes an encoded envelope may take: a full message body and its
/// fields, with margin. A payload over it is refused, never decoded.
pub const ENVELOPE_BYTES_MAX: usize = wire::FRAME_BYTES_MAX + 4096;

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The shard of the receiving node the message is for.
    pub shard: u16,
    /// The island whose tablet on that shard it is for (a node hosts its
    /// own island's tablets and those of islands it took over).
    pub island: IslandId,
    /// For an answer to a connection or lookup: the receiving node's
    /// incarnation it answers.
    pub incarnation: Option<i64>,
    pub message: PeerMessage,
}

/// Why a received envelope was not handed to a shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("an envelope of {0} bytes, over {ENVELOPE_BYTES_MAX}")]
    TooLong(usize),
    #[error("an envelope that does not decode: {0}")]
    Malformed(String),
    #[error("an envelope for shard {shard}, of {shards}")]
    NoSuchShard { shard: u16, shards: u16 },
    #[error("an answer for incarnation {meant:x}, this is {current:x}")]
    OldIncarnation { meant: i64, current: i64 },
}

impl Envelope {
    /// `message` for tablet (`island`, `shard`) of a node whose
    /// incarnation is `incarnation` now.
    pub fn new(
        (island, shard): (IslandId, u16),
        incarnation: i64,
        message: PeerMessage,
    ) -> Envelope {
        let incarnation = answers_process(&message).then_some(incarnation);
        Envelope {
            shard,
            island,
            incarnation,
            message,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("an envelope encodes")
    }

    /// Decodes and checks a payload received by a node running `shards`
    /// shards, whose process has been the incarnations `mine` (the
    /// current one last).
    pub fn decode(payload: &[u8], shards: u16, mine: &[i64]) -> Result<Envelope, Refused> {
        let envelope = Envelope::decode_own(payload)?;
        if envelope.shard >= shards {
            return Err(Refused::NoSuchShard {
                shard: envelope.shard,
                shards,
            });
        }
        if let Some(meant) = envelope.incarnation.filter(|meant| !mine.contains(meant)) {
            let current = mine.last().copied().unwrap_or(0);
            return Err(Refused::OldIncarnation { meant, current });
        }
        Ok(envelope)
    }

    /// Decodes a payload this process encoded for another node, to send
    /// its message elsewhere: only its length and form are checked (the
    /// receiver's checks are the receiver's).
    pub fn decode_own(payload: &[u8]) -> Result<Envelope, Refused> {
        if payload.len() > ENVELOPE_BYTES_MAX {
            return Err(Refused::TooLong(payload.len()));
        }
        postcard::from_bytes(payload).map_err(|e| Refused::Malformed(e.to_string()))
    }
}

/// Messages that name something only the receiving process knows: a
/// connection it answers, a lookup it waits for.
fn answers_process(message: &PeerMessage) -> bool {
    matches!(
        message,
        PeerMessage::Stored { .. }
            | PeerMessage::PresenceOf { conn: Some(_), .. }
            | PeerMessage::ProfileOf { conn: Some(_), .. }
            | PeerMessage::AccountsFound { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Phone;

    fn phone() -> Phone {
        Phone::parse("+15550000001").unwrap()
    }

    #[test]
    fn an_envelope_crosses_and_is_checked() {
        let receipt = PeerMessage::Receipt {
            to: phone(),
            by: phone(),
            client_id: 7,
            kind: wire::ReceiptKind::Delivered,
            sent_at_ms: 1_000,
        };
        let encoded = Envelope::new((1, 1), 42, receipt).encode();
        let decoded = Envelope::decode(&encoded, 2, &[43]).unwrap();
        assert_eq!((decoded.island, decoded.shard), (1, 1));
        assert_eq!(
            decoded.incarnation, None,
            "a receipt is owed to any incarnation"
        );
        assert!(matches!(
            decoded.message,
            PeerMessage::Receipt { client_id: 7, .. }
        ));
        assert_eq!(
            Envelope::decode(&encoded, 1, &[43]).unwrap_err(),
            Refused::NoSuchShard {
                shard: 1,
                shards: 1
            }
        );

        let found = PeerMessage::AccountsFound {
            query: 3,
            asker: phone(),
            registered: vec![phone()],
        };
        let encoded = Envelope::new((1, 0), 42, found).encode();
        assert!(Envelope::decode(&encoded, 1, &[42]).is_ok());
        assert_eq!(
            Envelope::decode(&encoded, 1, &[43]).unwrap_err(),
            Refused::OldIncarnation {
                meant: 42,
                current: 43
            }
        );
        // The same process after its lease was granted again: the answer
        // names its own lookup.
        assert!(Envelope::decode(&encoded, 1, &[42, 43]).is_ok());
        // Nobody knew its incarnation (0): not for any process.
        let found = PeerMessage::AccountsFound {
            query: 3,
            asker: phone(),
            registered: Vec::new(),
        };
        let unknown = Envelope::new((1, 0), 0, found).encode();
        assert!(Envelope::decode(&unknown, 1, &[42, 43]).is_err());
    }

    /// The largest batched messages fit an envelope: a full
    /// `ReceiptsOwed` and its answer, with the largest numbers and ids.
    #[test]
    fn the_largest_owed_receipts_batch_fits_an_envelope() {
        let phone = Phone::parse("+999999999999999").unwrap();
        let receipt = shard::OwedReceipt {
            to: phone,
            by: phone,
            client_id: u64::MAX,
            kind: wire::ReceiptKind::Undeliverable,
            sent_at_ms: u64::MAX,
        };
        let count = shard::RECEIPTS_PER_MESSAGE_MAX;
        let owed = PeerMessage::ReceiptsOwed {
            receipts: vec![receipt; count],
        };
        let stored = PeerMessage::OwedStored {
            stored: vec![receipt.key(); count],
        };
        for message in [owed, stored] {
            let encoded = Envelope::new((1, 0), i64::MAX, message).encode();
            assert!(encoded.len() <= ENVELOPE_BYTES_MAX, "{}", encoded.len());
            assert!(Envelope::decode(&encoded, 1, &[i64::MAX]).is_ok());
        }
    }

    #[test]
    fn hostile_payloads_are_refused_not_decoded() {
        assert!(matches!(
            Envelope::decode(&[0xff; 8], 2, &[1]),
            Err(Refused::Malformed(_))
        ));
        let long = vec![0u8; ENVELOPE_BYTES_MAX + 1];
        assert_eq!(
            Envelope::decode(&long, 2, &[1]).unwrap_err(),
            Refused::TooLong(ENVELOPE_BYTES_MAX + 1)
        );
        // A length prefix claiming more members than the payload holds.
        let mut lying = postcard::to_stdvec(&(0u16, 1u16, None::<i64>)).unwrap();
        lying.extend([13, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Envelope::decode(&lying, 2, &[1]).is_err());
    }
}
