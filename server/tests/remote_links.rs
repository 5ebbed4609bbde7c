//! The links between nodes over real loopback TCP: each shard of each
//! "node" is its own glommio executor in this process, with its own
//! `RemoteLinks`, as in the server. A stream of numbered payloads crosses
//! while connections are shut down from either side; a receiver that stops
//! releasing fills the sender's queue to its bound and no further; hellos
//! from strangers and broken frames are refused and counted; a receiver
//! that comes back as a new incarnation gets the unacknowledged again.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::OwnedFd,
    rc::Rc,
    sync::{
        atomic::AtomicI64,
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    task::Poll,
    time::{Duration, Instant},
};

use glommio::{LocalExecutorBuilder, Placement};
use server::remote::{
    frame::{self, Endpoint, Frame, Hello, Refusal, VERSION},
    ClusterSecret, Delivery, Handovers, LinkConfig, Local, Origin, PushError, QueueLimits,
    RemoteLinks, RemoteSetup, RemoteStats,
};

const CLUSTER: &str = "/isle/test/";
const SENDER_NODE: u16 = 1;
const RECEIVER_NODE: u16 = 2;
const SENDER_INCARNATION: i64 = 0x51;
const RECEIVER_INCARNATION: i64 = 0x52;

/// Long enough for anything a test waits for on a loaded box; a test
/// that needs it has failed.
const PATIENCE: Duration = Duration::from_secs(60);

/// What a test asks of one shard's executor.
enum Command {
    Ensure {
        node: u16,
        incarnation: i64,
        addr: SocketAddr,
        shards: u16,
    },
    /// Push payloads numbered from 0 to `total` (exclusive) to `node`,
    /// waiting for room whenever the link is full.
    Produce {
        node: u16,
        total: u64,
        bytes: usize,
    },
    DropConnections(u16),
    /// Stop (true) or resume (false) releasing what was received.
    Hold(bool),
    /// Stop the links and start them again as `incarnation`, on the same
    /// listening socket.
    Restart {
        incarnation: i64,
    },
    /// This node is `incarnation` now (its lease was granted again).
    Renew {
        incarnation: i64,
    },
    Stats(mpsc::Sender<RemoteStats>),
    Stop,
}

/// What a shard's executor shares with the test thread.
#[derive(Default)]
struct Shared {
    /// Payload numbers received, by sending (node, shard), in order.
    received: Mutex<HashMap<(u16, u16), Vec<u64>>>,
    /// Payloads the producer has pushed, and pushes refused as full.
    pushed: AtomicU64,
    refused_full: AtomicU64,
    /// Incarnations of the sender node below this are refused (0: none),
    /// as etcd's view would once the sender is a new one.
    sender_floor: AtomicI64,
}

struct ShardHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    join: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ShardHandle {
    fn send(&self, command: Command) {
        self.commands.send(command).expect("the shard runs");
    }

    fn stats(&self) -> RemoteStats {
        let (reply, answer) = mpsc::channel();
        self.send(Command::Stats(reply));
        answer.recv_timeout(PATIENCE).expect("stats")
    }

    fn received_from(&self, node: u16, shard: u16) -> Vec<u64> {
        let received = self.shared.received.lock().unwrap();
        received.get(&(node, shard)).cloned().unwrap_or_default()
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// How one shard of a test node is made.
struct ShardSpec {
    local: Local,
    config: LinkConfig,
    listener: Option<OwnedFd>,
    handovers: Handovers,
    secret: Option<ClusterSecret>,
}

fn local(node: u16, incarnation: i64, shard: u16, shards: u16) -> Local {
    Local::new(CLUSTER, node, incarnation, shard, shards).unwrap()
}

/// `count` sockets on one loopback port with SO_REUSEPORT, listening.
fn reuseport_listeners(count: usize) -> (Vec<OwnedFd>, SocketAddr) {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut fds = Vec::new();
    for _ in 0..count {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(128).unwrap();
        addr = socket.local_addr().unwrap().as_socket().unwrap();
        fds.push(OwnedFd::from(socket));
    }
    (fds, addr)
}

/// Starts one shard's executor running its links and the test's commands.
fn start_shard(spec: ShardSpec) -> ShardHandle {
    // The links' own lines, with RUST_LOG set.
    let _ = env_logger::builder().is_test(true).try_init();
    let (commands, inbox) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let theirs = shared.clone();
    let name = format!("node{}-shard{}", spec.local.node, spec.local.shard);
    let join = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&name)
        .spawn(move || run_shard(spec, inbox, theirs))
        .expect("an executor starts");
    ShardHandle {
        commands,
        shared,
        join: Some(join),
    }
}

/// What the deliver callback leaves for the release task: (origin, the
/// last seq of a delivery).
type ToRelease = Rc<RefCell<Vec<(Origin, u64)>>>;

fn links_for(
    spec: &ShardSpec,
    incarnation: i64,
    shared: &Arc<Shared>,
    pending: &ToRelease,
) -> Rc<RemoteLinks> {
    let floor = shared.clone();
    let (shared, pending) = (shared.clone(), pending.clone());
    let deliver = move |delivery: Delivery| {
        let sender = delivery.origin.sender;
        let mut received = shared.received.lock().unwrap();
        let numbers = received.entry((sender.node, sender.shard)).or_default();
        for payload in &delivery.payloads {
            numbers.push(u64::from_le_bytes(payload[..8].try_into().unwrap()));
        }
        pending
            .borrow_mut()
            .push((delivery.origin, delivery.last_seq()));
    };
    let listener = spec.listener.as_ref().map(|fd| fd.try_clone().unwrap());
    RemoteLinks::start(RemoteSetup {
        replication: None,
        local: Local {
            incarnation,
            ..spec.local.clone()
        },
        config: spec.config,
        listener,
        handovers: spec.handovers.clone(),
        secret: spec.secret.clone(),
        // Every peer is approved but the old incarnation of the receiver.
        approve: Box::new(move |node, incarnation| {
            let sender_floor = floor.sender_floor.load(Ordering::Relaxed);
            let old_receiver = node == RECEIVER_NODE && incarnation < RECEIVER_INCARNATION;
            let old_sender = node == SENDER_NODE && incarnation < sender_floor;
            !(old_receiver || old_sender)
        }),
        deliver: Box::new(deliver),
        task_queue: None,
    })
    .expect("the test's limits hold together")
}

async fn run_shard(spec: ShardSpec, inbox: mpsc::Receiver<Command>, shared: Arc<Shared>) {
    let pending: ToRelease = Rc::default();
    let hold = Rc::new(Cell::new(false));
    let links = Rc::new(RefCell::new(links_for(
        &spec,
        spec.local.incarnation,
        &shared,
        &pending,
    )));
    glommio::spawn_local(release(links.clone(), pending.clone(), hold.clone())).detach();
    loop {
        glommio::timer::sleep(Duration::from_millis(2)).await;
        let Ok(command) = inbox.try_recv() else {
            continue;
        };
        let current = links.borrow().clone();
        match command {
            Command::Ensure {
                node,
                incarnation,
                addr,
                shards,
            } => current.ensure(node, incarnation, addr, shards),
            Command::Produce { node, total, bytes } => {
                glommio::spawn_local(produce(current, node, total, bytes, shared.clone())).detach();
            }
            Command::DropConnections(node) => current.drop_connections(node),
            Command::Hold(on) => hold.set(on),
            Command::Restart { incarnation } => {
                current.stop();
                pending.borrow_mut().clear();
                *links.borrow_mut() = links_for(&spec, incarnation, &shared, &pending);
            }
            Command::Renew { incarnation } => current.renew_incarnation(incarnation),
            Command::Stats(reply) => {
                let _ = reply.send(current.stats());
            }
            Command::Stop => {
                current.stop();
                return;
            }
        }
    }
}

/// Releases what was delivered a moment later, as a commit would, unless
/// held.
async fn release(links: Rc<RefCell<Rc<RemoteLinks>>>, pending: ToRelease, hold: Rc<Cell<bool>>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(1)).await;
        if hold.get() {
            continue;
        }
        let current = links.borrow().clone();
        for (origin, seq) in pending.borrow_mut().drain(..) {
            current.released(&origin, seq);
        }
    }
}

fn payload(number: u64, bytes: usize) -> Vec<u8> {
    let mut payload = number.to_le_bytes().to_vec();
    payload.resize(bytes.max(8), 0xab);
    payload
}

/// Pushes numbered payloads, waiting for room whenever the link is full.
async fn produce(links: Rc<RemoteLinks>, node: u16, total: u64, bytes: usize, shared: Arc<Shared>) {
    for number in 0..total {
        let mut next = Some(payload(number, bytes));
        std::future::poll_fn(
            |cx| match links.push(node, next.take().expect("not yet pushed")) {
                Ok(()) => Poll::Ready(()),
                Err(PushError::Full { payload, .. }) => {
                    shared.refused_full.fetch_add(1, Ordering::Relaxed);
                    next = Some(payload);
                    links.wait_room(node, cx.waker());
                    Poll::Pending
                }
                Err(error) => panic!("push: {error}"),
            },
        )
        .await;
        shared.pushed.store(number + 1, Ordering::Relaxed);
        if number % 64 == 0 {
            // Let the link's writer take what is queued.
            glommio::yield_if_needed().await;
        }
    }
}

/// Polls `done` until it holds, failing the test after [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn small_queue() -> LinkConfig {
    LinkConfig {
        queue: QueueLimits {
            messages_max: 256,
            bytes_max: 64 * 1024,
        },
        ..LinkConfig::default()
    }
}

/// Two nodes of two shards each. The receiver's shards both listen on its
/// peer port with SO_REUSEPORT (the kernel picks one per connection;
/// a connection for the other is handed over); `listening` says which.
fn two_nodes(
    config: LinkConfig,
    listening: [bool; 2],
) -> (Vec<ShardHandle>, Vec<ShardHandle>, SocketAddr) {
    two_nodes_with(config, listening, None)
}

/// [`two_nodes`] whose links prove themselves with `secret`.
fn two_nodes_with(
    config: LinkConfig,
    listening: [bool; 2],
    secret: Option<ClusterSecret>,
) -> (Vec<ShardHandle>, Vec<ShardHandle>, SocketAddr) {
    let (fds, addr) = reuseport_listeners(2);
    let receiver_handovers = Handovers::new(2);
    let receivers = fds
        .into_iter()
        .zip(listening)
        .enumerate()
        .map(|(shard, (fd, listens))| {
            start_shard(ShardSpec {
                local: local(RECEIVER_NODE, RECEIVER_INCARNATION, shard as u16, 2),
                config,
                listener: listens.then_some(fd),
                handovers: receiver_handovers.clone(),
                secret: secret.clone(),
            })
        })
        .collect();
    let sender_handovers = Handovers::new(2);
    let senders: Vec<ShardHandle> = (0..2)
        .map(|shard| {
            start_shard(ShardSpec {
                local: local(SENDER_NODE, SENDER_INCARNATION, shard, 2),
                config,
                listener: None,
                handovers: sender_handovers.clone(),
                secret: secret.clone(),
            })
        })
        .collect();
    for sender in &senders {
        sender.send(Command::Ensure {
            node: RECEIVER_NODE,
            incarnation: RECEIVER_INCARNATION,
            addr,
            shards: 2,
        });
    }
    (senders, receivers, addr)
}

#[test]
fn a_stream_crosses_once_in_order_while_connections_are_shut_down_from_either_side() {
    const TOTAL: u64 = 20_000;
    let (senders, receivers, _) = two_nodes(small_queue(), [true, true]);
    for sender in &senders {
        sender.send(Command::Produce {
            node: RECEIVER_NODE,
            total: TOTAL,
            bytes: 100,
        });
    }
    // Six shutdowns, alternating sides, while the stream flows.
    for kill in 0..6 {
        let before = senders[0].shared.pushed.load(Ordering::Relaxed);
        wait_for("progress between shutdowns", || {
            senders[0].shared.pushed.load(Ordering::Relaxed) > before + 500
                || senders[0].shared.pushed.load(Ordering::Relaxed) == TOTAL
        });
        match kill % 2 {
            0 => senders
                .iter()
                .for_each(|s| s.send(Command::DropConnections(RECEIVER_NODE))),
            _ => receivers
                .iter()
                .for_each(|r| r.send(Command::DropConnections(SENDER_NODE))),
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let expected: Vec<u64> = (0..TOTAL).collect();
    // Shard s of the sender links to shard s of the receiver.
    for (shard, receiver) in (0..).zip(&receivers) {
        wait_for("every payload", || {
            receiver.received_from(SENDER_NODE, shard).len() as u64 >= TOTAL
        });
        let received = receiver.received_from(SENDER_NODE, shard);
        assert!(
            received == expected,
            "shard {shard}: lost, repeated or reordered payloads"
        );
    }
    wait_for("the queues to drain", || {
        senders
            .iter()
            .all(|s| s.stats().links[0].queue_messages == 0)
    });
    for sender in &senders {
        let link = &sender.stats().links[0];
        assert!(link.connects >= 2, "reconnected after shutdowns: {link:?}");
        assert_eq!((link.frames_refused, link.resets), (0, 0), "{link:?}");
        assert_eq!(link.acked, TOTAL);
    }
    for receiver in &receivers {
        let stats = receiver.stats();
        assert_eq!(
            (stats.frames_refused, stats.handshakes_refused),
            (0, 0),
            "{stats:?}"
        );
    }
}

#[test]
fn a_receiver_that_stops_releasing_fills_the_queue_to_its_bound_and_the_link_recovers() {
    const TOTAL: u64 = 3_000;
    let config = small_queue();
    // Only the receiver's shard 0 listens: sender shard 1's link always
    // reaches receiver shard 1 by handover.
    let (senders, receivers, _) = two_nodes(config, [true, false]);
    let (sender, receiver) = (&senders[1], &receivers[1]);
    receiver.send(Command::Hold(true));
    // Commands are taken in order: once this answers, the hold is on.
    receiver.stats();
    sender.send(Command::Produce {
        node: RECEIVER_NODE,
        total: TOTAL,
        bytes: 1_000,
    });
    wait_for("a push refused as full", || {
        sender.shared.refused_full.load(Ordering::Relaxed) > 0
    });
    // Held long enough for anything unbounded to show, and through a
    // reconnect while full.
    std::thread::sleep(Duration::from_millis(200));
    sender.send(Command::DropConnections(RECEIVER_NODE));
    std::thread::sleep(Duration::from_millis(300));
    let queued = sender.stats().links[0].clone();
    let pushed = sender.shared.pushed.load(Ordering::Relaxed);
    let held = receiver.stats().inbound[0].clone();
    assert!(
        queued.queue_messages <= config.queue.messages_max,
        "{queued:?}"
    );
    assert!(queued.queue_bytes <= config.queue.bytes_max, "{queued:?}");
    assert_eq!(
        queued.queue_messages as u64, pushed,
        "nothing acknowledged while held"
    );
    assert!(
        held.unreleased_messages <= config.queue.messages_max,
        "{held:?}"
    );
    assert!(held.unreleased_bytes <= config.queue.bytes_max, "{held:?}");
    assert!(pushed < TOTAL, "the producer is held back");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sender.shared.pushed.load(Ordering::Relaxed),
        pushed,
        "no push got through"
    );
    receiver.send(Command::Hold(false));
    wait_for("every payload after the release", || {
        receiver.received_from(SENDER_NODE, 1).len() as u64 >= TOTAL
    });
    let expected: Vec<u64> = (0..TOTAL).collect();
    assert!(
        receiver.received_from(SENDER_NODE, 1) == expected,
        "lost, repeated or reordered"
    );
    assert!(
        receivers[0].stats().handovers >= 2,
        "{:?}",
        receivers[0].stats()
    );
}

/// The first bytes a stranger sends, and the refusal it should get back
/// (`None`: just closed).
fn stranger(addr: SocketAddr, bytes: &[u8]) -> Option<Refusal> {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    // The node closes the connection: the read ends (EOF or a reset).
    let _ = socket.read_to_end(&mut answer);
    let mut at = 0;
    while let Ok(frame::Decoded::Frame(frame, used)) = frame::decode(&answer[at..]) {
        match frame {
            Frame::Refused(refusal) => return Some(refusal),
            // An accepted hello is welcomed before what follows is read.
            Frame::Welcome(_) | Frame::Ack { .. } => at += used,
            other => panic!("answered {other:?}"),
        }
    }
    None
}

fn hello_bytes(cluster: &str, incarnation: i64, to_shard: u16, session: u64) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_hello(
        &mut out,
        &Hello {
            version: VERSION,
            cluster: cluster.as_bytes(),
            from: Endpoint {
                node: 9,
                incarnation,
                shard: 0,
            },
            to: Endpoint {
                node: RECEIVER_NODE,
                incarnation: RECEIVER_INCARNATION,
                shard: to_shard,
            },
            session,
            window_messages: 16,
            window_bytes: 1024,
            proof: [0; frame::PROOF_BYTES],
        },
    );
    out
}

#[test]
fn strangers_broken_frames_and_gaps_close_the_connection_and_are_counted() {
    let (fds, addr) = reuseport_listeners(1);
    let receiver = start_shard(ShardSpec {
        local: local(RECEIVER_NODE, RECEIVER_INCARNATION, 0, 1),
        config: small_queue(),
        listener: fds.into_iter().next(),
        handovers: Handovers::new(1),
        secret: None,
    });
    assert_eq!(stranger(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    assert_eq!(
        stranger(addr, &hello_bytes("/other/", 1, 0, 1)),
        Some(Refusal::OtherCluster)
    );
    assert_eq!(
        stranger(addr, &hello_bytes(CLUSTER, 1, 5, 1)),
        Some(Refusal::NoSuchShard)
    );
    let refused = receiver.stats().handshakes_refused;
    assert_eq!(refused, 3);
    // A hello that is accepted, then a gap in the sequence.
    let mut gap = hello_bytes(CLUSTER, 1, 0, 1);
    frame::encode_data(&mut gap, 2, b"skipped one");
    assert_eq!(stranger(addr, &gap), None);
    // Then a length prefix over the frame bound.
    let mut long = hello_bytes(CLUSTER, 1, 0, 2);
    long.extend_from_slice(&(frame::FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
    assert_eq!(stranger(addr, &long), None);
    // An older session of the same sender than the one held.
    assert_eq!(
        stranger(addr, &hello_bytes(CLUSTER, 1, 0, 1)),
        Some(Refusal::StaleSession)
    );
    let stats = receiver.stats();
    assert_eq!(stats.frames_refused, 2, "{stats:?}");
    assert_eq!(stats.handshakes_refused, 4, "{stats:?}");
    assert!(receiver.received_from(9, 0).is_empty());
}

/// A stranger's first frame was read up to the frame bound of a link
/// (1 MiB) or, behind a replication hello's first bytes, of replication
/// (8 MiB), before anything was checked: each silent place could hold
/// that much until the handshake timeout. A first frame longer than any
/// hello is refused as soon as its length is read.
#[test]
fn a_first_frame_longer_than_any_hello_is_refused_at_once() {
    let (fds, addr) = reuseport_listeners(1);
    let receiver = start_shard(ShardSpec {
        local: local(RECEIVER_NODE, RECEIVER_INCARNATION, 0, 1),
        config: small_queue(),
        listener: fds.into_iter().next(),
        handovers: Handovers::new(1),
        secret: None,
    });
    let replication = shard::island::codec::FRAME_BYTES_MAX as u32;
    let link = frame::FRAME_BYTES_MAX as u32;
    for (length, magic) in [(replication, b"ISLR"), (link, b"ISLK")] {
        let mut start = length.to_le_bytes().to_vec();
        start.push(1);
        start.extend_from_slice(magic);
        start.extend_from_slice(&[0; 64]);
        let began = Instant::now();
        assert_eq!(stranger(addr, &start), None);
        let waited = began.elapsed();
        assert!(
            waited < Duration::from_millis(LinkConfig::default().handshake_timeout_ms / 2),
            "a {length}-byte first frame was waited for {waited:?}"
        );
    }
    let stats = receiver.stats();
    assert_eq!(stats.handshakes_refused, 2, "{stats:?}");
}

/// A host that can reach the peer port and knows a member's node id and
/// incarnation (etcd lists both) forged that member's hello with a session
/// number far above its real one: without the cluster's secret it was
/// accepted, started the sender's session over, and the real sender's
/// resume was refused as stale from then on. With a secret the forgery is
/// refused, and the live link neither resets nor loses a payload.
#[test]
fn a_forged_hello_does_not_disturb_a_live_link() {
    const TOTAL: u64 = 3_000;
    let secret = ClusterSecret::new(b"a secret the test's nodes share").unwrap();
    let (senders, receivers, addr) = two_nodes_with(small_queue(), [true, true], Some(secret));
    let sender = &senders[0];
    sender.send(Command::Produce {
        node: RECEIVER_NODE,
        total: TOTAL,
        bytes: 100,
    });
    wait_for("the link carrying payloads", || {
        receivers[0].received_from(SENDER_NODE, 0).len() > 100
    });
    let forged = |proof: [u8; frame::PROOF_BYTES]| {
        let mut out = Vec::new();
        frame::encode_hello(
            &mut out,
            &Hello {
                version: VERSION,
                cluster: CLUSTER.as_bytes(),
                from: Endpoint {
                    node: SENDER_NODE,
                    incarnation: SENDER_INCARNATION,
                    shard: 0,
                },
                to: Endpoint {
                    node: RECEIVER_NODE,
                    incarnation: RECEIVER_INCARNATION,
                    shard: 0,
                },
                session: u64::MAX,
                window_messages: 16,
                window_bytes: 1024,
                proof,
            },
        );
        out
    };
    let other = ClusterSecret::new(b"a secret of some other cluster").unwrap();
    let mut guessed = forged([0; frame::PROOF_BYTES]);
    let Ok(frame::Decoded::Frame(Frame::Hello(hello), _)) = frame::decode(&guessed) else {
        panic!("a hello");
    };
    let proof = other.prove_hello(&hello);
    guessed = forged(proof);
    for (what, hello) in [("no proof", forged([0; 32])), ("another secret", guessed)] {
        assert_eq!(stranger(addr, &hello), Some(Refusal::Unproven), "{what}");
    }
    let expected: Vec<u64> = (0..TOTAL).collect();
    wait_for("every payload", || {
        receivers[0].received_from(SENDER_NODE, 0).len() as u64 >= TOTAL
    });
    assert!(receivers[0].received_from(SENDER_NODE, 0) == expected);
    wait_for("the queue to drain", || {
        sender.stats().links[0].queue_messages == 0
    });
    let link = &sender.stats().links[0];
    assert_eq!((link.resets, link.frames_refused), (0, 0), "{link:?}");
    let (unproven, resets): (u64, u64) = receivers.iter().fold((0, 0), |(u, r), receiver| {
        let stats = receiver.stats();
        (u + stats.hellos_unproven, r + stats.sender_resets)
    });
    assert_eq!((unproven, resets), (2, 0));
}

#[test]
fn a_receiver_back_as_a_new_incarnation_gets_the_unacknowledged_again() {
    const TOTAL: u64 = 200;
    let (senders, receivers, _) = two_nodes(small_queue(), [true, true]);
    let (sender, receiver) = (&senders[0], &receivers[0]);
    receiver.send(Command::Hold(true));
    receiver.stats();
    sender.send(Command::Produce {
        node: RECEIVER_NODE,
        total: TOTAL,
        bytes: 10,
    });
    wait_for("everything delivered and held", || {
        receiver.received_from(SENDER_NODE, 0).len() as u64 == TOTAL
    });
    // The receiver dies with nothing released: nothing was acknowledged.
    receiver.send(Command::Restart {
        incarnation: RECEIVER_INCARNATION + 1,
    });
    receiver.send(Command::Hold(false));
    wait_for("the queue delivered again and acknowledged", || {
        receiver.received_from(SENDER_NODE, 0).len() as u64 == 2 * TOTAL
            && sender.stats().links[0].queue_messages == 0
    });
    let expected: Vec<u64> = (0..TOTAL).chain(0..TOTAL).collect();
    assert_eq!(receiver.received_from(SENDER_NODE, 0), expected);
    let link = &sender.stats().links[0];
    assert_eq!(link.resets, 1, "{link:?}");
}

/// The sender's node lost its lease and holds a new one: it is another
/// incarnation, which receivers now approve instead of the old. Its links
/// carry the new name, start their sessions over and send their queues
/// again; nothing queued is lost.
#[test]
fn a_sender_that_becomes_a_new_incarnation_keeps_its_queue_and_links_again() {
    const TOTAL: u64 = 200;
    let (senders, receivers, _) = two_nodes(small_queue(), [true, true]);
    let (sender, receiver) = (&senders[0], &receivers[0]);
    receiver.send(Command::Hold(true));
    receiver.stats();
    sender.send(Command::Produce {
        node: RECEIVER_NODE,
        total: TOTAL,
        bytes: 10,
    });
    wait_for("everything delivered and held", || {
        receiver.received_from(SENDER_NODE, 0).len() as u64 == TOTAL
    });
    for shard in &receivers {
        let floor = &shard.shared.sender_floor;
        floor.store(SENDER_INCARNATION + 1, Ordering::Relaxed);
    }
    sender.send(Command::Renew {
        incarnation: SENDER_INCARNATION + 1,
    });
    wait_for("the sender's session started over", || {
        sender.stats().links[0].resets == 1
    });
    receiver.send(Command::Hold(false));
    wait_for(
        "the queue delivered again under the new name and acknowledged",
        || {
            receiver.received_from(SENDER_NODE, 0).len() as u64 == 2 * TOTAL
                && sender.stats().links[0].queue_messages == 0
        },
    );
    let expected: Vec<u64> = (0..TOTAL).chain(0..TOTAL).collect();
    assert_eq!(receiver.received_from(SENDER_NODE, 0), expected);
    assert_eq!(sender.stats().links[0].resets, 1, "one start over");
}

/// A receiver that welcomes a link and then falls silent without reading
/// (a host cut off by a partition, or a frozen process): once the kernel's
/// buffers are full, the sender's write blocks. links.md promises that a
/// side closes a connection on which nothing arrived for
/// `silent_close_ms` and dials again; the sender does so even while its
/// write is blocked, or a link across a healed partition would wait for
/// TCP's own retransmission timer (up to minutes) before it came back.
#[test]
fn a_silent_receiver_is_closed_after_silent_close_ms_even_while_a_write_blocks() {
    const SILENT_CLOSE_MS: u64 = 2_000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = LinkConfig {
        queue: QueueLimits {
            messages_max: 1024,
            bytes_max: 64 * 1024 * 1024,
        },
        timing: server::remote::Timing {
            silent_close_ms: SILENT_CLOSE_MS,
            ..server::remote::Timing::default()
        },
        ..LinkConfig::default()
    };
    let sender = start_shard(ShardSpec {
        local: local(SENDER_NODE, SENDER_INCARNATION, 0, 1),
        config,
        listener: None,
        handovers: Handovers::new(1),
        secret: None,
    });
    sender.send(Command::Ensure {
        node: RECEIVER_NODE,
        incarnation: RECEIVER_INCARNATION,
        addr,
        shards: 1,
    });
    let (mut first, _) = listener.accept().unwrap();
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut inbox = Vec::new();
    loop {
        match frame::decode(&inbox).unwrap() {
            frame::Decoded::Frame(Frame::Hello(_), _) => break,
            frame::Decoded::Frame(other, _) => panic!("not a hello: {other:?}"),
            frame::Decoded::Incomplete(_) => {
                let mut buffer = [0u8; 4096];
                let read = first.read(&mut buffer).unwrap();
                assert!(read > 0, "closed before its hello");
                inbox.extend_from_slice(&buffer[..read]);
            }
        }
    }
    let mut welcome = Vec::new();
    frame::encode_welcome(
        &mut welcome,
        &frame::Welcome {
            version: VERSION,
            cluster: CLUSTER.as_bytes(),
            from: Endpoint {
                node: RECEIVER_NODE,
                incarnation: RECEIVER_INCARNATION,
                shard: 0,
            },
            received: 0,
            released: 0,
            proof: [0; frame::PROOF_BYTES],
        },
    );
    first.write_all(&welcome).unwrap();
    // 60 MiB: far more than the loopback socket buffers hold.
    sender.send(Command::Produce {
        node: RECEIVER_NODE,
        total: 1024,
        bytes: 60 * 1024,
    });
    // From here on `first` is never read nor written: the receiver is
    // silent. The sender must give the connection up and dial again.
    listener.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(SILENT_CLOSE_MS * 5);
    loop {
        match listener.accept() {
            Ok(_) => break,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                let link = &sender.stats().links[0];
                assert!(
                    Instant::now() < deadline,
                    "the sender kept a connection silent for {} ms (silent_close_ms {SILENT_CLOSE_MS}) \
                     and did not dial again: {link:?}",
                    started.elapsed().as_millis()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
    drop(first);
}
