//! Segment files on a real disk, written with O_DIRECT through io_uring
//! (glommio DMA files). Must be used from inside a glommio executor.

use std::{
    io,
    path::{Path, PathBuf},
};

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::{
    backend::{Backend, SegmentFile},
    format::BLOCK_BYTES,
};

/// Reads during replay go in pieces of this size, so a 64 MiB segment never
/// needs one 64 MiB DMA buffer.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// A directory of segment files named `<number, 20 digits>.log`.
pub struct GlommioDisk {
    path: PathBuf,
    directory: Directory,
}

impl GlommioDisk {
    /// Opens (creating it and its parents if needed) the directory at `path`.
    pub async fn open(path: &Path) -> io::Result<GlommioDisk> {
        std::fs::create_dir_all(path)?;
        // glommio opens paths relative to no directory at all (fd -1), so a
        // relative path fails with EBADF: resolve it first.
        let path = &std::fs::canonicalize(path)?;
        let directory = Directory::open(path).await.map_err(io::Error::from)?;
        // The directory's own entry in its parent must be durable too.
        if let Some(parent) = path.parent() {
            sync_directory(parent).await?;
        }
        Ok(GlommioDisk {
            path: path.to_path_buf(),
            directory,
        })
    }

    fn file_path(&self, number: u64) -> PathBuf {
        self.path.join(format!("{number:020}.log"))
    }
}

async fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = Directory::open(path).await.map_err(io::Error::from)?;
    directory.sync().await.map_err(io::Error::from)?;
    directory.close().await.map_err(io::Error::from)
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

    async fn create(&self, number: u64) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(self.file_path(number))
            .await
            .map_err(io::Error::from)?;
        self.directory.sync().await.map_err(io::Error::from)?;
        Ok(GlommioFile { file })
    }

    async fn open(&self, number: u64) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(self.file_path(number))
            .await
            .map_err(io::Error::from)?;
        Ok(GlommioFile { file })
    }

    async fn remove(&self, number: u64) -> io::Result<()> {
        std::fs::remove_file(self.file_path(number))?;
        self.directory.sync().await.map_err(io::Error::from)
    }
}

/// One segment, open for direct I/O.
pub struct GlommioFile {
    file: DmaFile,
}

impl SegmentFile for GlommioFile {
    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(READ_CHUNK_BYTES);
            let chunk = self
                .file
                .read_at(offset + out.len() as u64, want)
                .await
                .map_err(io::Error::from)?;
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
        self.file
            .write_at(buffer, offset)
            .await
            .map_err(io::Error::from)
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(io::Error::from)
    }
}
