//! The replication connection's frames as bytes: encoding, and a decoder
//! that checks every length before it trusts it. No I/O. One connection
//! carries one tablet pair, (island, shard), from its primary's node to
//! its secondary's; `docs/islands.md` ("On the wire") has the layout.
//!
//! Every frame is a little-endian `u32` length (of the bytes after it),
//! then a kind byte, then the kind's fields, little-endian. The length is
//! checked against [`FRAME_BYTES_MAX`] before anything past it is looked
//! at, so a peer cannot make a reader buffer more than one bounded frame.
//! A `Ship`'s batch is at most a log frame's size: what a tablet writes in
//! one batch.

use storage::log::format::{BATCH_HEADER_BYTES, BATCH_PAYLOAD_BYTES_MAX};

use super::{IslandId, NodeId, ReplMsg, Seq};

/// The first bytes of a hello: a stranger, or a message link that dialled
/// the wrong port, is told apart from a replication peer.
pub const MAGIC: [u8; 4] = *b"ISLR";

/// The replication protocol's version; a peer with another is refused.
pub const VERSION: u16 = 1;

/// What a hello carries to show it comes from a member of the cluster (an
/// HMAC under the cluster's secret, made and checked by the runtime).
pub const PROOF_BYTES: usize = 32;

/// The largest batch a `Ship` carries: a whole log frame of the largest
/// payload (`storage::log::format`).
pub const SHIP_BYTES_MAX: usize = BATCH_HEADER_BYTES + BATCH_PAYLOAD_BYTES_MAX;

/// The length prefix before every frame.
pub const LENGTH_BYTES: usize = 4;

/// A `Ship`'s fields before its batch: kind, epoch, seq, written, length.
const SHIP_HEADER_BYTES: usize = 1 + 8 + 8 + 8 + 4;

/// The longest frame after its length prefix: a `Ship` of the largest
/// batch. Every other frame is far smaller.
pub const FRAME_BYTES_MAX: usize = SHIP_HEADER_BYTES + SHIP_BYTES_MAX;

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

const KIND_HELLO: u8 = 1;
const KIND_SHIP: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_EXPECT: u8 = 4;
const KIND_FENCED: u8 = 5;
const KIND_CATCH_UP: u8 = 6;
const KIND_DIVERGE: u8 = 7;
const KIND_SNAPSHOT: u8 = 8;
const KIND_SNAPSHOT_ACK: u8 = 9;

/// Bytes of a checkpoint one `Snapshot` frame carries, at most.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
const _: () = assert!(1 + 8 * 4 + 4 + SNAPSHOT_CHUNK_BYTES_MAX <= FRAME_BYTES_MAX);

/// The first frame each side sends: which tablet pair the connection is
/// for, and who is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub island: IslandId,
    /// The tablet: the shard whose log this connection carries.
    pub shard: u16,
    pub node: NodeId,
    /// The speaking node's incarnation (its lease id).
    pub incarnation: i64,
    pub proof: [u8; PROOF_BYTES],
}

impl Hello {
    /// The bytes the proof is made over: every field but the proof.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.island.to_le_bytes());
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.node.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplFrame {
    Hello(Hello),
    Msg(ReplMsg),
}

/// Bytes that are not a frame; the connection that sent them is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame length {length} is over the limit of {FRAME_BYTES_MAX} bytes")]
    TooLong { length: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of kind {kind} ends early (needs more than its {length} bytes)")]
    Truncated { kind: u8, length: usize },
    #[error("frame of kind {kind} has {extra} bytes past its fields")]
    Trailing { kind: u8, extra: usize },
    #[error("hello without the replication magic (got {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("a shipped batch of {0} bytes is over {SHIP_BYTES_MAX}")]
    ShipTooLong(usize),
    #[error("batch number 0 (a log counts batches from 1)")]
    SeqZero,
    #[error("a checkpoint chunk of {0} bytes is over {SNAPSHOT_CHUNK_BYTES_MAX}")]
    ChunkTooLong(usize),
    #[error("a checkpoint chunk at {offset} ends past the checkpoint's {total} bytes")]
    ChunkPastEnd { offset: u64, total: u64 },
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, and how many bytes (prefix included) it took.
    Frame(ReplFrame, usize),
    /// Not a whole frame yet: the buffer must reach this many bytes.
    Incomplete(usize),
}

/// Appends `hello` as a frame to `out`.
pub fn encode_hello(hello: &Hello, out: &mut Vec<u8>) {
    let start = begin(out, KIND_HELLO);
    out.extend_from_slice(&hello.signed_bytes());
    out.extend_from_slice(&hello.proof);
    end(out, start);
}

/// Appends `msg` as a frame to `out`. Panics on a `Ship` over
/// [`SHIP_BYTES_MAX`]: a tablet never writes such a batch.
pub fn encode_msg(msg: &ReplMsg, out: &mut Vec<u8>) {
    let start;
    match msg {
        ReplMsg::Ship {
            epoch,
            seq,
            written,
            bytes,
        } => {
            assert!(
                bytes.len() <= SHIP_BYTES_MAX,
                "a batch of {} bytes",
                bytes.len()
            );
            start = begin(out, KIND_SHIP);
            for field in [epoch, seq, written] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        ReplMsg::Ack { epoch, seq } => start = two(out, KIND_ACK, *epoch, *seq),
        ReplMsg::Expect { epoch, seq } => start = two(out, KIND_EXPECT, *epoch, *seq),
        ReplMsg::Fenced { epoch } => {
            start = begin(out, KIND_FENCED);
            out.extend_from_slice(&epoch.to_le_bytes());
        }
        ReplMsg::CatchUp {
            epoch,
            last_epoch,
            last_seq,
        } => {
            start = begin(out, KIND_CATCH_UP);
            for field in [epoch, last_epoch, last_seq] {
                out.extend_from_slice(&field.to_le_bytes());
            }
        }
        ReplMsg::Diverge { epoch, upto } => start = two(out, KIND_DIVERGE, *epoch, *upto),
        ReplMsg::Snapshot {
            epoch,
            batch,
            offset,
            total,
            bytes,
        } => {
            assert!(
                bytes.len() <= SNAPSHOT_CHUNK_BYTES_MAX,
                "a checkpoint chunk of {} bytes",
                bytes.len()
            );
            start = begin(out, KIND_SNAPSHOT);
            for field in [epoch, batch, offset, total] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        ReplMsg::SnapshotAck {
            epoch,
            batch,
            offset,
        } => {
            start = begin(out, KIND_SNAPSHOT_ACK);
            for field in [epoch, batch, offset] {
                out.extend_from_slice(&field.to_le_bytes());
            }
        }
    }
    end(out, start);
}

fn two(out: &mut Vec<u8>, kind: u8, a: u64, b: u64) -> usize {
    let start = begin(out, kind);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    start
}

/// Leaves room for the length and writes the kind; where the frame starts.
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.push(kind);
    start
}

/// Fills in the length of the frame that starts at `start`.
fn end(out: &mut [u8], start: usize) {
    let length = out.len() - start - LENGTH_BYTES;
    debug_assert!(length <= FRAME_BYTES_MAX);
    out[start..start + LENGTH_BYTES].copy_from_slice(&(length as u32).to_le_bytes());
}

/// Decodes the frame at the start of `buffer`. The length prefix is checked
/// first: an over-long frame is an error before its bytes arrive.
pub fn decode(buffer: &[u8]) -> Result<Decoded, CodecError> {
    let Some(prefix) = buffer.get(..LENGTH_BYTES) else {
        return Ok(Decoded::Incomplete(LENGTH_BYTES));
    };
    let length = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(CodecError::TooLong { length });
    }
    let total = LENGTH_BYTES + length;
    let Some(body) = buffer.get(LENGTH_BYTES..total) else {
        return Ok(Decoded::Incomplete(total));
    };
    let (&kind, fields) = body.split_first().ok_or(CodecError::Empty)?;
    let mut reader = Reader {
        bytes: fields,
        kind,
        length,
    };
    let frame = match kind {
        KIND_HELLO => ReplFrame::Hello(reader.hello()?),
        KIND_SHIP => {
            let (epoch, seq, written) = (reader.u64()?, reader.seq()?, reader.u64()?);
            let len = reader.u32()? as usize;
            if len > SHIP_BYTES_MAX {
                return Err(CodecError::ShipTooLong(len));
            }
            let bytes = reader.take(len)?.to_vec();
            ReplFrame::Msg(ReplMsg::Ship {
                epoch,
                seq,
                written,
                bytes,
            })
        }
        KIND_ACK => ReplFrame::Msg(ReplMsg::Ack {
            epoch: reader.u64()?,
            seq: reader.u64()?,
        }),
        KIND_EXPECT => ReplFrame::Msg(ReplMsg::Expect {
            epoch: reader.u64()?,
            seq: reader.seq()?,
        }),
        KIND_FENCED => ReplFrame::Msg(ReplMsg::Fenced {
            epoch: reader.u64()?,
        }),
        KIND_CATCH_UP => ReplFrame::Msg(ReplMsg::CatchUp {
            epoch: reader.u64()?,
            last_epoch: reader.u64()?,
            last_seq: reader.u64()?,
        }),
        KIND_DIVERGE => ReplFrame::Msg(ReplMsg::Diverge {
            epoch: reader.u64()?,
            upto: reader.u64()?,
        }),
        KIND_SNAPSHOT => ReplFrame::Msg(reader.snapshot()?),
        KIND_SNAPSHOT_ACK => ReplFrame::Msg(ReplMsg::SnapshotAck {
            epoch: reader.u64()?,
            batch: reader.u64()?,
            offset: reader.u64()?,
        }),
        other => return Err(CodecError::UnknownKind(other)),
    };
    reader.finish()?;
    Ok(Decoded::Frame(frame, total))
}

/// The fields of one frame, read front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    kind: u8,
    length: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < count {
            return Err(CodecError::Truncated {
                kind: self.kind,
                length: self.length,
            });
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    fn snapshot(&mut self) -> Result<ReplMsg, CodecError> {
        let (epoch, batch, offset, total) = (self.u64()?, self.u64()?, self.u64()?, self.u64()?);
        let len = self.u32()? as usize;
        if len > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(CodecError::ChunkTooLong(len));
        }
        if offset.checked_add(len as u64).is_none_or(|end| end > total) {
            return Err(CodecError::ChunkPastEnd { offset, total });
        }
        let bytes = self.take(len)?.to_vec();
        Ok(ReplMsg::Snapshot {
            epoch,
            batch,
            offset,
            total,
            bytes,
        })
    }

    /// A batch number: never 0.
    fn seq(&mut self) -> Result<Seq, CodecError> {
        match self.u64()? {
            0 => Err(CodecError::SeqZero),
            seq => Ok(seq),
        }
    }

    fn hello(&mut self) -> Result<Hello, CodecError> {
        let magic = self.array::<4>()?;
        if magic != MAGIC {
            return Err(CodecError::BadMagic(magic));
        }
        Ok(Hello {
            version: self.u16()?,
            island: self.u16()?,
            shard: self.u16()?,
            node: self.u16()?,
            incarnation: self.array().map(i64::from_le_bytes)?,
            proof: self.array()?,
        })
    }

    fn finish(self) -> Result<(), CodecError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(CodecError::Trailing {
                kind: self.kind,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_msg() -> Vec<ReplMsg> {
        vec![
            ReplMsg::Ship {
                epoch: 3,
                seq: 9,
                written: 2,
                bytes: vec![7; 5000],
            },
            ReplMsg::Ship {
                epoch: u64::MAX,
                seq: u64::MAX,
                written: 0,
                bytes: Vec::new(),
            },
            ReplMsg::Ack { epoch: 3, seq: 0 },
            ReplMsg::Expect { epoch: 3, seq: 10 },
            ReplMsg::Fenced { epoch: 4 },
            ReplMsg::CatchUp {
                epoch: 4,
                last_epoch: 2,
                last_seq: 0,
            },
            ReplMsg::Diverge { epoch: 4, upto: 8 },
            ReplMsg::Snapshot {
                epoch: 4,
                batch: 90,
                offset: 4096,
                total: 4096 + 300,
                bytes: vec![3; 300],
            },
            ReplMsg::SnapshotAck {
                epoch: 4,
                batch: 90,
                offset: 4396,
            },
        ]
    }

    #[test]
    fn a_checkpoint_chunk_is_bounded_and_within_its_checkpoint() {
        let chunk = |offset: u64, total: u64, len: usize| {
            let mut out = Vec::new();
            let start = begin(&mut out, KIND_SNAPSHOT);
            for field in [4u64, 90, offset, total] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend(std::iter::repeat_n(1u8, len));
            end(&mut out, start);
            decode(&out)
        };
        assert!(matches!(chunk(0, 10, 10), Ok(Decoded::Frame(..))));
        assert_eq!(
            chunk(5, 10, 10),
            Err(CodecError::ChunkPastEnd {
                offset: 5,
                total: 10
            })
        );
        assert_eq!(
            chunk(u64::MAX, u64::MAX, 1),
            Err(CodecError::ChunkPastEnd {
                offset: u64::MAX,
                total: u64::MAX
            })
        );
        let over = SNAPSHOT_CHUNK_BYTES_MAX + 1;
        assert_eq!(
            chunk(0, u64::MAX, over),
            Err(CodecError::ChunkTooLong(over))
        );
    }

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            island: 2,
            shard: 1,
            node: 3,
            incarnation: -5,
            proof: [9; PROOF_BYTES],
        }
    }

    #[test]
    fn every_frame_crosses_whole_and_in_pieces() {
        let mut stream = Vec::new();
        encode_hello(&hello(), &mut stream);
        for msg in every_msg() {
            encode_msg(&msg, &mut stream);
        }
        let mut expected = vec![ReplFrame::Hello(hello())];
        expected.extend(every_msg().into_iter().map(ReplFrame::Msg));
        let mut frames = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            // Every prefix of the next frame asks for more, never errs.
            let Decoded::Frame(frame, taken) = decode(&stream[at..]).unwrap() else {
                panic!("incomplete at {at}")
            };
            for cut in [0, 1, 3, 4, 5, taken - 1] {
                match decode(&stream[at..at + cut]).unwrap() {
                    Decoded::Incomplete(needed) => assert!(needed > cut && needed <= taken),
                    other => panic!("{other:?} from {cut} of {taken} bytes"),
                }
            }
            frames.push(frame);
            at += taken;
        }
        assert_eq!(frames, expected);
    }

    #[test]
    fn lengths_are_checked_before_anything_is_buffered() {
        let mut too_long = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
        too_long.push(KIND_SHIP);
        assert_eq!(
            decode(&too_long),
            Err(CodecError::TooLong {
                length: FRAME_BYTES_MAX + 1
            })
        );
        // A ship whose batch length claims more than a batch may be.
        let mut ship = Vec::new();
        encode_msg(&every_msg()[0], &mut ship);
        ship[LENGTH_BYTES + 25..LENGTH_BYTES + 29]
            .copy_from_slice(&((SHIP_BYTES_MAX + 1) as u32).to_le_bytes());
        assert_eq!(
            decode(&ship),
            Err(CodecError::ShipTooLong(SHIP_BYTES_MAX + 1))
        );
        // One that claims more than its frame holds.
        ship[LENGTH_BYTES + 25..LENGTH_BYTES + 29].copy_from_slice(&6000u32.to_le_bytes());
        assert!(matches!(decode(&ship), Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let frame = |kind: u8, fields: &[u8]| {
            let mut out = ((1 + fields.len()) as u32).to_le_bytes().to_vec();
            out.push(kind);
            out.extend_from_slice(fields);
            out
        };
        assert_eq!(decode(&0u32.to_le_bytes()), Err(CodecError::Empty));
        assert_eq!(decode(&frame(99, &[])), Err(CodecError::UnknownKind(99)));
        assert_eq!(
            decode(&frame(KIND_ACK, &[0; 17])),
            Err(CodecError::Trailing {
                kind: KIND_ACK,
                extra: 1
            })
        );
        assert_eq!(
            decode(&frame(KIND_HELLO, b"ISLK....")),
            Err(CodecError::BadMagic(*b"ISLK"))
        );
        let mut expect = vec![0; 16];
        expect[..8].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(
            decode(&frame(KIND_EXPECT, &expect)),
            Err(CodecError::SeqZero)
        );
        // Arbitrary bytes: an answer, never a panic.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let kind = 1 + (state >> 8) as u8 % 8;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 56)) as u8).collect();
            let _ = decode(&frame(kind, &bytes));
        }
    }

    #[test]
    fn the_proof_covers_every_field_but_itself() {
        let base = hello().signed_bytes();
        let mut other = hello();
        other.proof = [0; PROOF_BYTES];
        assert_eq!(other.signed_bytes(), base);
        for change in 0..5 {
            let mut changed = hello();
            match change {
                0 => changed.island += 1,
                1 => changed.shard += 1,
                2 => changed.node += 1,
                3 => changed.incarnation += 1,
                _ => changed.version += 1,
            }
            assert_ne!(changed.signed_bytes(), base, "field {change}");
        }
    }
}
