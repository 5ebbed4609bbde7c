//! `isle ctl`: the operator's view of a running server, through its admin
//! listener (`/status`). `status` prints one table row per shard; `top`
//! prints it again every second; `--json` prints what the server answered.
//!
//! The admin address comes from `--admin`, else from `DATA_DIR/admin.addr`,
//! which the server writes once it serves.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

use crate::control::{ShardStatus, Status};

/// How long `isle ctl` waits for the admin listener's answer.
const REQUEST_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin listener (default: the address in DATA_DIR/admin.addr).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The server's data directory, where `admin.addr` is.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// The admin listener's bearer token, when it requires one.
    #[arg(long, env = "ISLE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's answer as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Readiness, and per shard: connections, queue lengths with their
    /// decaying averages, commit latency, the journal's state.
    Status,
    /// `status`, refreshed every `--interval-ms` until interrupted.
    Top {
        #[arg(long, default_value_t = 1_000)]
        interval_ms: u64,
    },
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let admin = match args.admin {
        Some(addr) => addr,
        None => admin_from(&args.data_dir)?,
    };
    match args.command {
        CtlCommand::Status => show(admin, args.token.as_deref(), args.json),
        CtlCommand::Top { interval_ms } => loop {
            if !args.json {
                // Clear the screen and go home, as `top` does.
                print!("\x1b[2J\x1b[H");
            }
            show(admin, args.token.as_deref(), args.json)?;
            std::thread::sleep(Duration::from_millis(interval_ms.max(100)));
        },
    }
}

/// The admin address the server wrote in its data directory.
fn admin_from(data_dir: &std::path::Path) -> anyhow::Result<SocketAddr> {
    let path = data_dir.join(crate::ADMIN_ADDR_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is the server running with this --data-dir? or pass --admin)",
            path.display()
        )
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold an address", path.display()))
}

fn show(admin: SocketAddr, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let body = fetch(admin, "/status", token)?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let status: Status = serde_json::from_str(&body).context("the server's /status")?;
    print!("{}", table(&status));
    Ok(())
}

/// GETs `path` from the admin listener; Err on anything but 200.
fn fetch(admin: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build();
    let mut request = agent.get(&format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(response) => Ok(response.into_string()?),
        Err(ureq::Error::Status(code, response)) => {
            let text = response.into_string().unwrap_or_default();
            anyhow::bail!("{admin}{path} answered {code}: {}", text.trim())
        }
        Err(error) => Err(error).with_context(|| format!("asking {admin}{path}")),
    }
}

/// The status as a table, one row per shard.
pub fn table(status: &Status) -> String {
    let mut out = match &status.reason {
        None => "ready\n".to_owned(),
        Some(reason) => format!("not ready: {reason}\n"),
    };
    out += &format!(
        "{:>5} {:>7} {:>7} {:>22} {:>9} {:>9} {:>6} {:>6} {:>15} {}\n",
        "shard",
        "conns",
        "logged",
        "outbox KiB now/10s/100s",
        "mailbox",
        "staged",
        "held",
        "cache",
        "commit ms p50/99",
        "journal"
    );
    for shard in &status.shards {
        out += &row(shard);
    }
    if status.reports_dropped > 0 {
        out += &format!("({} shard reports dropped)\n", status.reports_dropped);
    }
    out
}

fn row(shard: &ShardStatus) -> String {
    let counter = |name: &str| shard.counters.get(name).copied().unwrap_or(0);
    let queue = |name: &str| shard.queues.get(name).copied().unwrap_or(0);
    let outbox = shard
        .queue_averages
        .get("outbox_bytes")
        .copied()
        .unwrap_or_default();
    let kib = |bytes: f64| bytes / 1024.0;
    let outbox = format!(
        "{:.0}/{:.0}/{:.0}",
        kib(queue("outbox_bytes") as f64),
        kib(outbox[1]),
        kib(outbox[2])
    );
    let ms =
        |us: Option<u32>| us.map_or("-".to_owned(), |us| format!("{:.2}", f64::from(us) / 1e3));
    let commit = format!("{}/{}", ms(shard.commit_p50_us), ms(shard.commit_p99_us));
    let journal = match (
        shard.journal.failed,
        shard.journal.disk_full,
        shard.journal.unavailable,
    ) {
        (true, _, _) => "FAILED",
        (_, true, _) => "disk full",
        (_, _, true) => "short of resources",
        _ => "ok",
    };
    format!(
        "{:>5} {:>7} {:>7} {:>22} {:>9} {:>9} {:>6} {:>6} {:>15} {}\n",
        shard.shard,
        counter("connections"),
        counter("sessions"),
        outbox,
        queue("mailbox_entries"),
        queue("peer_staged_messages"),
        queue("held_replies"),
        queue("write_back_bytes"),
        commit,
        journal
    )
}
