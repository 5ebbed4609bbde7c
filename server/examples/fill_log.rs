//! Writes a data dir that holds `--messages` queued (unacknowledged)
//! messages for `--accounts` accounts, exactly as the server's log would
//! hold them, so that a restart can be timed on it
//! (docs/measure-recovery.sh). Each shard's log is written by its own
//! glommio executor, through the same `Log` the server uses.
//!
//!     cargo run --release -p server --example fill_log -- \
//!         --data-dir /tmp/isle-10m --shards 1 --accounts 100000 --messages 10000000

use std::{path::PathBuf, sync::Arc, time::Instant};

use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use shard::PartitionMap;
use storage::{
    log::{glommio_disk::GlommioDisk, Log, LogConfig},
    EntryRecord, Record,
};
use wire::Phone;

#[derive(Debug, Clone, Parser)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    shards: u16,
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Records per commit (one batch frame set and one sync each).
    #[arg(long, default_value_t = 10_000)]
    commit_records: usize,
}

const FIRST_PHONE: u64 = 15_550_000_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let map = PartitionMap::new(shard::PARTITIONS_DEFAULT, args.shards);
    let started = Instant::now();
    let mut threads = Vec::new();
    for shard in 0..args.shards {
        let args = args.clone();
        threads.push(
            LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(512 * 1024)
                .spawn(move || async move { fill(&args, map, shard).await })
                .map_err(|e| anyhow::anyhow!("starting shard {shard}: {e}"))?,
        );
    }
    let mut total = 0;
    for thread in threads {
        total += thread
            .join()
            .map_err(|e| anyhow::anyhow!("shard thread: {e}"))??;
    }
    eprintln!(
        "wrote {total} records for {} messages in {:.1} s",
        args.messages,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes shard `shard`'s accounts and its share of the messages; returns
/// the records written.
async fn fill(args: &Args, map: PartitionMap, shard: u16) -> anyhow::Result<u64> {
    let dir = args.data_dir.join("log").join(format!("shard-{shard}"));
    let disk = GlommioDisk::open(&dir).await?;
    let (mut log, recovery) = Log::open(disk, LogConfig::new(shard, args.shards), |_| {}).await?;
    anyhow::ensure!(
        recovery.records == 0,
        "{} already holds a log",
        dir.display()
    );
    let owners: Vec<Phone> = (0..args.accounts)
        .map(|n| Phone::from_u64(FIRST_PHONE + n))
        .collect::<Result<_, _>>()?;
    let owners: Vec<Phone> = owners
        .into_iter()
        .filter(|p| map.shard_of(*p) == shard)
        .collect();
    let mut records: Vec<Record> = owners
        .iter()
        .enumerate()
        .map(|(n, &phone)| Record::AccountKey {
            phone,
            key_hash: [n as u8; storage::KEY_HASH_BYTES],
            generation: 1,
        })
        .collect();
    let mut written = 0;
    let body: Arc<[u8]> = Arc::from(vec![b'm'; args.body_bytes]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    // This shard's share of the messages, spread over its owners.
    let share = args.messages * owners.len() as u64 / args.accounts.max(1);
    let mut next_seq = vec![1u64; owners.len()];
    for n in 0..share {
        let index = (n % owners.len() as u64) as usize;
        let seq = next_seq[index];
        next_seq[index] += 1;
        let from = owners[(index + 1) % owners.len()];
        records.push(Record::MailboxPut {
            owner: owners[index],
            seq,
            entry: EntryRecord::Message {
                from,
                client_id: seq,
                sent_at_ms: now_ms,
                body: body.clone(),
            },
        });
        if records.len() >= args.commit_records {
            log.append(&records).await?;
            written += records.len() as u64;
            records.clear();
        }
    }
    log.append(&records).await?;
    written += records.len() as u64;
    Ok(written)
}
