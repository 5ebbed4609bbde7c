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

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

    use super::*;

    /// These tests run one at a time: with more executors than cores,
    /// glommio 0.9 now and then leaves one asleep through its own timers
    /// (see the module doc), which would hang a test for reasons no queue
    /// controls.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Runs `body` on an executor of its own, in a latency-sensitive task
    /// queue as the server's peer tasks are.
    fn executor<F, Fut>(name: &str, body: F) -> glommio::ExecutorJoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        LocalExecutorBuilder::new(Placement::Unbound)
            .name(name)
            .spawn(move || async move {
                let queue = glommio::executor().create_task_queue(
                    Shares::default(),
                    Latency::Matters(Duration::from_micros(500)),
                    "peers",
                );
                glommio::spawn_local_into(body(), queue)
                    .expect("the queue exists")
                    .await;
            })
            .expect("an executor starts")
    }

    /// Waits for `done`, failing the test after `limit` rather than hang.
    fn finishes_within(done: &mpsc::Receiver<()>, limit: Duration, what: &str) {
        if done.recv_timeout(limit).is_err() {
            panic!("{what} did not finish within {limit:?}");
        }
    }

    /// Ping-pong between two executors that go idle between rounds (each
    /// wake-up finds the other asleep or about to be): every round trip
    /// completes, in order.
    ///
    /// Not run beside spinning threads: so oversubscribed, glommio 0.9 now
    /// and then leaves an executor asleep through its own timers too (two
    /// bare executors hung in about one run in ten), which no queue can
    /// help; `server/tests/stall.rs` measures the server on busy cores.
    #[test]
    fn ping_pong_between_idle_executors_completes() {
        const ROUNDS: u64 = 5_000;
        let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (to_b, from_a) = bounded::<u64>(4);
        let (to_a, from_b) = bounded::<u64>(4);
        let b = executor("b", move || async move {
            while let Some(n) = from_a.recv().await {
                if to_a.send(n + 1).await.is_err() {
                    return;
                }
            }
        });
        let (done, finished) = mpsc::channel();
        let a = executor("a", move || async move {
            for n in 0..ROUNDS {
                if n % 256 == 0 {
                    // Long enough for the other side to go to sleep.
                    glommio::timer::sleep(Duration::from_micros(300)).await;
                }
                to_b.send(n).await.expect("b is there");
                let answer = from_b.recv().await.expect("b answers");
                assert_eq!(answer, n + 1);
            }
            let _ = done.send(());
        });
        finishes_within(&finished, Duration::from_secs(120), "the ping-pong");
        a.join().unwrap();
        b.join().unwrap();
    }

    /// A full queue makes the sender wait until the receiver takes an
    /// item; nothing is lost or reordered.
    #[test]
    fn a_full_queue_holds_the_sender_back_and_keeps_order() {
        const ITEMS: u64 = 5_000;
        let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (sender, receiver) = bounded::<u64>(2);
        let (done, finished) = mpsc::channel();
        let consumer = executor("consumer", move || async move {
            let mut expected = 0;
            while let Some(n) = receiver.recv().await {
                assert_eq!(n, expected);
                expected += 1;
            }
            assert_eq!(expected, ITEMS, "everything arrived before the end");
            let _ = done.send(());
        });
        let producer = executor("producer", move || async move {
            for n in 0..ITEMS {
                sender.send(n).await.expect("the consumer is there");
            }
        });
        finishes_within(&finished, Duration::from_secs(120), "the transfer");
        producer.join().unwrap();
        consumer.join().unwrap();
    }

    /// The backstop alone moves items: a waker that is never called (as
    /// when glommio loses a wake-up) delays an item by the backstop, not
    /// forever.
    #[test]
    fn the_backstop_finds_an_item_whose_wake_up_was_lost() {
        let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (sender, receiver) = bounded::<u8>(1);
        let (done, finished) = mpsc::channel();
        let run = executor("alone", move || async move {
            let shared = sender.shared.clone();
            let pusher = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                // Queued without calling the waker.
                shared.lock().items.push_back(7);
            });
            assert_eq!(receiver.recv().await, Some(7));
            pusher.join().unwrap();
            let _ = done.send(());
        });
        finishes_within(&finished, Duration::from_secs(10), "the test");
        run.join().unwrap();
    }

    #[test]
    fn a_gone_receiver_fails_the_send_and_a_gone_sender_ends_the_receiver() {
        let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (done, finished) = mpsc::channel();
        let run = executor("alone", move || async move {
            let (sender, receiver) = bounded::<u8>(1);
            drop(receiver);
            assert_eq!(sender.send(7).await, Err(7));
            let (sender, receiver) = bounded::<u8>(1);
            sender.send(1).await.unwrap();
            drop(sender);
            assert_eq!(receiver.recv().await, Some(1));
            assert_eq!(receiver.recv().await, None);
            let _ = done.send(());
        });
        finishes_within(&finished, Duration::from_secs(10), "the test");
        run.join().unwrap();
    }
}
