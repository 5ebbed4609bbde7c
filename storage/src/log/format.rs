//! The bytes of a shard's log: segment headers and batch frames. No I/O here;
//! docs/storage-format.md draws the same layout.
//!
//! A segment is a file of whole blocks. Block 0 holds the segment header.
//! Every batch frame starts on a block boundary and is padded with zeros to
//! the next one, so a write never touches a block that holds an earlier,
//! acknowledged batch: a torn write can only damage the batch being written.

use crate::Record;

/// The unit of every write and of alignment. Direct I/O needs at least the
/// device's logical block; 4 KiB is the page and the common physical sector.
pub const BLOCK_BYTES: usize = 4096;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ISLESEG\x01";
/// Layout version written in each segment header.
pub const FORMAT_VERSION: u32 = 1;
/// First bytes of every batch frame.
pub const BATCH_MAGIC: [u8; 4] = *b"ISLB";

const SEGMENT_HEADER_BYTES: usize = 36;
/// magic (4) + payload length (4) + record count (4) + crc (4) + seq (8).
pub const BATCH_HEADER_BYTES: usize = 24;
/// Prefix of each record inside a batch payload: its encoded length, as on
/// the wire.
const RECORD_PREFIX_BYTES: usize = wire::LENGTH_PREFIX_BYTES;

/// The largest encoded record: a message body at the wire's limit plus the
/// record's own fields, with room to spare.
pub const RECORD_BYTES_MAX: usize = wire::FRAME_BYTES_MAX + 512;
/// The largest batch payload. Readers refuse a header that claims more
/// before allocating; writers split bigger commits into several batches.
pub const BATCH_PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;

// What the encoders and readers below rely on, checked as the crate builds.
const _: () = {
    // The headers are written field by field at fixed offsets: magic,
    // version, shard, shard count, segment number, first batch, crc; and
    // magic, payload length, record count, crc, seq.
    assert!(SEGMENT_HEADER_BYTES == SEGMENT_MAGIC.len() + 4 + 2 + 2 + 8 + 8 + 4);
    assert!(BATCH_HEADER_BYTES == BATCH_MAGIC.len() + 4 + 4 + 4 + 8);
    // The segment header is read back from block 0 alone.
    assert!(SEGMENT_HEADER_BYTES <= BLOCK_BYTES);
    // Direct I/O buffers are laid out with the block as their alignment.
    assert!(BLOCK_BYTES.is_power_of_two());
    // A batch takes at least one record, so the largest record must fit
    // a payload a reader accepts: else it would be written and then
    // refused on replay.
    assert!(RECORD_PREFIX_BYTES + RECORD_BYTES_MAX <= BATCH_PAYLOAD_BYTES_MAX);
    // The payload length is written as a u32.
    assert!(BATCH_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
};

/// Rounds `bytes` up to whole blocks.
pub fn align_up(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// What block 0 of a segment says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The shard that wrote it, and how many shards there were: a log is only
    /// replayed by the shard (and partition map) it was written for.
    pub shard: u16,
    pub shard_count: u16,
    /// Segment files are numbered consecutively from 1.
    pub number: u64,
    /// Seq of the first batch in this segment.
    pub first_batch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("segment header: {0}")]
    SegmentHeader(&'static str),
    #[error("segment format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("batch payload of {0} bytes exceeds the {BATCH_PAYLOAD_BYTES_MAX}-byte limit")]
    BatchTooLarge(usize),
    #[error("record {index} of batch {seq}: {defect}")]
    Record {
        seq: u64,
        index: u32,
        defect: RecordDefect,
    },
}

/// What is wrong with one record of a checksummed batch (so written wrong,
/// or by another build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordDefect {
    #[error("payload ends inside a length prefix")]
    PrefixCut,
    #[error("length prefix out of range")]
    LengthOutOfRange,
    #[error("{0}")]
    Undecodable(postcard::Error),
    #[error("bytes after the last record")]
    TrailingBytes,
}

impl SegmentHeader {
    /// The header block, zero-padded to `BLOCK_BYTES`.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_BYTES];
        block[0..8].copy_from_slice(&SEGMENT_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..14].copy_from_slice(&self.shard.to_le_bytes());
        block[14..16].copy_from_slice(&self.shard_count.to_le_bytes());
        block[16..24].copy_from_slice(&self.number.to_le_bytes());
        block[24..32].copy_from_slice(&self.first_batch.to_le_bytes());
        let crc = crc32c::crc32c(&block[..32]);
        block[32..SEGMENT_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        block
    }

    pub fn decode(block: &[u8]) -> Result<SegmentHeader, FormatError> {
        if block.len() < SEGMENT_HEADER_BYTES {
            return Err(FormatError::SegmentHeader("shorter than a header"));
        }
        if block[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::SegmentHeader("not an isle log segment"));
        }
        let crc = u32_at(block, 32);
        if crc32c::crc32c(&block[..32]) != crc {
            return Err(FormatError::SegmentHeader("checksum mismatch"));
        }
        let version = u32_at(block, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        Ok(SegmentHeader {
            shard: u16::from_le_bytes([block[12], block[13]]),
            shard_count: u16::from_le_bytes([block[14], block[15]]),
            number: u64_at(block, 16),
            first_batch: u64_at(block, 24),
        })
    }
}

/// Appends one batch frame holding `records` to `out` (which must end on a
/// block boundary), padded to the next block boundary. Returns how many of
/// `records` it took: as many as fit in `BATCH_PAYLOAD_BYTES_MAX`, and at
/// least one.
pub fn encode_batch(seq: u64, records: &[Record], out: &mut Vec<u8>) -> usize {
    debug_assert_eq!(out.len() % BLOCK_BYTES, 0);
    let start = out.len();
    out.extend_from_slice(&[0; BATCH_HEADER_BYTES]);
    let mut taken = 0;
    for record in records {
        let at = out.len();
        let length = wire::encode_prefixed(record, out);
        assert!(
            length <= RECORD_BYTES_MAX,
            "encoded a record of {length} bytes"
        );
        let payload = out.len() - start - BATCH_HEADER_BYTES;
        if payload > BATCH_PAYLOAD_BYTES_MAX && taken > 0 {
            out.truncate(at);
            break;
        }
        taken += 1;
    }
    let payload = out.len() - start - BATCH_HEADER_BYTES;
    let header = &mut out[start..start + BATCH_HEADER_BYTES];
    header[0..4].copy_from_slice(&BATCH_MAGIC);
    header[4..8].copy_from_slice(&(payload as u32).to_le_bytes());
    header[8..12].copy_from_slice(&(taken as u32).to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = batch_crc(&out[start..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    out.resize(align_up(out.len() as u64) as usize, 0);
    taken
}

/// The checksum of a whole frame (header and payload), its own field skipped.
fn batch_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..12]);
    crc32c::crc32c_append(crc, &frame[16..])
}

/// What lies at a block boundary of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, checksummed batch; the next frame starts `frame_bytes` on.
    Batch {
        seq: u64,
        count: u32,
        payload: &'a [u8],
        frame_bytes: usize,
    },
    /// Zeros: nothing was ever written here (the end of the log, if nothing
    /// valid follows).
    Empty,
    /// Something that is not a whole batch: a torn write, or damage.
    Invalid(&'static str),
}

/// Reads the frame at the start of `bytes` (a block boundary); `bytes` runs to
/// the end of the segment.
pub fn parse_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return if bytes.iter().all(|&b| b == 0) {
            Frame::Empty
        } else {
            Frame::Invalid("a partial header at the end of the segment")
        };
    }
    if bytes[0..4] != BATCH_MAGIC {
        let block = &bytes[..bytes.len().min(BLOCK_BYTES)];
        return if block.iter().all(|&b| b == 0) {
            Frame::Empty
        } else {
            Frame::Invalid("no batch magic at a block boundary")
        };
    }
    let payload_len = u32_at(bytes, 4) as usize;
    if payload_len > BATCH_PAYLOAD_BYTES_MAX {
        return Frame::Invalid("batch length over the limit");
    }
    let end = BATCH_HEADER_BYTES + payload_len;
    if end > bytes.len() {
        return Frame::Invalid("batch runs past the end of the segment");
    }
    if batch_crc(&bytes[..end]) != u32_at(bytes, 12) {
        return Frame::Invalid("batch checksum mismatch");
    }
    Frame::Batch {
        seq: u64_at(bytes, 16),
        count: u32_at(bytes, 8),
        payload: &bytes[BATCH_HEADER_BYTES..end],
        frame_bytes: align_up(end as u64) as usize,
    }
}

/// Decodes the records of a checksummed batch payload, in order.
pub fn decode_records(
    seq: u64,
    count: u32,
    payload: &[u8],
    mut each: impl FnMut(Record),
) -> Result<(), FormatError> {
    let mut rest = payload;
    for index in 0..count {
        let error = |defect| FormatError::Record { seq, index, defect };
        if rest.len() < RECORD_PREFIX_BYTES {
            return Err(error(RecordDefect::PrefixCut));
        }
        let length = u32_at(rest, 0) as usize;
        if length > RECORD_BYTES_MAX || length > rest.len() - RECORD_PREFIX_BYTES {
            return Err(error(RecordDefect::LengthOutOfRange));
        }
        let body = &rest[RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + length];
        let record: Record =
            postcard::from_bytes(body).map_err(|e| error(RecordDefect::Undecodable(e)))?;
        each(record);
        rest = &rest[RECORD_PREFIX_BYTES + length..];
    }
    if !rest.is_empty() {
        return Err(FormatError::Record {
            seq,
            index: count,
            defect: RecordDefect::TrailingBytes,
        });
    }
    Ok(())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_crc32c() {
        // The Castagnoli polynomial, not the zlib one: a known vector.
        assert_eq!(crc32c::crc32c(b"Hello world!"), 0x7B98_E751);
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = SegmentHeader {
            shard: 3,
            shard_count: 8,
            number: 42,
            first_batch: 1_000_001,
        };
        let block = header.encode();
        assert_eq!(block.len(), BLOCK_BYTES);
        assert_eq!(SegmentHeader::decode(&block), Ok(header));
        for byte in 0..SEGMENT_HEADER_BYTES {
            let mut bad = block.clone();
            bad[byte] ^= 0x10;
            assert!(SegmentHeader::decode(&bad).is_err(), "flip in byte {byte}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser() {
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut bytes = vec![0u8; 3 * BLOCK_BYTES];
        for round in 0..2_000 {
            for b in bytes.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            // Some rounds start with a plausible header to reach deeper.
            if round % 2 == 0 {
                bytes[..4].copy_from_slice(&BATCH_MAGIC);
                bytes[4..8].copy_from_slice(&((state % 9000) as u32).to_le_bytes());
            }
            if let Frame::Batch {
                seq,
                count,
                payload,
                ..
            } = parse_frame(&bytes[..(state as usize % bytes.len())])
            {
                let _ = decode_records(seq, count, payload, |_| {});
            }
            let _ = decode_records(1, (state % 50) as u32, &bytes[..round], |_| {});
            let _ = SegmentHeader::decode(&bytes[..round % 64]);
        }
    }
}
