//! The harness the shard tests share: shards on one thread, a fake clock,
//! fake SMS, and a network that moves peer messages and commits journals.
#![allow(dead_code)]

use std::{cell::RefCell, rc::Rc};

pub use shard::*;
pub use wire::*;

/// What the shards handed to the outside world: codes and pushes.
#[derive(Default)]
pub struct Sms {
    pub sent: Vec<(Phone, u32)>,
    pub pushes: Vec<Push>,
    /// The push queue is full: `push` refuses.
    pub push_queue_full: bool,
}

pub struct FakeEnv {
    pub seed: u64,
    pub sms: Rc<RefCell<Sms>>,
}

impl Env for FakeEnv {
    fn random(&mut self, buffer: &mut [u8]) {
        for byte in buffer {
            self.seed = self
                .seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *byte = (self.seed >> 56) as u8;
        }
    }
    fn send_sms(&mut self, phone: Phone, code: u32) -> bool {
        self.sms.borrow_mut().sent.push((phone, code));
        true
    }
    fn push(&mut self, push: Push) -> bool {
        let mut sms = self.sms.borrow_mut();
        if sms.push_queue_full {
            return false;
        }
        sms.pushes.push(push);
        true
    }
}

/// What a test checks of a server frame: the kind and the fields that carry
/// the rule under test. Error details and timestamps are left out so that a
/// test states only what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Welcome,
    CodeSent,
    Registered(DeviceKey),
    LoggedIn,
    Pong(u64),
    Sent {
        client_id: u64,
        id: u64,
    },
    Message {
        seq: u64,
        from: Phone,
        client_id: u64,
        body: Vec<u8>,
    },
    Receipt {
        seq: u64,
        kind: ReceiptKind,
        by: Phone,
        client_id: u64,
    },
    Error(ErrorKind),
    Bye(ByeReason),
    GroupMessage {
        seq: u64,
        group: GroupId,
        gseq: u64,
        from: Phone,
        client_id: u64,
        body: Vec<u8>,
    },
    GroupNotice {
        seq: u64,
        group: GroupId,
        gseq: u64,
        by: Phone,
        change: GroupChange,
    },
    Presence {
        phone: Phone,
        presence: Presence,
    },
    Typing {
        from: Phone,
        group: Option<GroupId>,
        state: TypingState,
    },
    Contacts {
        client_id: u64,
        registered: Vec<Phone>,
    },
    Profile {
        phone: Phone,
        profile: Option<Profile>,
    },
    Done(u64),
    Redirect {
        addr: String,
        revision: u64,
    },
    TryLater(u32),
}

/// A phone's connection: which shard it is on now, and its id there.
#[derive(Clone, Copy, Debug)]
pub struct Phone_ {
    pub shard: u16,
    pub conn: ConnId,
}

pub struct Net {
    pub shards: Vec<Shard>,
    pub now_ms: u64,
    pub sms: Rc<RefCell<Sms>>,
    /// Records committed so far, over all shards.
    pub records: Vec<storage::Record>,
    /// The same, per shard: each shard's journal.
    pub journals: Vec<Vec<storage::Record>>,
    /// Drop every signal between shards, as a backed-up queue would.
    pub drop_signals: bool,
    /// The nodes these shards belong to: one (id 1, no placement) unless
    /// made by `Net::cluster`.
    pub nodes: Vec<NetNode>,
    /// Messages to the shards of a node that is down, in order, delivered
    /// when it is up again (as its link would hold them).
    pub parked: Vec<(usize, PeerMessage)>,
    /// The placement's revision, for a test cluster.
    pub revision: u64,
}

/// A node of a test cluster: its id, its shards' place in `Net::shards`,
/// and whether it is up.
#[derive(Debug, Clone)]
pub struct NetNode {
    pub id: u16,
    pub base: usize,
    pub shards: u16,
    pub live: bool,
}

impl Net {
    pub fn new(shard_count: u16, configure: impl Fn(&mut ShardConfig)) -> Net {
        let sms = Rc::new(RefCell::new(Sms::default()));
        let map = PartitionMap::new(PARTITIONS_DEFAULT, shard_count);
        let shards = (0..shard_count)
            .map(|id| {
                let mut config = ShardConfig::new(id, map);
                config.test_numbers = Some(TestNumbers {
                    prefix: "+1555".into(),
                    code: 111_111,
                });
                configure(&mut config);
                Shard::new(
                    config,
                    Box::new(FakeEnv {
                        seed: u64::from(id) + 7,
                        sms: sms.clone(),
                    }),
                    0,
                )
            })
            .collect();
        Net {
            shards,
            now_ms: 0,
            records: Vec::new(),
            journals: vec![Vec::new(); shard_count as usize],
            drop_signals: false,
            sms,
            nodes: vec![NetNode {
                id: 1,
                base: 0,
                shards: shard_count,
                live: true,
            }],
            parked: Vec::new(),
            revision: 0,
        }
    }

    /// Nodes 1, 2, ... with `node_shards[i]` shards each, the partitions
    /// spread over them evenly in contiguous runs, as a cluster's
    /// controller assigns them.
    pub fn cluster(node_shards: &[u16], configure: impl Fn(&mut ShardConfig)) -> Net {
        let mut net = Net::new(1, |_| {});
        net.shards.clear();
        net.journals.clear();
        net.nodes.clear();
        for (i, &count) in node_shards.iter().enumerate() {
            // Each node's shards are its own island's tablets.
            let island = i as u16 + 1;
            let node = Net::new(count, |config| {
                config.island = island;
                configure(config);
            });
            net.nodes.push(NetNode {
                id: i as u16 + 1,
                base: net.shards.len(),
                shards: count,
                live: true,
            });
            net.journals.extend(node.journals);
            net.shards.extend(node.shards);
        }
        net.place(1);
        net
    }

    /// Gives every shard the placement as `nodes` says, at `revision`.
    pub fn place(&mut self, revision: u64) {
        self.revision = revision;
        let count = self.nodes.len();
        let total = usize::from(PARTITIONS_DEFAULT);
        let owners: Vec<u16> = (0..total)
            .map(|p| self.nodes[p * count / total].id)
            .collect();
        let placed: std::collections::BTreeMap<u16, PlacedNode> = self
            .nodes
            .iter()
            .map(|n| {
                let node = PlacedNode {
                    advertise: format!("node{}:5222", n.id),
                    shards: n.shards,
                    live: n.live,
                    peer: ([10, 0, 0, n.id as u8], 5223).into(),
                    incarnation: i64::from(n.id) * 1_000 + revision as i64,
                };
                (n.id, node)
            })
            .collect();
        for node in self.nodes.clone() {
            let me = (node.id, placed[&node.id].incarnation);
            let placement = Placement::new(me, revision, owners.clone(), placed.clone());
            let placement = std::sync::Arc::new(placement);
            for shard in &mut self.shards[node.base..node.base + usize::from(node.shards)] {
                shard.set_placement(Some(placement.clone()));
            }
        }
    }

    /// Node `id` goes down (its lease is gone: requests to it are refused,
    /// what is owed to it waits) or comes back (what waited is delivered).
    pub fn set_live(&mut self, id: u16, live: bool, revision: u64) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        node.live = live;
        self.place(revision);
        if live {
            for (index, message) in std::mem::take(&mut self.parked) {
                self.shards[index].handle_peer(message, self.now_ms);
            }
            self.settle();
        }
    }

    /// The node a shard index belongs to.
    fn node_at(&self, index: usize) -> &NetNode {
        self.nodes
            .iter()
            .find(|n| (n.base..n.base + usize::from(n.shards)).contains(&index))
            .unwrap()
    }

    /// The shard index a message from shard `from` to `dest` reaches.
    pub fn index_of(&self, from: usize, dest: Dest) -> usize {
        match dest {
            Dest::Shard { shard, .. } => self.node_at(from).base + usize::from(shard),
            Dest::Node { node, shard, .. } => {
                let node = self.nodes.iter().find(|n| n.id == node).unwrap();
                node.base + usize::from(shard)
            }
        }
    }

    /// Opens a connection on shard 0 of node `id`.
    pub fn connect_to(&mut self, id: u16) -> Phone_ {
        let base = self.nodes.iter().find(|n| n.id == id).unwrap().base;
        let conn = self.shards[base]
            .open(Source::UNKNOWN, self.now_ms)
            .unwrap();
        let mut phone = Phone_ {
            shard: base as u16,
            conn,
        };
        self.send(
            &mut phone,
            ClientFrame::Hello {
                version: PROTOCOL_VERSION,
            },
        );
        assert_eq!(self.read(&phone), vec![Got::Welcome]);
        phone
    }

    pub fn connect(&mut self) -> Phone_ {
        let conn = self.shards[0].open(Source::UNKNOWN, self.now_ms).unwrap();
        let mut phone = Phone_ { shard: 0, conn };
        self.send(
            &mut phone,
            ClientFrame::Hello {
                version: PROTOCOL_VERSION,
            },
        );
        assert_eq!(self.read(&phone), vec![Got::Welcome]);
        phone
    }

    /// `phone` sends a message: `ClientFrame::Send`.
    pub fn message(&mut self, phone: &mut Phone_, to: Phone, client_id: u64, body: &[u8]) {
        self.send(
            phone,
            ClientFrame::Send {
                client_id,
                to,
                body,
            },
        );
    }

    /// Feeds a frame, following a handover if the shard asks for one.
    pub fn send(&mut self, phone: &mut Phone_, frame: ClientFrame<'_>) {
        loop {
            let outcome = self.shards[phone.shard as usize].handle_frame(
                phone.conn,
                frame.clone(),
                self.now_ms,
            );
            match outcome {
                FrameOutcome::Continue => break,
                FrameOutcome::HandOver { shard, .. } => {
                    let snapshot = self.shards[phone.shard as usize]
                        .hand_over(phone.conn)
                        .unwrap();
                    let to = self.node_at(phone.shard as usize).base as u16 + shard;
                    phone.conn = self.shards[to as usize]
                        .adopt(snapshot, self.now_ms)
                        .unwrap();
                    phone.shard = to;
                }
            }
        }
        self.settle();
    }

    /// Feeds several frames of a logged-in phone before anything settles,
    /// as a phone writes without waiting for answers.
    pub fn pipeline(&mut self, phone: &Phone_, frames: &[ClientFrame<'_>]) {
        for frame in frames {
            let outcome = self.shards[phone.shard as usize].handle_frame(
                phone.conn,
                frame.clone(),
                self.now_ms,
            );
            assert!(matches!(outcome, FrameOutcome::Continue));
        }
        self.settle();
    }

    /// Commits every shard's records and moves peer messages until quiet.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for index in 0..self.shards.len() {
                let (batch, records) = self.shards[index].take_records();
                self.journals[index].extend(records.iter().cloned());
                self.records.extend(records);
                self.shards[index].committed(batch);
                let out: Vec<_> = self.shards[index].drain_peer_messages().collect();
                for (to, message) in out {
                    if self.drop_signals && message.is_signal() {
                        self.shards[index].signals_dropped(1);
                        continue;
                    }
                    moved = true;
                    let to = self.index_of(index, to);
                    if !self.node_at(to).live {
                        self.parked.push((to, message));
                        continue;
                    }
                    self.shards[to].handle_peer(message, self.now_ms);
                }
            }
            if !moved && self.shards.iter().all(|s| !s.has_pending_records()) {
                return;
            }
        }
        panic!("peer messages did not settle");
    }

    /// Checks that every shard's checkpoint is its journal again (in any
    /// order): right after `compact` and `restart`, a checkpoint restored
    /// checkpoints the same.
    pub fn assert_checkpoints_are_fixed_points(&mut self) {
        let debug = |records: &[storage::Record]| {
            let mut lines: Vec<String> = records.iter().map(|r| format!("{r:?}")).collect();
            lines.sort();
            lines
        };
        for (shard, journal) in self.shards.iter_mut().zip(&self.journals) {
            assert_eq!(debug(&shard.checkpoint()), debug(journal));
        }
    }

    /// Every shard dies and comes back from its journal alone; every
    /// connection is gone.
    pub fn restart(&mut self) {
        self.restart_with(|_| {});
    }

    /// `restart`, with the configuration changed first (a clock that
    /// moved while the server was down, say).
    pub fn restart_with(&mut self, adjust: impl Fn(&mut ShardConfig)) {
        self.now_ms += 60_000;
        for index in 0..self.shards.len() {
            self.restart_shard(index, &adjust);
        }
        if self.revision > 0 {
            self.place(self.revision);
        }
    }

    /// Node `id`'s shards die and come back from their journals alone (its
    /// phones' connections are gone) while the other nodes run on; they
    /// see it again at placement `revision`, under a new incarnation.
    pub fn restart_node(&mut self, id: u16, revision: u64) {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap().clone();
        for index in node.base..node.base + usize::from(node.shards) {
            self.restart_shard(index, &|_| {});
        }
        self.place(revision);
    }

    fn restart_shard(&mut self, index: usize, adjust: &impl Fn(&mut ShardConfig)) {
        let mut config = self.shards[index].config().clone();
        adjust(&mut config);
        let env = FakeEnv {
            seed: index as u64 + 1_000,
            sms: self.sms.clone(),
        };
        let mut shard = Shard::new(config, Box::new(env), self.now_ms);
        for record in self.journals[index].clone() {
            shard.restore(record).unwrap();
        }
        shard.restored();
        self.shards[index] = shard;
    }

    /// Time passes: every shard ticks, then everything settles.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for shard in &mut self.shards {
            shard.tick(self.now_ms);
        }
        self.settle();
    }

    /// What a checkpoint followed by deleting every segment leaves: each
    /// journal becomes its shard's checkpoint.
    pub fn compact(&mut self) {
        for index in 0..self.shards.len() {
            self.journals[index] = self.shards[index].checkpoint();
        }
    }

    pub fn read(&mut self, phone: &Phone_) -> Vec<Got> {
        let shard = &mut self.shards[phone.shard as usize];
        let bytes = shard.take_outbox(phone.conn);
        shard.flushed(phone.conn);
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while let Some(raw) = split_frame(rest, FRAME_BYTES_MAX).unwrap() {
            out.push(match decode_server(raw.payload).unwrap() {
                ServerFrame::Welcome { .. } => Got::Welcome,
                ServerFrame::CodeSent { .. } => Got::CodeSent,
                ServerFrame::Registered { key, .. } => Got::Registered(key),
                ServerFrame::LoggedIn { .. } => Got::LoggedIn,
                ServerFrame::Pong { nonce } => Got::Pong(nonce),
                ServerFrame::Sent { client_id, id } => Got::Sent { client_id, id },
                ServerFrame::Message {
                    seq,
                    from,
                    client_id,
                    body,
                    ..
                } => Got::Message {
                    seq,
                    from,
                    client_id,
                    body: body.to_vec(),
                },
                ServerFrame::Receipt {
                    seq,
                    kind,
                    by,
                    client_id,
                } => Got::Receipt {
                    seq,
                    kind,
                    by,
                    client_id,
                },
                ServerFrame::Error { kind, .. } => Got::Error(kind),
                ServerFrame::Bye { reason } => Got::Bye(reason),
                ServerFrame::GroupMessage {
                    seq,
                    group,
                    gseq,
                    from,
                    client_id,
                    body,
                    ..
                } => Got::GroupMessage {
                    seq,
                    group,
                    gseq,
                    from,
                    client_id,
                    body: body.to_vec(),
                },
                ServerFrame::GroupNotice {
                    seq,
                    group,
                    gseq,
                    by,
                    change,
                    ..
                } => Got::GroupNotice {
                    seq,
                    group,
                    gseq,
                    by,
                    change,
                },
                ServerFrame::Presence { phone, presence } => Got::Presence { phone, presence },
                ServerFrame::Typing { from, group, state } => Got::Typing { from, group, state },
                ServerFrame::Contacts {
                    client_id,
                    registered,
                } => Got::Contacts {
                    client_id,
                    registered,
                },
                ServerFrame::Profile { phone, profile } => Got::Profile { phone, profile },
                ServerFrame::Done { client_id } => Got::Done(client_id),
                ServerFrame::Redirect { addr, revision } => Got::Redirect { addr, revision },
                ServerFrame::TryLater { after_ms } => Got::TryLater(after_ms),
            });
            rest = &rest[raw.consumed..];
        }
        assert!(rest.is_empty());
        out
    }

    pub fn signup(&mut self, number: &str) -> (Phone, DeviceKey) {
        let phone = Phone::parse(number).unwrap();
        let (conn, got) = self.try_signup(phone);
        let [Got::Registered(key)] = got[..] else {
            panic!("not registered: {got:?}")
        };
        // Hung up, as a phone would: it counts against no bound.
        self.shards[conn.shard as usize].closed(conn.conn, self.now_ms);
        self.settle();
        (phone, key)
    }

    /// Asks for a test code for `phone` on its home node and verifies it:
    /// the connection, and what the `Verify` got.
    pub fn try_signup(&mut self, phone: Phone) -> (Phone_, Vec<Got>) {
        let mut conn = self.connect_to(self.home_node(phone));
        self.send(&mut conn, ClientFrame::RequestCode { phone });
        assert_eq!(self.read(&conn), vec![Got::CodeSent]);
        self.send(
            &mut conn,
            ClientFrame::Verify {
                phone,
                code: 111_111,
            },
        );
        let got = self.read(&conn);
        (conn, got)
    }

    pub fn login(&mut self, phone: Phone, key: DeviceKey) -> (Phone_, Vec<Got>) {
        let node = self.home_node(phone);
        let mut conn = self.connect_to(node);
        self.send(&mut conn, ClientFrame::Login { phone, key });
        let got = self.read(&conn);
        assert_eq!(got.first(), Some(&Got::LoggedIn), "{got:?}");
        let base = self.nodes.iter().find(|n| n.id == node).unwrap().base;
        let local = self.shards[base].config().map.shard_of(phone);
        assert_eq!(
            usize::from(conn.shard),
            base + usize::from(local),
            "lives on its home shard"
        );
        (conn, got[1..].to_vec())
    }

    /// The node `phone`'s account lives on (1 without a placement).
    pub fn home_node(&self, phone: Phone) -> u16 {
        let Some(placement) = self.shards[0].placement() else {
            return 1;
        };
        let map = self.shards[0].config().map;
        match placement.home(map.partition_of(phone), map.shards()) {
            Home::Here { .. } => placement.node,
            Home::Away { node, .. } => node,
            Home::Unknown => panic!("{phone} has no home"),
        }
    }
}

/// Two test numbers with different home shards (for two shards).
pub fn pair(net: &Net) -> (String, String) {
    let map = net.shards[0].config().map;
    let numbers: Vec<String> = (0..50).map(|n| format!("+1555000{n:04}")).collect();
    let a = numbers
        .iter()
        .find(|n| map.shard_of(Phone::parse(n).unwrap()) == 0)
        .unwrap()
        .clone();
    let b = numbers
        .iter()
        .find(|n| map.shard_of(Phone::parse(n).unwrap()) == 1)
        .unwrap()
        .clone();
    (a, b)
}

/// Alice on shard 0 and Bob on shard 1, both signed up: `(alice, key, bob, key)`.
pub fn signed_up_pair(net: &mut Net) -> (Phone, DeviceKey, Phone, DeviceKey) {
    let (a, b) = pair(net);
    let (alice, alice_key) = net.signup(&a);
    let (bob, bob_key) = net.signup(&b);
    (alice, alice_key, bob, bob_key)
}
