//! A seeded simulation of one link without sockets: a sender and a
//! receiver session joined by two byte pipes that deliver in random
//! chunks, an application that releases late, time that jumps, and
//! connections dropped at random points (bytes in flight lost). Every
//! payload pushed must reach the application once, in order, and neither
//! the queue nor the receiver's unreleased set may pass its bound. A
//! variant restarts the receiving process too: what it had not released
//! is lost with it, and the sender, finding a new incarnation, starts its
//! session over and sends its whole queue again. A failing seed is
//! printed and replays.

use super::{
    frame::{self, Decoded, Endpoint, Frame, Welcome, VERSION},
    receive::{admit, Admission, ReceiveSession},
    send::SendSession,
    QueueLimits, SessionError, Timing,
};

/// splitmix64: small, seedable, good enough to choose steps.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const LIMITS: QueueLimits = QueueLimits {
    messages_max: 16,
    bytes_max: 600,
};

const SENDER: Endpoint = Endpoint {
    node: 1,
    incarnation: 11,
    shard: 0,
};

const FIRST_RECEIVER_INCARNATION: i64 = 22;

/// Bytes on their way one way; dropped with the connection.
#[derive(Default)]
struct Pipe {
    bytes: Vec<u8>,
    /// What has arrived and waits to be read as whole frames.
    arrived: Vec<u8>,
}

impl Pipe {
    /// Moves a random share of what is in flight to the far end.
    fn carry(&mut self, random: &mut Random) {
        let count = random.below(self.bytes.len() as u64 + 1) as usize;
        self.arrived.extend(self.bytes.drain(..count));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.arrived.clear();
    }

    /// Calls `take` with each whole frame that has arrived.
    fn frames(&mut self, mut take: impl FnMut(&Frame<'_>)) {
        let mut at = 0;
        while let Ok(Decoded::Frame(frame, used)) = frame::decode(&self.arrived[at..]) {
            take(&frame);
            at += used;
        }
        self.arrived.drain(..at);
    }
}

/// The receiving process: its held session and its application.
struct Receiver {
    session: Option<ReceiveSession>,
    /// Every payload handed up, in order.
    delivered: Vec<u64>,
    /// Handed up and not yet released: (seq, payload number).
    unreleased: Vec<(u64, u64)>,
    /// Payload numbers released (made durable), in order, every
    /// incarnation's.
    durable: Vec<u64>,
    incarnation: i64,
}

struct World {
    random: Random,
    timing: Timing,
    now_ms: u64,
    sender: SendSession,
    receiver: Receiver,
    forth: Pipe,
    back: Pipe,
    connected: bool,
    pushed: u64,
    /// Whether the receiving process restarts now and then.
    restarts: bool,
    next_session: u64,
}

impl World {
    fn new(seed: u64, restarts: bool) -> World {
        let timing = Timing {
            ack_batch_messages: 4,
            ..Timing::default()
        };
        World {
            random: Random(seed),
            timing,
            now_ms: 0,
            sender: SendSession::new(LIMITS, timing, 1, Some(FIRST_RECEIVER_INCARNATION)),
            receiver: Receiver {
                session: None,
                delivered: Vec::new(),
                unreleased: Vec::new(),
                durable: Vec::new(),
                incarnation: FIRST_RECEIVER_INCARNATION,
            },
            forth: Pipe::default(),
            back: Pipe::default(),
            connected: false,
            pushed: 0,
            restarts,
            next_session: 2,
        }
    }

    /// Hello and welcome, without their bytes: the handshake's decisions.
    fn connect(&mut self) {
        let session = self.sender.session();
        let held = self.receiver.session.as_ref();
        match admit(held, SENDER, session).expect("an honest sender is admitted") {
            Admission::Resume => {}
            Admission::Fresh { .. } => {
                let timing = self.timing;
                self.receiver.session = Some(ReceiveSession::new(SENDER, session, LIMITS, timing));
                self.receiver.unreleased.clear();
            }
        }
        let receiver = self.receiver.session.as_mut().expect("admitted");
        receiver.on_connect(self.now_ms);
        let (received, released) = receiver.resume_point();
        let welcome = Welcome {
            version: VERSION,
            cluster: b"c",
            from: Endpoint {
                node: 2,
                incarnation: self.receiver.incarnation,
                shard: 0,
            },
            received,
            released,
            proof: [0; crate::remote::frame::PROOF_BYTES],
        };
        match self.sender.on_welcome(&welcome, self.now_ms) {
            Ok(()) => self.connected = true,
            Err(SessionError::ReceiverRestarted { found, .. }) => {
                // As the dialer does: start over, dial again at once.
                self.sender.reset(self.next_session, Some(found));
                self.next_session += 1;
                self.receiver
                    .session
                    .as_mut()
                    .expect("admitted")
                    .on_disconnect();
                self.connect();
            }
            Err(error) => panic!("a true welcome refused: {error}"),
        }
    }

    /// The receiving process dies and comes back as a new incarnation:
    /// what it held unreleased was never durable and is gone.
    fn restart_receiver(&mut self) {
        self.disconnect();
        self.receiver.session = None;
        self.receiver.unreleased.clear();
        self.receiver.incarnation += 1;
    }

    fn disconnect(&mut self) {
        self.forth.clear();
        self.back.clear();
        self.sender.on_disconnect();
        if let Some(receiver) = self.receiver.session.as_mut() {
            receiver.on_disconnect();
        }
        self.connected = false;
    }

    fn push(&mut self) {
        let payload = self
            .pushed
            .to_le_bytes()
            .repeat(1 + self.random.below(8) as usize);
        if self.sender.push(payload).is_ok() {
            self.pushed += 1;
        }
        let (messages, bytes) = self.sender.depth();
        assert!(messages <= LIMITS.messages_max && bytes <= LIMITS.bytes_max);
    }

    fn carry_forth(&mut self) {
        self.sender
            .poll_transmit(self.now_ms, &mut self.forth.bytes, 200);
        self.forth.carry(&mut self.random);
        let receiver = self.receiver.session.as_mut().expect("connected");
        let (delivered, unreleased, now_ms) = (
            &mut self.receiver.delivered,
            &mut self.receiver.unreleased,
            self.now_ms,
        );
        self.forth.frames(|frame| {
            if let Some((seq, payload)) = receiver.on_frame(frame, now_ms).expect("in order") {
                let number = u64::from_le_bytes(payload[..8].try_into().unwrap());
                delivered.push(number);
                unreleased.push((seq, number));
            }
        });
        let (messages, bytes) = receiver.unreleased();
        assert!(messages <= LIMITS.messages_max && bytes <= LIMITS.bytes_max);
    }

    fn carry_back(&mut self) {
        let receiver = self.receiver.session.as_mut().expect("connected");
        receiver.poll_transmit(self.now_ms, &mut self.back.bytes);
        self.back.carry(&mut self.random);
        let (sender, now_ms) = (&mut self.sender, self.now_ms);
        self.back.frames(|frame| {
            sender.on_frame(frame, now_ms).expect("a true ack");
        });
    }

    /// The application makes some of what it holds durable, oldest first.
    fn release(&mut self) {
        let Some(receiver) = self.receiver.session.as_mut() else {
            return;
        };
        let count = self.random.below(self.receiver.unreleased.len() as u64 + 1) as usize;
        if count > 0 {
            let (seq, _) = self.receiver.unreleased[count - 1];
            let released = self.receiver.unreleased.drain(..count);
            self.receiver
                .durable
                .extend(released.map(|(_, number)| number));
            receiver
                .released(seq, self.now_ms)
                .expect("released what came");
        }
    }

    fn step(&mut self) {
        self.now_ms += self.random.below(30);
        if !self.connected {
            if self.random.chance(30) {
                self.connect();
            }
            self.push();
            return;
        }
        if self.sender.check_silence(self.now_ms).is_err() || self.random.chance(2) {
            self.disconnect();
            return;
        }
        if self.restarts && self.random.chance(1) {
            self.restart_receiver();
            return;
        }
        match self.random.below(4) {
            0 => self.push(),
            1 => self.carry_forth(),
            2 => self.carry_back(),
            _ => self.release(),
        }
    }

    /// Stops pushing and runs a steady connection until every payload is
    /// acknowledged.
    fn settle(&mut self) {
        if !self.connected {
            self.connect();
        }
        for _ in 0..100_000 {
            if self.sender.depth().0 == 0 {
                return;
            }
            self.now_ms += 1;
            self.carry_forth();
            if let (Some(receiver), Some(&(seq, _))) = (
                self.receiver.session.as_mut(),
                self.receiver.unreleased.last(),
            ) {
                receiver.released(seq, self.now_ms).unwrap();
                let released = self.receiver.unreleased.drain(..);
                self.receiver
                    .durable
                    .extend(released.map(|(_, number)| number));
            }
            self.carry_back();
        }
        panic!("the queue did not drain: {:?}", self.sender.depth());
    }
}

fn run(seed: u64, steps: usize, restarts: bool) -> World {
    let mut world = World::new(seed, restarts);
    for _ in 0..steps {
        world.step();
    }
    world.settle();
    world
}

#[test]
fn random_drops_deliver_every_payload_once_in_order_within_the_bound() {
    for seed in 0..300 {
        let world = std::panic::catch_unwind(|| run(seed, 2_000, false))
            .unwrap_or_else(|_| panic!("seed {seed} failed; it replays"));
        let expected: Vec<u64> = (0..world.pushed).collect();
        assert_eq!(world.receiver.delivered, expected, "seed {seed}");
        assert_eq!(world.receiver.durable, expected, "seed {seed}");
        assert!(
            world.pushed > 100,
            "seed {seed} pushed only {}",
            world.pushed
        );
        let counters = world.sender.counters();
        assert_eq!(counters.acked, world.pushed);
    }
}

/// The runs do drop connections with data in flight: a simulation whose
/// drops never cost a resend would prove nothing.
#[test]
fn the_simulation_exercises_resends() {
    let world = run(7, 5_000, false);
    assert!(world.sender.counters().retransmitted > 0);
}

/// With the receiving process restarting: everything pushed becomes
/// durable, in order once repeats are dropped (the application's dedup),
/// and only what the old incarnation had not acknowledged is repeated, so
/// repeats per restart stay within the queue's bound.
#[test]
fn receiver_restarts_repeat_only_the_unacknowledged_and_keep_order() {
    for seed in 0..300 {
        let world = std::panic::catch_unwind(|| run(seed, 2_000, true))
            .unwrap_or_else(|_| panic!("seed {seed} failed; it replays"));
        let durable = &world.receiver.durable;
        let mut first_seen = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &number in durable {
            if seen.insert(number) {
                first_seen.push(number);
            }
        }
        let expected: Vec<u64> = (0..world.pushed).collect();
        assert_eq!(first_seen, expected, "seed {seed}: lost or reordered");
        let restarts = (world.receiver.incarnation - FIRST_RECEIVER_INCARNATION) as usize;
        let repeats = durable.len() - first_seen.len();
        assert!(
            repeats <= restarts * LIMITS.messages_max,
            "seed {seed}: {repeats} repeats over {restarts} restarts"
        );
        assert_eq!(
            world.sender.counters().resets as usize,
            restarts,
            "seed {seed}"
        );
    }
}
