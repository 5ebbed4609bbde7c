//! Checkpoint files on a real disk: round trip, damage, the wrong shard.

use std::sync::Arc;

use storage::{
    log::checkpoint::{self, CheckpointError},
    EntryRecord, Record,
};
use wire::Phone;

fn records(count: u64, body_bytes: usize) -> Vec<Record> {
    let owner = Phone::from_u64(15_550_000_001).unwrap();
    let mut records = vec![Record::MailboxStart {
        owner,
        next_seq: 10,
    }];
    records.extend((0..count).map(|i| Record::MailboxPut {
        owner,
        seq: 10 + i,
        entry: EntryRecord::Message {
            from: Phone::from_u64(15_550_000_002).unwrap(),
            client_id: i,
            sent_at_ms: i,
            body: Arc::from(vec![(i % 251) as u8; body_bytes]),
        },
    }));
    records
}

fn load(dir: &std::path::Path) -> Result<(Option<u64>, Vec<Record>), CheckpointError> {
    let mut loaded = Vec::new();
    let header = checkpoint::load(dir, 1, 4, |r| loaded.push(r))?;
    Ok((header.map(|h| h.batch), loaded))
}

#[test]
fn the_newest_checkpoint_loads_whole_and_older_ones_can_go() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_path_buf();
    assert_eq!(load(&dir).unwrap(), (None, vec![]));
    let old = records(3, 10);
    // Large enough to take several frames (8 MiB payload each).
    let new = records(300, 60 * 1024);
    checkpoint::write(&dir, 1, 4, 17, &old).unwrap();
    checkpoint::write(&dir, 1, 4, 40, &new).unwrap();
    // A half-written one (no rename) is not a checkpoint.
    std::fs::write(dir.join("checkpoint-00000000000000000099.ckpt.tmp"), b"x").unwrap();
    let (batch, loaded) = load(&dir).unwrap();
    assert_eq!(batch, Some(40));
    assert!(loaded == new, "{} records", loaded.len());
    checkpoint::remove_older(&dir, 40).unwrap();
    assert_eq!(checkpoint::list(&dir).unwrap(), vec![40]);
}

#[test]
fn a_damaged_or_foreign_checkpoint_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_path_buf();
    checkpoint::write(&dir, 1, 4, 5, &records(50, 100)).unwrap();
    let path = dir.join("checkpoint-00000000000000000005.ckpt");
    let good = std::fs::read(&path).unwrap();

    for (at, what) in [(20, "header"), (4096 + 100, "a frame")] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let error = load(&dir).unwrap_err();
        assert!(
            matches!(error, CheckpointError::Damaged { .. }),
            "{what}: {error}"
        );
    }
    // Cut short.
    std::fs::write(&path, &good[..good.len() - 4096]).unwrap();
    assert!(matches!(load(&dir), Err(CheckpointError::Damaged { .. })));

    std::fs::write(&path, &good).unwrap();
    let error = checkpoint::load(&dir, 2, 4, |_| {}).unwrap_err();
    assert!(
        matches!(error, CheckpointError::WrongShard { .. }),
        "{error}"
    );
    assert!(load(&dir).is_ok());
}
