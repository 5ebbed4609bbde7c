//! Where segment files live. The log only speaks to this trait, so the same
//! log code runs over glommio DMA files in the server and over the in-memory,
//! fault-injecting disk in tests.

use std::io;

/// The smallest segment a disk must have room for not to be full: the
/// segment in use's size (`current_bytes`; 0 before there is one), which
/// the log falls back to when the next, larger one (`next_bytes`) does
/// not fit (`Log::rotate`).
pub fn fallback_bytes(next_bytes: u64, current_bytes: u64) -> u64 {
    match current_bytes {
        0 => next_bytes,
        current => current.min(next_bytes),
    }
}

/// A directory of numbered segment files.
#[allow(async_fn_in_trait)] // Shards are single-threaded; no Send bound wanted.
pub trait Backend {
    type File: SegmentFile;

    /// The segment numbers present, ascending.
    async fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates segment `number` with its first `bytes` bytes written as
    /// zeros. On return the zeros and the directory entry are durable.
    /// The segment after it will be `next_bytes` long: an implementation
    /// may prepare it meanwhile.
    ///
    /// Why zeros that are really written: an O_DIRECT write over blocks that
    /// already hold data changes no file metadata, so io_uring can issue it
    /// from the submitting thread. A write that extends a file, or lands on
    /// allocated-but-unwritten blocks, is handed to a kernel worker thread,
    /// which on a busy core waits for a time slice (milliseconds).
    async fn create(&self, number: u64, bytes: u64, next_bytes: u64) -> io::Result<Self::File>;
    /// True while no next segment can be made for lack of space, not even
    /// one as large as the current one (the log makes one of that size
    /// when a larger one does not fit): the current segment is all the
    /// room the log has left. An implementation may use the call to try
    /// again now and then.
    fn full(&self) -> bool;
    /// The log goes on in an existing segment of `current_bytes` (after a
    /// restart): make ready for the next one of `bytes`, and find out now
    /// whether there is room for one at least as large as the current
    /// one, so that [`full`](Self::full) is true from the start on a disk
    /// that has none. The default does nothing.
    fn prepare(&self, bytes: u64, current_bytes: u64) {
        let _ = (bytes, current_bytes);
    }
    async fn open(&self, number: u64) -> io::Result<Self::File>;
    /// Deletes segment `number`; durable on return.
    async fn remove(&self, number: u64) -> io::Result<()>;
}

/// One segment file. Offsets and lengths of writes are multiples of
/// [`BLOCK_BYTES`](super::format::BLOCK_BYTES).
#[allow(async_fn_in_trait)]
pub trait SegmentFile {
    async fn size(&self) -> io::Result<u64>;
    /// Up to `len` bytes from `offset`; fewer only where the file ends.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Writes a prefix of `bytes` at `offset` and says how long it was; the
    /// caller writes the rest.
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<usize>;
    /// Makes every completed write durable (fdatasync).
    async fn sync(&mut self) -> io::Result<()>;
}
