//! A deterministic, seeded simulation of the islands protocol
//! (`docs/islands.md`): three nodes, three islands as a ring, each node
//! the sans-IO `island::Member`s over a fake disk, a fake lease store
//! (leases on the simulated clock, revisions, compare-and-swap, views) and
//! a fake network (random delays, so reordering; loss; cuts between nodes
//! and between a node and the store). Faults: crashes (the disk keeps what
//! was durable), pauses longer than the lease, partitions.
//!
//! After the faults heal and the islands settle, it checks what must hold:
//! every batch any node acknowledged is in its island's primary's log; no
//! two nodes acknowledged for the same island and epoch; the two logs of
//! an island agree on every seq both hold; every island is back in sync
//! with both nodes (rejoin and catch-up finish). A failing seed is printed and
//! replays exactly (`ISLE_SIM_SEED=N`). Three planted bugs show that each
//! check can fail. `ISLE_SIM_SEEDS` runs more seeds than the default.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use shard::island::{
    IslandRecord, LogInfo, Member, MemberConfig, Mode, NodeId, Output, PlantedBug, ReplMsg, View,
};

const NODES: u16 = 3;
const LEASE_TTL_MS: u64 = 5_000;
const KEEPALIVE_MS: u64 = 1_000;
const TICK_MS: u64 = 10;
const VIEW_REFRESH_MS: u64 = 500;
/// Faults happen in the first part; the rest is for settling.
const CHAOS_MS: u64 = 40_000;
const SETTLE_MS: u64 = 40_000;
/// Chance (per mille) that a primary checkpoints at the batches it just
/// acknowledged, so that a secondary away long enough is sent the
/// checkpoint instead of the batches.
const CHECKPOINT_PER_MILLE: u64 = 20;

/// splitmix64: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }
}

/// Where a message goes: a node, or the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Node(NodeId),
    Store,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(NodeId),
    Keepalive(NodeId),
    Workload,
    Fault,
    Restart(NodeId),
    Resume(NodeId),
    Heal(Place, Place),
    StoreSweep,
    /// A batch of `island` on `node`'s disk is durable up to `seq` (if the
    /// process that wrote it still runs).
    Durable {
        node: NodeId,
        island: u16,
        seq: u64,
        life: u64,
    },
    Deliver {
        from: Place,
        to: Place,
        msg: Msg,
    },
}

#[derive(Debug, Clone)]
enum Msg {
    Repl {
        island: u16,
        msg: ReplMsg,
    },
    Txn {
        island: u16,
        id: u64,
        expect: u64,
        absent: Option<NodeId>,
        record: IslandRecord,
    },
    TxnResult {
        island: u16,
        id: u64,
        applied: bool,
        /// The revision the record was written at, if applied.
        revision: u64,
    },
    KeepaliveAsk {
        lease: u64,
        sent_ms: u64,
    },
    KeepaliveAnswer {
        sent_ms: u64,
        lease: u64,
    },
    View {
        island: u16,
        view: View,
    },
}

struct Queued {
    at: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// A tablet's disk: `(epoch, bytes)` per seq, durable up to `durable`.
/// Batches up to `gone` are in a checkpoint only (their segments went):
/// they count as held, but cannot be read to ship.
#[derive(Debug, Default, Clone)]
struct Disk {
    entries: Vec<(u64, Vec<u8>)>,
    durable: usize,
    gone: usize,
}

impl Disk {
    fn log_info(&self) -> LogInfo {
        let mut epochs: Vec<(u64, u64)> = Vec::new();
        for (i, (epoch, _)) in self.entries.iter().enumerate() {
            if epochs.last().is_none_or(|&(e, _)| e != *epoch) {
                epochs.push((*epoch, i as u64 + 1));
            }
        }
        LogInfo::restored(epochs, self.entries.len() as u64)
    }
}

struct Node {
    /// Bumped at every start: durability reports of a dead process are void.
    life: u64,
    up: bool,
    paused: bool,
    backlog: Vec<Event>,
    lease: u64,
    members: BTreeMap<u16, Member>,
    disks: BTreeMap<u16, Disk>,
    /// Batches proposed here, by island: (seq, payload id), waiting.
    proposed: BTreeMap<u16, Vec<(u64, u64)>>,
    /// The revision of the last record of each island this process wrote
    /// (as the coordinator keeps it): its views say `made_here`.
    written: BTreeMap<u16, u64>,
}

struct Store {
    records: BTreeMap<u16, (IslandRecord, u64)>,
    revision: u64,
    /// Node → (lease id, expires at).
    leases: BTreeMap<NodeId, (u64, u64)>,
    next_lease: u64,
}

impl Store {
    fn live(&self) -> Vec<NodeId> {
        self.leases.keys().copied().collect()
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Queued>,
    nodes: BTreeMap<NodeId, Node>,
    store: Store,
    cuts: BTreeSet<(Place, Place)>,
    loss_per_mille: u64,
    planted: Option<PlantedBug>,
    next_payload: u64,
    /// Payloads acknowledged, by island.
    acked: BTreeMap<u16, BTreeSet<u64>>,
    /// Who acknowledged, by (island, epoch).
    ackers: BTreeMap<(u16, u64), BTreeSet<NodeId>>,
    violations: Vec<String>,
    /// Replication messages delivered, by kind (for `ISLE_SIM_DEBUG`).
    seen: BTreeMap<&'static str, u64>,
}

fn kind_of(msg: &ReplMsg) -> &'static str {
    match msg {
        ReplMsg::Ship { .. } => "Ship",
        ReplMsg::Ack { .. } => "Ack",
        ReplMsg::Expect { .. } => "Expect",
        ReplMsg::Fenced { .. } => "Fenced",
        ReplMsg::CatchUp { .. } => "CatchUp",
        ReplMsg::Diverge { .. } => "Diverge",
        ReplMsg::Snapshot { .. } => "Snapshot",
        ReplMsg::SnapshotAck { .. } => "SnapshotAck",
    }
}

fn pair(island: u16) -> (NodeId, NodeId) {
    (island, island % NODES + 1)
}

impl Sim {
    fn new(seed: u64, planted: Option<PlantedBug>) -> Sim {
        let mut store = Store {
            records: BTreeMap::new(),
            revision: 0,
            leases: BTreeMap::new(),
            next_lease: 1,
        };
        for island in 1..=NODES {
            store.revision += 1;
            let (primary, secondary) = pair(island);
            let record = IslandRecord::first(primary, secondary);
            store.records.insert(island, (record, store.revision));
        }
        let mut sim = Sim {
            rng: Rng(seed),
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            store,
            cuts: BTreeSet::new(),
            loss_per_mille: 0,
            planted,
            next_payload: 1,
            acked: BTreeMap::new(),
            ackers: BTreeMap::new(),
            violations: Vec::new(),
            seen: BTreeMap::new(),
        };
        for id in 1..=NODES {
            let node = Node {
                life: 0,
                up: false,
                paused: false,
                backlog: Vec::new(),
                lease: 0,
                members: BTreeMap::new(),
                disks: BTreeMap::new(),
                proposed: BTreeMap::new(),
                written: BTreeMap::new(),
            };
            sim.nodes.insert(id, node);
            sim.start(id);
        }
        sim.at(1, Event::Workload);
        sim.at(2_000, Event::Fault);
        sim.at(500, Event::StoreSweep);
        sim
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.order += 1;
        self.queue.push(Queued {
            at: self.now + delay,
            order: self.order,
            event,
        });
    }

    // ---- nodes --------------------------------------------------------------

    /// A process starts on the node's disks: a new lease (the old one
    /// revoked), members over what the disks hold.
    fn start(&mut self, id: NodeId) {
        let lease = self.store.next_lease;
        self.store.next_lease += 1;
        self.store
            .leases
            .insert(id, (lease, self.now + LEASE_TTL_MS));
        let planted = self.planted;
        let now = self.now;
        let node = self.nodes.get_mut(&id).unwrap();
        node.life += 1;
        node.up = true;
        node.paused = false;
        node.lease = lease;
        node.proposed.clear();
        node.members.clear();
        for island in 1..=NODES {
            let (p, s) = pair(island);
            if id != p && id != s {
                continue;
            }
            let disk = node.disks.entry(island).or_default();
            disk.entries.truncate(disk.durable);
            let mut config = MemberConfig::new(id, island);
            config.planted = planted;
            let member = Member::new(config, disk.log_info(), now);
            node.members.insert(island, member);
        }
        self.at(TICK_MS, Event::Tick(id));
        self.at(0, Event::Keepalive(id));
        self.broadcast_views();
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.up = false;
        node.paused = false;
        node.backlog.clear();
        node.members.clear();
        node.proposed.clear();
        node.written.clear();
        for disk in node.disks.values_mut() {
            disk.entries.truncate(disk.durable);
        }
    }

    /// Runs `event` on node `id`, or keeps it for when the node resumes.
    fn on_node(&mut self, id: NodeId, event: Event) {
        let node = &self.nodes[&id];
        if !node.up {
            return;
        }
        if node.paused {
            self.nodes.get_mut(&id).unwrap().backlog.push(event);
            return;
        }
        match event {
            Event::Tick(_) => {
                for island in self.islands_of(id) {
                    self.with_member(id, island, |m, now| m.tick(now));
                }
                self.at(TICK_MS, Event::Tick(id));
            }
            Event::Keepalive(_) => {
                let lease = self.nodes[&id].lease;
                let msg = Msg::KeepaliveAsk {
                    lease,
                    sent_ms: self.now,
                };
                self.send(Place::Node(id), Place::Store, msg);
                self.at(KEEPALIVE_MS, Event::Keepalive(id));
            }
            Event::Durable {
                island, seq, life, ..
            } => {
                let node = self.nodes.get_mut(&id).unwrap();
                if node.life != life {
                    return;
                }
                let disk = node.disks.get_mut(&island).unwrap();
                disk.durable = disk.durable.max((seq as usize).min(disk.entries.len()));
                self.with_member(id, island, |m, _| m.durable(seq));
            }
            Event::Deliver { from, msg, .. } => self.node_receives(id, from, msg),
            _ => unreachable!("not a node's event"),
        }
    }

    fn islands_of(&self, id: NodeId) -> Vec<u16> {
        self.nodes[&id].members.keys().copied().collect()
    }

    fn node_receives(&mut self, id: NodeId, from: Place, msg: Msg) {
        match msg {
            Msg::Repl { island, msg } => {
                let Place::Node(from) = from else { return };
                *self.seen.entry(kind_of(&msg)).or_default() += 1;
                self.with_member(id, island, |m, _| m.receive(from, msg));
            }
            Msg::TxnResult {
                island,
                id: txn,
                applied,
                revision,
            } => {
                if applied {
                    let node = self.nodes.get_mut(&id).unwrap();
                    node.written.insert(island, revision);
                }
                self.with_member(id, island, |m, _| m.txn_result(txn, applied));
            }
            Msg::KeepaliveAnswer { sent_ms, lease } => {
                self.nodes.get_mut(&id).unwrap().lease = lease;
                let valid = sent_ms + LEASE_TTL_MS * 99 / 100;
                for island in self.islands_of(id) {
                    self.with_member(id, island, |m, _| m.keepalive(valid));
                }
            }
            Msg::View { island, mut view } => {
                let written = self.nodes[&id].written.get(&island);
                view.made_here = written == Some(&view.revision);
                self.with_member(id, island, |m, now| m.view(view, now));
            }
            _ => unreachable!("not for a node"),
        }
    }

    /// Calls `f` on the member, then carries out what it asks.
    fn with_member(&mut self, id: NodeId, island: u16, f: impl FnOnce(&mut Member, u64)) {
        let now = self.now;
        let Some(member) = self.nodes.get_mut(&id).unwrap().members.get_mut(&island) else {
            return;
        };
        f(member, now);
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            let Some(output) = node.members.get_mut(&island).unwrap().poll_output() else {
                return;
            };
            self.carry_out(id, island, output);
        }
    }

    fn carry_out(&mut self, id: NodeId, island: u16, output: Output) {
        let node = self.nodes.get_mut(&id).unwrap();
        let life = node.life;
        let disk = node.disks.get_mut(&island).unwrap();
        match output {
            Output::Append { seq, epoch, bytes } => {
                if seq as usize != disk.entries.len() + 1 {
                    let held = disk.entries.len();
                    let what = format!("node {id} island {island}: append of {seq} to {held}");
                    self.violations.push(what);
                    return;
                }
                disk.entries.push((epoch, bytes));
                let delay = 1 + self.rng.below(3);
                let event = Event::Durable {
                    node: id,
                    island,
                    seq,
                    life,
                };
                self.at(delay, event);
            }
            Output::Truncate { after } if (after as usize) < disk.gone => {
                // A cut below the tablet's checkpoint (one it installed,
                // or took of batches the primary had not acknowledged):
                // the tablet starts over, empty, and catches up from the
                // primary. Only a node outside `insync` may drop what it
                // holds.
                let (record, _) = &self.store.records[&island];
                if record.insync.contains(&id) {
                    let what = format!("node {id} island {island}: in sync, it dropped its log");
                    self.violations.push(what);
                }
                *disk = Disk::default();
                let member = node.members.get_mut(&island).unwrap();
                member.installed(LogInfo::default());
            }
            Output::Truncate { after } => {
                disk.entries.truncate(after as usize);
                disk.durable = disk.durable.min(after as usize);
                let member = node.members.get_mut(&island).unwrap();
                member.truncated(after);
            }
            Output::Send { to, msg } => {
                self.send(Place::Node(id), Place::Node(to), Msg::Repl { island, msg });
            }
            Output::Read { to, from, .. } if from as usize <= disk.gone => {
                let member = node.members.get_mut(&island).unwrap();
                member.log_gone(to);
            }
            Output::Read { to, from, upto } => {
                let batches: Vec<(u64, u64, Vec<u8>)> = (from..=upto)
                    .filter_map(|seq| {
                        let (epoch, bytes) = disk.entries.get(seq as usize - 1)?.clone();
                        Some((seq, epoch, bytes))
                    })
                    .collect();
                let member = node.members.get_mut(&island).unwrap();
                member.ship_read(to, batches);
            }
            Output::SendSnapshot { to } => {
                let member = &node.members[&island];
                let Some(epoch) = member.primary_epoch() else {
                    return;
                };
                let batch = disk.gone as u64;
                let bytes = encode_checkpoint(&disk.entries[..disk.gone]);
                let total = bytes.len() as u64;
                let msg = ReplMsg::Snapshot {
                    epoch,
                    batch,
                    offset: 0,
                    total,
                    bytes,
                };
                self.send(Place::Node(id), Place::Node(to), Msg::Repl { island, msg });
            }
            Output::SnapshotChunk {
                batch,
                offset,
                total,
                bytes,
            } => {
                // Sent whole: one chunk is the checkpoint, installed at once.
                if offset != 0 || bytes.len() as u64 != total {
                    return;
                }
                disk.entries = decode_checkpoint(&bytes);
                assert_eq!(
                    disk.entries.len() as u64,
                    batch,
                    "a checkpoint of its batch"
                );
                (disk.durable, disk.gone) = (disk.entries.len(), disk.entries.len());
                let log = disk.log_info();
                let member = node.members.get_mut(&island).unwrap();
                member.snapshot_written(batch, total);
                member.installed(log);
            }
            Output::Txn {
                id: txn,
                expect_revision,
                absent,
                record,
            } => {
                let msg = Msg::Txn {
                    island,
                    id: txn,
                    expect: expect_revision,
                    absent,
                    record,
                };
                self.send(Place::Node(id), Place::Store, msg);
            }
            Output::Acknowledged { epoch, upto } => self.acknowledged(id, island, epoch, upto),
        }
    }

    /// Node `id` released the replies of `island`'s batches up to `upto`.
    /// Now and then it checkpoints there (rule 6), and the segments
    /// before go.
    fn acknowledged(&mut self, id: NodeId, island: u16, epoch: u64, upto: u64) {
        self.ackers.entry((island, epoch)).or_default().insert(id);
        let checkpoint = self.rng.chance(CHECKPOINT_PER_MILLE);
        let node = self.nodes.get_mut(&id).unwrap();
        if checkpoint {
            let disk = node.disks.get_mut(&island).unwrap();
            disk.gone = disk.gone.max((upto as usize).min(disk.durable));
        }
        let disk = &node.disks[&island];
        let proposed = node.proposed.entry(island).or_default();
        let mut newly = Vec::new();
        proposed.retain(|&(seq, payload)| {
            if seq > upto {
                return true;
            }
            let held = disk.entries.get(seq as usize - 1);
            if held.is_some_and(|(_, bytes)| *bytes == payload.to_le_bytes()) {
                newly.push(payload);
            }
            false
        });
        self.acked.entry(island).or_default().extend(newly);
    }

    // ---- network -------------------------------------------------------------

    fn send(&mut self, from: Place, to: Place, msg: Msg) {
        if self.cuts.contains(&(from, to)) || self.rng.chance(self.loss_per_mille) {
            return;
        }
        let delay = 1 + self.rng.below(6);
        self.at(delay, Event::Deliver { from, to, msg });
    }

    // ---- the store -------------------------------------------------------------

    fn store_receives(&mut self, from: Place, msg: Msg) {
        let Place::Node(node) = from else { return };
        match msg {
            Msg::KeepaliveAsk { lease, sent_ms } => {
                let expires = self.now + LEASE_TTL_MS;
                let lease = match self.store.leases.get_mut(&node) {
                    Some(held) if held.0 == lease => {
                        held.1 = expires;
                        lease
                    }
                    // Expired (or revoked): the node registers again with
                    // a new lease, as its coordinator does.
                    Some(_) => return,
                    None => {
                        let lease = self.store.next_lease;
                        self.store.next_lease += 1;
                        self.store.leases.insert(node, (lease, expires));
                        self.broadcast_views();
                        lease
                    }
                };
                self.send(Place::Store, from, Msg::KeepaliveAnswer { sent_ms, lease });
            }
            Msg::Txn {
                island,
                id,
                expect,
                absent,
                record,
            } => {
                let current = self.store.records[&island].1;
                let lease_free = absent.is_none_or(|n| !self.store.leases.contains_key(&n));
                let applied = current == expect && lease_free;
                if applied {
                    self.store.revision += 1;
                    let revision = self.store.revision;
                    self.store.records.insert(island, (record, revision));
                }
                self.send(
                    Place::Store,
                    from,
                    Msg::TxnResult {
                        island,
                        id,
                        applied,
                        revision: self.store.revision,
                    },
                );
                if applied {
                    self.broadcast_views();
                }
            }
            _ => unreachable!("not for the store"),
        }
    }

    fn broadcast_views(&mut self) {
        let live = self.store.live();
        for (&island, (record, revision)) in self.store.records.clone().iter() {
            let view = View {
                record: record.clone(),
                revision: *revision,
                live: live.clone(),
                made_here: false,
            };
            let (p, s) = pair(island);
            for node in [p, s] {
                let msg = Msg::View {
                    island,
                    view: view.clone(),
                };
                self.send(Place::Store, Place::Node(node), msg);
            }
        }
    }

    /// Expires leases, and sends every node its views again (a watch's
    /// events, and its re-read after a gap).
    fn sweep(&mut self) {
        let now = self.now;
        self.store
            .leases
            .retain(|_, &mut (_, expires)| expires > now);
        self.broadcast_views();
        self.at(VIEW_REFRESH_MS, Event::StoreSweep);
    }

    // ---- workload and faults ---------------------------------------------------

    /// A phone's message for a random island, given to the first node that
    /// takes it (phones are redirected to the one that serves).
    fn workload(&mut self) {
        let island = 1 + self.rng.below(u64::from(NODES)) as u16;
        let payload = self.next_payload;
        let (p, s) = pair(island);
        for id in [p, s] {
            let node = self.nodes.get_mut(&id).unwrap();
            if !node.up || node.paused {
                continue;
            }
            let Some(member) = node.members.get_mut(&island) else {
                continue;
            };
            if let Ok(seq) = member.propose(payload.to_le_bytes().to_vec()) {
                self.next_payload += 1;
                node.proposed
                    .entry(island)
                    .or_default()
                    .push((seq, payload));
                self.with_member(id, island, |_, _| {});
                break;
            }
        }
        if self.now < CHAOS_MS + SETTLE_MS / 2 {
            let next = 2 + self.rng.below(4);
            self.at(next, Event::Workload);
        }
    }

    fn fault(&mut self) {
        if self.now >= CHAOS_MS {
            self.loss_per_mille = 0;
            return;
        }
        let id = 1 + self.rng.below(u64::from(NODES)) as u16;
        match self.rng.below(6) {
            0 | 1 => {
                self.crash(id);
                let down = 200 + self.rng.below(8_000);
                self.at(down, Event::Restart(id));
            }
            2 => {
                self.nodes.get_mut(&id).unwrap().paused = true;
                let paused = 2_000 + self.rng.below(2 * LEASE_TTL_MS);
                self.at(paused, Event::Resume(id));
            }
            3 => self.cut(Place::Node(id), Place::Store),
            4 => {
                let other = id % NODES + 1;
                self.cut(Place::Node(id), Place::Node(other));
            }
            _ => self.loss_per_mille = self.rng.below(100),
        }
        let next = 1_000 + self.rng.below(6_000);
        self.at(next, Event::Fault);
    }

    /// Cuts `a` from `b` (one way or both) for a while.
    fn cut(&mut self, a: Place, b: Place) {
        let both = self.rng.chance(600);
        self.cuts.insert((a, b));
        if both {
            self.cuts.insert((b, a));
        }
        let lasting = 500 + self.rng.below(15_000);
        self.at(lasting, Event::Heal(a, b));
    }

    fn run(&mut self) {
        while let Some(Queued { at, event, .. }) = self.queue.pop() {
            if at > CHAOS_MS + SETTLE_MS {
                break;
            }
            self.now = at;
            match event {
                Event::Workload => self.workload(),
                Event::Fault => self.fault(),
                Event::StoreSweep => self.sweep(),
                Event::Restart(id) => self.start(id),
                Event::Resume(id) => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    node.paused = false;
                    for event in std::mem::take(&mut node.backlog) {
                        self.on_node(id, event);
                    }
                }
                Event::Heal(a, b) => {
                    self.cuts.remove(&(a, b));
                    self.cuts.remove(&(b, a));
                }
                Event::Deliver {
                    to: Place::Store,
                    from,
                    msg,
                } => self.store_receives(from, msg),
                Event::Deliver {
                    to: Place::Node(id),
                    ..
                } => self.on_node(id, event),
                Event::Tick(id) | Event::Keepalive(id) => self.on_node(id, event),
                Event::Durable { node, .. } => self.on_node(node, event),
            }
        }
    }

    // ---- what must hold -------------------------------------------------------

    fn check(&mut self) {
        for (&(island, epoch), nodes) in &self.ackers {
            if nodes.len() > 1 {
                self.violations.push(format!(
                    "island {island} epoch {epoch}: acknowledged by {nodes:?}"
                ));
            }
        }
        for island in 1..=NODES {
            let (record, _) = &self.store.records[&island];
            if record.mode != Mode::Sync || record.insync.len() != 2 {
                self.violations.push(format!(
                    "island {island} did not return to sync once the faults healed: {record:?}"
                ));
            }
            let primary = &self.nodes[&record.primary];
            let log = &primary.disks[&island].entries;
            let held: BTreeSet<u64> = log
                .iter()
                .filter_map(|(_, bytes)| {
                    Some(u64::from_le_bytes(bytes.as_slice().try_into().ok()?))
                })
                .collect();
            let acked = self.acked.get(&island).cloned().unwrap_or_default();
            let lost: Vec<&u64> = acked.difference(&held).collect();
            if !lost.is_empty() {
                self.violations.push(format!(
                    "island {island}: {} acknowledged batches are not in primary {}'s log: {:?}",
                    lost.len(),
                    record.primary,
                    &lost[..lost.len().min(5)]
                ));
            }
            let (p, s) = pair(island);
            let a = &self.nodes[&p].disks[&island].entries;
            let b = &self.nodes[&s].disks[&island].entries;
            if let Some(seq) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
                self.violations.push(format!(
                    "island {island}: the logs of {p} and {s} differ at seq {}",
                    seq + 1
                ));
            }
        }
    }
}

/// A checkpoint's bytes: each batch as epoch (u64), length (u32), bytes.
fn encode_checkpoint(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (epoch, bytes) in entries {
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn decode_checkpoint(mut bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let epoch = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        entries.push((epoch, bytes[12..12 + length].to_vec()));
        bytes = &bytes[12 + length..];
    }
    entries
}

/// Runs seed `seed`; the violations found.
fn simulate(seed: u64, planted: Option<PlantedBug>) -> (Vec<String>, usize) {
    let mut sim = Sim::new(seed, planted);
    sim.run();
    sim.check();
    let acked = sim.acked.values().map(BTreeSet::len).sum();
    if std::env::var("ISLE_SIM_DEBUG").is_ok() {
        let epochs: Vec<_> = sim
            .store
            .records
            .values()
            .map(|(r, _)| (r.epoch, r.primary, r.mode, r.insync.clone()))
            .collect();
        let ackers: Vec<_> = sim.ackers.keys().collect();
        for (id, node) in &sim.nodes {
            for (island, member) in &node.members {
                eprintln!(
                    "  node {id} up={} island {island}: {}",
                    node.up,
                    member.summary()
                );
            }
        }
        eprintln!(
            "seed {seed}: acked {acked} records {epochs:?} ackers {ackers:?} payloads {} seen {:?}",
            sim.next_payload, sim.seen
        );
    }
    (sim.violations, acked)
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("ISLE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("ISLE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=count).collect()
}

#[test]
fn no_acknowledged_batch_is_lost_and_one_node_acknowledges_per_epoch() {
    let mut acked_total = 0;
    for seed in seeds(12) {
        let (violations, acked) = simulate(seed, None);
        assert!(
            violations.is_empty(),
            "seed {seed} (ISLE_SIM_SEED={seed} replays it): {violations:#?}"
        );
        assert!(
            acked > 1_000,
            "seed {seed}: only {acked} batches acknowledged"
        );
        acked_total += acked;
    }
    eprintln!("acknowledged batches: {acked_total}");
}

/// Each planted bug breaks a rule; some seed among the first few must
/// show it, or the simulation checks less than it claims.
fn caught(bug: PlantedBug) -> u64 {
    for seed in 1..=40 {
        let (violations, _) = simulate(seed, Some(bug));
        if !violations.is_empty() {
            eprintln!("{bug:?} caught by seed {seed}: {violations:?}");
            return seed;
        }
    }
    panic!("{bug:?} was not caught in 40 seeds");
}

#[test]
fn acknowledging_before_the_replica_is_caught() {
    caught(PlantedBug::AckBeforeReplica);
}

#[test]
fn promoting_without_bumping_the_epoch_is_caught() {
    caught(PlantedBug::PromoteWithoutEpochBump);
}

#[test]
fn rejoining_without_truncation_is_caught() {
    caught(PlantedBug::RejoinWithoutTruncation);
}
