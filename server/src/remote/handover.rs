//! The bounded inboxes through which an incoming link connection reaches
//! the shard its hello names. Every shard listens on the node's peer
//! address with `SO_REUSEPORT`, so the kernel may give a connection to any
//! of them; the shard that read the hello passes the socket on.
//!
//! One inbox per shard, shared by every other shard of the node: a mutex
//! over a bounded deque and the receiving task's waker. A full inbox
//! refuses the connection (the dialer tries again after its backoff)
//! rather than queue without bound. Because glommio 0.9 can lose a
//! wake-up sent from another executor (see `peer_queue.rs`), the
//! receiving task also looks on a timer: 1 ms after activity, doubling to
//! [`BACKSTOP_MAX_MS`] while idle. A connection waits at most that long.

use std::{
    cell::Cell,
    collections::VecDeque,
    os::fd::OwnedFd,
    sync::{Arc, Mutex, MutexGuard},
    task::{Poll, Waker},
    time::Duration,
};

/// Connections one shard's inbox holds before it refuses more: handovers
/// happen once per link connection, so a full inbox means that shard has
/// stopped taking them.
pub const HANDOVERS_QUEUED_MAX: usize = 64;

/// The longest the receiving task sleeps between looks while idle.
pub const BACKSTOP_MAX_MS: u64 = 100;

/// A connection on its way to another shard: the socket and every byte
/// read from it so far (its hello first).
pub struct Handover {
    pub fd: OwnedFd,
    pub pending: Vec<u8>,
}

/// The inboxes of every shard of this node; each shard holds a clone.
#[derive(Clone)]
pub struct Handovers {
    inboxes: Arc<[Inbox]>,
}

#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<Handover>,
    waker: Option<Waker>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // Every change is one push or pop: a panic elsewhere leaves the
        // deque consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Handovers {
    /// Inboxes for a node of `shards` shards.
    pub fn new(shards: u16) -> Handovers {
        Handovers {
            inboxes: (0..shards).map(|_| Inbox::default()).collect(),
        }
    }

    pub fn shards(&self) -> u16 {
        self.inboxes.len() as u16
    }

    /// Queues `handover` for `shard`; gives it back when that inbox is full.
    pub fn offer(&self, shard: u16, handover: Handover) -> Result<(), Handover> {
        let inbox = &self.inboxes[shard as usize];
        let mut state = inbox.lock();
        if state.items.len() >= HANDOVERS_QUEUED_MAX {
            return Err(handover);
        }
        state.items.push_back(handover);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The next connection for `shard`, or `None` once `stopping` is set
    /// (looked at on every wake-up and backstop).
    pub async fn take(&self, shard: u16, stopping: &Cell<bool>) -> Option<Handover> {
        let inbox = &self.inboxes[shard as usize];
        let mut backstop_ms = 1;
        loop {
            if stopping.get() {
                return None;
            }
            let woken = std::future::poll_fn(|cx| {
                let mut state = inbox.lock();
                match state.items.pop_front() {
                    Some(item) => Poll::Ready(Some(item)),
                    None => {
                        state.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            });
            let backstop = async {
                glommio::timer::sleep(Duration::from_millis(backstop_ms)).await;
                None
            };
            if let Some(handover) = futures_lite::future::or(woken, backstop).await {
                return Some(handover);
            }
            backstop_ms = (backstop_ms * 2).min(BACKSTOP_MAX_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover() -> Handover {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Handover {
            fd: a.into(),
            pending: vec![1, 2],
        }
    }

    #[test]
    fn a_full_inbox_gives_the_connection_back() {
        let handovers = Handovers::new(2);
        for _ in 0..HANDOVERS_QUEUED_MAX {
            assert!(handovers.offer(1, handover()).is_ok());
        }
        assert!(handovers.offer(1, handover()).is_err());
        assert!(handovers.offer(0, handover()).is_ok(), "inboxes are apart");
    }

    #[test]
    fn a_queued_connection_is_taken_without_a_wake_up() {
        let handovers = Handovers::new(1);
        handovers.offer(0, handover()).ok().unwrap();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let stopping = Cell::new(false);
                let taken = handovers.take(0, &stopping).await.unwrap();
                assert_eq!(taken.pending, [1, 2]);
                stopping.set(true);
                assert!(handovers.take(0, &stopping).await.is_none());
            })
            .unwrap();
        executor.join().unwrap();
    }
}
