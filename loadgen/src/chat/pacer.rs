//! What sets the chat workload's pace besides the server: in open loop
//! the pacer, which queues sends at fixed intended times whatever the
//! server is doing, and the churn, which makes phones hang up.

use std::{rc::Rc, sync::atomic::Ordering::Relaxed, time::Duration};

use super::phone::PhoneState;
use super::thread::Thread;

/// Makes random phones hang up, at `churn_per_s` over all threads.
pub(super) async fn churn(thread: Rc<Thread>, phones: Vec<Rc<PhoneState>>, threads: usize) {
    let interval = Duration::from_secs_f64(threads as f64 / thread.args.churn_per_s);
    while !thread.shared.stop_sending.load(Relaxed) {
        glommio::timer::sleep(interval).await;
        let phone = &phones[thread.random(phones.len() as u64) as usize];
        let now = thread.now_ns();
        if phone.offline_until_ns.get() <= now {
            phone
                .offline_until_ns
                .set(now + thread.args.offline_ms * 1_000_000);
            phone.hang_up.set(true);
            phone.wake();
        }
    }
}

/// The pacer's shortest sleep. Every wake-up costs a pass of the executor's
/// loop (with its io_uring calls), so at high rates the pacer wakes less
/// often and issues the sends that fell due meanwhile together; the delay
/// shows in `send_lag`.
pub(super) const PACER_SLEEP_NS_MIN: u64 = 50_000;

/// Issues sends at fixed intended times, whatever the server is doing.
pub(super) async fn pace(
    thread: &Thread,
    phones: &[Rc<PhoneState>],
    start_ns: u64,
    threads: usize,
) {
    let rate = thread.args.rate as f64 / threads as f64;
    let interval_ns = 1e9 / rate;
    let mut issued: u64 = 0;
    while !thread.shared.stop_sending.load(Relaxed) {
        let now = thread.now_ns();
        // Sends 0..=k are due once now >= start + k * interval.
        let due = ((now - start_ns) as f64 / interval_ns) as u64 + 1;
        while issued < due {
            let intended = start_ns + (issued as f64 * interval_ns) as u64;
            let phone = &phones[thread.random(phones.len() as u64) as usize];
            phone.queue.borrow_mut().push_back(intended);
            phone.wake();
            issued += 1;
        }
        // Sleep until the next send is due (a fixed sleep would add up to
        // its own length to every latency figure), but not less than the
        // minimum.
        let next = start_ns + (issued as f64 * interval_ns) as u64;
        let wait = next.saturating_sub(thread.now_ns());
        glommio::timer::sleep(Duration::from_nanos(
            wait.clamp(PACER_SLEEP_NS_MIN, 1_000_000),
        ))
        .await;
    }
}
