//! Batches shipped byte for byte from one log to another: a primary's
//! tablet hands each batch frame it writes to its secondary, which checks
//! it and appends the very same bytes to its own log (docs/islands.md).
//! Both logs then hold the same batches with the same seqs and checksums,
//! so either can serve, and a rejoining replica can compare them by seq.
//!
//! The secondary trusts nothing it is sent: a frame must be whole (its
//! checksum), be the batch its log expects next, and hold records that
//! decode, or nothing of the shipment is written. A frame that passed its
//! checksum but held undecodable records would otherwise make the
//! replica's log refuse to open.

use super::{
    backend::{Backend, SegmentFile},
    format::{self, Frame, BATCH_HEADER_BYTES, BATCH_PAYLOAD_BYTES_MAX},
    Log, LogError,
};

/// One batch as it goes to a replica: its seq and its frame (header and
/// payload, checksum included, without the zero padding to the block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedBatch {
    pub seq: u64,
    pub frame: Vec<u8>,
}

impl ShippedBatch {
    /// The batch `seq` whose padded frame starts `padded`.
    pub(super) fn of_frame(seq: u64, padded: &[u8]) -> ShippedBatch {
        let payload = u32::from_le_bytes(padded[4..8].try_into().expect("a frame header"));
        let len = BATCH_HEADER_BYTES + payload as usize;
        ShippedBatch {
            seq,
            frame: padded[..len].to_vec(),
        }
    }
}

/// Why a shipment was not appended. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The first batch is not the one the log expects next: a gap (the
    /// sender ships again from `expected`) or a repeat of what the log
    /// holds already (the sender may take it as acknowledged).
    #[error("batch {found} shipped where batch {expected} is expected next")]
    NotNext { expected: u64, found: u64 },
    /// A frame is not a whole batch, names another seq than the one it
    /// came with, or holds records that do not decode.
    #[error("shipped batch {seq}: {reason}")]
    Invalid { seq: u64, reason: String },
    /// Writing or syncing failed (the log is then poisoned), or the disk
    /// had no room for a segment (nothing written; ship again later).
    #[error(transparent)]
    Log(#[from] LogError),
}

impl<B: Backend> Log<B> {
    /// [`Log::append`], also handing each batch frame written to `ship`,
    /// in order, for the replica.
    pub async fn append_shipping(
        &mut self,
        records: &[super::Record],
        ship: &mut Vec<ShippedBatch>,
    ) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if records.is_empty() {
            return Ok(());
        }
        let before = ship.len();
        let result = self.append_inner(records, Some(ship)).await;
        if result.is_err() {
            // Nothing of a failed commit may reach a replica.
            ship.truncate(before);
        }
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, LogError::NoSpace | LogError::Unavailable(_)))
        {
            self.poisoned = true;
        }
        result
    }

    /// Appends shipped batches, the first of them the batch this log
    /// expects next and the rest in order, as one commit: their frames
    /// byte for byte, then one sync. Each is checked first (see the
    /// module doc); on any error nothing was written, except a failed
    /// write or sync, which poisons the log.
    pub async fn append_shipped(&mut self, batches: &[ShippedBatch]) -> Result<(), ShipError> {
        if self.poisoned {
            return Err(LogError::Poisoned.into());
        }
        let Some(first) = batches.first() else {
            return Ok(());
        };
        if first.seq != self.next_seq {
            return Err(ShipError::NotNext {
                expected: self.next_seq,
                found: first.seq,
            });
        }
        let mut counts = Vec::with_capacity(batches.len());
        for (batch, seq) in batches.iter().zip(self.next_seq..) {
            counts.push(check_shipped(batch, seq)?);
        }
        let result = self.write_shipped(batches, &counts).await;
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, LogError::NoSpace | LogError::Unavailable(_)))
        {
            self.poisoned = true;
        }
        Ok(result?)
    }

    async fn write_shipped(
        &mut self,
        batches: &[ShippedBatch],
        counts: &[u32],
    ) -> Result<(), LogError> {
        for (index, (batch, &count)) in batches.iter().zip(counts).enumerate() {
            self.buffer.clear();
            self.buffer.extend_from_slice(&batch.frame);
            self.buffer
                .resize(format::align_up(batch.frame.len() as u64) as usize, 0);
            self.write_buffered_frame(index > 0, u64::from(count))
                .await?;
        }
        self.sync().await
    }
}

/// Why batches could not be read back for shipping.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The batches before `first` went with segments a checkpoint
    /// covered: a replica that needs them starts from a checkpoint.
    #[error("batch {from} is gone: the log starts at batch {first}")]
    Gone { from: u64, first: u64 },
    /// A frame on disk is not the batch the log counted there.
    #[error("segment {number} at byte {offset}: {reason}")]
    Damaged {
        number: u64,
        offset: u64,
        reason: String,
    },
    #[error("reading the log: {0}")]
    Io(#[from] std::io::Error),
}

impl<B: Backend> Log<B> {
    /// The batches `from..=upto` (capped at the last batch written) as they
    /// were shipped, read back from the segments, in order, stopping once
    /// `bytes_max` of frames are read (at least one batch is). For a
    /// replica that fell behind or reconnected (docs/islands.md: the
    /// primary ships again from where the secondary's log ends).
    pub async fn read_batches(
        &self,
        from: u64,
        upto: u64,
        bytes_max: usize,
    ) -> Result<Vec<ShippedBatch>, ReadError> {
        let upto = upto.min(self.last_batch());
        let first = self.segments.front().map_or(self.next_seq, |s| s.1);
        if from < first.max(1) {
            return Err(ReadError::Gone { from, first });
        }
        let mut batches = Vec::new();
        let mut bytes = 0;
        let mut seq = from;
        while seq <= upto && (batches.is_empty() || bytes < bytes_max) {
            let index = self
                .segments
                .iter()
                .rposition(|&(_, first)| first <= seq)
                .expect("seq is at or after the first batch");
            let (number, first) = self.segments[index];
            let ends_before = self.segments.get(index + 1).map_or(self.next_seq, |s| s.1);
            let file = if number == self.segment {
                None
            } else {
                Some(self.backend.open(number).await?)
            };
            let file = file.as_ref().unwrap_or(&self.file);
            let mut offset = super::BLOCK_BYTES as u64;
            let mut at = first;
            while at < ends_before && at <= upto && (batches.is_empty() || bytes < bytes_max) {
                let (frame, frame_bytes) = read_frame(file, (number, offset), at).await?;
                if at >= seq {
                    let batch = ShippedBatch::of_frame(at, &frame);
                    bytes += batch.frame.len();
                    batches.push(batch);
                }
                offset += frame_bytes;
                at += 1;
            }
            seq = at;
        }
        Ok(batches)
    }
}

/// Reads the frame at `offset` of segment `number`, which must be batch
/// `seq`: the frame's bytes (from its first block on) and its padded size.
async fn read_frame(
    file: &impl SegmentFile,
    (number, offset): (u64, u64),
    seq: u64,
) -> Result<(Vec<u8>, u64), ReadError> {
    let damaged = |reason: &str| ReadError::Damaged {
        number,
        offset,
        reason: reason.to_owned(),
    };
    let head = file.read_at(offset, super::BLOCK_BYTES).await?;
    if head.len() < BATCH_HEADER_BYTES {
        return Err(damaged("the segment ends inside a frame header"));
    }
    let payload = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
    if payload > BATCH_PAYLOAD_BYTES_MAX {
        return Err(damaged("a frame length over the limit"));
    }
    let frame_bytes = format::align_up((BATCH_HEADER_BYTES + payload) as u64);
    let frame = match frame_bytes as usize <= head.len() {
        true => head,
        false => file.read_at(offset, frame_bytes as usize).await?,
    };
    match format::parse_frame(&frame) {
        Frame::Batch { seq: found, .. } if found == seq => Ok((frame, frame_bytes)),
        _ => Err(damaged("not the batch the log counted here")),
    }
}

/// Checks that `batch` is a whole frame of batch `seq` whose records
/// decode; its record count.
fn check_shipped(batch: &ShippedBatch, seq: u64) -> Result<u32, ShipError> {
    let invalid = |reason: String| ShipError::Invalid {
        seq: batch.seq,
        reason,
    };
    if batch.seq != seq {
        return Err(invalid(format!("out of order: batch {seq} expected")));
    }
    if batch.frame.len() > BATCH_HEADER_BYTES + BATCH_PAYLOAD_BYTES_MAX {
        return Err(invalid(format!(
            "{} bytes, over a frame's limit",
            batch.frame.len()
        )));
    }
    match format::parse_frame(&batch.frame) {
        Frame::Batch {
            seq: found,
            count,
            payload,
            ..
        } => {
            if found != seq {
                return Err(invalid(format!("the frame says batch {found}")));
            }
            if BATCH_HEADER_BYTES + payload.len() != batch.frame.len() {
                return Err(invalid("bytes after the frame".to_owned()));
            }
            format::decode_records(seq, count, payload, |_| {})
                .map_err(|error| invalid(error.to_string()))?;
            Ok(count)
        }
        Frame::Empty => Err(invalid("zeros, not a frame".to_owned())),
        Frame::Invalid(reason) => Err(invalid(reason.to_owned())),
    }
}
