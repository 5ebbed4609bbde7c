//! Pushes to phones that are away, on a thread of its own: a slow or
//! failing gateway never stalls a shard, and the shards never wait for it.
//!
//! The gateway is a webhook: each push is one HTTP POST of a JSON object
//! (`phone`, `platform`, `token`, `waiting`) that a small relay forwards to
//! FCM or APNs. The body says only that something waits, never what. A
//! 2xx answer is success; 404 or 410 means the token is dead (what FCM and
//! APNs answer for an unregistered device), and it goes back to its
//! account's shard to be dropped; 429, 5xx and transport errors are retried
//! with doubling backoff; any other answer gives up on that push.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use shard::{PartitionMap, Push};
use wire::Phone;

/// Pushes waiting for the gateway; past this, shards drop (and count) new
/// ones: the next message for the same phone makes another.
const PUSH_QUEUE_MAX: usize = 16 * 1024;
/// Pushes waiting for a retry; past this a failed push is given up at once.
const RETRIES_MAX: usize = 16 * 1024;
/// Rejected tokens waiting for their shard's next tick.
pub const REJECTED_QUEUE_MAX: usize = 1024;
/// How long one POST may take: the one thread that sends pushes must not
/// hang on a gateway, and a push is retried anyway.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long the sender waits for a new push while no retry is due. Only a
/// bound on an idle loop: a new push or a closed queue ends the wait at once.
const IDLE_WAIT_MS: u64 = 1_000;

/// Where pushes go.
#[derive(Debug, Clone)]
pub enum PushSender {
    /// Nowhere: tokens are kept, nothing is sent.
    None,
    Webhook {
        url: String,
        /// Tries per push, the first included.
        attempts_max: u32,
        /// Wait before the first retry; doubled for each next one.
        retry_ms: u64,
    },
}

/// A token the gateway refused, for its account's shard.
pub type Rejected = (Phone, Arc<str>);

/// The shards' handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct PushQueue(Option<Sender<Push>>);

impl PushQueue {
    /// False when the queue is full; true when there is no gateway at all
    /// (nothing is lost that could have been sent).
    pub fn try_send(&self, push: Push) -> bool {
        match &self.0 {
            Some(sender) => sender.try_send(push).is_ok(),
            None => true,
        }
    }
}

/// Starts the sender; returns the shards' handle and, per shard, where
/// rejected tokens arrive.
pub fn start(
    sender: PushSender,
    map: PartitionMap,
    stats: std::sync::Arc<crate::control::gateways::GatewayStats>,
) -> std::io::Result<(PushQueue, Vec<Receiver<Rejected>>)> {
    let (rejected_tx, rejected_rx): (Vec<_>, Vec<_>) = (0..map.shards())
        .map(|_| bounded::<Rejected>(REJECTED_QUEUE_MAX))
        .unzip();
    let PushSender::Webhook {
        url,
        attempts_max,
        retry_ms,
    } = sender
    else {
        return Ok((PushQueue(None), rejected_rx));
    };
    let (tx, rx) = bounded::<Push>(PUSH_QUEUE_MAX);
    let gateway = Gateway {
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build(),
        url,
        attempts_max: attempts_max.max(1),
        retry: Duration::from_millis(retry_ms),
        map,
        rejected: rejected_tx,
        retries: BinaryHeap::new(),
        retry_seq: 0,
        stats,
    };
    thread::Builder::new()
        .name("isle-push".into())
        .spawn(move || gateway.run(rx))?;
    Ok((PushQueue(Some(tx)), rejected_rx))
}

struct Gateway {
    agent: ureq::Agent,
    url: String,
    attempts_max: u32,
    retry: Duration,
    map: PartitionMap,
    rejected: Vec<Sender<Rejected>>,
    /// Failed pushes waiting to be tried again, soonest first.
    retries: BinaryHeap<Reverse<Retry>>,
    retry_seq: u64,
    /// What it did, for metrics.
    stats: std::sync::Arc<crate::control::gateways::GatewayStats>,
}

/// A push due for its `attempt`th try at `due`; `seq` keeps equal times
/// in the order they were scheduled.
struct Retry {
    due: Instant,
    seq: u64,
    attempt: u32,
    push: Push,
}

impl Retry {
    fn key(&self) -> (Instant, u64) {
        (self.due, self.seq)
    }
}

impl PartialEq for Retry {
    fn eq(&self, other: &Retry) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Retry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    fn cmp(&self, other: &Retry) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

enum Outcome {
    Delivered,
    Rejected,
    Retry(PushError),
    GiveUp(PushError),
}

/// Why one attempt at a push failed.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("gateway answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(Box<ureq::Error>),
}

impl Gateway {
    fn run(mut self, rx: Receiver<Push>) {
        loop {
            let now = Instant::now();
            while self.retries.peek().is_some_and(|Reverse(r)| r.due <= now) {
                let Reverse(retry) = self.retries.pop().expect("peeked");
                self.attempt(retry.push, retry.attempt);
            }
            let wait = self
                .retries
                .peek()
                .map_or(Duration::from_millis(IDLE_WAIT_MS), |Reverse(r)| {
                    r.due.saturating_duration_since(Instant::now())
                });
            match rx.recv_timeout(wait) {
                Ok(push) => self.attempt(push, 1),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn attempt(&mut self, push: Push, attempt: u32) {
        match self.post(&push) {
            Outcome::Delivered => self.stats.sent(),
            Outcome::Rejected => {
                log::info!(phone:% = push.phone; "push gateway rejected the token; dropping it");
                let shard = usize::from(self.map.shard_of(push.phone));
                // A full queue only delays the drop: the next push for the
                // phone is rejected again.
                let _ = self.rejected[shard].try_send((push.phone, push.token));
                self.stats.failed();
            }
            Outcome::Retry(error)
                if attempt < self.attempts_max && self.retries.len() < RETRIES_MAX =>
            {
                let due = Instant::now() + self.retry * 2u32.saturating_pow(attempt - 1);
                self.retry_seq += 1;
                self.retries.push(Reverse(Retry {
                    due,
                    seq: self.retry_seq,
                    attempt: attempt + 1,
                    push,
                }));
                self.stats.retried();
                log::debug!("push attempt {attempt} failed: {error}; retrying");
            }
            Outcome::Retry(error) | Outcome::GiveUp(error) => {
                self.stats.failed();
                log::warn!(
                    phone:% = push.phone;
                    "push given up after attempt {attempt}: {error}"
                );
            }
        }
    }

    fn post(&self, push: &Push) -> Outcome {
        let body = serde_json::json!({
            "phone": push.phone.to_string(),
            "platform": push.platform.name(),
            "token": &*push.token,
            "waiting": push.waiting,
        });
        match self.agent.post(&self.url).send_json(&body) {
            Ok(_) => Outcome::Delivered,
            Err(ureq::Error::Status(404 | 410, _)) => Outcome::Rejected,
            Err(ureq::Error::Status(status, _)) if status == 429 || status >= 500 => {
                Outcome::Retry(PushError::Status(status))
            }
            Err(ureq::Error::Status(status, _)) => Outcome::GiveUp(PushError::Status(status)),
            Err(error) => Outcome::Retry(PushError::Transport(Box::new(error))),
        }
    }
}
