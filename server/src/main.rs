//! `isle`: the messaging server.
//!
//! Starts one glommio executor (a shard) per core, each pinned, each with its
//! own SO_REUSEPORT listeners, connected to every other shard by one bounded
//! SPSC queue per direction. See ARCHITECTURE.md.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod config;
mod control;
mod ctl;
mod logging;
mod push;
mod reshard;
mod runtime;
mod sms;
mod tls;
mod transport;

use std::{
    io::Write,
    net::SocketAddr,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use glommio::{LocalExecutorBuilder, Placement};
use shard::{PartitionMap, Shard, ShardConfig, PARTITIONS_DEFAULT};
use storage::log::LogConfig;

use crate::{
    cluster::identity::NodeIdentity,
    config::{flags::Flags, Config, JournalKind},
    control::{gateways::GatewayStats, AdminSettings, Control},
    logging::LogFormat,
    push::{PushQueue, PushSender},
    runtime::{IslandSetup, Listeners, PeerEnds, RemoteSetupParts, ShardSetup, StorageSetup},
    sms::{SmsQueue, SmsSender},
};

/// `isle [flags]` runs the server; a subcommand does something else with
/// the same binary. A new subcommand is one more variant of [`Command`].
#[derive(Debug, Parser)]
#[command(
    name = "isle",
    version,
    about = "A messaging server for phones",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The server's flags, when no subcommand is given.
    #[command(flatten)]
    flags: Flags,
    /// How log lines look: `text` (the default) or `json`, one object per
    /// line with `ts`, `level`, `target`, `msg` and the line's fields.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the configuration the server would run with (defaults, then
    /// the file, the environment ISLE_*, the flags), or why it would not
    /// start, and exits without starting.
    CheckConfig(Box<Flags>),
    /// Looks at (and steers) a running server through its admin listener.
    Ctl(ctl::CtlArgs),
}

fn main() {
    let args = Args::parse();
    if args.command.is_some() {
        // A command's output may go to a pipe that closes early (`isle ctl
        // top | head`): end quietly, as command-line tools do, instead of
        // panicking on the failed write. The server keeps SIGPIPE ignored.
        // SAFETY: setting a signal's disposition to its default, before
        // any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    logging::init(args.log_format);
    let result = match args.command {
        None => run(args.flags),
        Some(Command::CheckConfig(flags)) => check_config(&flags),
        Some(Command::Ctl(ctl)) => ctl::run(ctl),
    };
    if let Err(error) = result {
        eprintln!("isle: {error:#}");
        std::process::exit(1);
    }
}

/// `isle check-config`: the effective configuration on stdout, as TOML,
/// after a comment naming the TLS identity a start would use (its files
/// read as the server reads them: a key this user cannot read fails here,
/// not at the start).
fn check_config(flags: &Flags) -> anyhow::Result<()> {
    let effective = config::layers::load(flags)?;
    let config = &effective.config;
    let tls = match config.listen {
        Some(_) => {
            let (cert, key) = (config.tls.cert.as_deref(), config.tls.key.as_deref());
            let identity = tls::check(cert, key, &config.data_dir).context("the TLS identity")?;
            format!("# tls: {identity}\n")
        }
        None => "# tls: no TLS listener\n".to_owned(),
    };
    let text = effective.to_toml()?;
    // After the header's comment lines, before the first key.
    let header = text
        .lines()
        .take_while(|line| line.starts_with('#'))
        .map(|line| line.len() + 1)
        .sum::<usize>();
    print!("{}{tls}{}", &text[..header], &text[header..]);
    Ok(())
}

/// The admin listener's settings, from the configuration.
fn admin_settings(config: &Config) -> AdminSettings {
    AdminSettings {
        listen: config.admin.listen,
        token: config.admin.token.clone(),
        node: config.cluster.as_ref().map(|cluster| cluster.node_id),
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    // SIGHUP's default is to end the process: until the reload handler is
    // in place (after a reshard, which can take seconds) it is ignored.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    )?;
    let mut config = config::layers::load(&flags)?.config;
    let started = config.clone();
    let shard_count = shard_count(&config)?;
    let map = PartitionMap::new(PARTITIONS_DEFAULT, shard_count as u16);
    let _lock = open_data_dir(&mut config)?;
    check_node_identity(&config)?;
    let identity = match config.listen {
        Some(_) => Some(tls::load_or_generate(
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
            &config.data_dir,
        )?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut control = Control::start(&admin_settings(&config), map, stop.clone())?;
    // At once, not after the replay: `isle ctl status` shows a start's
    // progress (records replayed per shard) while it lasts.
    write_admin_addr(&config.data_dir, control.addr)?;
    let senders = Senders::start(&config, map, control.gateway_stats())?;
    if config.storage.journal == JournalKind::Log {
        reshard(&config, shard_count, &senders)?;
    }
    let Bound {
        tls: (tls_fds, tls_addr),
        plain: (plain_fds, plain_addr),
        peer: (peer_fds, peer_addr),
        to_listen,
    } = Bound::bind(&config, shard_count)?;
    stop_on_signals(&control)?;
    set_up_reloads(&control, &config, (flags, &started), identity.as_ref())?;
    let (mut tls_fds, mut plain_fds) = (tls_fds.into_iter(), plain_fds.into_iter());
    let mut peer_fds = peer_fds.into_iter();
    let listeners = (0..shard_count).map(|_| {
        let listeners = Listeners {
            tls: tls_fds.next(),
            plain: plain_fds.next(),
        };
        (listeners, peer_fds.next())
    });
    let serving = Arc::new(AtomicBool::new(false));
    let replicates = replicates(&config)?;
    let (island_txns, island_txns_in) = tokio::sync::mpsc::channel(ISLAND_TXNS_MAX);
    let lease_clock = Arc::new(server::island::LeaseClock::default());
    let outside = ShardsOutside {
        islands: replicates.then(|| (lease_clock.clone(), island_txns)),
        stop: stop.clone(),
        serving: serving.clone(),
        reporter: control.reporter(),
        commands: (0..shard_count).map(|s| control.take_commands(s)).collect(),
        replayed: (0..shard_count).map(|s| control.replayed(s)).collect(),
        handovers: server::remote::Handovers::new(shard_count as u16),
        cluster: config
            .cluster
            .as_ref()
            .map_or_else(String::new, |c| c.prefix.clone()),
        secret: cluster_secret(&config)?,
    };
    let (handles, recovered) =
        spawn_shards(&config, map, listeners, identity.as_ref(), senders, outside)?;
    // Every shard replays its log before the server says it is ready; the
    // listeners listen only then.
    let handles = wait_recovered(recovered, handles, shard_count, &stop)?;
    listen(to_listen)?;
    serving.store(true, std::sync::atomic::Ordering::Release);
    control.serving();
    if let Some(cluster) = &config.cluster {
        // Redirects and links name the addresses bound, which a port of 0
        // only then is.
        let mut settings = cluster.settings(tls_addr)?;
        settings.instance = cluster::identity::instance(&config.data_dir);
        if let Some(bound) = peer_addr.filter(|_| settings.peer_advertise.port() == 0) {
            settings.peer_advertise.set_port(bound.port());
        }
        let islands = replicates.then_some((lease_clock, island_txns_in));
        control.join_cluster(settings, shard_count as u16, islands);
    }
    // One line on stdout that scripts and tests wait for.
    let addrs = (tls_addr, plain_addr, control.addr);
    println!("{}", ready_line(shard_count, addrs, identity.as_ref()));
    std::io::stdout().flush()?;
    for handle in handles {
        handle
            .join()
            .map_err(|error| anyhow::anyhow!("shard failed: {error}"))?;
    }
    log::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT ask for a planned stop: a cluster node gives its
/// islands away first (`control::planned_stop`).
fn stop_on_signals(control: &Control) -> anyhow::Result<()> {
    let stop_requests = control.stop_requests();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop_requests.clone())?;
    }
    Ok(())
}

/// Makes the phone-facing (and peer) sockets listen, once every shard
/// has replayed, and lets go of these copies: only the accept loops hold
/// the sockets from then on, so when they stop (a drain) the sockets
/// close and new phones are refused.
fn listen(sockets: Vec<OwnedFd>) -> anyhow::Result<()> {
    for fd in &sockets {
        socket2::SockRef::from(fd).listen(LISTEN_BACKLOG)?;
    }
    Ok(())
}

/// Whether this node replicates its shards' logs to a secondary
/// (`cluster.replication = "sync"`); Err when that cannot work.
fn replicates(config: &Config) -> anyhow::Result<bool> {
    let replicates = config
        .cluster
        .as_ref()
        .is_some_and(|c| c.replication == config::cluster::Replication::Sync);
    if replicates && config.storage.journal == JournalKind::Memory {
        bail!("cluster.replication = \"sync\" ships the log: it needs storage.journal = \"log\"");
    }
    Ok(replicates)
}

/// The cluster's shared secret (`cluster.secret_file`), read once at
/// start; `None` for a single node, or a cluster without one (said in
/// the log: the peer port then trusts any host that names a member).
fn cluster_secret(config: &Config) -> anyhow::Result<Option<server::remote::ClusterSecret>> {
    let Some(cluster) = config.cluster.as_ref() else {
        return Ok(None);
    };
    match &cluster.secret_file {
        Some(path) => Ok(Some(server::remote::ClusterSecret::read(path)?)),
        None => {
            log::warn!(
                "cluster.secret_file is not set: the peer port takes any host that names \
                 a member for it; set a shared secret or keep the port firewalled \
                 (docs/security.md)"
            );
            Ok(None)
        }
    }
}

/// Every shard's sockets on each address (phones over TLS and plaintext,
/// the other nodes' links), bound but not yet listening, and the
/// addresses bound.
struct Bound {
    tls: (Vec<OwnedFd>, Option<SocketAddr>),
    plain: (Vec<OwnedFd>, Option<SocketAddr>),
    peer: (Vec<OwnedFd>, Option<SocketAddr>),
    /// Copies of them all, to listen on once every shard has replayed.
    to_listen: Vec<OwnedFd>,
}

impl Bound {
    fn bind(config: &Config, shard_count: usize) -> anyhow::Result<Bound> {
        let tls = bind_all(config.listen, shard_count)?;
        let plain = bind_all(config.plaintext_listen, shard_count)?;
        let peer_listen = config.cluster.as_ref().and_then(|c| c.peer_listen);
        let peer = bind_all(peer_listen, shard_count)?;
        let to_listen = tls
            .0
            .iter()
            .chain(&plain.0)
            .chain(&peer.0)
            .map(OwnedFd::try_clone)
            .collect::<Result<_, _>>()?;
        Ok(Bound {
            tls,
            plain,
            peer,
            to_listen,
        })
    }
}

/// The data dir belongs to this start's node, or to no node when this is
/// a single node (see `cluster::identity`).
fn check_node_identity(config: &Config) -> anyhow::Result<()> {
    let node = config.cluster.as_ref().map(|cluster| NodeIdentity {
        node_id: cluster.node_id,
        prefix: cluster.prefix.clone(),
    });
    let has_data = config.data_dir.join("log").exists();
    cluster::identity::check(&config.data_dir, node.as_ref(), has_data)
}

/// What SIGHUP and `isle ctl reload` read again: the TLS identity (when
/// TLS is on: `identity` is the one served now) and the configuration
/// from the layers this start read, `started` being what they gave then.
fn set_up_reloads(
    control: &Control,
    config: &Config,
    (flags, started): (Flags, &Config),
    identity: Option<&tls::Identity>,
) -> anyhow::Result<()> {
    if let Some(identity) = identity {
        let (cert, key) = (config.tls.cert.clone(), config.tls.key.clone());
        let data_dir = config.data_dir.clone();
        let loader = Box::new(move || {
            let identity = tls::load(cert.as_deref(), key.as_deref(), &data_dir)?;
            Ok((identity.config, identity.fingerprint))
        });
        control.set_tls_loader(loader, identity.fingerprint.clone());
    }
    control.set_config_loader(
        Box::new(move || Ok(config::layers::load(&flags)?.config)),
        started,
    );
    reload_on_hangup(control.reloader())
}

/// Shards to run: as configured, or one per core for 0.
fn shard_count(config: &Config) -> anyhow::Result<usize> {
    Ok(config.shard_count()?)
}

/// Creates the data dir, makes its path absolute (the io_uring file API
/// takes no relative paths) and locks it; the lock lives as long as the
/// returned file.
fn open_data_dir(config: &mut Config) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving data dir {}", config.data_dir.display()))?;
    lock_data_dir(&config.data_dir)
}

/// The threads that send SMS and pushes for every shard, and where each
/// shard hears of push tokens the gateway rejected.
struct Senders {
    sms: SmsQueue,
    push: PushQueue,
    push_rejected: Vec<crossbeam_channel::Receiver<push::Rejected>>,
}

impl Senders {
    /// Starts both senders, which count what they do in `stats` (SMS,
    /// then push).
    fn start(
        config: &Config,
        map: PartitionMap,
        stats: (Arc<GatewayStats>, Arc<GatewayStats>),
    ) -> anyhow::Result<Senders> {
        let sms_sender = match &config.sms.webhook_url {
            Some(url) => SmsSender::Webhook(url.clone()),
            None => SmsSender::Outbox(config.data_dir.join("sms-outbox.log")),
        };
        let sms = sms::start(sms_sender, stats.0)?;
        let push_sender = match &config.push.webhook_url {
            Some(url) => PushSender::Webhook {
                url: url.clone(),
                attempts_max: config.push.attempts_max,
                retry_ms: config.push.retry_ms,
            },
            None => PushSender::None,
        };
        let (push, push_rejected) = push::start(push_sender, map, stats.1)?;
        Ok(Senders {
            sms,
            push,
            push_rejected,
        })
    }

    fn env(&self) -> OsEnv {
        OsEnv {
            sms: self.sms.clone(),
            push: self.push.clone(),
        }
    }

    /// Makes an [`OsEnv`] each call: for the shard of an island a node
    /// takes over (see `runtime::IslandSetup::env`).
    fn env_maker(&self) -> Box<dyn Fn() -> Box<dyn shard::Env> + Send> {
        let (sms, push) = (self.sms.clone(), self.push.clone());
        Box::new(move || {
            Box::new(OsEnv {
                sms: sms.clone(),
                push: push.clone(),
            })
        })
    }
}

/// Moves the data to `shard_count` shards if it was written by another
/// count (see `reshard`).
fn reshard(config: &Config, shard_count: usize, senders: &Senders) -> anyhow::Result<()> {
    let (sms, push) = (senders.sms.clone(), senders.push.clone());
    let done = reshard::reshard_if_needed(reshard::Reshard {
        data_dir: &config.data_dir,
        shard_count,
        log: LogConfig {
            segment_bytes_max: config.storage.segment_bytes_max,
            salvage: config.storage.salvage,
            ..LogConfig::new(0, shard_count as u16)
        },
        io_memory_bytes: config.limits.io_memory_bytes,
        io_ring_depth: config.limits.io_ring_depth,
        env: Arc::new(move || {
            Box::new(OsEnv {
                sms: sms.clone(),
                push: push.clone(),
            })
        }),
    })?;
    if let Some(line) = done {
        log::info!("{line}");
    }
    Ok(())
}

type ShardHandle = glommio::ExecutorJoinHandle<()>;

/// What every shard shares with the process: the stop flag, the flag
/// raised once the server serves, and the control thread's reporter.
struct ShardsOutside {
    stop: Arc<AtomicBool>,
    serving: Arc<AtomicBool>,
    reporter: control::Reporter,
    /// Each shard's command channel from the control thread, in order.
    commands: Vec<crossbeam_channel::Receiver<control::commands::ShardCommand>>,
    /// Where each shard counts the records it replays.
    replayed: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// Where a link connection accepted by the wrong shard is passed on,
    /// and the cluster's name in the links' handshakes.
    handovers: server::remote::Handovers,
    cluster: String,
    /// The cluster's shared secret, when `cluster.secret_file` names one.
    secret: Option<server::remote::ClusterSecret>,
    /// With replication: the lease as the control thread last saw it, and
    /// where the shards' island transactions go.
    islands: Option<(
        Arc<server::island::LeaseClock>,
        tokio::sync::mpsc::Sender<server::island::tablet::IslandTxn>,
    )>,
}

/// Island transactions waiting for the control thread, at most (each
/// member asks one at a time).
const ISLAND_TXNS_MAX: usize = 256;

/// The admin listener's address, written in the data dir for `isle ctl`.
const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Writes the admin listener's address to `DATA_DIR/admin.addr` as soon
/// as it is bound, whole or not at all (a temporary file renamed over
/// it): `isle ctl` never reads half an address.
fn write_admin_addr(data_dir: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    let path = data_dir.join(ADMIN_ADDR_FILE);
    let partial = data_dir.join(format!("{ADMIN_ADDR_FILE}.new"));
    std::fs::write(&partial, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("writing {}", path.display()))
}
type Recovered = std::sync::mpsc::Receiver<Result<String, String>>;

/// Starts one executor per shard, each with its listeners, its ends of the
/// peer queues and its storage; each reports on `Recovered` once its log
/// is replayed.
fn spawn_shards(
    config: &Config,
    map: PartitionMap,
    listeners: impl Iterator<Item = (Listeners, Option<OwnedFd>)>,
    identity: Option<&tls::Identity>,
    mut senders: Senders,
    mut outside: ShardsOutside,
) -> anyhow::Result<(Vec<ShardHandle>, Recovered)> {
    let shard_count = map.shards() as usize;
    let peers = peer_queues(shard_count, config.limits.peer_queue_batches_max);
    let (recovered_tx, recovered) = std::sync::mpsc::channel();
    let started = Instant::now();
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    let rejected = std::mem::take(&mut senders.push_rejected);
    for (shard_id, ((ends, (listeners, peer_listener)), push_rejected)) in
        peers.into_iter().zip(listeners).zip(rejected).enumerate()
    {
        let remote = RemoteSetupParts {
            cluster: outside.cluster.clone(),
            secret: outside.secret.clone(),
            listener: peer_listener,
            handovers: outside.handovers.clone(),
        };
        let shard_config = ShardConfig {
            wall_clock_offset_ms: unix_ms,
            // A node's own island has its id (docs/islands.md).
            island: config.cluster.as_ref().map_or(0, |c| c.node_id),
            ..config.shard_config(shard_id as u16, map)
        };
        let env = senders.env();
        let tls = identity.map(|identity| identity.config.clone());
        let limits = config.limits.clone();
        let stop = outside.stop.clone();
        let (reporter, serving) = (outside.reporter.clone(), outside.serving.clone());
        let commands =
            std::mem::replace(&mut outside.commands[shard_id], crossbeam_channel::never());
        let replayed = outside.replayed[shard_id].clone();
        let storage = storage_setup(config, shard_id, shard_count);
        let islands = outside.islands.as_ref().map(|(lease, txns)| IslandSetup {
            env: senders.env_maker(),
            node: node_id(config),
            lease: lease.clone(),
            txns: txns.clone(),
            secret: outside.secret.clone(),
            replica_dir: config.data_dir.join("islands"),
            own_dir: storage.dir.clone(),
            log: storage.log,
            checkpoint_segments: storage.checkpoint_segments,
        });
        let recovered = recovered_tx.clone();
        let placement = match config.cpus.get(shard_id) {
            Some(&cpu) => Placement::Fixed(cpu),
            None if config.cpus.is_empty() && shard_count <= cpus => Placement::Fixed(shard_id),
            None => Placement::Unbound,
        };
        // A node of a cluster serves no account until it knows where they
        // live: until its coordinator's first view, every home is unknown.
        let node = config.cluster.as_ref().map(|cluster| cluster.node_id);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("isle-shard-{shard_id}"))
            .io_memory(config.limits.io_memory_bytes)
            .ring_depth(config.limits.io_ring_depth)
            .spawn(move || async move {
                let now_ms = started.elapsed().as_millis() as u64;
                let mut shard = Shard::new(shard_config, Box::new(env), now_ms);
                if let Some(node) = node {
                    let unknown =
                        shard::Placement::new((node, 0), 0, Vec::new(), Default::default());
                    shard.set_placement(Some(Arc::new(unknown)));
                }
                runtime::run(ShardSetup {
                    shard,
                    peers: ends,
                    listeners,
                    tls,
                    limits,
                    stop,
                    started,
                    storage,
                    recovered,
                    push_rejected,
                    reporter,
                    serving,
                    commands,
                    replayed,
                    remote,
                    islands,
                })
                .await
            })
            .map_err(|error| anyhow::anyhow!("starting shard {shard_id}: {error}"))?;
        handles.push(handle);
    }
    Ok((handles, recovered))
}

/// This node's id in its cluster (0 for a single node).
fn node_id(config: &Config) -> u16 {
    config.cluster.as_ref().map_or(0, |c| c.node_id)
}

fn storage_setup(config: &Config, shard_id: usize, shard_count: usize) -> StorageSetup {
    StorageSetup {
        journal: config.storage.journal,
        dir: log_dir(&config.data_dir, shard_id),
        checkpoint_segments: config.storage.checkpoint_segments.max(1),
        replica_retain_segments: (config.cluster.as_ref())
            .map_or(64, |c| c.replica_retain_segments),
        log: LogConfig {
            segment_bytes_max: config.storage.segment_bytes_max,
            salvage: config.storage.salvage,
            ..LogConfig::new(shard_id as u16, shard_count as u16)
        },
    }
}

/// Waits until every shard replayed its log; if any failed, stops them
/// all and says why.
fn wait_recovered(
    recovered: Recovered,
    handles: Vec<ShardHandle>,
    shard_count: usize,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<ShardHandle>> {
    let mut failures = Vec::new();
    for report in recovered.iter().take(shard_count) {
        match report {
            Ok(line) => log::info!("{line}"),
            Err(line) => failures.push(line),
        }
    }
    if failures.is_empty() {
        return Ok(handles);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for handle in handles {
        let _ = handle.join();
    }
    bail!("{}", failures.join("; "))
}

/// The line scripts and tests wait for: shards, addresses, and the TLS
/// certificate a phone pins.
fn ready_line(
    shard_count: usize,
    (tls_addr, plain_addr, admin_addr): (Option<SocketAddr>, Option<SocketAddr>, SocketAddr),
    identity: Option<&tls::Identity>,
) -> String {
    let mut ready = format!("isle ready shards={shard_count}");
    if let Some(addr) = tls_addr {
        ready += &format!(" tls={addr}");
    }
    if let Some(addr) = plain_addr {
        ready += &format!(" plaintext={addr}");
    }
    ready += &format!(" admin={admin_addr}");
    if let Some(identity) = identity {
        ready += &format!(
            " cert={} fingerprint={}",
            identity.cert_path.display(),
            identity.fingerprint
        );
    }
    ready
}

/// SIGHUP reloads what can change without a restart (the TLS certificate
/// and key: new connections get the new ones), on a thread of its own
/// (signal_hook's iterator). Without a handler it would kill the process
/// without the graceful stop.
fn reload_on_hangup(reloader: control::Reloader) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("isle-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                // The reload logs what it did, and that SIGHUP asked.
                let _ = reloader.reload_blocking();
            }
        })
        .context("starting the SIGHUP thread")?;
    Ok(())
}

fn log_dir(data_dir: &std::path::Path, shard: usize) -> PathBuf {
    data_dir.join("log").join(format!("shard-{shard}"))
}

/// Holds an exclusive lock on `data_dir/LOCK` for as long as it lives: two
/// processes appending to the same logs would corrupt them.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        bail!(
            "data dir {} is in use by another isle process ({})",
            data_dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}

/// Connections the kernel may hold for each listener before it is
/// accepted. When every phone reconnects at once (a network blip, a
/// restart), tens of thousands of SYNs arrive within milliseconds; past
/// the backlog they are dropped and each phone waits a full SYN
/// retransmission (1 s, then 3 s). The kernel caps this at
/// `net.core.somaxconn` (4096 by default), so raising that is what lets
/// a large backlog take effect.
const LISTEN_BACKLOG: i32 = 65_535;

/// One listening socket per shard on the same address (SO_REUSEPORT lets the
/// kernel spread connections over them). Port 0 is resolved by the first.
fn bind_all(
    addr: Option<SocketAddr>,
    count: usize,
) -> anyhow::Result<(Vec<OwnedFd>, Option<SocketAddr>)> {
    let Some(mut addr) = addr else {
        return Ok((Vec::new(), None));
    };
    refuse_if_listened_on(addr)?;
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding {addr}"))?;
        // Not listening yet: a phone that connects while the shards replay
        // is refused instead of left hanging (see `run`).
        if addr.port() == 0 {
            addr = socket.local_addr()?.as_socket().context("bound address")?;
        }
        fds.push(OwnedFd::from(socket));
    }
    Ok((fds, Some(addr)))
}

/// Fails when another process listens on `addr`. SO_REUSEPORT would
/// otherwise let this process join that listener's group, and the kernel
/// would split new phones between two servers with different accounts and
/// certificates. The kernel's own table of sockets (`/proc/net/tcp` and
/// `tcp6`) says who listens: a bind test would also trip on connections
/// of a process that just died, still closing on that port.
///
/// A process that was just killed can leave its listener behind for a
/// moment (io_uring drops the files its requests hold asynchronously), so
/// a listener must still be there after `LISTENER_GONE_WAIT_MS` to refuse.
fn refuse_if_listened_on(addr: SocketAddr) -> anyhow::Result<()> {
    /// Long enough for io_uring to drop the files of a process just
    /// killed; short enough that a start refused for a live listener
    /// says so soon.
    const LISTENER_GONE_WAIT_MS: u64 = 3_000;
    /// How often the kernel's table is read meanwhile: cheap, and a start
    /// waits at most this long past the listener's going.
    const LISTENER_RECHECK_MS: u64 = 50;
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_millis(LISTENER_GONE_WAIT_MS);
    loop {
        let Some(other) = listener_on(addr) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            bail!(
                "another process is listening on {other} (this server would share {addr} \
                 with it); stop it or choose another address"
            );
        }
        std::thread::sleep(Duration::from_millis(LISTENER_RECHECK_MS));
    }
}

/// A listening socket whose address takes connections meant for `addr`.
fn listener_on(addr: SocketAddr) -> Option<SocketAddr> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            let found = text
                .lines()
                .skip(1)
                .filter_map(listening)
                .find(|l| overlaps(*l, addr));
            found
        })
}

/// The local address of a socket in LISTEN state, from one line of
/// `/proc/net/tcp{,6}` (`sl local_address rem_address st ...`; addresses
/// are hex words in host byte order, the port big-endian hex).
fn listening(line: &str) -> Option<SocketAddr> {
    const TCP_LISTEN: &str = "0A";
    let mut fields = line.split_whitespace().skip(1);
    let local = fields.next()?;
    let state = fields.nth(1)?;
    if state != TCP_LISTEN {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a listener on `other` takes connections meant for `addr`.
fn overlaps(other: SocketAddr, addr: SocketAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(other.ip()), canonical(addr.ip()));
    other.port() == addr.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// One bounded SPSC queue per ordered pair of shards.
fn peer_queues(count: usize, batches_max: usize) -> Vec<PeerEnds> {
    let mut ends: Vec<PeerEnds> = (0..count)
        .map(|_| PeerEnds {
            senders: (0..count).map(|_| None).collect(),
            receivers: (0..count).map(|_| None).collect(),
        })
        .collect();
    for source in 0..count {
        for destination in 0..count {
            if source != destination {
                let (sender, receiver) = server::peer_queue::bounded(batches_max);
                ends[source].senders[destination] = Some(sender);
                ends[destination].receivers[source] = Some(receiver);
            }
        }
    }
    ends
}

struct OsEnv {
    sms: SmsQueue,
    push: PushQueue,
}

impl shard::Env for OsEnv {
    fn random(&mut self, buffer: &mut [u8]) {
        // Without the OS CSPRNG no key or code can be made safely; there is
        // no sound way to continue.
        getrandom::getrandom(buffer).expect("the OS random source failed");
    }

    fn send_sms(&mut self, phone: wire::Phone, code: u32) -> bool {
        self.sms.try_send(phone, code)
    }

    fn push(&mut self, push: shard::Push) -> bool {
        self.push.try_send(push)
    }
}
