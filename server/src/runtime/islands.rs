//! This shard's tablets (docs/islands.md): as primary, its own log shipped
//! to its island's secondary, the commit task holding each batch's replies
//! until the tablet acknowledges it; as secondary, a warm standby of the
//! primary's tablet of the same shard number, fed by the replication
//! connection the primary dials.
//!
//! [`Islands`] is the part the runtime holds; it owns the tablets, their
//! connections' kill switches and the setup they were made from. The
//! commit task drives the primary's log work ([`primary_log_work`]); a
//! task per standby drives a secondary's.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    path::PathBuf,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use futures_lite::{io::split, AsyncWriteExt};
use glommio::net::TcpStream;
use server::{
    island::{
        connection::{self, ConnectionError, ReplReader, Speaker, REDIAL_MS},
        standby::Standby,
        tablet::{IslandTxn, LogWork, OutOfStep, Tablet, TabletStats},
        LeaseClock,
    },
    remote::{proof::ClusterSecret, Killer},
};
use shard::{
    island::{
        codec::{self, ReplFrame},
        IslandId, LogInfo, Member, MemberConfig, NodeId,
    },
    Placement, Shard,
};
use storage::{
    log::{
        checkpoint,
        glommio_disk::GlommioDisk,
        shipping::{ReadError, ShippedBatch},
        LogConfig,
    },
    Journal, JournalError,
};

use super::Runtime;

/// Bytes of batches read for a catching-up secondary at a time.
const CATCH_UP_READ_BYTES: usize = 16 << 20;
/// How often a commit that waits for its acknowledgement says so.
const WAITING_LOG_MS: u64 = 10_000;
/// How often a batch waiting for its secondary looks whether the server
/// is stopping, in ms.
const WAITING_POLL_MS: u64 = 100;
/// How long after a failed standby checkpoint the next is tried.
const CHECKPOINT_RETRY_MS: u64 = 10_000;

thread_local! {
    /// When a read for a secondary last failed and said so (shard ms).
    static SHIP_ERROR_SAID: Cell<u64> = const { Cell::new(0) };
}

/// What a shard needs to replicate, from the server's start.
pub struct IslandSetup {
    pub node: NodeId,
    pub lease: Arc<LeaseClock>,
    /// Island transactions for the control thread's etcd client.
    pub txns: tokio::sync::mpsc::Sender<IslandTxn>,
    pub secret: Option<ClusterSecret>,
    /// Where this node keeps the tablets it is secondary of:
    /// `<dir>/island-<id>/shard-<n>`.
    pub replica_dir: PathBuf,
    /// This shard's own log directory, whose latest checkpoint goes to a
    /// secondary the log no longer holds enough for.
    pub own_dir: PathBuf,
    /// The layout of a tablet's log (this shard's).
    pub log: LogConfig,
    /// Closed segments of a standby's log that call for a checkpoint of
    /// it (as for the shard's own log).
    pub checkpoint_segments: usize,
    /// What a promoted standby's shard reaches the world through (SMS,
    /// push): the node's, as the shard's own has.
    pub env: Box<dyn Fn() -> Box<dyn shard::Env> + Send>,
}

/// An island this shard took over: its tablet's member (primary now) and
/// the directory of its log, the standby's.
struct Led {
    tablet: Rc<RefCell<Tablet>>,
    dir: PathBuf,
}

/// A tablet this shard is secondary of.
struct Replica {
    tablet: Rc<RefCell<Tablet>>,
    /// The connection feeding it now; a newer one ends it.
    connection: RefCell<Option<Killer>>,
}

/// This shard's tablets.
pub struct Islands {
    setup: IslandSetup,
    shard_id: u16,
    /// The shard's own island's tablet, from the first placement that
    /// names the island on (this node's id is its island's).
    own: RefCell<Option<Rc<RefCell<Tablet>>>>,
    /// The first placement with a partition map came: the shard knows
    /// whether it replicates.
    decided: Cell<bool>,
    replicas: RefCell<BTreeMap<IslandId, Rc<Replica>>>,
    /// Standbys being opened (one task each).
    opening: RefCell<BTreeSet<IslandId>>,
    placement: RefCell<Option<Arc<Placement>>>,
    /// Raised when a placement came (the commit task waits for the first).
    placed: Rc<server::remote::Signal>,
    /// Islands this shard took over and serves (rule 2), each in a tablet
    /// runtime of its own on this executor.
    led: RefCell<BTreeMap<IslandId, Led>>,
    /// The checkpoint plan of the shard's own log, which a taken-over
    /// tablet's follows in its own directory.
    plan: RefCell<Option<super::commit::CheckpointPlan>>,
    /// Islands whose checkpoint is being sent to their secondary.
    sending_snapshot: RefCell<BTreeSet<IslandId>>,
}

impl Islands {
    pub fn new(setup: IslandSetup, shard_id: u16) -> Islands {
        Islands {
            setup,
            shard_id,
            own: RefCell::new(None),
            decided: Cell::new(false),
            replicas: RefCell::new(BTreeMap::new()),
            opening: RefCell::new(BTreeSet::new()),
            placement: RefCell::new(None),
            placed: Rc::default(),
            led: RefCell::new(BTreeMap::new()),
            plan: RefCell::new(None),
            sending_snapshot: RefCell::new(BTreeSet::new()),
        }
    }

    /// The shard's own checkpoint plan, which taken-over tablets follow.
    pub fn set_plan(&self, plan: super::commit::CheckpointPlan) {
        *self.plan.borrow_mut() = Some(plan);
    }

    /// Every tablet this shard is primary of or may become: the own one,
    /// those taken over, and the standbys.
    fn tablets(&self) -> Vec<Rc<RefCell<Tablet>>> {
        let led = self.led.borrow();
        let replicas = self.replicas.borrow();
        self.own()
            .into_iter()
            .chain(led.values().map(|l| l.tablet.clone()))
            .chain(replicas.values().map(|r| r.tablet.clone()))
            .collect()
    }

    /// The shard's own tablet, if it replicates.
    pub fn own(&self) -> Option<Rc<RefCell<Tablet>>> {
        self.own.borrow().clone()
    }

    fn now_ms(&self) -> u64 {
        self.setup.lease.now_ms()
    }

    /// Waits for the first placement with a map, then makes the shard's
    /// own tablet over a log of shape `log` if the cluster has an island
    /// for this node. `Ok(None)`: the shard does not replicate (a cluster
    /// of one node has no island), or another node serves its island now
    /// (it was taken over while this node was away): this log is a stale
    /// copy that serves nothing, and the node rejoins the island as its
    /// secondary through a standby, like any island it is secondary of.
    /// Err: this node's log of its island was lost (see
    /// [`Member::lost_log`]): it must not serve it.
    pub async fn start_own(&self, log: LogInfo) -> Result<Option<Rc<RefCell<Tablet>>>, String> {
        while !self.decided.get() {
            self.placed.wait().await;
        }
        let Some(placement) = self.placement.borrow().clone() else {
            return Ok(None);
        };
        let island = self.setup.node;
        let Some(view) = placement.island_view(island) else {
            return Ok(None);
        };
        if view.record.primary != self.setup.node {
            log::warn!(
                "shard {}: island {island} is served by node {} since epoch {}: this node's log \
                 of it is a stale copy and serves nothing; the node rejoins the island as its \
                 secondary",
                self.shard_id,
                view.record.primary,
                view.record.epoch
            );
            return Ok(None);
        }
        let secondary = view.record.secondary;
        let member = Member::new(member_config(self.setup.node, island), log, self.now_ms());
        let tablet = Rc::new(RefCell::new(Tablet::new(island, self.shard_id, member)));
        tablet.borrow_mut().view(view, self.now_ms());
        if tablet.borrow().member().lost_log() {
            // Its one ask: that the secondary take the island over. The
            // tablet is not kept, so it is sent from here.
            while let Some(txn) = tablet.borrow_mut().next_txn() {
                let _ = self.setup.txns.try_send(txn);
            }
            return Err(format!(
                "island {island}: this node is its primary but its log here is empty, while the \
                 island has served and node {secondary} holds all of it: this data dir is not \
                 the island's (a new disk, or a wiped directory). Serving it would make node \
                 {secondary} drop the island's data, so node {secondary}, if live, is asked to \
                 take the island over. If it is not live, restore the island here: stop this \
                 node, copy node {secondary}'s DATA_DIR/islands/island-{island}/shard-N into \
                 this node's DATA_DIR/log/shard-N for every shard N, and start it again"
            ));
        }
        *self.own.borrow_mut() = Some(tablet.clone());
        log::info!(
            "shard {}: replicating as island {island}: {}",
            self.shard_id,
            tablet.borrow().summary()
        );
        Ok(Some(tablet))
    }

    /// A new placement: the tablets see their islands' records, standbys
    /// start for islands this node became secondary of.
    pub fn place(self: &Rc<Self>, runtime: &Rc<Runtime>, placement: &Arc<Placement>) {
        *self.placement.borrow_mut() = Some(placement.clone());
        if placement.has_map() && !self.decided.replace(true) {
            self.placed.raise();
        }
        let now = self.now_ms();
        let leading: Vec<_> = self.own().into_iter().chain(self.led_tablets()).collect();
        for tablet in leading {
            let island = tablet.borrow().island();
            if let Some(view) = placement.island_view(island) {
                tablet.borrow_mut().view(view, now);
            }
        }
        self.retire_own_if_moved(placement);
        for (island, record) in placement.islands() {
            // Its own island too, once another node serves it: this node
            // rejoins it through a standby.
            if record.secondary != self.setup.node {
                continue;
            }
            let known = self.replicas.borrow().contains_key(&island);
            if !known && self.opening.borrow_mut().insert(island) {
                let islands = self.clone();
                let runtime = runtime.clone();
                glommio::spawn_local(async move {
                    islands.clone().open_replica(&runtime, island).await;
                    islands.opening.borrow_mut().remove(&island);
                })
                .detach();
            }
        }
        for (&island, replica) in self.replicas.borrow().iter() {
            if let Some(view) = placement.island_view(island) {
                replica.tablet.borrow_mut().view(view, now);
            }
        }
    }

    /// The own island is served by another node now (it was taken over
    /// while this node was paused, or cut off): the own tablet's member
    /// stops, its log is a stale copy from here on, and the node rejoins
    /// the island through a standby (the rest of `place`).
    fn retire_own_if_moved(&self, placement: &Placement) {
        let Some(own) = self.own() else {
            return;
        };
        let island = own.borrow().island();
        let moved = placement
            .island_view(island)
            .is_some_and(|v| v.record.primary != self.setup.node);
        if moved && own.borrow().member().primary_epoch().is_none() {
            *self.own.borrow_mut() = None;
            log::warn!(
                "shard {}: island {island} is served by another node now: this node's log of \
                 it is a stale copy and serves nothing; the node rejoins the island as its \
                 secondary",
                self.shard_id
            );
        }
    }

    fn led_tablets(&self) -> Vec<Rc<RefCell<Tablet>>> {
        self.led
            .borrow()
            .values()
            .map(|l| l.tablet.clone())
            .collect()
    }

    /// What this shard's tablets moved: the shipping and lag of those it
    /// is primary of, with the standbys' appends added.
    pub fn stats(&self) -> TabletStats {
        let mut total = TabletStats::default();
        for tablet in self.tablets() {
            let stats = tablet.borrow().stats();
            total.shipped_batches += stats.shipped_batches;
            total.shipped_bytes += stats.shipped_bytes;
            total.lag_bytes += stats.lag_bytes;
            total.appended_batches += stats.appended_batches;
            total.appended_bytes += stats.appended_bytes;
            total.dropped += stats.dropped;
        }
        total
    }

    /// Time passes for every tablet; their store transactions go to the
    /// control thread.
    pub fn tick(&self) {
        let (now, valid_until) = (self.now_ms(), self.setup.lease.valid_until_ms());
        for tablet in self.tablets() {
            let mut tablet = tablet.borrow_mut();
            tablet.tick(now, valid_until);
            while let Some(txn) = tablet.next_txn() {
                if self.setup.txns.try_send(txn).is_err() {
                    // Asked again after the member's txn timeout.
                    log::warn!(
                        "shard {}: the island transaction queue is full",
                        self.shard_id
                    );
                }
            }
        }
    }

    /// Where node `node`'s peer port is, and its incarnation, if live.
    fn peer(&self, node: NodeId) -> Option<(std::net::SocketAddr, i64)> {
        let placement = self.placement.borrow();
        let placed = placement.as_ref()?.node(node)?;
        placed.live.then_some((placed.peer, placed.incarnation))
    }

    fn speaker(&self) -> Speaker {
        let incarnation = self
            .placement
            .borrow()
            .as_ref()
            .map_or(0, |p| p.incarnation);
        Speaker {
            node: self.setup.node,
            incarnation,
        }
    }

    // ---- the primary's side -------------------------------------------------

    /// Dials the own tablet's secondary and keeps a connection to it for
    /// as long as the shard runs.
    pub async fn ship(self: Rc<Self>, tablet: Rc<RefCell<Tablet>>) {
        let mut pause_ms = REDIAL_MS.0;
        let island = tablet.borrow().island();
        loop {
            let still = self
                .leading(island)
                .is_some_and(|(t, _)| Rc::ptr_eq(&t, &tablet));
            if !still {
                // Retired: another node serves the island now.
                return;
            }
            let secondary = tablet.borrow().member().seen().map(|(r, _)| r.secondary);
            let target = secondary.and_then(|s| Some((s, self.peer(s)?)));
            let ended = match target {
                None => "the secondary is not live".to_owned(),
                Some((secondary, (addr, _))) => {
                    let island = tablet.borrow().island();
                    let hello = connection::hello(
                        self.setup.secret.as_ref(),
                        self.speaker(),
                        island,
                        self.shard_id,
                    );
                    let secret = self.setup.secret.as_ref();
                    match connection::dial(addr, &hello, secondary, secret).await {
                        Ok((read, write, reader, _killer)) => {
                            pause_ms = REDIAL_MS.0;
                            log::info!(
                                "shard {}: island {island}: shipping to node {secondary} at {addr}",
                                self.shard_id
                            );
                            connection::run(&tablet, secondary, read, write, reader)
                                .await
                                .to_string()
                        }
                        Err(error) => error.to_string(),
                    }
                }
            };
            log::debug!("shard {}: replication connection: {ended}", self.shard_id);
            glommio::timer::sleep(Duration::from_millis(pause_ms)).await;
            pause_ms = (pause_ms * 2).min(REDIAL_MS.1);
        }
    }

    // ---- taking an island over (rule 2) -------------------------------------

    /// The standby of `tablet`'s island won the island: its log and shard
    /// become a tablet this executor serves, whose first batch of epoch
    /// `epoch`, an `EpochStart` at `seq`, is written before anything else.
    /// Its commit task and its shipping to the island's new secondary
    /// start; the placement routes the island's partitions here once the
    /// other nodes see the island's record.
    fn take_over(
        self: &Rc<Self>,
        runtime: &Rc<Runtime>,
        (tablet, dir): (Rc<RefCell<Tablet>>, PathBuf),
        standby: Standby<GlommioDisk>,
        (seq, epoch): (u64, u64),
    ) {
        let island = tablet.borrow().island();
        if let Some(replica) = self.replicas.borrow_mut().remove(&island) {
            if let Some(connection) = replica.connection.take() {
                connection.kill();
            }
        }
        let (log, mut shard) = standby.promote();
        shard.set_env((self.setup.env)());
        shard.set_placement(self.placement.borrow().clone());
        let Some(plan) = self.plan.borrow().clone() else {
            log::error!(
                "shard {}: island {island}: no checkpoint plan",
                self.shard_id
            );
            return;
        };
        let served = Rc::new(runtime.sibling(shard));
        served.serve();
        self.led.borrow_mut().insert(
            island,
            Led {
                tablet: tablet.clone(),
                dir: dir.clone(),
            },
        );
        let islands = self.clone();
        glommio::spawn_local(async move {
            let mut log = log;
            let record = served.with_shard_no_outputs(|s| s.start_epoch(island, epoch, seq));
            let start = if log.last_batch() + 1 != seq {
                Err(format!(
                    "the standby's log ends at batch {}, not {}",
                    log.last_batch(),
                    seq - 1
                ))
            } else {
                let written = log.commit_shipping(&[record], &mut Vec::new()).await;
                written.map_err(|e| e.to_string())
            };
            if let Err(error) = start {
                log::error!(
                    "shard {}: island {island}: cannot begin epoch {epoch}: {error}; the \
                     island is not served here",
                    served.shard_id
                );
                return;
            }
            tablet.borrow_mut().durable(seq);
            log::warn!(
                "shard {}: island {island}: took the island over; epoch {epoch} begins at \
                 batch {seq}",
                served.shard_id
            );
            glommio::spawn_local(islands.ship(tablet.clone())).detach();
            let plan = plan.in_dir(dir);
            let replication = super::commit::Replication::Led(tablet);
            super::commit::commit(served, log, plan, replication).await;
        })
        .detach();
    }

    // ---- the secondary's side -----------------------------------------------

    /// Opens (or makes) the standby of `island`'s tablet of this shard and
    /// starts the task that appends what is shipped to it.
    async fn open_replica(self: Rc<Self>, runtime: &Rc<Runtime>, island: IslandId) {
        if self.replicas.borrow().contains_key(&island) {
            return;
        }
        let dir = self
            .setup
            .replica_dir
            .join(format!("island-{island}"))
            .join(format!("shard-{}", self.shard_id));
        let opened = async {
            std::fs::create_dir_all(&dir)?;
            let disk = GlommioDisk::open(&dir).await?;
            let (fresh, after) = checkpointed_shard(runtime, (island, &dir), self.now_ms())?;
            Standby::open_after(disk, self.setup.log, after, fresh)
                .await
                .map_err(std::io::Error::other)
        };
        let (standby, recovery) = match opened.await {
            Ok(opened) => opened,
            Err(error) => {
                log::error!(
                    "shard {}: island {island}: cannot open the standby in {}: {error}",
                    self.shard_id,
                    dir.display()
                );
                return;
            }
        };
        if self.replicas.borrow().contains_key(&island) {
            return;
        }
        let mut standby = standby;
        let last = standby.next_seq() - 1;
        let log = standby.shard().epochs().log_info(last);
        let member = Member::new(member_config(self.setup.node, island), log, self.now_ms());
        let tablet = Rc::new(RefCell::new(Tablet::new(island, self.shard_id, member)));
        if let Some(view) = self
            .placement
            .borrow()
            .as_ref()
            .and_then(|p| p.island_view(island))
        {
            tablet.borrow_mut().view(view, self.now_ms());
        }
        log::info!(
            "shard {}: island {island}: standby of {} batches in {}",
            self.shard_id,
            recovery.batches,
            dir.display()
        );
        let replica = Rc::new(Replica {
            tablet: tablet.clone(),
            connection: RefCell::new(None),
        });
        self.replicas.borrow_mut().insert(island, replica);
        let work = StandbyWork {
            runtime: runtime.clone(),
            shard_id: self.shard_id,
            log: self.setup.log,
            dir,
            checkpoint_segments: self.setup.checkpoint_segments.max(1),
            tablet,
        };
        glommio::spawn_local(async move { work.run(standby).await }).detach();
    }

    /// A replication connection the peer port passed on: checked, then
    /// served for the tablet it names.
    pub fn accept(self: &Rc<Self>, fd: OwnedFd, pending: Vec<u8>) {
        // SAFETY: a connected TCP socket whose other copies were closed.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let islands = self.clone();
        glommio::spawn_local(async move {
            if let Err(error) = islands.serve(stream, pending).await {
                log::warn!(
                    "shard {}: replication connection: {error}",
                    islands.shard_id
                );
            }
        })
        .detach();
    }

    async fn serve(&self, stream: TcpStream, pending: Vec<u8>) -> Result<(), ConnectionError> {
        let killer = Killer::of(&stream)?;
        let (mut read, mut write) = split(stream);
        let mut reader = ReplReader::new(pending);
        let first = connection::within(connection::HANDSHAKE_TIMEOUT_MS, async {
            reader.next(&mut read).await
        })
        .await?;
        let ReplFrame::Hello(hello) = first else {
            return Err(ConnectionError::Refused("no hello".into()));
        };
        connection::check_hello(self.setup.secret.as_ref(), &hello)
            .map_err(ConnectionError::Refused)?;
        let replica = self.admit(&hello).map_err(ConnectionError::Refused)?;
        let ours = connection::hello(
            self.setup.secret.as_ref(),
            self.speaker(),
            hello.island,
            self.shard_id,
        );
        let mut out = Vec::new();
        codec::encode_hello(&ours, &mut out);
        write.write_all(&out).await?;
        if let Some(old) = replica.connection.replace(Some(killer)) {
            old.kill();
        }
        log::info!(
            "shard {}: island {}: node {} ships here",
            self.shard_id,
            hello.island,
            hello.node
        );
        Err(connection::run(&replica.tablet, hello.node, read, write, reader).await)
    }

    /// The replica a hello is for, if its sender is the island's live
    /// primary in this node's view and this node its secondary.
    fn admit(&self, hello: &codec::Hello) -> Result<Rc<Replica>, String> {
        if hello.shard != self.shard_id {
            return Err(format!("for shard {}, not this one", hello.shard));
        }
        let placement = self.placement.borrow();
        let placement = placement.as_ref().ok_or("no placement yet")?;
        let record = placement
            .islands()
            .find(|(id, _)| *id == hello.island)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| format!("island {} is unknown here", hello.island))?;
        if record.secondary != self.setup.node || record.primary != hello.node {
            return Err(format!(
                "node {} is not island {}'s primary with this node its secondary",
                hello.node, hello.island
            ));
        }
        let shards = placement.node(self.setup.node).map(|n| n.shards);
        if placement.node(hello.node).map(|n| n.shards) != shards {
            // A tablet is one shard's log under one partition layout: a
            // standby of another layout would restore accounts where the
            // primary's shards do not keep them.
            return Err(format!(
                "node {} runs another shard count than this node: every node of a \
                 replicating cluster must run the same",
                hello.node
            ));
        }
        let live = placement.node(hello.node).map(|n| (n.live, n.incarnation));
        if live != Some((true, hello.incarnation)) {
            return Err(format!(
                "node {} incarnation {:x} is not live",
                hello.node, hello.incarnation
            ));
        }
        self.replicas
            .borrow()
            .get(&hello.island)
            .cloned()
            .ok_or_else(|| format!("island {}'s standby is not open yet", hello.island))
    }
}

/// A tablet member's settings here: an in-sync standby promotes itself
/// when its primary's lease is gone (rule 2), and this shard serves the
/// island from then on (`Islands::take_over`).
fn member_config(me: NodeId, island: IslandId) -> MemberConfig {
    MemberConfig::new(me, island)
}

/// A shard of this shard's layout for a standby of `island`'s tablet: it
/// restores, never serves, so it sends nothing.
fn standby_shard(runtime: &Runtime, island: IslandId, now_ms: u64) -> Shard {
    struct Silent;
    impl shard::Env for Silent {
        fn random(&mut self, buffer: &mut [u8]) {
            getrandom::getrandom(buffer).expect("the OS random source failed");
        }
        fn send_sms(&mut self, _: wire::Phone, _: u32) -> bool {
            false
        }
        fn push(&mut self, _: shard::Push) -> bool {
            false
        }
    }
    let mut config = runtime.shard().config().clone();
    config.island = island;
    Shard::new(config, Box::new(Silent), now_ms)
}

/// A standby's state from its tablet's last checkpoint in `dir`, and the
/// batch it is the state after (a new shard and 0 without one).
fn checkpointed_shard(
    runtime: &Runtime,
    (island, dir): (IslandId, &std::path::Path),
    now_ms: u64,
) -> std::io::Result<(Shard, u64)> {
    let mut shard = standby_shard(runtime, island, now_ms);
    let config = runtime.shard().config().map;
    let (index, count) = (runtime.shard_id, config.shards());
    let mut refused = None;
    let header = checkpoint::load(dir, index, count, |record| {
        if refused.is_none() {
            refused = shard.restore(record).err();
        }
    })
    .map_err(std::io::Error::other)?;
    if let Some(error) = refused {
        return Err(std::io::Error::other(format!(
            "the tablet's checkpoint: {error}"
        )));
    }
    Ok((shard, header.map_or(0, |h| h.batch)))
}

/// The task that keeps a standby: it appends what the primary ships, in
/// order, and tells the tablet what is durable; cuts the standby's log
/// when the primary's history says so; and checkpoints it, as a shard's
/// own log is, so that it does not grow without end.
struct StandbyWork {
    runtime: Rc<Runtime>,
    shard_id: u16,
    log: LogConfig,
    dir: PathBuf,
    checkpoint_segments: usize,
    tablet: Rc<RefCell<Tablet>>,
}

/// A standby checkpoint written off the executor: its batch, or why not.
type Written = Rc<RefCell<Option<std::io::Result<u64>>>>;

impl StandbyWork {
    async fn run(self, mut standby: Standby<GlommioDisk>) {
        let island = self.tablet.borrow().island();
        let shard_id = self.shard_id;
        let mut writing: Option<Written> = None;
        let mut not_before = 0;
        let mut incoming = Incoming::default();
        loop {
            let signal = self.tablet.borrow().work_signal.clone();
            signal.wait().await;
            if let Some(done) = writing.as_ref().and_then(|w| w.borrow_mut().take()) {
                writing = None;
                if !self.finish_checkpoint(&mut standby, done).await {
                    not_before = self.runtime.now_ms() + CHECKPOINT_RETRY_MS;
                }
            }
            match self.do_work(&mut standby, &mut incoming).await {
                Err(error) => {
                    log::error!("shard {shard_id}: island {island}: standby: {error}");
                    return;
                }
                Ok(Some(Replace::Promoted { seq, epoch })) => {
                    if let Some(islands) = self.runtime.islands.clone() {
                        let (tablet, dir) = (self.tablet.clone(), self.dir.clone());
                        islands.take_over(&self.runtime, (tablet, dir), standby, (seq, epoch));
                    }
                    return;
                }
                Ok(Some(replace)) => match self.replace(standby, replace).await {
                    Ok(replaced) => standby = replaced,
                    Err(error) => {
                        log::error!("shard {shard_id}: island {island}: standby: {error}");
                        return;
                    }
                },
                Ok(None) => {}
            }
            let due = standby.closed_segments() >= self.checkpoint_segments;
            if writing.is_none() && due && self.runtime.now_ms() >= not_before {
                writing = Some(self.start_checkpoint(&mut standby));
            }
        }
    }

    /// Appends, and cuts, what the tablet asks for, and writes the chunks
    /// of a checkpoint the primary sends. `Some`: the standby is to be
    /// replaced (see [`Replace`]).
    async fn do_work(
        &self,
        standby: &mut Standby<GlommioDisk>,
        incoming: &mut Incoming,
    ) -> Result<Option<Replace>, String> {
        loop {
            let mut appends = Vec::new();
            let mut other = None;
            while let Some(work) = self.tablet.borrow_mut().next_log_work() {
                match work {
                    // An epoch's own first batch: this standby won the
                    // island (rule 2) and writes it as its primary.
                    LogWork::Append { seq, epoch, bytes } if bytes.is_empty() => {
                        other = Some(LogWork::Append { seq, epoch, bytes });
                        break;
                    }
                    LogWork::Append { seq, bytes, .. } => {
                        appends.push(ShippedBatch { seq, frame: bytes })
                    }
                    work => {
                        other = Some(work);
                        break;
                    }
                }
            }
            if let Some(last) = appends.last().map(|b| b.seq) {
                standby.append(&appends).await.map_err(|e| e.to_string())?;
                self.tablet.borrow_mut().durable(last);
            }
            match other {
                Some(LogWork::Append { seq, epoch, .. }) => {
                    return Ok(Some(Replace::Promoted { seq, epoch }));
                }
                Some(LogWork::Truncate { after }) => {
                    let now = self.runtime.now_ms();
                    let island = self.tablet.borrow().island();
                    let fresh = checkpointed_shard(&self.runtime, (island, &self.dir), now)
                        .map_err(|e| e.to_string())?;
                    if after < fresh.1 {
                        // The standby checkpointed batches its primary had
                        // not acknowledged (it cannot know which were):
                        // it starts over, empty, and catches up.
                        return Ok(Some(Replace::Empty { after }));
                    }
                    standby
                        .truncate_after(after, fresh)
                        .await
                        .map_err(|e| format!("cutting after batch {after}: {e}"))?;
                    log::warn!(
                        "shard {}: island {}: cut the standby after batch {after}",
                        self.shard_id,
                        self.tablet.borrow().island()
                    );
                    self.tablet.borrow_mut().truncated(after);
                }
                Some(LogWork::SnapshotChunk {
                    batch,
                    offset,
                    total,
                    bytes,
                }) => {
                    if let Some(batch) = self
                        .take_chunk(incoming, (batch, offset, total), bytes)
                        .await
                    {
                        return Ok(Some(Replace::Checkpoint(batch)));
                    }
                }
                Some(_) => {}
                None if appends.is_empty() => return Ok(None),
                None => {}
            }
        }
    }

    /// Writes a chunk of the primary's checkpoint `(batch, offset, total)`
    /// where it belongs and acknowledges what is written (again, for a
    /// chunk out of order, so that the primary sends from there).
    /// `Some(batch)`: the checkpoint is whole.
    async fn take_chunk(
        &self,
        incoming: &mut Incoming,
        (batch, offset, total): (u64, u64, u64),
        bytes: Vec<u8>,
    ) -> Option<u64> {
        let written = match incoming.place(batch, offset, total) {
            Ok(at) => match incoming.write(&self.dir, (batch, total, at), bytes).await {
                Ok(written) => written,
                Err(error) => {
                    log::warn!(
                        "shard {}: writing the primary's checkpoint: {error} (it is sent again)",
                        self.shard_id
                    );
                    return None;
                }
            },
            Err(Some(written)) => written,
            Err(None) => return None,
        };
        self.tablet.borrow_mut().snapshot_written(batch, written);
        (written == total).then_some(batch)
    }

    /// Replaces the standby: by the primary's checkpoint of `batch`
    /// (checked first: the standby goes on as it was if it is refused;
    /// then every segment and older checkpoint goes and the log starts
    /// again after `batch`), or by nothing. The standby to go on with, or
    /// why there is none.
    async fn replace(
        &self,
        standby: Standby<GlommioDisk>,
        replace: Replace,
    ) -> Result<Standby<GlommioDisk>, String> {
        let (batch, shard) = match replace {
            Replace::Promoted { .. } => return Err("a promoted standby is not replaced".into()),
            Replace::Empty { after } => {
                log::warn!(
                    "shard {}: island {}: the primary's history ends at batch {after}, \
                     below the standby's checkpoint: the standby starts over",
                    self.shard_id,
                    self.tablet.borrow().island()
                );
                let island = self.tablet.borrow().island();
                (
                    0,
                    standby_shard(&self.runtime, island, self.runtime.now_ms()),
                )
            }
            Replace::Checkpoint(batch) => {
                let island = self.tablet.borrow().island();
                match take_incoming(&self.runtime, (island, &self.dir), batch).await {
                    Ok(shard) => (batch, shard),
                    Err(why) => {
                        log::warn!(
                            "shard {}: refused the primary's checkpoint of batch {batch}: {why}",
                            self.shard_id
                        );
                        return Ok(standby);
                    }
                }
            }
        };
        drop(standby);
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || install_incoming(&dir, batch))
            .await
            .map_err(|e| format!("replacing the standby: {e}"))?;
        let disk = GlommioDisk::open(&self.dir)
            .await
            .map_err(|e| e.to_string())?;
        let (mut standby, _) = Standby::open_after(disk, self.log, batch, shard)
            .await
            .map_err(|e| e.to_string())?;
        let log = standby.shard().epochs().log_info(batch);
        if batch > 0 {
            log::warn!(
                "shard {}: island {}: the standby is the primary's checkpoint of batch {batch} now",
                self.shard_id,
                self.tablet.borrow().island()
            );
        }
        self.tablet.borrow_mut().installed(log);
        Ok(standby)
    }

    /// Writes the standby's state on a blocking thread; the task hears of
    /// it through the tablet's work signal.
    fn start_checkpoint(&self, standby: &mut Standby<GlommioDisk>) -> Written {
        let (batch, records) = standby.checkpoint();
        let written: Written = Rc::default();
        let (dir, shard) = (self.dir.clone(), self.shard_id);
        let count = self.runtime.shard().config().map.shards();
        let (result, signal) = (written.clone(), self.tablet.borrow().work_signal.clone());
        glommio::spawn_local(async move {
            let wrote = glommio::executor()
                .spawn_blocking(move || checkpoint::write(&dir, shard, count, batch, &records))
                .await;
            *result.borrow_mut() = Some(wrote.map(|_| batch));
            signal.raise();
        })
        .detach();
        written
    }

    /// A checkpoint is durable (or failed): the segments and checkpoints
    /// it covers go. A failure costs disk space, not data. False when
    /// something failed.
    async fn finish_checkpoint(
        &self,
        standby: &mut Standby<GlommioDisk>,
        done: std::io::Result<u64>,
    ) -> bool {
        let island = self.tablet.borrow().island();
        let removed = match done {
            Ok(batch) => match standby.remove_through(batch).await {
                Ok(removed) => checkpoint::remove_older(&self.dir, batch).map(|()| removed),
                Err(error) => Err(std::io::Error::other(error)),
            },
            Err(error) => Err(error),
        };
        match removed {
            Ok(removed) => {
                log::info!(
                    "shard {}: island {island}: standby checkpoint; {removed} segments deleted",
                    self.shard_id
                );
                true
            }
            Err(error) => {
                log::error!(
                    "shard {}: island {island}: standby checkpoint: {error}",
                    self.shard_id
                );
                false
            }
        }
    }
}

/// Why the shard's own tablet stops: its journal failed, or its log and
/// its member no longer count batches alike. Either way nothing more is
/// acknowledged until a restart.
#[derive(Debug, thiserror::Error)]
pub enum TabletStop {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    OutOfStep(#[from] OutOfStep),
    /// The server is stopping while a batch waits for the secondary.
    #[error("the server is stopping")]
    Stopping,
    /// Another node serves the island now (it took it over while this
    /// one was paused or cut off): the batch waiting for the secondary
    /// will never be acknowledged.
    #[error("another node serves the island now")]
    Superseded,
}

/// Does the own tablet's log work on the shard's journal: an epoch's
/// first batch, and reads for a secondary catching up. Err: the journal
/// failed.
pub async fn primary_log_work(
    runtime: &Runtime,
    journal: &mut impl Journal,
    tablet: &RefCell<Tablet>,
) -> Result<(), TabletStop> {
    loop {
        let Some(work) = tablet.borrow_mut().next_log_work() else {
            return Ok(());
        };
        match work {
            LogWork::Append { seq, epoch, .. } => {
                let island = tablet.borrow().island();
                let last_epoch = runtime.shard().epochs().last_epoch();
                if seq != journal.last_batch() + 1 || epoch <= last_epoch {
                    let log = journal.last_batch() + 1;
                    return Err(OutOfStep { log, member: seq }.into());
                }
                let record = runtime.with_shard_no_outputs(|s| s.start_epoch(island, epoch, seq));
                journal.commit_shipping(&[record], &mut Vec::new()).await?;
                log::warn!(
                    "shard {}: island {island}: epoch {epoch} begins at batch {seq}",
                    runtime.shard_id
                );
                tablet.borrow_mut().durable(seq);
            }
            LogWork::Read { from, upto } => {
                let read = journal.read_shipped(from, upto, CATCH_UP_READ_BYTES).await;
                let batches = match read {
                    Ok(batches) => batches,
                    Err(ReadError::Gone { .. }) => {
                        let to = tablet.borrow().member().seen().map(|(r, _)| r.secondary);
                        if let Some(to) = to {
                            tablet.borrow_mut().log_gone(to);
                        }
                        continue;
                    }
                    Err(error) => {
                        // Asked again on every retry: said once a while.
                        let (said, now) = (SHIP_ERROR_SAID.get(), runtime.now_ms());
                        if said == 0 || now >= said + WAITING_LOG_MS {
                            SHIP_ERROR_SAID.set(now.max(1));
                            log::error!(
                                "shard {}: cannot ship batches {from}..={upto} to the island's \
                                 secondary: {error} (the island stays solo)",
                                runtime.shard_id
                            );
                        }
                        continue;
                    }
                };
                let info = runtime.shard().epochs().log_info(journal.last_batch());
                let batches = batches
                    .into_iter()
                    .map(|b| (b.seq, info.epoch_of(b.seq), b.frame))
                    .collect();
                let to = tablet.borrow().member().seen().map(|(r, _)| r.secondary);
                if let Some(to) = to {
                    tablet.borrow_mut().ship_read(to, batches);
                }
            }
            LogWork::SendSnapshot { to } => {
                if let Some(islands) = &runtime.islands {
                    islands.start_snapshot(tablet.borrow().island(), to);
                }
            }
            LogWork::SnapshotChunk { .. } => {}
            LogWork::Truncate { after } => log::error!(
                "shard {}: asked to cut its own log after batch {after}: restart the node \
                 to rejoin its island",
                runtime.shard_id
            ),
        }
    }
}

/// Waits until the own tablet acknowledged batch `target` (its replica
/// holds it, or the island is solo), doing the log work that comes
/// meanwhile. Err: the journal failed.
pub async fn wait_acknowledged(
    runtime: &Runtime,
    journal: &mut impl Journal,
    tablet: &RefCell<Tablet>,
    target: u64,
) -> Result<(), TabletStop> {
    let mut said = runtime.now_ms();
    loop {
        primary_log_work(runtime, journal, tablet).await?;
        if tablet.borrow().acknowledged().1 >= target {
            return Ok(());
        }
        if !runtime.shard().leads_own_island() {
            return Err(TabletStop::Superseded);
        }
        if runtime.exiting.get() {
            // The process stops: a planned stop revoked the lease (the
            // secondary stopped acknowledging this epoch and takes the
            // island over), or the lease ends with the process. The batch
            // is on this disk; nothing of it is acknowledged to a phone.
            return Err(TabletStop::Stopping);
        }
        let signal = tablet.borrow().work_signal.clone();
        futures_lite::future::or(signal.wait(), async {
            glommio::timer::sleep(Duration::from_millis(WAITING_POLL_MS)).await;
        })
        .await;
        if runtime.now_ms() >= said + WAITING_LOG_MS {
            said = runtime.now_ms();
            log::warn!(
                "shard {}: batch {target} waits for its island: {}",
                runtime.shard_id,
                tablet.borrow().summary()
            );
        }
    }
}

// ---- checkpoint transfer (docs/islands.md, rule 5) --------------------------

/// Bytes of a checkpoint sent and not yet written by the secondary, at
/// most: a quarter of the tablet's outbox, so chunks are never dropped
/// from it.
const SNAPSHOT_WINDOW_BYTES: u64 = 16 << 20;
/// A transfer whose acknowledged offset has not moved for this long
/// sends its chunks again from there (a chunk or its ack was lost with a
/// connection). (The member's own `SNAPSHOT_RESEND_MS` starts a whole
/// transfer again.)
const CHUNKS_RESEND_MS: u64 = 5_000;
/// A transfer that makes no progress for this long is given up; the
/// secondary asks to catch up again and the next one starts over.
const SNAPSHOT_GIVE_UP_MS: u64 = 60_000;
/// How often a transfer looks at its acknowledgements.
const SNAPSHOT_POLL_MS: u64 = 50;
/// Where a secondary writes a checkpoint as it arrives, in its tablet's
/// directory.
const INCOMING_DIR: &str = "incoming";
const INCOMING_PART: &str = "checkpoint.part";

impl Islands {
    /// The tablet of an island this shard is primary of, and the
    /// directory of its log.
    fn leading(&self, island: IslandId) -> Option<(Rc<RefCell<Tablet>>, PathBuf)> {
        if let Some(own) = self.own().filter(|t| t.borrow().island() == island) {
            return Some((own, self.setup.own_dir.clone()));
        }
        let led = self.led.borrow();
        led.get(&island).map(|l| (l.tablet.clone(), l.dir.clone()))
    }

    /// Starts sending the latest checkpoint of `island`'s tablet to `to`,
    /// its secondary, unless a transfer of it runs already.
    fn start_snapshot(self: &Rc<Self>, island: IslandId, to: NodeId) {
        let Some((tablet, dir)) = self.leading(island) else {
            return;
        };
        if !self.sending_snapshot.borrow_mut().insert(island) {
            return;
        }
        let islands = self.clone();
        glommio::spawn_local(async move {
            let ended = islands.send_snapshot(&tablet, &dir, to).await;
            islands.sending_snapshot.borrow_mut().remove(&island);
            let shard = islands.shard_id;
            match ended {
                Ok(batch) => log::info!(
                    "shard {shard}: sent the checkpoint of batch {batch} to node {to}, which \
                     catches up from there"
                ),
                Err(why) => log::warn!("shard {shard}: checkpoint transfer to node {to}: {why}"),
            }
        })
        .detach();
    }

    /// Sends the latest checkpoint in chunks, at most
    /// [`SNAPSHOT_WINDOW_BYTES`] ahead of what the secondary wrote, until
    /// it wrote all of it. Ok: the checkpoint's batch.
    async fn send_snapshot(
        &self,
        tablet: &RefCell<Tablet>,
        dir: &std::path::Path,
        to: NodeId,
    ) -> Result<u64, String> {
        let listed = checkpoint::list(dir).map_err(|e| format!("listing checkpoints: {e}"))?;
        let batch = *listed.last().ok_or("the log has no checkpoint")?;
        let path = checkpoint::path(dir, batch);
        let total = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        log::info!(
            "shard {}: node {to} is behind this shard's log: sending it the checkpoint of \
             batch {batch} ({total} bytes)",
            self.shard_id
        );
        let (mut sent, mut acked) = (0u64, 0u64);
        let mut moved_ms = self.now_ms();
        loop {
            let secondary = tablet.borrow().member().seen().map(|(r, _)| r.secondary);
            if tablet.borrow().member().primary_epoch().is_none() || secondary != Some(to) {
                return Err(
                    "this node is no longer the island's primary with that secondary".into(),
                );
            }
            if let Some((b, offset)) = tablet.borrow().snapshot_acked() {
                if b == batch && offset > acked {
                    (acked, moved_ms) = (offset, self.now_ms());
                }
            }
            if acked >= total {
                return Ok(batch);
            }
            let still_ms = self.now_ms().saturating_sub(moved_ms);
            if still_ms >= SNAPSHOT_GIVE_UP_MS {
                return Err(format!(
                    "no progress for {still_ms} ms at byte {acked} of {total}"
                ));
            }
            if still_ms >= CHUNKS_RESEND_MS && sent > acked {
                (sent, moved_ms) = (acked, self.now_ms());
            }
            while sent < total && sent < acked + SNAPSHOT_WINDOW_BYTES {
                let length = (total - sent).min(codec::SNAPSHOT_CHUNK_BYTES_MAX as u64);
                let bytes = read_chunk(path.clone(), sent, length as usize).await?;
                tablet.borrow_mut().send_chunk(batch, (sent, total), bytes);
                sent += length;
            }
            glommio::timer::sleep(Duration::from_millis(SNAPSHOT_POLL_MS)).await;
        }
    }
}

/// `length` bytes of the file at `path` from `offset`, read off the
/// executor.
async fn read_chunk(path: PathBuf, offset: u64, length: usize) -> Result<Vec<u8>, String> {
    let read = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = vec![0; length];
            file.read_exact(&mut bytes)?;
            Ok(bytes)
        })
        .await;
    read.map_err(|e| format!("reading the checkpoint: {e}"))
}

/// What replaces a standby.
enum Replace {
    /// The primary's checkpoint of this batch, arrived whole in `incoming`.
    Checkpoint(u64),
    /// Nothing: the primary's history ends at `after`, below the
    /// standby's own checkpoint.
    Empty { after: u64 },
    /// A tablet this shard serves: the standby won the island (rule 2),
    /// whose epoch `epoch` begins at batch `seq`.
    Promoted { seq: u64, epoch: u64 },
}

/// A checkpoint arriving from the primary, in the tablet's `incoming`
/// directory: its batch, its size and the bytes written so far.
#[derive(Default)]
struct Incoming {
    writing: Option<(u64, u64, u64)>,
}

impl Incoming {
    /// Where a chunk of the checkpoint of `batch` (`total` bytes) at
    /// `offset` goes: `Ok(at)`, written at `at` (a first chunk starts the
    /// file over); `Err(Some(written))`, out of order in the checkpoint
    /// being written, whose `written` bytes are acknowledged again so that
    /// the primary sends from there; `Err(None)`, a chunk of no checkpoint
    /// being written.
    fn place(&self, batch: u64, offset: u64, total: u64) -> Result<u64, Option<u64>> {
        match self.writing {
            _ if offset == 0 => Ok(0),
            Some((b, t, written)) if (b, t) == (batch, total) && written == offset => Ok(written),
            Some((b, t, written)) if (b, t) == (batch, total) => Err(Some(written)),
            _ => Err(None),
        }
    }

    /// Writes a chunk at `at` (see [`Incoming::place`]); the bytes of the
    /// checkpoint now written.
    async fn write(
        &mut self,
        dir: &std::path::Path,
        (batch, total, at): (u64, u64, u64),
        bytes: Vec<u8>,
    ) -> std::io::Result<u64> {
        let path = dir.join(INCOMING_DIR).join(INCOMING_PART);
        let length = bytes.len() as u64;
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                std::fs::create_dir_all(path.parent().expect("in a directory"))?;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(at == 0)
                    .append(at != 0)
                    .open(&path)?;
                file.write_all(&bytes)
            })
            .await?;
        self.writing = Some((batch, total, at + length));
        Ok(at + length)
    }
}

/// Makes the checkpoint in `dir/incoming` (whole, `batch`) durable and
/// checks it by loading it into a new standby shard, before anything of
/// the tablet is touched: the shard, or why the checkpoint is refused.
async fn take_incoming(
    runtime: &Runtime,
    (island, dir): (IslandId, &std::path::Path),
    batch: u64,
) -> Result<Shard, String> {
    let incoming = dir.join(INCOMING_DIR);
    let (part, named) = (
        incoming.join(INCOMING_PART),
        checkpoint::path(&incoming, batch),
    );
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&part)?.sync_all()?;
            for old in checkpoint::list(part.parent().expect("in a directory"))? {
                std::fs::remove_file(checkpoint::path(part.parent().expect("dir"), old))?;
            }
            std::fs::rename(&part, &named)?;
            std::fs::File::open(named.parent().expect("in a directory"))?.sync_all()
        })
        .await
        .map_err(|e| format!("making the checkpoint durable: {e}"))?;
    let (shard, loaded) = checkpointed_shard(runtime, (island, &incoming), runtime.now_ms())
        .map_err(|e| format!("the checkpoint does not load: {e}"))?;
    if loaded != batch {
        return Err(format!("the checkpoint says batch {loaded}, not {batch}"));
    }
    Ok(shard)
}

/// Replaces everything of the tablet in `dir` (segments, checkpoints,
/// blank files) by the checked checkpoint in `dir/incoming`: after it the
/// tablet is that checkpoint alone, its log empty after `batch`.
fn install_incoming(dir: &std::path::Path, batch: u64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.ends_with(".log") || name.ends_with(".ckpt") || name.ends_with(".tmp");
        if ours && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    let incoming = dir.join(INCOMING_DIR);
    if batch > 0 {
        std::fs::rename(
            checkpoint::path(&incoming, batch),
            checkpoint::path(dir, batch),
        )?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    match std::fs::remove_dir_all(&incoming) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of a checkpoint are taken in order; one out of order in the
    /// checkpoint being written is answered with what is written (the
    /// primary sends from there), and one of another checkpoint or size
    /// is dropped, unless it starts a checkpoint over.
    #[test]
    fn a_checkpoint_s_chunks_go_in_order_and_one_out_of_it_says_where_to_go_on() {
        let mut incoming = Incoming::default();
        assert_eq!(incoming.place(9, 100, 300), Err(None), "nothing started");
        assert_eq!(incoming.place(9, 0, 300), Ok(0));
        incoming.writing = Some((9, 300, 100));
        assert_eq!(incoming.place(9, 100, 300), Ok(100));
        assert_eq!(incoming.place(9, 200, 300), Err(Some(100)), "a gap");
        assert_eq!(incoming.place(9, 50, 300), Err(Some(100)), "again");
        assert_eq!(incoming.place(9, 100, 400), Err(None), "another size");
        assert_eq!(incoming.place(8, 100, 300), Err(None), "another checkpoint");
        assert_eq!(incoming.place(8, 0, 200), Ok(0), "a new one starts over");
    }
}
