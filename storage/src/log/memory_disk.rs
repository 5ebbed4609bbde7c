//! A disk in memory that forgets, fails and lies on request: the backend the
//! log's fault tests run on.
//!
//! Each file keeps what is durable and what was written since the last sync.
//! [`MemoryDisk::crash`] returns every file to its durable contents plus a
//! chosen prefix of the unsynced writes (a torn write); faults make the Nth
//! operation fail with an errno or write short; bits can be flipped anywhere.

use std::{cell::RefCell, collections::BTreeMap, io, rc::Rc};

use super::backend::{Backend, SegmentFile};

/// What the Nth operation (counted from 1 across the whole disk) does instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with this errno (`libc::EIO`, `libc::ENOSPC`, ...).
    Errno(i32),
    /// A write stores only this many bytes (and says so).
    ShortWrite(usize),
}

#[derive(Debug, Default)]
struct File {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Writes since the last sync, in order, for torn crashes.
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Disk {
    files: BTreeMap<u64, File>,
    /// Bytes all files together may take; `create` past it fails with
    /// ENOSPC, as a full file system would.
    capacity_bytes: Option<u64>,
    /// Size of the last segment asked for.
    segment_bytes: u64,
    /// Size of the segment in use: `full` checks room for the smaller of
    /// the two (the log falls back to this size when the other does not
    /// fit).
    current_bytes: u64,
    operations: u64,
    faults: BTreeMap<u64, Fault>,
    /// While set, every `create` fails with this errno (as when the
    /// process is out of file descriptors).
    create_errno: Option<i32>,
}

/// A shared handle: clones see the same disk, as two processes would.
#[derive(Debug, Clone, Default)]
pub struct MemoryDisk {
    disk: Rc<RefCell<Disk>>,
}

impl MemoryDisk {
    pub fn new() -> MemoryDisk {
        MemoryDisk::default()
    }

    /// Makes operation number `at` (see [`MemoryDisk::operations`]) fail.
    pub fn inject(&self, at: u64, fault: Fault) {
        self.disk.borrow_mut().faults.insert(at, fault);
    }

    /// Makes every `create` fail with `errno` until called with `None`.
    pub fn fail_creates(&self, errno: Option<i32>) {
        self.disk.borrow_mut().create_errno = errno;
    }

    /// Limits the bytes all files may take together (`None`: no limit).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.disk.borrow_mut().capacity_bytes = bytes;
    }

    /// Operations performed so far.
    pub fn operations(&self) -> u64 {
        self.disk.borrow().operations
    }

    /// Loses power: every file keeps its durable bytes plus the first
    /// `torn_bytes` bytes of its unsynced writes, in write order.
    pub fn crash(&self, torn_bytes: usize) {
        let mut disk = self.disk.borrow_mut();
        disk.faults.clear();
        for file in disk.files.values_mut() {
            let mut image = std::mem::take(&mut file.durable);
            let mut budget = torn_bytes;
            for (offset, bytes) in file.unsynced.drain(..) {
                let kept = budget.min(bytes.len());
                write_into(&mut image, offset, &bytes[..kept]);
                budget -= kept;
            }
            file.current = image.clone();
            file.durable = image;
        }
    }

    /// Flips one bit of segment `number`, durably.
    pub fn flip_bit(&self, number: u64, byte: u64, bit: u8) {
        let mut disk = self.disk.borrow_mut();
        let file = disk
            .files
            .get_mut(&number)
            .expect("flip a bit of a file that exists");
        for image in [&mut file.durable, &mut file.current] {
            if let Some(b) = image.get_mut(byte as usize) {
                *b ^= 1 << bit;
            }
        }
    }

    /// Counts an operation and returns the fault planned for it, if any.
    fn operation(&self) -> Option<Fault> {
        let mut disk = self.disk.borrow_mut();
        disk.operations += 1;
        let at = disk.operations;
        disk.faults.remove(&at)
    }

    fn check(&self) -> io::Result<Option<usize>> {
        match self.operation() {
            None => Ok(None),
            Some(Fault::Errno(errno)) => Err(io::Error::from_raw_os_error(errno)),
            Some(Fault::ShortWrite(n)) => Ok(Some(n)),
        }
    }
}

fn write_into(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(bytes);
}

fn missing(number: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("segment {number} does not exist"),
    )
}

impl Disk {
    fn has_room(&self, bytes: u64) -> bool {
        let used: u64 = self.files.values().map(|f| f.current.len() as u64).sum();
        self.capacity_bytes
            .is_none_or(|capacity| used + bytes <= capacity)
    }
}

impl Backend for MemoryDisk {
    type File = MemoryFile;

    async fn list(&self) -> io::Result<Vec<u64>> {
        self.check()?;
        Ok(self.disk.borrow().files.keys().copied().collect())
    }

    async fn create(&self, number: u64, bytes: u64, next_bytes: u64) -> io::Result<MemoryFile> {
        self.check()?;
        let mut disk = self.disk.borrow_mut();
        if let Some(errno) = disk.create_errno {
            return Err(io::Error::from_raw_os_error(errno));
        }
        disk.segment_bytes = bytes;
        if !disk.has_room(bytes) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if disk.files.contains_key(&number) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {number} exists"),
            ));
        }
        let blank = vec![0; bytes as usize];
        disk.files.insert(
            number,
            File {
                durable: blank.clone(),
                current: blank,
                unsynced: Vec::new(),
            },
        );
        // What `full` checks room for from now on: the next segment, or
        // one like this one.
        disk.segment_bytes = next_bytes;
        disk.current_bytes = bytes;
        Ok(MemoryFile {
            disk: self.clone(),
            number,
        })
    }

    fn full(&self) -> bool {
        let disk = self.disk.borrow();
        !disk.has_room(super::backend::fallback_bytes(
            disk.segment_bytes,
            disk.current_bytes,
        ))
    }

    fn prepare(&self, bytes: u64, current_bytes: u64) {
        let mut disk = self.disk.borrow_mut();
        disk.segment_bytes = bytes;
        disk.current_bytes = current_bytes;
    }

    async fn open(&self, number: u64) -> io::Result<MemoryFile> {
        self.check()?;
        if !self.disk.borrow().files.contains_key(&number) {
            return Err(missing(number));
        }
        Ok(MemoryFile {
            disk: self.clone(),
            number,
        })
    }

    async fn remove(&self, number: u64) -> io::Result<()> {
        self.check()?;
        match self.disk.borrow_mut().files.remove(&number) {
            Some(_) => Ok(()),
            None => Err(missing(number)),
        }
    }
}

/// A segment of a [`MemoryDisk`].
#[derive(Debug)]
pub struct MemoryFile {
    disk: MemoryDisk,
    number: u64,
}

impl MemoryFile {
    fn with<T>(&self, f: impl FnOnce(&mut File) -> T) -> io::Result<T> {
        let mut disk = self.disk.disk.borrow_mut();
        let file = disk
            .files
            .get_mut(&self.number)
            .ok_or_else(|| missing(self.number))?;
        Ok(f(file))
    }
}

impl SegmentFile for MemoryFile {
    async fn size(&self) -> io::Result<u64> {
        self.disk.check()?;
        self.with(|f| f.current.len() as u64)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.disk.check()?;
        self.with(|f| {
            let start = (offset as usize).min(f.current.len());
            let end = (start + len).min(f.current.len());
            f.current[start..end].to_vec()
        })
    }

    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<usize> {
        let short = self.disk.check()?;
        let n = short.map_or(bytes.len(), |n| n.min(bytes.len()));
        self.with(|f| {
            write_into(&mut f.current, offset, &bytes[..n]);
            f.unsynced.push((offset, bytes[..n].to_vec()));
            n
        })
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.disk.check()?;
        self.with(|f| {
            // Only what was written since the last sync changes: segments
            // are preallocated, so copying whole images would dominate.
            for (offset, bytes) in f.unsynced.drain(..) {
                write_into(&mut f.durable, offset, &bytes);
            }
        })
    }
}
