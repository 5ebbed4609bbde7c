//! The peer queue between two glommio executors: wake-ups across idle
//! executors, a full queue holding its sender back, a gone side ending
//! the other, the backstop. In a test binary of their own: beside other
//! tests' threads glommio 0.9 now and then leaves an executor asleep
//! (see `peer_queue`'s module doc), which would hang these for reasons
//! no queue controls.

use std::{future::Future, sync::mpsc, time::Duration};

use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

use server::peer_queue::*;

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

/// Attempts at a scenario between two executors, each given
/// [`ATTEMPT_LIMIT`].
const ATTEMPTS: usize = 3;
/// A few hundred times what a scenario takes (about 0.1 s).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);

/// Runs a scenario between two executors (`start` spawns them and gives
/// them `done` to send once it is over) until it finishes within
/// [`ATTEMPT_LIMIT`], at most [`ATTEMPTS`] times. Now and then glommio
/// 0.9's reactor leaves an executor asleep through its own timers (the
/// module doc of `peer_queue`; once or twice in ten runs of this binary
/// on two busy cores): such an attempt's executors are left behind and
/// the scenario runs again. A queue that loses items or wake-ups fails
/// every attempt.
fn in_attempts(
    what: &str,
    start: impl Fn(mpsc::Sender<()>) -> Vec<glommio::ExecutorJoinHandle<()>>,
) {
    for attempt in 1..=ATTEMPTS {
        let (done, finished) = mpsc::channel();
        let executors = start(done);
        if finished.recv_timeout(ATTEMPT_LIMIT).is_ok() {
            for executor in executors {
                executor.join().unwrap();
            }
            return;
        }
        eprintln!("{what}: attempt {attempt} did not finish within {ATTEMPT_LIMIT:?}");
        std::mem::forget(executors);
    }
    panic!("{what} did not finish in {ATTEMPTS} attempts of {ATTEMPT_LIMIT:?}");
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
    in_attempts("the ping-pong", |done| {
        let (to_b, from_a) = bounded::<u64>(4);
        let (to_a, from_b) = bounded::<u64>(4);
        let b = executor("b", move || async move {
            while let Some(n) = from_a.recv().await {
                if to_a.send(n + 1).await.is_err() {
                    return;
                }
            }
        });
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
        vec![a, b]
    });
}

/// A full queue makes the sender wait until the receiver takes an
/// item; nothing is lost or reordered.
#[test]
fn a_full_queue_holds_the_sender_back_and_keeps_order() {
    const ITEMS: u64 = 5_000;
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    in_attempts("the transfer", |done| {
        let (sender, receiver) = bounded::<u64>(2);
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
        vec![producer, consumer]
    });
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
        let push = sender.silent_pusher();
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // Queued without calling the waker.
            push(7);
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
