//! Segment files on a real disk, written with O_DIRECT through io_uring
//! (glommio DMA files). Must be used from inside a glommio executor.

use std::{
    alloc::Layout,
    cell::{Cell, RefCell},
    fs,
    io::{self, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    rc::Rc,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use glommio::{
    io::{Directory, DmaFile, OpenOptions},
    task::JoinHandle,
};

use super::{
    backend::{Backend, SegmentFile},
    format::BLOCK_BYTES,
    is_no_space,
};

/// While the disk is full, a new blank segment is tried at most this often.
const NO_SPACE_RETRY: Duration = Duration::from_secs(1);

/// Reads during replay go in pieces of this size, so a 64 MiB segment never
/// needs one 64 MiB DMA buffer.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Zeros go into a blank segment in writes of this size.
const ZERO_CHUNK_BYTES: usize = 1024 * 1024;

/// Names blank files uniquely within the process, so a preparation still
/// running for a disk that was dropped never touches another's file.
static BLANKS_MADE: AtomicU64 = AtomicU64::new(0);

/// A directory of segment files named `<number, 20 digits>.log`.
///
/// One blank segment is kept in preparation (`blank-*.tmp`, written with
/// zeros by glommio's blocking-thread pool) so that starting the next
/// segment is a rename, not 64 MiB of writes on the commit path.
///
/// When a blank file cannot be written for lack of space the disk is `full`
/// (the log's current segment is the only room left) until a later attempt,
/// made at most every [`NO_SPACE_RETRY`], succeeds. While segments grow, a
/// blank of the larger size that finds no room is followed by one as large
/// as the segment in use (which the log falls back to): the disk is full
/// only when that one finds no room either.
pub struct GlommioDisk {
    path: PathBuf,
    directory: Directory,
    spare: RefCell<Option<Spare>>,
    /// When the last blank file failed for lack of space, and its size;
    /// `None` once one has been written since. Shared with the preparing
    /// job.
    no_space: Rc<Cell<Option<(Instant, u64)>>>,
    /// Size of the segments asked for, to prepare the next one.
    segment_bytes: Cell<u64>,
    /// Size of the segment in use (0 before there is one): what a blank
    /// falls back to when one of `segment_bytes` finds no room.
    current_bytes: Cell<u64>,
}

/// A blank file being prepared: its path, size, and the job writing it.
struct Spare {
    path: PathBuf,
    bytes: u64,
    job: JoinHandle<io::Result<()>>,
    /// Set by the job when it has finished, either way.
    done: Rc<Cell<bool>>,
}

impl GlommioDisk {
    /// Opens (creating it and its parents if needed) the directory at `path`.
    pub async fn open(path: &Path) -> io::Result<GlommioDisk> {
        std::fs::create_dir_all(path)?;
        // glommio opens paths relative to no directory at all (fd -1), so a
        // relative path fails with EBADF: resolve it first.
        let path = &std::fs::canonicalize(path)?;
        let directory = Directory::open(path).await.map_err(os_error)?;
        // The directory's own entry in its parent must be durable too.
        if let Some(parent) = path.parent() {
            sync_directory(parent).await?;
        }
        // Blank files an earlier run left half-written are of no use.
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(".tmp")) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(GlommioDisk {
            path: path.to_path_buf(),
            directory,
            spare: RefCell::new(None),
            no_space: Rc::new(Cell::new(None)),
            segment_bytes: Cell::new(0),
            current_bytes: Cell::new(0),
        })
    }

    fn blank_path(&self) -> PathBuf {
        let made = BLANKS_MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        self.path.join(format!("blank-{pid}-{made}.tmp"))
    }

    /// Starts writing a blank file of `bytes` in the background.
    fn prepare_spare(&self, bytes: u64) {
        let path = self.blank_path();
        let job_path = path.clone();
        let done = Rc::new(Cell::new(false));
        let (job_done, no_space) = (done.clone(), self.no_space.clone());
        let job = glommio::spawn_local(async move {
            let result = glommio::executor()
                .spawn_blocking(move || write_blank(&job_path, bytes))
                .await;
            note_space(&no_space, bytes, &result);
            job_done.set(true);
            result
        })
        .detach();
        *self.spare.borrow_mut() = Some(Spare {
            path,
            bytes,
            job,
            done,
        });
    }

    /// Keeps a written blank file as the spare, for the next `create`.
    fn keep_spare(&self, path: PathBuf, bytes: u64) {
        let job = glommio::spawn_local(async { Ok(()) }).detach();
        *self.spare.borrow_mut() = Some(Spare {
            path,
            bytes,
            job,
            done: Rc::new(Cell::new(true)),
        });
    }

    /// A durable blank file of `bytes`: the spare if it fits, else a new one.
    async fn take_blank(&self, bytes: u64) -> io::Result<PathBuf> {
        self.segment_bytes.set(bytes);
        let spare = self.spare.borrow_mut().take();
        // A blank of another size, written: kept as the spare if no room
        // is found for one of `bytes` (it is the size the log falls back
        // to), deleted otherwise.
        let mut other = None;
        if let Some(spare) = spare {
            match spare.job.await {
                Some(Ok(())) if spare.bytes == bytes => return Ok(spare.path),
                Some(Ok(())) => other = Some((spare.path, spare.bytes)),
                // Out of space: writing another as large now would only
                // find that out again, 64 MiB later.
                Some(Err(error)) if is_no_space(&error) && spare.bytes <= bytes => {
                    return Err(error);
                }
                // The job failed otherwise or was cancelled, or a larger
                // blank found no room: make one now, and say why if it
                // fails too.
                _ => {
                    let _ = fs::remove_file(&spare.path);
                }
            }
        }
        if let Some((since, failed)) = self.no_space.get() {
            // The last try found no room for this size or a smaller one.
            // Space may have been freed since, so after a while a commit
            // waiting for a segment tries again (whether or not anyone
            // asked `full`).
            if failed <= bytes && since.elapsed() < NO_SPACE_RETRY {
                if let Some((path, other_bytes)) = other {
                    self.keep_spare(path, other_bytes);
                }
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        let path = self.blank_path();
        let job_path = path.clone();
        let result = glommio::executor()
            .spawn_blocking(move || write_blank(&job_path, bytes))
            .await;
        note_space(&self.no_space, bytes, &result);
        match (&result, other) {
            (Ok(()), Some((other_path, _))) => {
                let _ = fs::remove_file(other_path);
            }
            (Err(_), Some((other_path, other_bytes))) => self.keep_spare(other_path, other_bytes),
            (_, None) => {}
        }
        result.map(|()| path)
    }

    /// The size a blank falls back to when a larger one finds no room: the
    /// segment in use's, or the one asked for before there is one.
    fn fallback_bytes(&self) -> u64 {
        super::backend::fallback_bytes(self.segment_bytes.get(), self.current_bytes.get())
    }

    fn file_path(&self, number: u64) -> PathBuf {
        self.path.join(format!("{number:020}.log"))
    }
}

/// The OS error behind a glommio error, so that the log can tell a
/// transient one (`is_transient`) from a failed write: glommio's own
/// conversion keeps the message but drops the errno.
fn os_error<T>(error: glommio::GlommioError<T>) -> io::Error {
    match error {
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::from(other),
    }
}

/// Bytes an unprivileged writer may still use on the file system holding
/// `path` (`statvfs`'s `f_bavail`). Root may use a reserve beyond it, so
/// this errs on the side of calling a disk full.
fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs only writes into the struct it is given, which is
    // plain integers, so all zeros is a valid value to start from.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is a
    // valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Records whether writing a blank file of `bytes` found the disk full.
fn note_space(no_space: &Cell<Option<(Instant, u64)>>, bytes: u64, result: &io::Result<()>) {
    match result {
        Ok(()) => no_space.set(None),
        Err(error) if is_no_space(error) => no_space.set(Some((Instant::now(), bytes))),
        Err(_) => {}
    }
}

async fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = Directory::open(path).await.map_err(os_error)?;
    directory.sync().await.map_err(os_error)?;
    directory.close().await.map_err(os_error)
}

impl Backend for GlommioDisk {
    type File = GlommioFile;

    async fn list(&self) -> io::Result<Vec<u64>> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(number) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    async fn create(&self, number: u64, bytes: u64, next_bytes: u64) -> io::Result<GlommioFile> {
        let path = self.file_path(number);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {} exists", path.display()),
            ));
        }
        let blank = self.take_blank(bytes).await?;
        // Opened before it is renamed: if that fails (out of file
        // descriptors, say) no segment file appeared, and the blank is
        // kept for the next try, so the log can try again later.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&blank)
            .await
        {
            Ok(file) => file,
            Err(error) => {
                self.keep_spare(blank, bytes);
                return Err(os_error(error));
            }
        };
        if let Err(error) = fs::rename(&blank, &path) {
            drop(file);
            self.keep_spare(blank, bytes);
            return Err(error);
        }
        self.directory.sync().await.map_err(os_error)?;
        // The next segment's blank file is written while this one fills.
        self.current_bytes.set(bytes);
        self.segment_bytes.set(next_bytes);
        self.prepare_spare(next_bytes);
        Ok(GlommioFile { file })
    }

    fn prepare(&self, bytes: u64, current_bytes: u64) {
        self.segment_bytes.set(bytes);
        self.current_bytes.set(current_bytes);
        let fallback = self.fallback_bytes();
        match available_bytes(&self.path) {
            // Not even one segment's room: writing a blank would only find
            // that out, and the disk is full from the first commit on.
            Ok(available) if available < fallback => {
                self.no_space.set(Some((Instant::now(), fallback)));
            }
            // Room for a segment like the current one, not a larger one.
            Ok(available) if available < bytes => self.prepare_spare(fallback),
            _ => self.prepare_spare(bytes),
        }
    }

    fn full(&self) -> bool {
        let Some((since, failed)) = self.no_space.get() else {
            return false;
        };
        let fallback = self.fallback_bytes();
        let idle = self.spare.borrow().as_ref().is_none_or(|s| s.done.get());
        if failed > fallback {
            // A larger segment found no room; one like the current one,
            // which the log falls back to, may: find out (the disk is
            // full only if it does not fit either).
            let has_fallback = self
                .spare
                .borrow()
                .as_ref()
                .is_some_and(|s| s.bytes == fallback);
            if idle && !has_fallback {
                if let Some(spare) = self.spare.borrow_mut().take() {
                    let _ = fs::remove_file(&spare.path);
                }
                self.prepare_spare(fallback);
            }
            return false;
        }
        // Space may have been freed since: try another blank file now and
        // then, once the last attempt is over.
        if idle && since.elapsed() >= NO_SPACE_RETRY && fallback > 0 {
            if let Some(spare) = self.spare.borrow_mut().take() {
                let _ = fs::remove_file(&spare.path);
            }
            self.no_space.set(Some((Instant::now(), failed)));
            self.prepare_spare(fallback);
        }
        true
    }

    async fn open(&self, number: u64) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(self.file_path(number))
            .await
            .map_err(os_error)?;
        Ok(GlommioFile { file })
    }

    async fn remove(&self, number: u64) -> io::Result<()> {
        std::fs::remove_file(self.file_path(number))?;
        self.directory.sync().await.map_err(os_error)
    }
}

/// One segment, open for direct I/O.
pub struct GlommioFile {
    file: DmaFile,
}

impl SegmentFile for GlommioFile {
    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(os_error)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(READ_CHUNK_BYTES);
            let chunk = self
                .file
                .read_at(offset + out.len() as u64, want)
                .await
                .map_err(os_error)?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<usize> {
        debug_assert!(offset.is_multiple_of(BLOCK_BYTES as u64));
        let mut buffer = self.file.alloc_dma_buffer(bytes.len());
        buffer.as_bytes_mut().copy_from_slice(bytes);
        self.file.write_at(buffer, offset).await.map_err(os_error)
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(os_error)
    }
}

/// Writes a new file of `bytes` zeros at `path` with O_DIRECT (so that
/// nothing of it sits in the page cache, where later direct writes would
/// have to evict it) and makes it durable. Runs on a blocking thread.
fn write_blank(path: &Path, bytes: u64) -> io::Result<()> {
    let result = write_zeros(path, bytes);
    if result.is_err() {
        // A partial file would only hold on to the space that ran out.
        let _ = fs::remove_file(path);
    }
    result
}

fn write_zeros(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let zeros = AlignedZeros::new(ZERO_CHUNK_BYTES);
    let mut offset = 0;
    while offset < bytes {
        let len = (bytes - offset).min(ZERO_CHUNK_BYTES as u64);
        // Sizes are whole blocks, so every write stays aligned.
        let len = super::format::align_up(len) as usize;
        file.write_all_at(&zeros.as_slice()[..len], offset)?;
        offset += len as u64;
    }
    file.flush()?;
    file.sync_all()
}

/// A block-aligned buffer of zeros, as O_DIRECT requires.
struct AlignedZeros {
    pointer: *mut u8,
    layout: Layout,
}

impl AlignedZeros {
    fn new(len: usize) -> AlignedZeros {
        let layout = Layout::from_size_align(len, BLOCK_BYTES).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedZeros { pointer, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `pointer` owns `layout.size()` initialized (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.pointer, self.layout.size()) }
    }
}

impl Drop for AlignedZeros {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.pointer, self.layout) }
    }
}
