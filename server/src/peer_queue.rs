//! A bounded queue from one shard's executor to another's whose waits
//! have a bound.
//!
//! Why not glommio's shared channel alone: with both cores busy, the
//! stress test `server/tests/stall.rs` (the shard's tick stretched to
//! 10 s so that it heals nothing) finds a batch pushed at 18.7 ms and
//! taken only when the receiving executor's own timer next fired. A
//! kernel trace (`io_uring` and `sched` events) of such a case shows the
//! receiving thread asleep in `io_uring_enter` on its main ring, with no
//! wake-up at all until that timer; the same loss happened with glommio's
//! foreign-waker path (an eventfd in the latency ring) and with a
//! Unix-socket doorbell read through glommio. The loss is in glommio
//! 0.9's reactor, below any queue. Its timers almost always arrive: with
//! the backstop below the stall hunt found 2 late answers in 54,000
//! (against about 1 in 100 without). Not always:
//! two bare executors ping-ponging beside two spinning threads (more
//! threads than cores) hung in about one run in ten, one of them asleep
//! through its own timers too; that is left open (see ARCHITECTURE.md).
//!
//! So this queue does two things:
//! - the queue and both wakers sit under one mutex, as in a condition
//!   variable: a side that finds nothing to do stores its waker in the same
//!   critical section in which it looked, so no wake-up is lost at this
//!   level, and wakers never pile up (each wait replaces the last);
//! - every wait also arms a timer, the *backstop*: [`BACKSTOP_MIN`] after
//!   the queue was last active, doubling while it stays idle up to
//!   [`BACKSTOP_MAX`]. When the timer fires the waiting side looks again.
//!   A lost wake-up then costs at most the backstop (1 ms while traffic
//!   flows) instead of the shard's tick (100 ms) or, for a task no tick
//!   touches, forever.
//!
//! Two threads share a queue and each operation moves a whole batch, so
//! the lock is cheap.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    task::{Poll, Waker},
    time::Duration,
};

/// The first backstop after activity, and the longest while idle.
pub const BACKSTOP_MIN: Duration = Duration::from_millis(1);
pub const BACKSTOP_MAX: Duration = Duration::from_millis(64);

/// Creates a queue holding at most `capacity` items (batches).
pub fn bounded<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "a queue needs room for one item");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::with_capacity(capacity),
            capacity,
            receiver_waker: None,
            sender_waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// The task waiting for an item, or for room; one each, replaced on
    /// every poll that waits.
    receiver_waker: Option<Waker>,
    sender_waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic on the other side while it held the lock leaves the
        // queue itself consistent (every change is one push or pop).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producing end; one task on one executor uses it.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// A handle that queues items without waking the receiver, as a lost
    /// wake-up would: for the backstop's test only.
    #[doc(hidden)]
    pub fn silent_pusher(&self) -> impl Fn(T) + Send + 'static
    where
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        move |item| shared.lock().items.push_back(item)
    }
}

/// The consuming end; one task on one executor uses it.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Runs `attempt` (a poll that stores its waker when it must wait) until
/// it is ready, looking again whenever the backstop timer fires.
async fn with_backstop<R>(mut attempt: impl FnMut(&mut std::task::Context<'_>) -> Poll<R>) -> R {
    let mut backstop = BACKSTOP_MIN;
    loop {
        let woken = std::future::poll_fn(|cx| attempt(cx));
        let timer = async {
            glommio::timer::sleep(backstop).await;
            None
        };
        if let Some(result) = futures_lite::future::or(async { Some(woken.await) }, timer).await {
            return result;
        }
        backstop = (backstop * 2).min(BACKSTOP_MAX);
    }
}

impl<T: Send> Sender<T> {
    /// Waits for room, then queues `item`. `Err(item)` when the receiver
    /// is gone.
    pub fn send(&self, item: T) -> impl Future<Output = Result<(), T>> + '_ {
        let mut item = Some(item);
        with_backstop(move |cx| {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Poll::Ready(Err(item.take().expect("polled after completion")));
            }
            if state.items.len() >= state.capacity {
                state.sender_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            state
                .items
                .push_back(item.take().expect("polled after completion"));
            debug_assert!(state.items.len() <= state.capacity);
            let waker = state.receiver_waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<T: Send> Receiver<T> {
    /// The next item; `None` once the sender is gone and nothing is left.
    pub fn recv(&self) -> impl Future<Output = Option<T>> + '_ {
        with_backstop(move |cx| {
            let mut state = self.shared.lock();
            let Some(item) = state.items.pop_front() else {
                if state.sender_gone {
                    return Poll::Ready(None);
                }
                state.receiver_waker = Some(cx.waker().clone());
                return Poll::Pending;
            };
            let waker = state.sender_waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            Poll::Ready(Some(item))
        })
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        // What is queued will never be taken: drop it now (it may hold
        // sockets), outside the lock.
        let items = std::mem::take(&mut state.items);
        let waker = state.sender_waker.take();
        drop(state);
        drop(items);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
