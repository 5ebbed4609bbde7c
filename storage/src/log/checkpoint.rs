//! Checkpoints: a shard's whole state as records, in one file, so that the
//! log segments before it can be deleted.
//!
//! A checkpoint taken after log batch `B` holds exactly the state those
//! batches built; replay loads it, then applies only batches after `B`. It
//! is written to a `.tmp` file, synced, renamed to
//! `checkpoint-<B, 20 digits>.ckpt` and the directory synced: until the
//! rename is durable the segments it replaces are kept, and a crash at any
//! moment leaves either the old checkpoint and all its segments or the new
//! one. Blocking file I/O: run it on a blocking thread.
//!
//! Layout: one header block, then batch frames exactly as in a segment
//! (see `docs/storage-format.md`), numbered from 1.

use std::{
    fs,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use super::format::{self, Frame, BATCH_HEADER_BYTES, BLOCK_BYTES};
use crate::Record;

pub const CHECKPOINT_MAGIC: [u8; 8] = *b"ISLECKP\x01";
const HEADER_FIELDS_BYTES: usize = 8 + 2 + 2 + 8 + 8 + 8;
// The header and its crc fill the start of one block, which `encode`
// pads (or would cut) to the block size.
const _: () = assert!(CHECKPOINT_MAGIC.len() + 2 + 2 + 8 + 8 + 8 == HEADER_FIELDS_BYTES);
const _: () = assert!(HEADER_FIELDS_BYTES + 4 <= BLOCK_BYTES);

/// What a checkpoint file says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub shard: u16,
    pub shard_count: u16,
    /// The last log batch whose effects it holds.
    pub batch: u64,
    pub records: u64,
    pub frames: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O: {0}")]
    Io(#[from] io::Error),
    #[error("checkpoint {path}: {reason}")]
    Damaged {
        path: PathBuf,
        reason: CheckpointDamage,
    },
    #[error(
        "checkpoint {path} was written by shard {found_shard} of {found_count}, \
         but this is shard {shard} of {shard_count}"
    )]
    WrongShard {
        path: PathBuf,
        found_shard: u16,
        found_count: u16,
        shard: u16,
        shard_count: u16,
    },
}

/// What is wrong inside a checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointDamage {
    #[error("{0}")]
    HeaderUnreadable(#[source] io::Error),
    #[error("{0}")]
    Header(&'static str),
    #[error("its header says batch {0}")]
    WrongBatch(u64),
    #[error("frame {seq}: {source}")]
    FrameUnreadable {
        seq: u64,
        #[source]
        source: io::Error,
    },
    #[error("frame {seq}: length {length} over the limit")]
    FrameTooLong { seq: u64, length: usize },
    #[error("frame {found} where {expected} was expected")]
    OutOfOrder { found: u64, expected: u64 },
    #[error("frame {seq} is blank")]
    Blank { seq: u64 },
    #[error("frame {seq}: {reason}")]
    Invalid { seq: u64, reason: &'static str },
    #[error("{0}")]
    Records(#[from] format::FormatError),
    #[error("{found} records where the header says {header}")]
    RecordCount { found: u64, header: u64 },
}

impl CheckpointHeader {
    fn encode(&self) -> Vec<u8> {
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        block.extend_from_slice(&CHECKPOINT_MAGIC);
        block.extend_from_slice(&self.shard.to_le_bytes());
        block.extend_from_slice(&self.shard_count.to_le_bytes());
        block.extend_from_slice(&self.batch.to_le_bytes());
        block.extend_from_slice(&self.records.to_le_bytes());
        block.extend_from_slice(&self.frames.to_le_bytes());
        let crc = crc32c::crc32c(&block);
        block.extend_from_slice(&crc.to_le_bytes());
        block.resize(BLOCK_BYTES, 0);
        block
    }

    fn decode(block: &[u8]) -> Result<CheckpointHeader, &'static str> {
        if block.len() < HEADER_FIELDS_BYTES + 4 {
            return Err("shorter than its header");
        }
        if block[..8] != CHECKPOINT_MAGIC {
            return Err("not a checkpoint (bad magic)");
        }
        let fields = &block[..HEADER_FIELDS_BYTES];
        let crc = u32::from_le_bytes(block[HEADER_FIELDS_BYTES..][..4].try_into().unwrap());
        if crc32c::crc32c(fields) != crc {
            return Err("header checksum mismatch");
        }
        let u16_at = |at: usize| u16::from_le_bytes(block[at..at + 2].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
        Ok(CheckpointHeader {
            shard: u16_at(8),
            shard_count: u16_at(10),
            batch: u64_at(12),
            records: u64_at(20),
            frames: u64_at(28),
        })
    }
}

/// Where the checkpoint after `batch` is (or would be) in `dir`.
pub fn path(dir: &Path, batch: u64) -> PathBuf {
    dir.join(file_name(batch))
}

fn file_name(batch: u64) -> String {
    format!("checkpoint-{batch:020}.ckpt")
}

fn batch_of(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?
        .strip_suffix(".ckpt")?
        .parse()
        .ok()
}

/// The checkpoints in `dir`, by batch, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut batches = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(batch) = name.to_str().and_then(batch_of) {
            batches.push(batch);
        }
    }
    batches.sort_unstable();
    Ok(batches)
}

/// Writes `records` as the checkpoint after `batch` and makes it durable.
/// Returns the bytes written.
pub fn write(
    dir: &Path,
    shard: u16,
    shard_count: u16,
    batch: u64,
    records: &[Record],
) -> io::Result<u64> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut rest = records;
    let mut seq = 1;
    while !rest.is_empty() {
        frame.clear();
        let taken = format::encode_batch(seq, rest, &mut frame);
        frames.push(std::mem::take(&mut frame));
        rest = &rest[taken..];
        seq += 1;
    }
    let header = CheckpointHeader {
        shard,
        shard_count,
        batch,
        records: records.len() as u64,
        frames: frames.len() as u64,
    };
    let temporary = dir.join(format!("{}.tmp", file_name(batch)));
    let written = write_file(&temporary, &header, &frames);
    if written.is_err() {
        // On a full disk a partial file would keep the space that ran out.
        let _ = fs::remove_file(&temporary);
    }
    let bytes = written?;
    fs::rename(&temporary, dir.join(file_name(batch)))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(bytes)
}

fn write_file(path: &Path, header: &CheckpointHeader, frames: &[Vec<u8>]) -> io::Result<u64> {
    let file = fs::File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&header.encode())?;
    let mut bytes = BLOCK_BYTES as u64;
    for frame in frames {
        out.write_all(frame)?;
        bytes += frame.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(bytes)
}

/// Loads the newest checkpoint in `dir` into `each`; returns its header,
/// or `None` when there is none. A damaged newest checkpoint is an error,
/// not a reason to fall back: the segments before it may be gone.
pub fn load(
    dir: &Path,
    shard: u16,
    shard_count: u16,
    mut each: impl FnMut(Record),
) -> Result<Option<CheckpointHeader>, CheckpointError> {
    let Some(&batch) = list(dir)?.last() else {
        return Ok(None);
    };
    let path = dir.join(file_name(batch));
    let damaged = |reason: CheckpointDamage| CheckpointError::Damaged {
        path: path.clone(),
        reason,
    };
    let mut input = BufReader::with_capacity(1 << 20, fs::File::open(&path)?);
    let mut block = vec![0; BLOCK_BYTES];
    read_exactly(&mut input, &mut block)
        .map_err(|e| damaged(CheckpointDamage::HeaderUnreadable(e)))?;
    let header =
        CheckpointHeader::decode(&block).map_err(|r| damaged(CheckpointDamage::Header(r)))?;
    if header.shard != shard || header.shard_count != shard_count {
        return Err(CheckpointError::WrongShard {
            path,
            found_shard: header.shard,
            found_count: header.shard_count,
            shard,
            shard_count,
        });
    }
    if header.batch != batch {
        return Err(damaged(CheckpointDamage::WrongBatch(header.batch)));
    }
    let mut records = 0u64;
    let mut frame = Vec::new();
    for seq in 1..=header.frames {
        frame.resize(BATCH_HEADER_BYTES, 0);
        let unreadable = |source| damaged(CheckpointDamage::FrameUnreadable { seq, source });
        read_exactly(&mut input, &mut frame).map_err(unreadable)?;
        let payload = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
        if payload > format::BATCH_PAYLOAD_BYTES_MAX {
            return Err(damaged(CheckpointDamage::FrameTooLong {
                seq,
                length: payload,
            }));
        }
        let total = format::align_up((BATCH_HEADER_BYTES + payload) as u64) as usize;
        frame.resize(total, 0);
        read_exactly(&mut input, &mut frame[BATCH_HEADER_BYTES..]).map_err(unreadable)?;
        match format::parse_frame(&frame) {
            Frame::Batch {
                seq: found,
                count,
                payload,
                ..
            } if found == seq => {
                format::decode_records(seq, count, payload, |record| {
                    records += 1;
                    each(record);
                })
                .map_err(|e| damaged(e.into()))?;
            }
            Frame::Batch { seq: found, .. } => {
                return Err(damaged(CheckpointDamage::OutOfOrder {
                    found,
                    expected: seq,
                }))
            }
            Frame::Empty => return Err(damaged(CheckpointDamage::Blank { seq })),
            Frame::Invalid(reason) => {
                return Err(damaged(CheckpointDamage::Invalid { seq, reason }))
            }
        }
    }
    if records != header.records {
        return Err(damaged(CheckpointDamage::RecordCount {
            found: records,
            header: header.records,
        }));
    }
    Ok(Some(header))
}

/// Deletes every checkpoint older than the one after `batch`.
pub fn remove_older(dir: &Path, batch: u64) -> io::Result<()> {
    for old in list(dir)? {
        if old < batch {
            fs::remove_file(dir.join(file_name(old)))?;
        }
    }
    Ok(())
}

fn read_exactly(input: &mut impl Read, out: &mut [u8]) -> io::Result<()> {
    input.read_exact(out).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(e.kind(), "the file ends early"),
        _ => e,
    })
}
