//! `isle ctl`: the operator's view of a running server, through its admin
//! listener. `status` prints a row per shard and each queue's length and
//! decaying averages per shard (`/status`, laid out by `table`); `top`
//! prints it again every second; `account show|revoke|delete PHONE` asks
//! the account's shard; `trace` asks every shard where a message is;
//! `drain` closes every connection and waits until they are gone;
//! `restart` and `rolling-restart` restart nodes without losing their
//! phones' messages (`restart`); `remove-node` removes a cluster member
//! gone for good;
//! `log-level LEVEL` changes what the server logs; `reload` reads the TLS
//! identity and the configuration again. `--json` makes every subcommand
//! print JSON (the server's answer, asked for with `Accept:
//! application/json`; `top` one object a line, a line a refresh).
//!
//! The admin address comes from `--admin`, else from `DATA_DIR/admin.addr`,
//! which the server writes as soon as its admin listener is bound (before
//! the journals are replayed).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

use self::table::table;
use crate::control::Status;

mod restart;
mod table;

/// How long `isle ctl` waits for the admin listener's answer.
const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// The options every subcommand shares are global: they go before the
/// subcommand or after it (`isle ctl --json status`, `isle ctl status
/// --json`).
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin listener (default: the address in DATA_DIR/admin.addr).
    #[arg(long, global = true)]
    admin: Option<SocketAddr>,
    /// The server's data directory, where `admin.addr` is.
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// The admin listener's bearer token, when it requires one (else
    /// ISLE_ADMIN__TOKEN, as the server reads it).
    #[arg(long, global = true, env = "ISLE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text, for every subcommand (`top`: an object
    /// a line).
    #[arg(long, global = true)]
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
    /// One account, on its home shard.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Stop taking connections, close every open one (phones are told the
    /// server is going away), and wait until they are gone. The process
    /// keeps running: stop it afterwards.
    Drain {
        /// How long to wait for the connections to go, in ms.
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// The most detailed level the server logs from now on, for every
    /// target: off, error, warn, info, debug or trace. It replaces
    /// RUST_LOG's directives until a restart; `default` goes back to them
    /// (or to info without RUST_LOG).
    LogLevel { level: String },
    /// Where a message is: every mailbox that holds it (queued, delivered,
    /// acknowledged, read) and every group that took it, while the
    /// server's resend tables remember it; or that it was refused, with
    /// the error the phone got (each shard remembers its last refusals).
    Trace {
        /// The phone that sent it (+15551234567).
        sender: String,
        /// The `client_id` the phone gave it.
        client_id: u64,
    },
    /// In a cluster: remove node NODE for good, a member that will not
    /// come back. Refused while it is live, or while an island still has
    /// it as primary or secondary (after a failover the controller gives
    /// its islands other nodes). The other nodes drop their links to it
    /// and send on what they held for it. A removed node that starts
    /// again joins as a new member.
    RemoveNode { node: u16 },
    /// Restart this node without losing its phones' messages: refused
    /// unless every island it belongs to is in sync with both nodes live;
    /// then a planned stop (its islands go to their secondaries in about
    /// one etcd round trip), and a wait until the service manager started
    /// it again, it is ready, and its islands are in sync again.
    Restart {
        /// How long to wait for each step, in ms.
        #[arg(long, default_value_t = 600_000)]
        wait_ms: u64,
        /// Restart even if an island it belongs to is not in sync (its
        /// phones then wait for the node, or lose their island's second
        /// copy meanwhile).
        #[arg(long)]
        force: bool,
    },
    /// `restart` of each node in turn, given their admin listeners: the
    /// next only once the one before is back and its islands in sync, so
    /// no two nodes of an island are down at once.
    RollingRestart {
        /// Admin listeners (host:port), one per node, in restart order.
        #[arg(required = true, value_delimiter = ',')]
        admins: Vec<SocketAddr>,
        #[arg(long, default_value_t = 600_000)]
        wait_ms: u64,
    },
    /// Reload what can change without a restart, as SIGHUP does: the TLS
    /// certificate and key (new connections get the new ones) and the
    /// `[limits]` keys that may change live (the answer names the others).
    Reload,
}

#[derive(Debug, clap::Subcommand)]
pub enum AccountAction {
    /// Registered or not, where its phone is connected (shard, address
    /// and port), what waits in its mailbox.
    Show { phone: String },
    /// The device key stops working and the phone's connection closes; it
    /// signs up again with an SMS code. The mailbox stays.
    Revoke { phone: String },
    /// Everything of the account goes, durably: its key (the connection
    /// closes), its queued messages (their senders are told
    /// `Undeliverable`), contacts, profile, push token and group
    /// memberships. The number may sign up again as a new account.
    Delete { phone: String },
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let (addr, from_file) = match args.admin {
        Some(addr) => (addr, None),
        None => (
            admin_from(&args.data_dir)?,
            Some(args.data_dir.join(crate::ADMIN_ADDR_FILE)),
        ),
    };
    let admin = Admin {
        addr,
        from_file,
        // The server's own variable works too: one export serves both.
        token: args
            .token
            .or_else(|| std::env::var("ISLE_ADMIN__TOKEN").ok())
            .filter(|token| !token.is_empty()),
        json: args.json,
    };
    match args.command {
        CtlCommand::Status => show(&admin),
        CtlCommand::Account { action } => account(&admin, action),
        CtlCommand::Drain { wait_ms } => drain(&admin, wait_ms),
        CtlCommand::Trace { sender, client_id } => trace(&admin, &sender, client_id),
        CtlCommand::RemoveNode { node } => {
            let path = format!("/cluster/remove/{node}");
            print!("{}", admin.request(("POST", &path), None)?);
            Ok(())
        }
        CtlCommand::Restart { wait_ms, force } => {
            let done = restart::restart(&admin, wait_ms, force)?;
            print_restarts(&admin, &[done]);
            Ok(())
        }
        CtlCommand::RollingRestart { admins, wait_ms } => {
            let admins: Vec<Admin> = admins
                .into_iter()
                .map(|addr| Admin {
                    addr,
                    from_file: None,
                    ..admin.clone()
                })
                .collect();
            let done = restart::rolling(&admins, wait_ms)?;
            print_restarts(&admin, &done);
            Ok(())
        }
        CtlCommand::Reload => {
            print!("{}", admin.request(("POST", "/reload"), None)?);
            Ok(())
        }
        CtlCommand::LogLevel { level } => {
            print!("{}", admin.request(("PUT", "/log-level"), Some(&level))?);
            Ok(())
        }
        CtlCommand::Top { interval_ms } => loop {
            if !admin.json && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                // Clear the screen and go home, as `top` does. Into a
                // file or a pipe the refreshes follow each other instead,
                // without escape codes.
                print!("\x1b[2J\x1b[H");
            }
            // With --json: one object a line, one line a refresh.
            show(&admin)?;
            std::io::Write::flush(&mut std::io::stdout())?;
            std::thread::sleep(Duration::from_millis(interval_ms.max(100)));
        },
    }
}

/// One line per node restarted (JSON: one object a line).
fn print_restarts(admin: &Admin, done: &[restart::Restarted]) {
    for restarted in done {
        if admin.json {
            println!("{}", serde_json::json!(restarted));
            continue;
        }
        let node = restarted
            .node
            .map_or("the server".to_owned(), |n| format!("node {n}"));
        println!(
            "{node} restarted: stopped {:.1} s, back {:.1} s, in sync {:.1} s after the request",
            restarted.stopped_ms as f64 / 1e3,
            restarted.back_ms as f64 / 1e3,
            restarted.in_sync_ms as f64 / 1e3
        );
    }
}

/// The admin listener and how to ask it.
#[derive(Clone)]
struct Admin {
    addr: SocketAddr,
    /// The file the address was read from, if it was.
    from_file: Option<PathBuf>,
    token: Option<String>,
    /// Ask for (and print) JSON instead of text.
    json: bool,
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

fn show(admin: &Admin) -> anyhow::Result<()> {
    let body = admin.fetch("/status")?;
    if admin.json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let status: Status = serde_json::from_str(&body).context("the server's /status")?;
    print!("{}", table(&status));
    Ok(())
}

impl Admin {
    /// This admin with its address read again from the data directory,
    /// when it came from there (a restarted server may listen elsewhere).
    fn current(&self) -> Admin {
        let addr = self.from_file.as_ref().and_then(|file| {
            let text = std::fs::read_to_string(file).ok()?;
            text.trim().parse().ok()
        });
        Admin {
            addr: addr.unwrap_or(self.addr),
            ..self.clone()
        }
    }

    /// GETs `path` from the admin listener; Err on anything but a success.
    fn fetch(&self, path: &str) -> anyhow::Result<String> {
        self.request(("GET", path), None)
    }

    /// Sends `method path` (with `body`) to the admin listener, asking for
    /// JSON with `--json`; Err on anything but a success, with what the
    /// server said.
    fn request(&self, (method, path): (&str, &str), body: Option<&str>) -> anyhow::Result<String> {
        let admin = self.addr;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build();
        let mut request = agent.request(method, &format!("http://{admin}{path}"));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        if self.json {
            request = request.set("Accept", "application/json");
        }
        let sent = match body {
            Some(body) => request.send_string(body),
            None => request.call(),
        };
        match sent {
            Ok(response) => {
                let mut text = response.into_string()?;
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                Ok(text)
            }
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                anyhow::bail!("{admin}{path} answered {code}: {}", text.trim())
            }
            Err(ureq::Error::Transport(error))
                if error.kind() == ureq::ErrorKind::ConnectionFailed =>
            {
                let hint = match &self.from_file {
                    Some(file) => format!(
                        " (it is in {}, which a server that stopped leaves behind)",
                        file.display()
                    ),
                    None => String::new(),
                };
                anyhow::bail!(
                    "nothing answers at {admin}{hint}: is the server running? ({})",
                    error.kind()
                )
            }
            Err(error) if method != "GET" => Err(error).with_context(|| {
                format!(
                    "asking {admin}{path} (no answer: the server may still do it; \
                     check before repeating it)"
                )
            }),
            Err(error) => Err(error).with_context(|| format!("asking {admin}{path}")),
        }
    }
}

fn account(admin: &Admin, action: AccountAction) -> anyhow::Result<()> {
    let answer = match action {
        AccountAction::Show { phone } => {
            let phone = phone_arg(&phone)?;
            let answer = admin.fetch(&format!("/account/{phone}"))?;
            match admin.json {
                true => answer,
                false => describe_account(&serde_json::from_str(&answer)?),
            }
        }
        AccountAction::Revoke { phone } => {
            let phone = phone_arg(&phone)?;
            let path = format!("/account/{phone}/revoke");
            let answer = admin.request(("POST", &path), None)?;
            match admin.json {
                true => answer,
                false => format!("{phone}: {}", answer.trim()),
            }
        }
        AccountAction::Delete { phone } => {
            let phone = phone_arg(&phone)?;
            let path = format!("/account/{phone}");
            let answer = admin.request(("DELETE", &path), None)?;
            if admin.json {
                answer
            } else {
                let deleted: serde_json::Value = serde_json::from_str(&answer)?;
                format!(
                    "deleted {phone}: {} queued entries dropped{}; it leaves its groups",
                    deleted["mailbox_entries"],
                    if deleted["was_online"] == true {
                        ", its connection closed"
                    } else {
                        ""
                    }
                )
            }
        }
    };
    println!("{}", answer.trim_end());
    Ok(())
}

/// `account show` as text: an account's state and, when its phone is
/// logged in, where.
fn describe_account(info: &serde_json::Value) -> String {
    let mut out = format!(
        "{}: registered (key generation {})\n",
        text(&info["phone"]),
        info["generation"]
    );
    out += &match &info["connection"] {
        serde_json::Value::Object(connection) => format!(
            "online: logged in on shard {} from {}\n",
            connection["shard"],
            text(&connection["peer"]),
        ),
        _ => match info["last_seen_ms"].as_u64() {
            Some(ms) if ms > 0 => format!("offline, last seen at {ms} (Unix ms)\n"),
            _ => "offline\n".to_owned(),
        },
    };
    out += &format!(
        "mailbox: {} entries, {} body bytes; acknowledged up to seq {}\n",
        info["mailbox_entries"], info["mailbox_bytes"], info["acked_up_to"]
    );
    let push = match info["push_token"] == true {
        true => "a push token is registered",
        false => "no push token",
    };
    out + push
}

/// A JSON value as text: a string without its quotes, `unknown` for null.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => "unknown".to_owned(),
        other => other.to_string(),
    }
}

/// `trace SENDER CLIENT_ID`: where the message is, or why it was refused,
/// as far as the server remembers.
fn trace(admin: &Admin, sender: &str, client_id: u64) -> anyhow::Result<()> {
    let sender = phone_arg(sender)?;
    let found = admin.fetch(&format!("/trace/{sender}/{client_id}"))?;
    if admin.json {
        print!("{found}");
        return Ok(());
    }
    let hits: Vec<serde_json::Value> = serde_json::from_str(&found)?;
    if hits.is_empty() {
        println!(
            "{sender} {client_id}: nothing the server remembers: never sent, or older than the \
             resend window (dedup_ttl_ms), or refused before a restart"
        );
    }
    for hit in hits {
        let shard = &hit["shard"];
        if hit["state"] == "refused" {
            println!(
                "shard {shard}: refused {}, {} s ago: {}",
                text(&hit["reason"]),
                hit["age_ms"].as_u64().unwrap_or(0) / 1_000,
                text(&hit["detail"]),
            );
        } else {
            println!(
                "shard {shard}: to {} id {}: {}",
                text(&hit["to"]),
                hit["id"],
                text(&hit["state"])
            );
        }
    }
    Ok(())
}

/// A phone number given on the command line, checked and written the one
/// way a path takes it: never a piece of path of the operator's making.
fn phone_arg(text: &str) -> anyhow::Result<wire::Phone> {
    wire::Phone::parse(text)
        .map_err(|error| anyhow::anyhow!("{text:?} is not a phone number: {error}"))
}

/// Asks the server to drain, then waits until no connection is left.
fn drain(admin: &Admin, wait_ms: u64) -> anyhow::Result<()> {
    admin.request(("POST", "/drain"), None)?;
    let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let status: Status = serde_json::from_str(&admin.fetch("/status")?)?;
        let left: u64 = status
            .shards
            .iter()
            .map(|shard| shard.counters.get("connections").copied().unwrap_or(0))
            .sum();
        if left == 0 {
            match admin.json {
                true => println!(
                    "{}",
                    serde_json::json!({ "drained": true, "connections": 0 })
                ),
                false => println!("drained: no connection left"),
            }
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{left} connections still open after {wait_ms} ms"
        );
        let noun = if left == 1 {
            "connection"
        } else {
            "connections"
        };
        eprintln!("{left} {noun} left");
        std::thread::sleep(Duration::from_millis(1_000));
    }
}
