//! A shard's durable log: numbered segment files of checksummed batches,
//! appended with group commit and replayed on start.
//!
//! [`Log::open`] replays every record in order and leaves the log ready to
//! append after the last whole batch. [`Log::append`] writes one or more batch
//! frames for a commit and then syncs once; only after that may the shard
//! acknowledge anything in it. A failed write or sync poisons the log: no
//! later append succeeds, because a file whose sync failed cannot be trusted
//! to hold what the page cache claimed (the lesson of PostgreSQL's fsync bug).

pub mod backend;
pub mod checkpoint;
pub mod format;
pub mod glommio_disk;
pub mod memory_disk;
pub mod shipping;

use std::{collections::VecDeque, io};

use backend::{Backend, SegmentFile};
use format::{Frame, SegmentHeader, BLOCK_BYTES};

use crate::{Journal, JournalError, JournalStats, Record, RemoveError};

/// Segment size unless configured otherwise.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
// Segments are whole blocks, written with zeros to full size by direct I/O.
const _: () = assert!(SEGMENT_BYTES_MAX_DEFAULT.is_multiple_of(BLOCK_BYTES as u64));

/// Zeros a first start writes, all shards' new logs together, before the
/// server can serve: each new log's first segment is this divided among
/// the shards (see [`first_segment_bytes`]), so the wait does not grow
/// with the shard count. One default segment's worth: what one shard
/// waited for before segments grew from small.
pub const START_ZEROS_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A new log's first segment at most: each segment after it is twice the
/// one before, up to `segment_bytes_max`, so a young log's zeros are
/// written as it fills rather than all at its start.
pub const FIRST_SEGMENT_BYTES_MAX: u64 = 1024 * 1024;
/// A new log's first segment at least: room for a few batches (and the
/// server's smallest `segment_bytes_max`).
pub const FIRST_SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// The most shards a server runs (one per partition: `shard`'s
/// `PARTITIONS_DEFAULT`).
const SHARDS_MAX: u64 = 1024;
const _: () = {
    // Even at the floor, the most shards stay within the start's zeros.
    assert!(FIRST_SEGMENT_BYTES_MIN * SHARDS_MAX <= START_ZEROS_BYTES_MAX);
    assert!(FIRST_SEGMENT_BYTES_MIN <= FIRST_SEGMENT_BYTES_MAX);
    assert!(FIRST_SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES as u64));
    assert!(FIRST_SEGMENT_BYTES_MAX.is_multiple_of(BLOCK_BYTES as u64));
};

/// The first segment of each of `shard_count` new logs: their sum stays
/// within [`START_ZEROS_BYTES_MAX`] (up to 1,024 shards), each between
/// [`FIRST_SEGMENT_BYTES_MIN`] and [`FIRST_SEGMENT_BYTES_MAX`], in whole
/// blocks.
pub fn first_segment_bytes(shard_count: u16) -> u64 {
    let share = START_ZEROS_BYTES_MAX / u64::from(shard_count.max(1));
    let share = share / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
    share.clamp(FIRST_SEGMENT_BYTES_MIN, FIRST_SEGMENT_BYTES_MAX)
}

/// Where this log belongs and how it grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub shard: u16,
    pub shard_count: u16,
    /// A segment is closed once the next batch would take it past this size.
    pub segment_bytes_max: u64,
    /// The size of a new log's first segment (at most `segment_bytes_max`);
    /// each later one is twice the one before, up to `segment_bytes_max`.
    /// The first is what a start waits to be written with zeros.
    pub first_segment_bytes: u64,
    /// Replay past damage in the middle of the log (losing what it covered)
    /// instead of refusing to start.
    pub salvage: bool,
}

impl LogConfig {
    /// Shard `shard` of `shard_count`, with default sizes: the first
    /// segment is that shard's share of [`START_ZEROS_BYTES_MAX`].
    pub fn new(shard: u16, shard_count: u16) -> LogConfig {
        LogConfig {
            shard,
            shard_count,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            first_segment_bytes: first_segment_bytes(shard_count),
            salvage: false,
        }
    }

    /// The size of a new log's first segment: `first_segment_bytes` in
    /// whole blocks, room for a header and a batch block at least, never
    /// above `segment_bytes_max`.
    fn first_bytes(&self) -> u64 {
        let first = format::align_up(self.first_segment_bytes).max(2 * BLOCK_BYTES as u64);
        first.min(self.segment_bytes_max)
    }

    /// The size of the segment after one of `bytes`: twice it, and room
    /// for a header and a frame of `frame` bytes, up to `segment_bytes_max`.
    fn next_bytes(&self, bytes: u64, frame: u64) -> u64 {
        let room = BLOCK_BYTES as u64 + frame;
        bytes
            .saturating_mul(2)
            .max(room)
            .min(self.segment_bytes_max)
    }

    /// The size of the segment after one of `bytes` when the disk has no
    /// room for a larger one: the same size, or room for a header and a
    /// frame of `frame` bytes if that is more, up to `segment_bytes_max`.
    /// Growth only saves segment switches; it never waits for space.
    fn kept_bytes(&self, bytes: u64, frame: u64) -> u64 {
        let room = BLOCK_BYTES as u64 + frame;
        bytes.max(room).min(self.segment_bytes_max)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O: {0}")]
    Io(#[from] io::Error),
    #[error("segment {number}: {source}")]
    Format {
        number: u64,
        source: format::FormatError,
    },
    #[error(
        "segment {number} was written by shard {found_shard} of {found_count}, \
         but this is shard {shard} of {shard_count}"
    )]
    WrongShard {
        number: u64,
        found_shard: u16,
        found_count: u16,
        shard: u16,
        shard_count: u16,
    },
    #[error(
        "segment {number} is {bytes} bytes, over the {limit} any writer produces; \
         if storage.segment_bytes_max was larger when it was written, raise it again"
    )]
    SegmentTooLarge { number: u64, bytes: u64, limit: u64 },
    #[error("segments are not consecutive: {before} is followed by {after}")]
    MissingSegment { before: u64, after: u64 },
    #[error(
        "the checkpoint holds batches up to {checkpoint}, but the oldest segment kept \
         ({number}) starts at batch {first}: the batches between are missing"
    )]
    CheckpointGap {
        checkpoint: u64,
        number: u64,
        first: u64,
    },
    #[error(
        "damage in the middle of the log: segment {number} at byte {offset} ({reason}), \
         with valid batches after it; start with salvage to skip it and lose what it held"
    )]
    Damaged {
        number: u64,
        offset: u64,
        reason: Damage,
    },
    #[error("the log failed earlier and accepts no more writes")]
    Poisoned,
    /// The commit needed a new segment and the disk had no room for one.
    /// Nothing of it was written and the log is intact: the same records
    /// may be appended again once there is space.
    #[error("no space on the disk for a new log segment")]
    NoSpace,
    /// The commit needed a new segment and a resource ran short while
    /// preparing it (see [`is_transient`]). Nothing of it was written and
    /// the log is intact: the same records may be appended again later.
    #[error("preparing a new log segment: {0}")]
    Unavailable(io::Error),
    /// [`Log::truncate_after`] was asked to keep less than the log holds:
    /// the batches before `first` went with the segments a checkpoint
    /// covered, so the log cannot end at `keep`.
    #[error(
        "cannot cut the log after batch {keep}: its oldest batch is {first} \
         (a checkpoint holds the ones before)"
    )]
    TruncateBeforeLog { keep: u64, first: u64 },
}

/// What replay found wrong at one place in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// A segment's header names another segment than its file does.
    #[error("file is named {file} but its header says {header}")]
    Misnamed { file: u64, header: u64 },
    /// A segment does not start with the batch after the last one of the
    /// segment before it.
    #[error("segment starts at batch {first}, the one before ended at {previous}")]
    Discontinuous { first: u64, previous: u64 },
    /// The log ends before the batch a checkpoint says it holds (a
    /// checkpoint is taken only after its last batch is durable).
    #[error("the log ends at batch {last}, before the checkpoint's batch {checkpoint}")]
    EndsBeforeCheckpoint { last: u64, checkpoint: u64 },
    /// A whole batch, but not the one that comes next.
    #[error("batch {found} where {expected} was expected")]
    OutOfOrder { found: u64, expected: u64 },
    /// Zeros where the next batch should be, with a batch after them.
    #[error("unwritten block")]
    Unwritten,
    /// Bytes that are not a whole batch (see [`format::parse_frame`]).
    #[error("{0}")]
    Invalid(&'static str),
}

/// Damage that `salvage` skipped, and the batches it took with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub segment: u64,
    /// Where in the segment the damage starts, in bytes.
    pub offset: u64,
    pub damage: Damage,
    /// The batches lost: from the one expected at the damage up to (not
    /// including) the first whole batch found after it.
    pub lost: std::ops::Range<u64>,
}

impl std::fmt::Display for Salvaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} at byte {}: {}; batches {}..{} lost",
            self.segment, self.offset, self.damage, self.lost.start, self.lost.end
        )
    }
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: u64,
    pub batches: u64,
    pub records: u64,
    /// A partial batch at the very end (a write the crash interrupted),
    /// cut off: `(segment, offset)`. Nothing in it had been acknowledged.
    pub torn_tail: Option<(u64, u64)>,
    /// Damage skipped because of `salvage`.
    pub salvaged: Vec<Salvaged>,
    /// Segments whose batches a checkpoint already held, deleted on open.
    pub obsolete: u64,
}

/// An open log, positioned after its last batch.
pub struct Log<B: Backend> {
    backend: B,
    config: LogConfig,
    file: B::File,
    segment: u64,
    /// The size the current segment was made with (at most
    /// `segment_bytes_max`): a batch that would pass it goes to the next
    /// segment, so that no write extends the file.
    capacity: u64,
    /// Offset of the next frame in the current segment.
    end: u64,
    next_seq: u64,
    /// The segments on disk, oldest first, and the seq of each one's first
    /// batch; the last is the one being written.
    segments: VecDeque<(u64, u64)>,
    poisoned: bool,
    buffer: Vec<u8>,
    stats: JournalStats,
}

impl<B: Backend> Log<B> {
    /// Replays the log into `each`, in order, and opens it for appends.
    pub async fn open(
        backend: B,
        config: LogConfig,
        each: impl FnMut(Record),
    ) -> Result<(Log<B>, Recovery), LogError> {
        Log::open_after(backend, config, 0, each).await
    }

    /// Like [`Log::open`], after a checkpoint that holds every batch up to
    /// `checkpoint`: only later batches are replayed, and segments holding
    /// nothing later are deleted.
    pub async fn open_after(
        backend: B,
        config: LogConfig,
        checkpoint: u64,
        mut each: impl FnMut(Record),
    ) -> Result<(Log<B>, Recovery), LogError> {
        let mut numbers = backend.list().await?;
        check_contiguous(&numbers)?;
        let mut recovery = Recovery {
            obsolete: drop_obsolete(&backend, &mut numbers, checkpoint).await?,
            ..Recovery::default()
        };
        let Some(&last) = numbers.last() else {
            let log = Log::start(backend, config, 1, checkpoint + 1).await?;
            return Ok((log, recovery));
        };
        let replayed = replay_segments(
            (&backend, &config),
            &numbers,
            checkpoint,
            &mut recovery,
            &mut each,
        )
        .await?;
        let next_seq = replayed.next_seq.unwrap_or(checkpoint + 1);
        if next_seq <= checkpoint {
            // A checkpoint is taken only after its last batch is durable.
            return Err(LogError::Damaged {
                number: last,
                offset: 0,
                reason: Damage::EndsBeforeCheckpoint {
                    last: next_seq - 1,
                    checkpoint,
                },
            });
        }
        let Some(tail) = replayed.tail else {
            // The only segment was blank: start over in it.
            let log = Log::start(backend, config, last, next_seq).await?;
            return Ok((log, recovery));
        };
        // The segment goes on at the size it was made with (a young log's
        // are smaller than the limit), never past the limit.
        let capacity = (tail.bytes.len() as u64).min(config.segment_bytes_max);
        let (segment, file, end) = tail.clean().await?;
        backend.prepare(config.next_bytes(capacity, 0), capacity);
        let at = SegmentAt {
            number: segment,
            capacity,
            end,
        };
        let mut log = Log::new(backend, config, file, at, next_seq);
        log.segments = replayed.segments;
        Ok((log, recovery))
    }

    /// A log with nothing to replay: its first segment, `number`, small
    /// (see [`LogConfig::first_segment_bytes`]), its first batch
    /// `first_batch`.
    async fn start(
        backend: B,
        config: LogConfig,
        number: u64,
        first_batch: u64,
    ) -> Result<Log<B>, LogError> {
        let capacity = config.first_bytes();
        let sizes = (capacity, config.next_bytes(capacity, 0));
        let file = create_segment(&backend, &config, (number, first_batch), sizes).await?;
        let at = SegmentAt {
            number,
            capacity,
            end: BLOCK_BYTES as u64,
        };
        Ok(Log::new(backend, config, file, at, first_batch))
    }

    fn new(backend: B, config: LogConfig, file: B::File, at: SegmentAt, next_seq: u64) -> Log<B> {
        let SegmentAt {
            number: segment,
            capacity,
            end,
        } = at;
        Log {
            backend,
            config,
            file,
            segment,
            capacity,
            end: end.max(BLOCK_BYTES as u64),
            next_seq,
            segments: VecDeque::from([(segment, next_seq)]),
            poisoned: false,
            buffer: Vec::new(),
            stats: JournalStats::default(),
        }
    }

    /// Writes `records` as one commit: one or more batch frames, then one
    /// sync. On any error the log is poisoned.
    pub async fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if records.is_empty() {
            return Ok(());
        }
        let result = self.append_inner(records, None).await;
        // Only an error before anything was written leaves the log whole;
        // after a failed write or sync no file of it can be trusted.
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, LogError::NoSpace | LogError::Unavailable(_)))
        {
            self.poisoned = true;
        }
        result
    }

    /// Writes `records` as one commit, handing each frame to `ship` as
    /// written (see `shipping`).
    async fn append_inner(
        &mut self,
        records: &[Record],
        mut ship: Option<&mut Vec<shipping::ShippedBatch>>,
    ) -> Result<(), LogError> {
        let mut rest = records;
        let mut wrote = false;
        while !rest.is_empty() {
            self.buffer.clear();
            let taken = format::encode_batch(self.next_seq, rest, &mut self.buffer);
            if let Some(ship) = ship.as_deref_mut() {
                ship.push(shipping::ShippedBatch::of_frame(
                    self.next_seq,
                    &self.buffer,
                ));
            }
            self.write_buffered_frame(wrote, taken as u64).await?;
            wrote = true;
            rest = &rest[taken..];
        }
        self.sync().await
    }

    /// Writes the frame in `buffer` (padded to a block) as the next batch,
    /// in a new segment when it does not fit the current one. `wrote`:
    /// this commit wrote a frame already (then a segment it fills is
    /// synced before the next is made, and no error is retryable).
    async fn write_buffered_frame(&mut self, wrote: bool, records: u64) -> Result<(), LogError> {
        let frame = self.buffer.len() as u64;
        if self.end + frame > self.capacity && self.has_room_elsewhere() {
            if wrote {
                // The closed segment's batches must be durable before
                // the commit can be.
                self.sync().await?;
            }
            match self.rotate(frame).await {
                // Nothing written yet, and no file touched: the commit
                // can be tried again. (Space running out in the middle
                // of a commit larger than a segment still poisons.)
                Err(LogError::Io(error)) if !wrote && is_no_space(&error) => {
                    return Err(LogError::NoSpace);
                }
                Err(LogError::Io(error)) if !wrote && is_transient(&error) => {
                    return Err(LogError::Unavailable(error));
                }
                result => result?,
            }
        }
        write_all(&mut self.file, self.end, &self.buffer).await?;
        self.end += frame;
        self.next_seq += 1;
        self.stats.batches += 1;
        self.stats.records += records;
        self.stats.bytes += frame;
        Ok(())
    }

    /// Syncs the current segment, counting the sync and its time.
    async fn sync(&mut self) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        self.file.sync().await?;
        self.stats.syncs += 1;
        self.stats.sync_us += started.elapsed().as_micros() as u64;
        Ok(())
    }

    /// Whether a batch that does not fit the rest of the current segment
    /// should go to a new one: always once the segment holds a batch; in
    /// an empty one only while segments are still growing (a frame larger
    /// than a whole segment at the limit goes into a fresh one of its own).
    fn has_room_elsewhere(&self) -> bool {
        self.end > BLOCK_BYTES as u64 || self.capacity < self.config.segment_bytes_max
    }

    /// Closes the current segment and starts the next, with room for a
    /// frame of `frame` bytes when the limit allows. The next segment is
    /// larger while segments grow; when the disk has no room for that, it
    /// is as large as this one ([`LogConfig::kept_bytes`]), so that a disk
    /// with room for one more segment like the current one is not full.
    async fn rotate(&mut self, frame: u64) -> Result<(), LogError> {
        let number = self.segment + 1;
        let at = (number, self.next_seq);
        let mut capacity = self.config.next_bytes(self.capacity, frame);
        let sizes = (capacity, self.config.next_bytes(capacity, 0));
        let mut created = create_segment(&self.backend, &self.config, at, sizes).await;
        let kept = self.config.kept_bytes(self.capacity, frame);
        if kept < capacity && matches!(&created, Err(LogError::Io(e)) if is_no_space(e)) {
            capacity = kept;
            created = create_segment(&self.backend, &self.config, at, (kept, kept)).await;
        }
        self.file = created?;
        self.segment = number;
        self.capacity = capacity;
        self.segments.push_back((number, self.next_seq));
        self.end = BLOCK_BYTES as u64;
        Ok(())
    }

    /// Seq the next batch will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The segments on disk, oldest first.
    pub fn segments(&self) -> std::ops::RangeInclusive<u64> {
        self.segments.front().map_or(self.segment, |s| s.0)..=self.segment
    }

    /// Segments written full and closed.
    pub fn closed_segments(&self) -> usize {
        self.segments.len() - 1
    }

    /// Seq of the last batch written (0 before the first).
    pub fn last_batch(&self) -> u64 {
        self.next_seq - 1
    }

    /// Deletes the closed segments whose batches are all at or before
    /// `batch` (a durable checkpoint holds them). Returns how many.
    pub async fn remove_through(&mut self, batch: u64) -> Result<usize, RemoveError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].1 <= batch + 1 {
            let (number, _) = self.segments[0];
            self.backend
                .remove(number)
                .await
                .map_err(|source| RemoveError {
                    segment: number,
                    source,
                })?;
            self.segments.pop_front();
            removed += 1;
        }
        Ok(removed)
    }

    /// Cuts the log after batch `keep`: every later batch is gone, on disk
    /// and for replay, and the next append is batch `keep + 1`. Returns
    /// how many batches went. For a replica whose tail was never
    /// acknowledged (docs/islands.md, rule 5); the caller deletes any
    /// checkpoint past `keep` first (rule 6 says there is none).
    ///
    /// Crash-safe at every step, without a marker: later segments are
    /// deleted from the last one back, then the frames past `keep` in the
    /// segment that holds it are zeroed from the last one back, each
    /// synced before the next, so the log on disk is always a valid log
    /// ending somewhere between `keep` and where it ended (a frame zeroed
    /// halfway is a torn tail). Running it again finishes the job.
    ///
    /// Errors: [`LogError::Poisoned`]; [`LogError::TruncateBeforeLog`]
    /// when `keep` is before the oldest batch on disk less one; I/O errors
    /// (the log is then poisoned: what is on disk is still a valid log,
    /// and a reopen followed by the same call finishes the cut).
    pub async fn truncate_after(&mut self, keep: u64) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let last = self.last_batch();
        if keep >= last {
            return Ok(0);
        }
        let first = self.segments.front().map_or(self.next_seq, |s| s.1);
        if keep + 1 < first {
            return Err(LogError::TruncateBeforeLog { keep, first });
        }
        let result = self.truncate_inner(keep).await;
        if result.is_err() {
            self.poisoned = true;
        }
        result.map(|()| last - keep)
    }

    async fn truncate_inner(&mut self, keep: u64) -> Result<(), LogError> {
        // The segment holding batch `keep + 1` is the last one starting at
        // or before it; its batches end where the next one's begin.
        let target = self
            .segments
            .iter()
            .rposition(|&(_, first)| first <= keep + 1)
            .expect("keep is at or after the oldest batch less one");
        let ends_before = self.segments.get(target + 1).map_or(self.next_seq, |s| s.1);
        while self.segments.len() > target + 1 {
            let (number, _) = self.segments.pop_back().expect("not empty");
            if number == self.segment {
                // Let go of the open file before its segment goes.
                let (previous, _) = self.segments[target];
                self.file = self.backend.open(previous).await?;
                self.segment = previous;
            }
            self.backend.remove(number).await?;
        }
        let (number, first_batch) = self.segments[target];
        let found = self.frames_from(number, first_batch, keep + 1).await?;
        if found.next_seq != ends_before {
            return Err(LogError::Damaged {
                number,
                offset: found.valid_end,
                reason: Damage::OutOfOrder {
                    found: found.next_seq,
                    expected: ends_before,
                },
            });
        }
        // What lies past the last frame first (zeros, unless a failed
        // write left something), then each frame from the last back.
        if found.dirty_end > found.valid_end {
            let zeros = vec![0; (found.dirty_end - found.valid_end) as usize];
            write_all(&mut self.file, found.valid_end, &zeros).await?;
            self.file.sync().await?;
        }
        for &(offset, bytes) in found.frames.iter().rev() {
            write_all(&mut self.file, offset, &vec![0; bytes as usize]).await?;
            self.file.sync().await?;
        }
        let size = self.file.size().await?;
        self.capacity = size.min(self.config.segment_bytes_max);
        self.end = found
            .frames
            .first()
            .map_or(found.valid_end, |&(offset, _)| offset);
        self.next_seq = keep + 1;
        self.backend
            .prepare(self.config.next_bytes(self.capacity, 0), self.capacity);
        Ok(())
    }

    /// The frames of segment `number` (whose first batch is `first`) from
    /// batch `from` on, read from the open file.
    async fn frames_from(
        &self,
        number: u64,
        first: u64,
        from: u64,
    ) -> Result<FramesFound, LogError> {
        debug_assert_eq!(number, self.segment);
        let len = self.file.size().await?;
        let bytes = self.file.read_at(0, len as usize).await?;
        let mut frames = Vec::new();
        let (mut offset, mut next_seq) = (BLOCK_BYTES, first);
        while offset < bytes.len() {
            match format::parse_frame(&bytes[offset..]) {
                Frame::Batch {
                    seq, frame_bytes, ..
                } if seq == next_seq => {
                    if seq >= from {
                        frames.push((offset as u64, frame_bytes as u64));
                    }
                    next_seq += 1;
                    offset += frame_bytes;
                }
                _ => break,
            }
        }
        let valid_end = offset as u64;
        let dirty = dirty_bytes_after(&bytes, valid_end).unwrap_or(0) as u64;
        Ok(FramesFound {
            frames,
            next_seq,
            valid_end,
            dirty_end: valid_end + dirty,
        })
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// True while the disk has no room for another segment: what is left
    /// of the current one should go to acknowledgements, not new messages.
    pub fn disk_full(&self) -> bool {
        self.backend.full()
    }
}

/// EMFILE, ENFILE or ENOMEM: the process or the machine ran short of
/// something that comes back (file descriptors, memory) while a segment
/// was prepared, before any of it was in use. Never a reason to trust a
/// file whose write or sync failed: those errors poison the log.
pub fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    ) || error.kind() == io::ErrorKind::OutOfMemory
}

/// ENOSPC, or a quota's EDQUOT: the disk, not the file, is the problem.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl<B: Backend> Journal for Log<B> {
    async fn commit(&mut self, records: &[Record]) -> Result<(), JournalError> {
        match self.append(records).await {
            Ok(()) => Ok(()),
            Err(LogError::NoSpace) => Err(JournalError::NoSpace),
            Err(LogError::Unavailable(error)) => Err(JournalError::Unavailable(error)),
            Err(error) => Err(JournalError::Failed(error)),
        }
    }

    fn stats(&self) -> JournalStats {
        self.stats
    }

    fn disk_full(&self) -> bool {
        Log::disk_full(self)
    }

    fn closed_segments(&self) -> usize {
        Log::closed_segments(self)
    }

    fn last_batch(&self) -> u64 {
        Log::last_batch(self)
    }

    async fn remove_through(&mut self, batch: u64) -> Result<usize, RemoveError> {
        Log::remove_through(self, batch).await
    }

    async fn commit_shipping(
        &mut self,
        records: &[Record],
        ship: &mut Vec<shipping::ShippedBatch>,
    ) -> Result<(), JournalError> {
        match self.append_shipping(records, ship).await {
            Ok(()) => Ok(()),
            Err(LogError::NoSpace) => Err(JournalError::NoSpace),
            Err(LogError::Unavailable(error)) => Err(JournalError::Unavailable(error)),
            Err(error) => Err(JournalError::Failed(error)),
        }
    }

    async fn read_shipped(
        &self,
        from: u64,
        upto: u64,
        bytes_max: usize,
    ) -> Result<Vec<shipping::ShippedBatch>, shipping::ReadError> {
        self.read_batches(from, upto, bytes_max).await
    }
}

/// Segment numbers must follow each other: a gap is a lost file.
fn check_contiguous(numbers: &[u64]) -> Result<(), LogError> {
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(LogError::MissingSegment {
                before: pair[0],
                after: pair[1],
            });
        }
    }
    Ok(())
}

/// Deletes the segments that a later one shows to end at or before the
/// checkpoint (they hold nothing to replay) and takes them off `numbers`;
/// how many went.
async fn drop_obsolete<B: Backend>(
    backend: &B,
    numbers: &mut Vec<u64>,
    checkpoint: u64,
) -> Result<u64, LogError> {
    let mut obsolete = 0;
    while numbers.len() > 1 {
        let next = backend.open(numbers[1]).await?;
        let block = next.read_at(0, BLOCK_BYTES).await?;
        let Ok(header) = SegmentHeader::decode(&block) else {
            break;
        };
        if header.first_batch > checkpoint + 1 {
            break;
        }
        backend.remove(numbers[0]).await?;
        numbers.remove(0);
        obsolete += 1;
    }
    Ok(obsolete)
}

/// The whole frames of a segment from some batch on, for a truncation.
struct FramesFound {
    /// `(offset, bytes)` of each, in order.
    frames: Vec<(u64, u64)>,
    /// The batch after the segment's last whole frame.
    next_seq: u64,
    /// Where the last whole frame ends, and where the last non-zero block
    /// after it ends (equal when only zeros follow).
    valid_end: u64,
    dirty_end: u64,
}

/// What replaying every segment left: the next batch number (none when no
/// segment held a header), the last segment read with where its last whole
/// batch ends, and each segment's first batch.
struct Replayed<F> {
    next_seq: Option<u64>,
    tail: Option<Tail<F>>,
    segments: VecDeque<(u64, u64)>,
}

/// The last segment replayed, to append to.
struct Tail<F> {
    number: u64,
    file: F,
    /// Where its last whole batch ends.
    end: u64,
    bytes: Vec<u8>,
}

impl<F: SegmentFile> Tail<F> {
    /// Zeroes whatever lies past the last whole batch, which replay judged
    /// torn, so that it can never be mistaken for a batch later. (Zeros,
    /// not a shorter file: the segment stays preallocated.)
    async fn clean(mut self) -> Result<(u64, F, u64), LogError> {
        if let Some(dirty) = dirty_bytes_after(&self.bytes, self.end) {
            write_all(&mut self.file, self.end, &vec![0; dirty]).await?;
            self.file.sync().await?;
        }
        Ok((self.number, self.file, self.end))
    }
}

/// Replays the segments `numbers` in order, each checked against the one
/// before and the checkpoint, handing every record after the checkpoint to
/// `each`.
async fn replay_segments<B: Backend>(
    (backend, config): (&B, &LogConfig),
    numbers: &[u64],
    checkpoint: u64,
    recovery: &mut Recovery,
    each: &mut impl FnMut(Record),
) -> Result<Replayed<B::File>, LogError> {
    let last = *numbers.last().expect("the caller checked");
    let mut replayed = Replayed {
        next_seq: None,
        tail: None,
        segments: VecDeque::new(),
    };
    for &number in numbers {
        let (file, bytes) = read_segment(backend, config, number).await?;
        let header = match SegmentHeader::decode(&bytes) {
            Ok(header) => header,
            // A crash between creating the last segment and syncing its
            // header leaves it blank or torn, with nothing acknowledged.
            Err(_) if number == last && bytes.iter().all(|&b| b == 0) => {
                drop(file);
                backend.remove(number).await?;
                recovery.torn_tail = Some((number, 0));
                break;
            }
            Err(source) => return Err(LogError::Format { number, source }),
        };
        let expected = check_continuity(config, (number, &header), replayed.next_seq, checkpoint)?;
        recovery.segments += 1;
        let image = SegmentImage {
            number,
            is_last: number == last,
            bytes: &bytes,
        };
        let (end, next) = replay_segment(config, image, expected, checkpoint, recovery, each)?;
        replayed.next_seq = Some(next);
        replayed.segments.push_back((number, header.first_batch));
        replayed.tail = Some(Tail {
            number,
            file,
            end,
            bytes,
        });
    }
    Ok(replayed)
}

/// Opens a segment and reads it whole, refusing sizes no writer produces
/// before allocating for them.
async fn read_segment<B: Backend>(
    backend: &B,
    config: &LogConfig,
    number: u64,
) -> Result<(B::File, Vec<u8>), LogError> {
    let file = backend.open(number).await?;
    let len = file.size().await?;
    let limit = segment_file_bytes_limit(config);
    if len > limit {
        return Err(LogError::SegmentTooLarge {
            number,
            bytes: len,
            limit,
        });
    }
    let bytes = file.read_at(0, len as usize).await?;
    Ok((file, bytes))
}

/// Checks a segment's header against the config, the checkpoint (the first
/// segment replayed must start at or before the batch after it) and the
/// segment before (`next_seq`); the first batch it must hold.
fn check_continuity(
    config: &LogConfig,
    (number, header): (u64, &SegmentHeader),
    next_seq: Option<u64>,
    checkpoint: u64,
) -> Result<u64, LogError> {
    check_header(config, number, header)?;
    if next_seq.is_none() && header.first_batch > checkpoint + 1 {
        return Err(LogError::CheckpointGap {
            checkpoint,
            number,
            first: header.first_batch,
        });
    }
    let expected = next_seq.unwrap_or(header.first_batch);
    if header.first_batch != expected {
        return Err(LogError::Damaged {
            number,
            offset: 0,
            reason: Damage::Discontinuous {
                first: header.first_batch,
                previous: expected - 1,
            },
        });
    }
    Ok(expected)
}

fn check_header(config: &LogConfig, number: u64, header: &SegmentHeader) -> Result<(), LogError> {
    if header.shard != config.shard || header.shard_count != config.shard_count {
        return Err(LogError::WrongShard {
            number,
            found_shard: header.shard,
            found_count: header.shard_count,
            shard: config.shard,
            shard_count: config.shard_count,
        });
    }
    if header.number != number {
        return Err(LogError::Damaged {
            number,
            offset: 0,
            reason: Damage::Misnamed {
                file: number,
                header: header.number,
            },
        });
    }
    Ok(())
}

/// One segment's bytes, for replay.
struct SegmentImage<'a> {
    number: u64,
    is_last: bool,
    bytes: &'a [u8],
}

/// Replays the batches of one segment, the first of them `first`, applying
/// those after `checkpoint`; returns the offset after the last whole batch
/// and the seq the next batch gets.
fn replay_segment(
    config: &LogConfig,
    segment: SegmentImage<'_>,
    first: u64,
    checkpoint: u64,
    recovery: &mut Recovery,
    each: &mut impl FnMut(Record),
) -> Result<(u64, u64), LogError> {
    let SegmentImage {
        number,
        is_last,
        bytes,
    } = segment;
    let mut offset = BLOCK_BYTES;
    let mut expected = first;
    while offset < bytes.len() {
        let frame = format::parse_frame(&bytes[offset..]);
        let unwritten = matches!(frame, Frame::Empty);
        let reason = match frame {
            Frame::Batch {
                seq,
                count,
                payload,
                frame_bytes,
            } if seq == expected => {
                // Batches a checkpoint holds are skipped, not applied twice.
                if seq > checkpoint {
                    format::decode_records(seq, count, payload, &mut *each)
                        .map_err(|source| LogError::Format { number, source })?;
                    recovery.batches += 1;
                    recovery.records += u64::from(count);
                }
                expected += 1;
                offset += frame_bytes;
                continue;
            }
            Frame::Batch { seq, .. } => Damage::OutOfOrder {
                found: seq,
                expected,
            },
            Frame::Empty => Damage::Unwritten,
            Frame::Invalid(reason) => Damage::Invalid(reason),
        };
        // Not a batch we can use. If a later batch is whole, the log was
        // damaged in the middle; if nothing whole follows, this is where the
        // writing stopped.
        match next_batch_after(bytes, offset + BLOCK_BYTES, expected) {
            None => {
                if !unwritten {
                    // Only the last segment can end in an interrupted write:
                    // a segment is closed only after its batches synced.
                    if !is_last {
                        return Err(LogError::Damaged {
                            number,
                            offset: offset as u64,
                            reason,
                        });
                    }
                    recovery.torn_tail = Some((number, offset as u64));
                }
                return Ok((offset as u64, expected));
            }
            Some((found_at, found_seq)) => {
                if !config.salvage {
                    return Err(LogError::Damaged {
                        number,
                        offset: offset as u64,
                        reason,
                    });
                }
                recovery.salvaged.push(Salvaged {
                    segment: number,
                    offset: offset as u64,
                    damage: reason,
                    lost: expected..found_seq,
                });
                offset = found_at;
                expected = found_seq;
            }
        }
    }
    // The last batch's zero padding may not have reached the disk (a crash
    // can keep a write's data and lose its tail); the next batch still
    // starts on the block boundary after it.
    Ok((offset as u64, expected))
}

/// The largest segment file a writer can have produced: a full segment
/// plus one maximal frame, with room for a larger `segment_bytes_max` in an
/// earlier run's configuration.
fn segment_file_bytes_limit(config: &LogConfig) -> u64 {
    let frame_max =
        format::align_up((format::BATCH_HEADER_BYTES + format::BATCH_PAYLOAD_BYTES_MAX) as u64);
    config.segment_bytes_max.max(SEGMENT_BYTES_MAX_DEFAULT) * 2 + frame_max
}

/// How many bytes from `end` (a block boundary) on must be zeroed so that
/// nothing but zeros follows it: `None` when that is already so. A multiple
/// of the block size.
fn dirty_bytes_after(bytes: &[u8], end: u64) -> Option<usize> {
    let end = end as usize;
    let last = bytes.get(end..)?.iter().rposition(|&b| b != 0)?;
    Some(format::align_up(last as u64 + 1) as usize)
}

/// The first whole batch at a block boundary from `from` on with a seq at
/// least `expected`: `(offset, seq)`.
fn next_batch_after(bytes: &[u8], from: usize, expected: u64) -> Option<(usize, u64)> {
    let mut offset = from;
    while offset < bytes.len() {
        if let Frame::Batch { seq, .. } = format::parse_frame(&bytes[offset..]) {
            if seq >= expected {
                return Some((offset, seq));
            }
        }
        offset += BLOCK_BYTES;
    }
    None
}

/// Where the log is positioned in its current segment.
struct SegmentAt {
    number: u64,
    /// The size the segment was made with, at most `segment_bytes_max`.
    capacity: u64,
    /// Offset of the next frame.
    end: u64,
}

/// Creates segment `number` of `bytes`, its header naming `first_batch`,
/// durable on return; the backend may prepare the next one, of
/// `next_bytes`, meanwhile.
async fn create_segment<B: Backend>(
    backend: &B,
    config: &LogConfig,
    (number, first_batch): (u64, u64),
    (bytes, next_bytes): (u64, u64),
) -> Result<B::File, LogError> {
    let mut file = backend.create(number, bytes, next_bytes).await?;
    let header = SegmentHeader {
        shard: config.shard,
        shard_count: config.shard_count,
        number,
        first_batch,
    };
    write_all(&mut file, 0, &header.encode()).await?;
    file.sync().await?;
    Ok(file)
}

/// Short writes in a row, none of them finishing a block, before giving up.
const STALLED_WRITES_MAX: u32 = 8;

async fn write_all<F: SegmentFile>(file: &mut F, offset: u64, bytes: &[u8]) -> io::Result<()> {
    debug_assert!(
        offset.is_multiple_of(BLOCK_BYTES as u64) && bytes.len().is_multiple_of(BLOCK_BYTES)
    );
    let mut done = 0; // whole blocks written, in bytes
    let mut stalls = 0;
    while done < bytes.len() {
        let n = file.write_at(offset + done as u64, &bytes[done..]).await?;
        // Keep every write block-aligned, as direct I/O requires: a short
        // write is resumed from the start of the block it ended in.
        let advanced = if done + n >= bytes.len() {
            bytes.len() - done
        } else {
            align_down(n as u64) as usize
        };
        if advanced == 0 {
            stalls += 1;
            if stalls >= STALLED_WRITES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "segment writes keep storing less than a block",
                ));
            }
        } else {
            stalls = 0;
        }
        done += advanced;
    }
    Ok(())
}

fn align_down(bytes: u64) -> u64 {
    bytes / BLOCK_BYTES as u64 * BLOCK_BYTES as u64
}
