//! The control thread: the server's side that is not on a shard core. It
//! runs one current-thread tokio runtime (the cluster's etcd client joins
//! it later, so there is one control thread, not two) and serves the admin
//! HTTP listener: `/metrics` (Prometheus), `/health/live`,
//! `/health/ready` and `/status` (JSON, what `isle ctl` shows).
//!
//! Shards never wait on it: each sends a [`ShardReport`] once a second
//! through a bounded channel with `try_send`, dropping (and counting) a
//! report when the channel is full. The control thread keeps the latest
//! report of each shard and its queues' decaying averages; the lock on that
//! state is taken only on this thread.

pub mod commands;
pub mod decay;
pub mod gateways;
mod link_metrics;
pub mod listener;
pub mod metrics;
mod planned_stop;
pub mod reload;
pub mod snapshot;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    extract::State as Extract,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;
use shard::AccountRefused;
use subtle::ConstantTimeEq;

use self::reload::ConfigReload;
pub use self::reload::{ConfigLoader, Reloader, TlsLoader};
use self::{
    commands::{Deletion, ShardCommand, COMMANDS_PER_SHARD_MAX},
    decay::Decaying,
    metrics::Metrics,
    snapshot::{JournalState, Queues, ShardReport},
};
use crate::{
    cluster::{
        coordinator::{Coordinator, CoordinatorStatus, OperatorRequest},
        view::ClusterView,
    },
    config::cluster::ClusterSettings,
};

/// How soon a placement is offered again to a shard whose command
/// channel was full.
const PLACE_RETRY_MS: u64 = 100;
/// Reports in flight from all shards to the control thread, per shard.
const REPORTS_PER_SHARD_MAX: usize = 4;
/// How often the control thread takes in reports.
const INGEST_INTERVAL_MS: u64 = 100;
/// A shard silent this long is not ready: its core is stuck or gone.
const SHARD_SILENT_MAX_MS: u64 = 5_000;
/// ... or for this many of its report intervals, when that is longer (a
/// shard whose tick is longer than a second reports once a tick).
const SHARD_SILENT_REPORTS_MAX: u64 = 3;
/// How long an operator's request waits for a shard's answer: a shard
/// takes commands every tick (100 ms by default).
const SHARD_ANSWER_WAIT_MS: u64 = 5_000;

/// Where the admin listener is and who may use it.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer TOKEN` on everything but the
    /// health checks, when set; it must be set when `listen` is not a
    /// loopback address.
    pub token: Option<String>,
    /// This node's id in a cluster: a `node` label on every metric.
    pub node: Option<u16>,
}

/// A shard's way to report: never blocks.
#[derive(Clone)]
pub struct Reporter {
    sender: Sender<ShardReport>,
    dropped: Arc<AtomicU64>,
}

impl Reporter {
    /// Sends `report` if the channel has room; else drops it and counts.
    pub fn report(&self, report: ShardReport) {
        if self.sender.try_send(report).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running control thread.
pub struct Control {
    /// The admin listener's address (its port chosen when 0 was asked).
    pub addr: SocketAddr,
    reporter: Reporter,
    /// The control thread's end of the reports, to take them in at once
    /// when the server starts serving.
    reports: Receiver<ShardReport>,
    /// When the control thread started: the decaying averages' origin.
    started: Instant,
    shared: Arc<Shared>,
    /// Each shard's end of its command channel, until handed to it.
    commands: Vec<Option<Receiver<ShardCommand>>>,
    /// Where the coordinator publishes, until the node joins a cluster.
    views: Option<tokio::sync::watch::Sender<Arc<ClusterView>>>,
    /// The control thread's runtime, to start the coordinator on.
    runtime: tokio::runtime::Handle,
}

/// What the HTTP handlers and the ingest task share.
struct Shared {
    state: Mutex<State>,
    metrics: Metrics,
    token: Option<String>,
    stop: Arc<AtomicBool>,
    /// A planned stop was asked for (a signal, `POST /stop`): see
    /// `planned_stop`, which sets `stop` when it is done.
    stop_requested: Arc<AtomicBool>,
    /// This process among the server's starts (`Status::process`).
    process: u64,
    reports_dropped: Arc<AtomicU64>,
    /// Where each account lives, and each shard's command channel.
    map: shard::PartitionMap,
    commands: Vec<Sender<ShardCommand>>,
    /// Reads the TLS certificate and key again (set when TLS is on).
    tls_loader: std::sync::OnceLock<TlsLoader>,
    /// The fingerprint of the certificate new connections get.
    tls_fingerprint: Mutex<Option<String>>,
    /// Reads the configuration again, and what of it is in effect (set
    /// once the server has loaded it).
    config: Mutex<Option<ConfigReload>>,
    /// Reloads asked for (SIGHUP, `POST /reload`), run one at a time.
    reloads: Mutex<reload::ReloadQueue>,
    /// The control thread's runtime, where reloads run.
    runtime: tokio::runtime::Handle,
    /// Records each shard has replayed while starting.
    replayed: Vec<Arc<AtomicU64>>,
    /// What the cluster coordinator shows, once the node joined one.
    cluster: std::sync::OnceLock<Arc<Mutex<CoordinatorStatus>>>,
    /// Where an operator's requests to the coordinator go (a removal, a
    /// planned stop's leave), once the node joined a cluster.
    coordinator: std::sync::OnceLock<tokio::sync::mpsc::Sender<OperatorRequest>>,
    /// This node's id in a cluster (`None`: a single node).
    node: Option<u16>,
    /// What the SMS and push senders did.
    pub sms: Arc<gateways::GatewayStats>,
    pub push: Arc<gateways::GatewayStats>,
}

/// The latest of everything the shards reported.
struct State {
    shard_count: usize,
    /// Every shard replayed its log and the listeners are open.
    serving: bool,
    /// An operator asked the server to drain.
    draining: bool,
    shards: BTreeMap<u16, ShardState>,
}

struct ShardState {
    latest: ShardReport,
    /// Each queue's decaying averages, by queue name.
    averages: BTreeMap<String, Decaying>,
    /// In a cluster: each outgoing link's queue depth (messages) as
    /// decaying averages, by peer node; a link gone from the report goes.
    link_averages: BTreeMap<u16, Decaying>,
}

impl Control {
    /// Binds the admin listener and starts the control thread. Err: the
    /// address cannot be bound, or is not loopback and has no token.
    pub fn start(
        settings: &AdminSettings,
        map: shard::PartitionMap,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Control> {
        let shard_count = usize::from(map.shards());
        let no_token = settings.token.as_deref().is_none_or(str::is_empty);
        if !settings.listen.ip().is_loopback() && no_token {
            anyhow::bail!(
                "admin.listen {} is not a loopback address: set admin.token (or --admin-token)",
                settings.listen
            );
        }
        let listener = std::net::TcpListener::bind(settings.listen)
            .with_context(|| format!("binding the admin listener {}", settings.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (sender, receiver) = bounded(REPORTS_PER_SHARD_MAX * shard_count.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let (views, _) = tokio::sync::watch::channel(Arc::<ClusterView>::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the control thread's runtime")?;
        let handle = runtime.handle().clone();
        let (command_senders, command_receivers): (Vec<_>, Vec<_>) = (0..shard_count)
            .map(|_| bounded(COMMANDS_PER_SHARD_MAX))
            .unzip();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                shard_count,
                serving: false,
                draining: false,
                shards: BTreeMap::new(),
            }),
            metrics: Metrics::new(settings.node),
            node: settings.node,
            token: settings.token.clone(),
            stop,
            stop_requested: Arc::default(),
            process: {
                let mut bytes = [0; 8];
                getrandom::getrandom(&mut bytes)
                    .map_err(|e| anyhow::anyhow!("the OS random source: {e}"))?;
                u64::from_le_bytes(bytes)
            },
            reports_dropped: dropped.clone(),
            map,
            commands: command_senders,
            tls_loader: std::sync::OnceLock::new(),
            tls_fingerprint: Mutex::new(None),
            config: Mutex::new(None),
            reloads: Mutex::default(),
            runtime: handle.clone(),
            cluster: std::sync::OnceLock::new(),
            coordinator: std::sync::OnceLock::new(),
            replayed: (0..shard_count).map(|_| Arc::default()).collect(),
            sms: Arc::default(),
            push: Arc::default(),
        });
        let thread_shared = shared.clone();
        let reports = receiver.clone();
        let started = Instant::now();
        std::thread::Builder::new()
            .name("isle-control".into())
            .spawn(move || serve(runtime, listener, thread_shared, (receiver, started)))
            .context("starting the control thread")?;
        Ok(Control {
            addr,
            reporter: Reporter { sender, dropped },
            reports,
            started,
            shared,
            commands: command_receivers.into_iter().map(Some).collect(),
            views: Some(views),
            runtime: handle,
        })
    }

    /// How to read the TLS identity again, for reloads, and the
    /// fingerprint of the certificate served now.
    pub fn set_tls_loader(&self, loader: TlsLoader, fingerprint: String) {
        let _ = self.shared.tls_loader.set(loader);
        *self.shared.tls_fingerprint.lock().expect("not poisoned") = Some(fingerprint);
    }

    /// How to read the configuration again, for reloads, and the one the
    /// server started with.
    pub fn set_config_loader(&self, loader: ConfigLoader, started: &crate::config::Config) {
        *self.shared.config.lock().expect("not poisoned") =
            Some(ConfigReload::new(loader, started));
    }

    /// Where shard `shard` counts the records it replays.
    pub fn replayed(&self, shard: usize) -> Arc<AtomicU64> {
        self.shared.replayed[shard].clone()
    }

    /// Where the SMS and push senders count what they do.
    pub fn gateway_stats(&self) -> (Arc<gateways::GatewayStats>, Arc<gateways::GatewayStats>) {
        (self.shared.sms.clone(), self.shared.push.clone())
    }

    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// The flag that asks for a planned stop (`planned_stop`): what
    /// SIGTERM and SIGINT set.
    pub fn stop_requests(&self) -> Arc<AtomicBool> {
        self.shared.stop_requested.clone()
    }

    /// Shard `shard`'s end of its command channel (once).
    pub fn take_commands(&mut self, shard: usize) -> Receiver<ShardCommand> {
        self.commands[shard]
            .take()
            .expect("each shard's channel is taken once")
    }

    /// A reporter for a shard.
    pub fn reporter(&self) -> Reporter {
        self.reporter.clone()
    }

    /// Joins the cluster `settings` describes: the coordinator starts on
    /// the control thread, registers the node (whose `shards` serve by
    /// now) and publishes views to `cluster_views`. Once.
    pub fn join_cluster(
        &mut self,
        settings: ClusterSettings,
        shards: u16,
        islands: Option<(
            Arc<server::island::LeaseClock>,
            tokio::sync::mpsc::Receiver<server::island::tablet::IslandTxn>,
        )>,
    ) {
        let views = self.views.take().expect("a node joins one cluster, once");
        let status = Arc::new(Mutex::new(CoordinatorStatus::default()));
        let _ = self.shared.cluster.set(status.clone());
        let me = settings.node_id;
        self.runtime
            .spawn(place_shards(views.subscribe(), self.shared.clone(), me));
        let (requests, requests_in) = tokio::sync::mpsc::channel(OPERATOR_REQUESTS_MAX);
        let _ = self.shared.coordinator.set(requests);
        let mut coordinator =
            Coordinator::new(settings, shards, views, status).with_requests(requests_in);
        if let Some((lease, txns)) = islands {
            coordinator = coordinator.with_islands(lease, txns);
        }
        self.runtime.spawn(coordinator.run());
    }

    /// Every shard replayed its log and the phone-facing listeners are
    /// open: `/health/ready` may answer 200. The reports waiting (each
    /// shard sent one before it counted as replayed) are taken in first,
    /// so readiness never turns on before every shard's report is there.
    pub fn serving(&self) {
        take_reports(&self.shared, &self.reports, self.started);
        self.shared.state.lock().expect("not poisoned").serving = true;
    }
}

/// The control thread's body: the HTTP server and the ingest task on one
/// current-thread runtime.
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    (reports, started): (Receiver<ShardReport>, Instant),
) {
    runtime.block_on(async move {
        tokio::spawn(ingest(shared.clone(), reports, started));
        let requested = shared.stop_requested.clone();
        tokio::spawn(planned_stop::watch(shared.clone(), requested));
        // Everything but the health checks wants the token, when one is set.
        let guarded = Router::new()
            .route("/metrics", get(get_metrics))
            .route("/status", get(get_status))
            .route("/account/:phone", get(get_account).delete(delete_account))
            .route("/account/:phone/revoke", axum::routing::post(post_revoke))
            .route("/drain", axum::routing::post(post_drain))
            .route("/stop", axum::routing::post(post_stop))
            .route(
                "/cluster/remove/:node",
                axum::routing::post(post_remove_node),
            )
            .route("/trace/:sender/:client_id", get(get_trace))
            .route("/reload", axum::routing::post(post_reload))
            .route("/log-level", axum::routing::put(put_log_level))
            .route_layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                require_token,
            ));
        let app = Router::new()
            .route("/health/live", get(|| async { "live\n" }))
            .route("/health/ready", get(get_ready))
            .merge(guarded)
            .with_state(shared);
        match listener::AdminListener::new(listener) {
            Ok(listener) => listener.serve(app).await,
            Err(error) => log::error!("control thread: admin listener: {error}"),
        }
    });
}

/// Gives every shard each new placement the coordinator's views make. A
/// shard whose command channel is full gets it on a later try, unless a
/// newer one came meanwhile.
async fn place_shards(
    mut views: tokio::sync::watch::Receiver<Arc<ClusterView>>,
    shared: Arc<Shared>,
    me: u16,
) {
    while views.changed().await.is_ok() {
        let placement = Arc::new(crate::cluster::placement(&views.borrow_and_update(), me));
        let mut waiting: Vec<usize> = (0..shared.commands.len()).collect();
        loop {
            waiting.retain(|&shard| {
                let command = ShardCommand::Place(placement.clone());
                shared.commands[shard].try_send(command).is_err()
            });
            if waiting.is_empty() || views.has_changed().unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(PLACE_RETRY_MS)).await;
        }
    }
}

/// Takes in the shards' reports as they come.
async fn ingest(shared: Arc<Shared>, reports: Receiver<ShardReport>, started: Instant) {
    let mut interval = tokio::time::interval(Duration::from_millis(INGEST_INTERVAL_MS));
    loop {
        interval.tick().await;
        take_reports(&shared, &reports, started);
    }
}

/// Takes in every report waiting; `started` is when the control thread
/// started (the decaying averages' time origin).
fn take_reports(shared: &Shared, reports: &Receiver<ShardReport>, started: Instant) {
    let mut state = shared.state.lock().expect("not poisoned");
    for report in reports.try_iter() {
        let at_s = report.at.saturating_duration_since(started).as_secs_f64();
        let entry = state
            .shards
            .entry(report.shard)
            .or_insert_with(|| ShardState {
                latest: report.clone(),
                averages: BTreeMap::new(),
                link_averages: BTreeMap::new(),
            });
        entry.observe(&report, at_s);
        shared.metrics.update(&report, &entry.averages());
        entry.latest = report;
    }
    let ready = shared.readiness(&state).is_ok();
    shared.metrics.set_ready(ready);
    shared.refresh_process_metrics();
}

impl ShardState {
    /// Takes `report`'s queue lengths, and its links' depths, into the
    /// averages as samples taken at `at_s`.
    fn observe(&mut self, report: &ShardReport, at_s: f64) {
        for (name, value) in metrics::queue_values(&report.queues) {
            let decaying = self.averages.entry(name).or_default();
            decaying.observe(value as f64, at_s);
        }
        let links = report.links();
        self.link_averages
            .retain(|node, _| links.iter().any(|link| link.node == *node));
        for link in links {
            let decaying = self.link_averages.entry(link.node).or_default();
            decaying.observe(link.queue_messages as f64, at_s);
        }
    }

    fn averages(&self) -> Averages {
        Averages {
            queues: self
                .averages
                .iter()
                .map(|(name, decaying)| (name.clone(), decaying.averages()))
                .collect(),
            links: self
                .link_averages
                .iter()
                .map(|(node, decaying)| (*node, decaying.averages()))
                .collect(),
        }
    }
}

/// A shard's decaying averages over `decay::WINDOWS_S` (1, 10 and 100 s).
#[derive(Debug, Default)]
pub struct Averages {
    /// Each queue's length, by queue name.
    pub queues: BTreeMap<String, [f64; 3]>,
    /// Each outgoing link's queue depth in messages, by peer node.
    pub links: BTreeMap<u16, [f64; 3]>,
}

impl State {
    /// Ok when the server can serve: every shard replayed, reported lately
    /// and can acknowledge (its journal works), and it is not stopping.
    fn readiness(&self, stop: &AtomicBool) -> Result<(), String> {
        if stop.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        if self.draining {
            return Err("draining".into());
        }
        if !self.serving {
            return Err("replaying the journals".into());
        }
        for shard in 0..self.shard_count as u16 {
            let Some(state) = self.shards.get(&shard) else {
                return Err(format!("shard {shard} has not reported"));
            };
            let silent_ms = state.latest.at.elapsed().as_millis() as u64;
            let silent_max_ms =
                SHARD_SILENT_MAX_MS.max(SHARD_SILENT_REPORTS_MAX * state.latest.interval_ms);
            if silent_ms > silent_max_ms {
                return Err(format!("shard {shard} silent for {silent_ms} ms"));
            }
            if state.latest.journal.failed {
                return Err(format!("shard {shard}: its journal failed"));
            }
            // Every new message would be refused until room is made.
            if state.latest.journal.disk_full {
                return Err(format!("shard {shard}: its disk is full"));
            }
        }
        Ok(())
    }
}

impl Shared {
    /// [`State::readiness`], and in a cluster: registered with etcd under
    /// a lease, with a readable partition map (else every phone would be
    /// told to try later).
    fn readiness(&self, state: &State) -> Result<(), String> {
        state.readiness(&self.stop)?;
        let Some(cluster) = self.cluster.get() else {
            return match self.node {
                Some(_) => Err("joining the cluster".into()),
                None => Ok(()),
            };
        };
        let cluster = cluster.lock().expect("not poisoned");
        if cluster.incarnation.is_none() {
            return Err("not registered with etcd (no lease)".into());
        }
        if cluster.map_revision.is_none() {
            return Err("no readable partition map".into());
        }
        Ok(())
    }

    /// Whether every shard's command channel has room for `count` more:
    /// checked before a command that must reach every shard or none (the
    /// control thread and the SIGHUP thread are the only senders, and
    /// shards only take commands out).
    fn room_for(&self, count: usize) -> Result<(), String> {
        for (shard, commands) in self.commands.iter().enumerate() {
            let free = commands.capacity().unwrap_or(usize::MAX) - commands.len();
            if free < count {
                return Err(format!(
                    "shard {shard} has too many commands waiting; retry"
                ));
            }
        }
        Ok(())
    }

    /// Brings the series that are not in shard reports up to date: the
    /// SMS and push senders' counts and the records replayed at start.
    /// This node's part of the cluster as of now (`None`: a single node):
    /// the coordinator's status with the lease time left counted down to
    /// now, and the links the shards last reported.
    fn cluster_status(&self, state: &State) -> Option<CoordinatorStatus> {
        let status = self.cluster.get()?;
        let mut status = status.lock().expect("not poisoned").at(Instant::now());
        let links = state
            .shards
            .values()
            .filter_map(|shard| shard.latest.remote.as_ref())
            .flat_map(|remote| &remote.links);
        (status.links, status.links_up) = links.fold((0, 0), |(all, up), link| {
            (all + 1, up + usize::from(link.connected))
        });
        Some(status)
    }

    fn refresh_process_metrics(&self) {
        self.metrics.set_gateways(self.sms.read(), self.push.read());
        let replayed: Vec<u64> = self
            .replayed
            .iter()
            .map(|records| records.load(Ordering::Relaxed))
            .collect();
        self.metrics.set_replayed(&replayed);
    }

    /// Whether `headers` carry the token, when one is required.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            // The scheme is case-insensitive (RFC 9110, 11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// Lets a request through only with the bearer token, when one is set.
async fn require_token(
    Extract(shared): Extract<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !shared.authorized(request.headers()) {
        return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    }
    next.run(request).await
}

async fn get_metrics(Extract(shared): Extract<Arc<Shared>>) -> Response {
    shared.refresh_process_metrics();
    let cluster = shared.cluster_status(&shared.state.lock().expect("not poisoned"));
    if let Some(cluster) = cluster {
        shared.metrics.set_cluster(&cluster);
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn get_ready(Extract(shared): Extract<Arc<Shared>>) -> Response {
    let state = shared.state.lock().expect("not poisoned");
    match shared.readiness(&state) {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// What `/status` answers: the server's readiness and each shard's latest
/// report.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    /// This process among the server's starts: a random number drawn at
    /// start (`isle ctl restart` tells the new process from the old).
    #[serde(default)]
    pub process: u64,
    pub ready: bool,
    /// Why not, when not ready.
    pub reason: Option<String>,
    /// Reports the shards could not send because the channel was full.
    pub reports_dropped: u64,
    /// What the SMS and push senders did since start.
    pub sms: gateways::GatewayCounts,
    pub push: gateways::GatewayCounts,
    /// Records each shard replayed when it started (so far, while it does).
    pub replayed: Vec<u64>,
    pub shards: Vec<ShardStatus>,
    /// This node in its cluster; absent for a single node.
    #[serde(default)]
    pub cluster: Option<CoordinatorStatus>,
}

/// One shard as `/status` shows it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ShardStatus {
    pub shard: u16,
    /// How old its latest report is.
    pub report_age_ms: u64,
    pub counters: BTreeMap<String, u64>,
    /// `Error` frames sent, by kind.
    pub errors_sent: BTreeMap<String, u64>,
    /// Bytes read from and written to phones' sockets since start.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// TLS handshakes with phones that failed since start.
    #[serde(default)]
    pub tls_handshake_failures: u64,
    pub queues: BTreeMap<String, u64>,
    /// Each queue's averages over 1, 10 and 100 s.
    pub queue_averages: BTreeMap<String, [f64; 3]>,
    /// In a cluster: this shard's outgoing link to each other member.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// Commits in the last report's interval, and their time's median and
    /// 99th percentile in µs.
    pub commits: usize,
    pub commit_p50_us: Option<u32>,
    pub commit_p99_us: Option<u32>,
    pub sync_p50_us: Option<u32>,
    pub journal: JournalStatus,
}

/// One outgoing link (this shard to another member) as `/status` shows
/// it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// The peer node.
    pub node: u16,
    pub connected: bool,
    /// Messages on its queue now (all unacknowledged), and that depth's
    /// averages over 1, 10 and 100 s.
    pub queue_messages: u64,
    pub queue_averages: [f64; 3],
    /// Connections that completed their handshake, and dials that failed,
    /// since start: redials are `connects - 1 + dial_failures`.
    pub connects: u64,
    pub dial_failures: u64,
    /// Since anything arrived from the peer (ms; `None`: never).
    pub silent_ms: Option<u64>,
}

/// A shard's journal as `/status` shows it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct JournalStatus {
    pub failed: bool,
    pub disk_full: bool,
    pub unavailable: bool,
    pub records: u64,
    pub bytes: u64,
    pub last_checkpoint_ms: Option<u64>,
}

impl From<&JournalState> for JournalStatus {
    fn from(journal: &JournalState) -> JournalStatus {
        JournalStatus {
            failed: journal.failed,
            disk_full: journal.disk_full,
            unavailable: journal.unavailable,
            records: journal.records,
            bytes: journal.bytes,
            last_checkpoint_ms: journal.last_checkpoint_ms,
        }
    }
}

async fn get_status(Extract(shared): Extract<Arc<Shared>>) -> Response {
    let state = shared.state.lock().expect("not poisoned");
    let readiness = shared.readiness(&state);
    let shards = state.shards.values().map(shard_status).collect();
    Json(Status {
        process: shared.process,
        ready: readiness.is_ok(),
        reason: readiness.err(),
        reports_dropped: shared.reports_dropped.load(Ordering::Relaxed),
        sms: shared.sms.read(),
        push: shared.push.read(),
        replayed: shared
            .replayed
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect(),
        shards,
        cluster: shared.cluster_status(&state),
    })
    .into_response()
}

fn shard_status(state: &ShardState) -> ShardStatus {
    let report = &state.latest;
    let quantile = |values: &[u32], q: f64| {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(index).copied()
    };
    let queues: Queues = report.queues;
    let averages = state.averages();
    ShardStatus {
        shard: report.shard,
        report_age_ms: report.at.elapsed().as_millis() as u64,
        counters: metrics::counter_values(&report.counters)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
        errors_sent: report.errors_sent.iter().cloned().collect(),
        bytes_in: report.bytes_in,
        bytes_out: report.bytes_out,
        tls_handshake_failures: report.tls_handshake_failures,
        queues: metrics::queue_values(&queues).into_iter().collect(),
        queue_averages: averages.queues,
        links: link_statuses(report, &averages.links),
        commits: report.commits.commit_us.len(),
        commit_p50_us: quantile(&report.commits.commit_us, 0.5),
        commit_p99_us: quantile(&report.commits.commit_us, 0.99),
        sync_p50_us: quantile(&report.commits.sync_us, 0.5),
        journal: JournalStatus::from(&report.journal),
    }
}

/// `report`'s links with their depths' `averages` (by peer node).
fn link_statuses(report: &ShardReport, averages: &BTreeMap<u16, [f64; 3]>) -> Vec<LinkStatus> {
    let links = report.links();
    links
        .iter()
        .map(|link| LinkStatus {
            node: link.node,
            connected: link.connected,
            queue_messages: link.queue_messages as u64,
            queue_averages: averages.get(&link.node).copied().unwrap_or_default(),
            connects: link.connects,
            dial_failures: link.dial_failures,
            silent_ms: link.silent_ms,
        })
        .collect()
}

/// Asks the shard of the account a path names (`phone`, as text) and
/// waits for its answer; Err is the HTTP answer when it cannot.
async fn ask_shard<T>(
    shared: &Shared,
    phone: &str,
    command: impl FnOnce(wire::Phone, tokio::sync::oneshot::Sender<T>) -> ShardCommand,
) -> Result<T, (StatusCode, String)> {
    let phone = phone_in_path(phone)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let shard = usize::from(shared.map.shard_of(phone));
    if shared.commands[shard]
        .try_send(command(phone, reply))
        .is_err()
    {
        let busy = format!("shard {shard} has too many commands waiting; retry\n");
        return Err((StatusCode::SERVICE_UNAVAILABLE, busy));
    }
    let wait = Duration::from_millis(SHARD_ANSWER_WAIT_MS);
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(value)) => Ok(value),
        _ => {
            // The command stays queued: a shard that comes back still does it.
            let silent = format!(
                "shard {shard} did not answer in time; the command is queued and may \
                 still take effect: check before repeating it\n"
            );
            Err((StatusCode::GATEWAY_TIMEOUT, silent))
        }
    }
}

/// The phone a path names, or a 400.
fn phone_in_path(phone: &str) -> Result<wire::Phone, (StatusCode, String)> {
    wire::Phone::parse(phone).map_err(|error| {
        let detail = format!("{phone:?} is not a phone number: {error}\n");
        (StatusCode::BAD_REQUEST, detail)
    })
}

async fn get_account(
    Extract(shared): Extract<Arc<Shared>>,
    axum::extract::Path(phone): axum::extract::Path<String>,
) -> Response {
    let command = |phone, reply| ShardCommand::AccountShow { phone, reply };
    match ask_shard(&shared, &phone, command).await {
        Ok(Some(info)) => Json(info).into_response(),
        Ok(None) => no_such_account(&shared),
        Err(error) => error.into_response(),
    }
}

/// The answer about an account its shard does not have: in a cluster,
/// this node's shards hold only the accounts of the partitions it owns.
fn no_such_account(shared: &Shared) -> Response {
    let detail = match shared.node {
        Some(node) => format!(
            "no such account on node {node} (in a cluster, ask the node that owns its \
             partition)\n"
        ),
        None => "no such account\n".to_owned(),
    };
    (StatusCode::NOT_FOUND, detail).into_response()
}

/// Whether the request asks for a JSON answer (`Accept:
/// application/json`, as `isle ctl --json` sends); text otherwise.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/json"))
}

async fn post_revoke(
    Extract(shared): Extract<Arc<Shared>>,
    axum::extract::Path(phone): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let command = |phone, reply| ShardCommand::Revoke { phone, reply };
    match ask_shard(&shared, &phone, command).await {
        Ok(Ok(())) if wants_json(&headers) => {
            Json(serde_json::json!({ "revoked": phone })).into_response()
        }
        Ok(Ok(())) => "revoked\n".into_response(),
        Ok(Err(AccountRefused::NoAccount)) => no_such_account(&shared),
        Ok(Err(refused)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{refused}\n")).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// Deletes an account: 200 with what went once the deletion is on disk,
/// 404 when there is no such account, 503 when the journal cannot take it.
async fn delete_account(
    Extract(shared): Extract<Arc<Shared>>,
    axum::extract::Path(phone): axum::extract::Path<String>,
) -> Response {
    let command = |phone, reply| ShardCommand::DeleteAccount { phone, reply };
    match ask_shard(&shared, &phone, command).await {
        Ok(Deletion::Durable(deleted)) => Json(deleted).into_response(),
        Ok(Deletion::Refused(AccountRefused::NoAccount)) => no_such_account(&shared),
        Ok(Deletion::Refused(refused)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{refused}\n")).into_response()
        }
        Ok(Deletion::NotWritten) => {
            let detail = "the journal failed before the deletion was written: \
                          it is undone by a restart; delete again after it\n";
            (StatusCode::SERVICE_UNAVAILABLE, detail).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn post_drain(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(busy) = shared.room_for(1) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{busy}\n")).into_response();
    }
    shared.state.lock().expect("not poisoned").draining = true;
    for (shard, commands) in shared.commands.iter().enumerate() {
        if commands.try_send(ShardCommand::Drain).is_err() {
            let busy = format!("shard {shard} has too many commands waiting; retry\n");
            return (StatusCode::SERVICE_UNAVAILABLE, busy).into_response();
        }
    }
    match wants_json(&headers) {
        true => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "draining": true })),
        )
            .into_response(),
        false => (StatusCode::ACCEPTED, "draining\n").into_response(),
    }
}

/// Operators' requests waiting for the coordinator, at most: an operator
/// asks for one at a time.
const OPERATOR_REQUESTS_MAX: usize = 4;
/// How long a removal may wait for etcd before the operator is told it
/// did not answer, in ms: longer than one etcd call's timeout (3 s), and
/// shorter than `isle ctl`'s own (5 s), so the operator reads why.
const REMOVAL_WAIT_MS: u64 = 4_000;

/// Removes member `node` for good (`cluster::removal` says when etcd lets
/// it): 200 with what was done, 409 with why not, 503 when etcd did not
/// answer in time, 404 on a node that is not in a cluster.
async fn post_remove_node(
    Extract(shared): Extract<Arc<Shared>>,
    axum::extract::Path(node): axum::extract::Path<u16>,
    headers: HeaderMap,
) -> Response {
    let (code, removed, detail) = remove_node(&shared, node).await;
    match wants_json(&headers) {
        true => {
            let answer = serde_json::json!({ "node": node, "removed": removed, "detail": detail });
            (code, Json(answer)).into_response()
        }
        false => (code, format!("{detail}\n")).into_response(),
    }
}

/// [`post_remove_node`]'s answer: its status, whether the node was
/// removed, and what the operator reads.
async fn remove_node(shared: &Shared, node: u16) -> (StatusCode, bool, String) {
    let Some(requests) = shared.coordinator.get() else {
        let detail = "this node is not in a cluster".to_owned();
        return (StatusCode::NOT_FOUND, false, detail);
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let removal = OperatorRequest::Remove { node, answer };
    if requests.try_send(removal).is_err() {
        let detail = "other requests are waiting for etcd; retry".to_owned();
        return (StatusCode::SERVICE_UNAVAILABLE, false, detail);
    }
    let wait = Duration::from_millis(REMOVAL_WAIT_MS);
    match tokio::time::timeout(wait, answered).await {
        Ok(Ok(Ok(done))) => (StatusCode::OK, true, done),
        Ok(Ok(Err(refused))) => (StatusCode::CONFLICT, false, refused),
        Ok(Err(_)) | Err(_) => {
            let detail = format!(
                "etcd did not answer within {REMOVAL_WAIT_MS} ms: node {node} may or may not \
                 be removed; see `isle ctl status`"
            );
            (StatusCode::SERVICE_UNAVAILABLE, false, detail)
        }
    }
}

/// A planned stop, as SIGTERM asks for one (`planned_stop`): 202 at once;
/// the process stops within seconds.
async fn post_stop(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.stop_requested.store(true, Ordering::Relaxed);
    let detail = match shared.coordinator.get() {
        Some(_) => "stopping: this node's islands go to their secondaries first",
        None => "stopping",
    };
    match wants_json(&headers) {
        true => {
            let answer = serde_json::json!({ "stopping": true, "detail": detail });
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        false => (StatusCode::ACCEPTED, format!("{detail}\n")).into_response(),
    }
}

/// Sets the level every target logs at from now on (`default`: back to
/// `RUST_LOG`'s directives, or `info`). The answer's first line is the
/// level; the second says what it replaced, since a level set here
/// replaces `RUST_LOG`'s directives instead of narrowing them.
async fn put_log_level(headers: HeaderMap, body: String) -> Response {
    let wanted = body.trim();
    let level = match wanted {
        "default" => None,
        _ => match wanted.parse::<log::LevelFilter>() {
            Ok(level) => Some(level),
            Err(_) => {
                let detail = "a level: off, error, warn, info, debug or trace; or default\n";
                return (StatusCode::BAD_REQUEST, detail).into_response();
            }
        },
    };
    let replaced = match crate::logging::set_level(level) {
        crate::logging::Replaced::Directives(text) => format!("RUST_LOG={text}"),
        crate::logging::Replaced::Level(level) => format!("level {level}"),
    };
    let now = level.map_or_else(|| "default".to_owned(), |level| level.to_string());
    log::warn!("log level set to {now} through the admin listener (was {replaced})");
    let detail = match level {
        Some(level) => format!("every target logs at {level}; replaces {replaced}"),
        None => format!("back to {}", crate::logging::default_filter()),
    };
    if wants_json(&headers) {
        let answer = serde_json::json!({ "level": now, "replaced": replaced, "detail": detail });
        return Json(answer).into_response();
    }
    format!("{now}\n{detail}\n").into_response()
}

/// Reloads (see `reload`), answering once every shard took what
/// changed: text, or JSON when the request accepts it.
async fn post_reload(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    match Reloader(shared).reload().await {
        Ok(done) if wants_json(&headers) => Json(done).into_response(),
        Ok(done) => format!("{}\n", done.describe()).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {error}\n"),
        )
            .into_response(),
    }
}

/// One answer of `/trace`: a shard's [`shard::TraceHit`], and the shard.
#[derive(Serialize)]
struct Traced {
    shard: usize,
    #[serde(flatten)]
    hit: shard::TraceHit,
}

/// Where a message is: every shard is asked (a message is stored on its
/// recipient's shard, a group post on its group's), and the answers are
/// listed together, shard by shard.
async fn get_trace(
    Extract(shared): Extract<Arc<Shared>>,
    axum::extract::Path((sender, client_id)): axum::extract::Path<(String, u64)>,
) -> Response {
    let sender = match phone_in_path(&sender) {
        Ok(phone) => phone,
        Err(error) => return error.into_response(),
    };
    let mut answers = Vec::new();
    for (shard, commands) in shared.commands.iter().enumerate() {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = ShardCommand::Trace {
            sender,
            client_id,
            reply,
        };
        if commands.try_send(command).is_err() {
            let busy = format!("shard {shard} has too many commands waiting; retry\n");
            return (StatusCode::SERVICE_UNAVAILABLE, busy).into_response();
        }
        answers.push((shard, answer));
    }
    let wait = Duration::from_millis(SHARD_ANSWER_WAIT_MS);
    let mut found = Vec::new();
    for (shard, answer) in answers {
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(hits)) => found.extend(hits.into_iter().map(|hit| (shard, hit))),
            _ => {
                let silent = format!("shard {shard} did not answer\n");
                return (StatusCode::GATEWAY_TIMEOUT, silent).into_response();
            }
        }
    }
    let found: Vec<Traced> = found
        .into_iter()
        .map(|(shard, hit)| Traced { shard, hit })
        .collect();
    Json(found).into_response()
}
