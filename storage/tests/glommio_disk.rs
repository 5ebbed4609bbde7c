//! The log on real files: direct I/O through io_uring, real fdatasync.

use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement};
use storage::{
    log::{format::BLOCK_BYTES, glommio_disk::GlommioDisk, Log, LogConfig},
    EntryRecord, Record,
};
use wire::Phone;

fn put(seq: u64, body_bytes: usize) -> Record {
    Record::MailboxPut {
        owner: Phone::from_u64(15_550_000_001).unwrap(),
        seq,
        entry: EntryRecord::Message {
            from: Phone::from_u64(15_550_000_002).unwrap(),
            client_id: seq,
            sent_at_ms: seq,
            body: Arc::from(vec![seq as u8; body_bytes]),
        },
    }
}

#[test]
fn commits_survive_reopen_and_segments_rotate() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_path_buf();
    let config = LogConfig {
        segment_bytes_max: 256 * 1024,
        ..LogConfig::new(0, 1)
    };
    let path = dir.clone();
    let written: Vec<Vec<Record>> = (0..40u64)
        .map(|c| {
            (0..5)
                .map(|i| put(c * 5 + i + 1, (c * 997 + i * 131) as usize % 20_000))
                .collect()
        })
        .collect();
    let expected = written.concat();
    let segments = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let disk = GlommioDisk::open(&path).await.unwrap();
            let (mut log, recovery) = Log::open(disk, config, |_| panic!("empty log"))
                .await
                .unwrap();
            assert_eq!(recovery.batches, 0);
            for commit in &written {
                log.append(commit).await.unwrap();
            }
            log.segments().count()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(segments > 1, "{segments} segments");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let logs = names.iter().filter(|n| n.ends_with(".log")).count();
    assert_eq!(logs, segments, "{names:?}");

    // Segments are preallocated: the last is as long as a full one.
    let last = dir.join(format!("{segments:020}.log"));
    let len = std::fs::metadata(&last).unwrap().len();
    assert_eq!(len, 256 * 1024);

    // A torn tail, as a crash mid-write leaves it: garbage after the last batch.
    let mut bytes = std::fs::read(&last).unwrap();
    let data_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let torn_at = data_end.next_multiple_of(BLOCK_BYTES);
    let garbage = b"ISLB\x10\x00\x00\x00 torn write";
    bytes[torn_at..torn_at + garbage.len()].copy_from_slice(garbage);
    std::fs::write(&last, &bytes).unwrap();

    let path = dir.clone();
    let (replayed, torn) = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let disk = GlommioDisk::open(&path).await.unwrap();
            let mut replayed = Vec::new();
            let (mut log, recovery) = Log::open(disk, config, |r| replayed.push(r)).await.unwrap();
            log.append(&[put(9_999, 10)]).await.unwrap();
            (replayed, recovery.torn_tail)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(
        replayed == expected,
        "replay differs: {} records",
        replayed.len()
    );
    assert_eq!(torn, Some((segments as u64, torn_at as u64)));
    // The torn bytes were zeroed, not cut: the segment keeps its size.
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);

    let path = dir.clone();
    let again = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let disk = GlommioDisk::open(&path).await.unwrap();
            let mut replayed = Vec::new();
            Log::open(disk, config, |r| replayed.push(r)).await.unwrap();
            replayed
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(again.len(), expected.len() + 1);
    assert_eq!(again.last(), Some(&put(9_999, 10)));
}

#[test]
fn a_segment_larger_than_any_writer_makes_is_refused_before_reading_it() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_path_buf();
    let path = dir.clone();
    let open = move || {
        let path = path.clone();
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(256 * 1024)
            .spawn(move || async move {
                let disk = GlommioDisk::open(&path).await.unwrap();
                Log::open(disk, LogConfig::new(0, 1), |_| {})
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap()
            .join()
            .unwrap()
    };
    open().unwrap();
    // A sparse 1 GiB file: costs no disk, and would cost 1 GiB of memory
    // if replay read it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(format!("{:020}.log", 1)))
        .unwrap();
    file.set_len(1 << 30).unwrap();
    let error = open().unwrap_err();
    assert!(
        error.contains("over the") && error.contains("segment_bytes_max"),
        "{error}"
    );
}

#[test]
fn a_new_log_waits_for_a_small_first_segment_and_prepares_the_next_meanwhile() {
    use storage::log::FIRST_SEGMENT_BYTES_MAX;
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().to_path_buf();
    let spare = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let disk = GlommioDisk::open(&path).await.unwrap();
            let (mut log, _) = Log::open(disk, LogConfig::new(0, 1), |_| {}).await.unwrap();
            let first = std::fs::metadata(path.join(format!("{:020}.log", 1)));
            assert_eq!(first.unwrap().len(), FIRST_SEGMENT_BYTES_MAX);
            // The next segment's blank file, twice as large, is written in
            // the background; a commit lets the executor run it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                log.append(&[put(1, 10)]).await.unwrap();
                let blank = std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap())
                    .find(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
                let len = blank.map(|e| e.metadata().unwrap().len());
                if len == Some(2 * FIRST_SEGMENT_BYTES_MAX) || std::time::Instant::now() > deadline
                {
                    return len;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(spare, Some(2 * FIRST_SEGMENT_BYTES_MAX));
}

/// A truncation on real files: the segments past the cut are deleted, the
/// frames past it zeroed and synced, and the log goes on from the cut,
/// into new segments (made from prepared blanks), across a reopen.
#[test]
fn a_truncation_on_real_files_goes_on_from_the_cut_across_a_reopen() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().to_path_buf();
    let config = LogConfig {
        segment_bytes_max: 64 * 1024,
        ..LogConfig::new(0, 1)
    };
    let commit = |c: u64| -> Vec<Record> { vec![put(c, 3_000)] };
    let keep = 9;
    let (segments_before, segments_after) = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let disk = GlommioDisk::open(&path).await.unwrap();
            let (mut log, _) = Log::open(disk, config, |_| panic!("empty log"))
                .await
                .unwrap();
            for c in 1..=60 {
                log.append(&commit(c)).await.unwrap();
            }
            let before = log.segments().count();
            assert_eq!(log.truncate_after(keep).await.unwrap(), 60 - keep);
            let after = log.segments().count();
            for c in 1_000..1_040 {
                log.append(&commit(c)).await.unwrap();
            }
            drop(log);
            let disk = GlommioDisk::open(&path).await.unwrap();
            let mut replayed = Vec::new();
            let (log, recovery) = Log::open(disk, config, |r| replayed.push(r)).await.unwrap();
            assert_eq!(recovery.torn_tail, None);
            assert_eq!(log.next_seq(), keep + 41);
            let expected: Vec<Record> = (1..=keep).chain(1_000..1_040).flat_map(commit).collect();
            assert!(replayed == expected, "replay differs");
            (before, after)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(
        segments_after < segments_before,
        "{segments_before} -> {segments_after}"
    );
}

/// A small ext4 file system, loop-mounted (the test runs as root, as the
/// server's disk-full tests do), unmounted on drop.
struct SmallDisk {
    _scratch: tempfile::TempDir,
    mount: std::path::PathBuf,
}

impl SmallDisk {
    fn new(bytes: u64) -> SmallDisk {
        let scratch = tempfile::tempdir().unwrap();
        let image = scratch.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let image = image.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", image]);
        let mount = scratch.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run("mount", &["-o", "loop", image, mount.to_str().unwrap()]);
        SmallDisk {
            _scratch: scratch,
            mount,
        }
    }

    /// Bytes an unprivileged writer may still use there.
    fn available(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes only into the plain struct it is given.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated, `stat` valid and writable.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e} (this test needs root and e2fsprogs)"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Segments grow (1 MiB, then 2 MiB, ...), and the disk has room for
/// another 1 MiB segment but not a 2 MiB one: it is not full, and the log
/// goes on into a second 1 MiB segment rather than refusing every commit
/// until 2 MiB are free.
#[test]
fn a_disk_with_room_for_a_segment_like_the_current_one_is_not_full() {
    const MIB: u64 = 1024 * 1024;
    let disk = SmallDisk::new(16 * MIB);
    let path = disk.mount.join("log");
    let filler = disk.mount.join("filler");
    let available = disk.available();
    // Leaves 2.5 MiB: the first segment (1 MiB) and then 1.5 MiB.
    assert!(available > 4 * MIB, "{available} bytes free");
    let zeros = vec![0u8; (available - 5 * MIB / 2) as usize];
    std::fs::write(&filler, zeros).unwrap();
    let segments = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let config = LogConfig {
                segment_bytes_max: 4 * MIB,
                first_segment_bytes: MIB,
                ..LogConfig::new(0, 1)
            };
            let disk = GlommioDisk::open(&path).await.unwrap();
            let (mut log, _) = Log::open(disk, config, |_| {}).await.unwrap();
            // The 2 MiB blank finds no room, a 1 MiB one does: once the
            // disk had time to find out, it is not full.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut seq = 0;
            loop {
                seq += 1;
                log.append(&[put(seq, 10)]).await.unwrap();
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                if !log.disk_full() && seq > 20 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "full for good");
            }
            // Every commit (one 4 KiB block each) goes through, past the
            // end of the first segment.
            for _ in 0..400 {
                seq += 1;
                log.append(&[put(seq, 10)]).await.unwrap();
            }
            log.segments().count()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(segments, 2);
}
