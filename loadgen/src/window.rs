//! The skeleton every scenario stands on. `Threads` starts the executors
//! that run the phones (one way, with the same executor settings for
//! all) and hands back what each ended with; `wait_until` and `wait_for`
//! hold the main thread until a step (logins, groups, a phase) is done
//! everywhere.
//!
//! `Window` is the measured window of a scenario paced by its main thread:
//! the load starts, the warm-up ends, the load stops. Phones on every
//! thread read the marks to know whether to act and whether what they see
//! counts; the main thread sets them and reads the server's CPU time at
//! both edges of the window, so that a figure per server CPU second covers
//! exactly the work that was counted.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder};
use hdrhistogram::Histogram;

use crate::dial::ConnectArgs;
use crate::report::{Tick, Timeline};

/// How long the main thread waits for a set-up step (logins, groups,
/// subscriptions) before it gives the run up.
pub const SETUP_WAIT_MAX: Duration = Duration::from_secs(300);

/// How often the main thread looks whether a step is done: what it times
/// from the end of a wait (logins per second, a storm's drain) is off by
/// at most this.
const WAIT_POLL: Duration = Duration::from_millis(1);

/// io_uring buffer memory of each loadgen executor.
const EXECUTOR_IO_MEMORY_BYTES: usize = 256 * 1024;

/// Submission entries of each executor's ring: a deep ring gives the
/// kernel its largest poll table (see the server's `io_ring_depth`).
const EXECUTOR_RING_DEPTH: usize = 4096;

pub struct Window {
    epoch: Instant,
    /// Nanoseconds since `epoch`, 0 until set.
    start_ns: AtomicU64,
    warm_ns: AtomicU64,
    stop_ns: AtomicU64,
}

/// What the main thread measured over the window.
pub struct Measured {
    pub seconds: f64,
    pub server_cpu_s: Option<f64>,
    /// Read when the load stops.
    pub server_rss_bytes: Option<u64>,
    /// The two counts' rates, one tick a second from the start.
    pub timeline: Vec<Tick>,
}

impl Measured {
    /// `count` (counted inside the window) per second of server CPU time.
    pub fn per_server_cpu_s(&self, count: f64) -> Option<f64> {
        self.server_cpu_s.map(|cpu| count / cpu)
    }

    pub fn server_cpu_share(&self) -> Option<f64> {
        self.server_cpu_s.map(|cpu| cpu / self.seconds)
    }
}

impl Default for Window {
    fn default() -> Window {
        Window {
            epoch: Instant::now(),
            start_ns: AtomicU64::new(0),
            warm_ns: AtomicU64::new(0),
            stop_ns: AtomicU64::new(0),
        }
    }
}

impl Window {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// When the load started; 0 before.
    pub fn start_ns(&self) -> u64 {
        self.start_ns.load(Relaxed)
    }

    pub fn started(&self) -> bool {
        self.start_ns() != 0
    }

    pub fn stopped(&self) -> bool {
        self.stop_ns.load(Relaxed) != 0
    }

    /// Whether something at `at_ns` falls inside the measured window.
    pub fn measuring(&self, at_ns: u64) -> bool {
        let warm = self.warm_ns.load(Relaxed);
        let stop = self.stop_ns.load(Relaxed);
        warm != 0 && at_ns >= warm && (stop == 0 || at_ns < stop)
    }

    /// The main thread's part: starts the load, waits out `warmup`
    /// seconds, measures until `duration` seconds from the start, and
    /// stops the load. Each second it prints `progress` and ends a tick of
    /// the timeline, the rates of the two running `counts` (what a
    /// report's throughput chart shows, warm-up included).
    pub fn run(
        &self,
        (warmup, duration): (f64, f64),
        server_pid: Option<u32>,
        counts: impl Fn() -> [u64; 2],
        progress: impl Fn() -> String,
    ) -> anyhow::Result<Measured> {
        let server_cpu = || server_pid.map(crate::process::cpu_seconds).transpose();
        self.start_ns.store(self.now_ns(), Relaxed);
        let mut timeline = Timeline::start(counts());
        let warm_at = Duration::from_secs_f64(warmup);
        tick_until(warm_at, &mut timeline, &counts, &progress);
        let cpu_at_warm = server_cpu()?;
        let warm = Instant::now();
        self.warm_ns.store(self.now_ns(), Relaxed);
        let measured = Duration::from_secs_f64((duration - warmup).max(0.1));
        let stop_at = timeline.elapsed() + measured;
        tick_until(stop_at, &mut timeline, &counts, &progress);
        let cpu_at_stop = server_cpu()?;
        let seconds = warm.elapsed().as_secs_f64();
        self.stop_ns.store(self.now_ns(), Relaxed);
        if timeline.since_last_tick() >= PARTIAL_TICK_MIN {
            timeline.tick(counts());
        }
        Ok(Measured {
            seconds,
            server_cpu_s: cpu_at_warm.zip(cpu_at_stop).map(|(a, b)| b - a),
            server_rss_bytes: server_pid.map(crate::process::rss_bytes).transpose()?,
            timeline: timeline.into_ticks(),
        })
    }
}

/// The shortest last tick of a timeline worth keeping: a rate over less
/// is mostly noise.
const PARTIAL_TICK_MIN: Duration = Duration::from_millis(100);

/// Sleeps until `until` from the timeline's start, ending a tick (and
/// printing `progress`) at each whole second on the way.
fn tick_until(
    until: Duration,
    timeline: &mut Timeline,
    counts: &impl Fn() -> [u64; 2],
    progress: &impl Fn() -> String,
) {
    loop {
        let elapsed = timeline.elapsed();
        if elapsed >= until {
            return;
        }
        let due = timeline.next_due();
        std::thread::sleep(due.min(until) - elapsed);
        if timeline.elapsed() >= due {
            timeline.tick(counts());
            let t = timeline.elapsed().as_secs_f64();
            eprintln!("t={t:>5.1}s {}", progress());
        }
    }
}

/// The main thread waits until `done` holds; fails when a thread has
/// (`failed`) or after `limit`.
pub fn wait_until(
    what: &str,
    limit: Duration,
    failed: &AtomicBool,
    done: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        if failed.load(Relaxed) {
            bail!("a thread failed while waiting for {what}");
        }
        if started.elapsed() > limit {
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(WAIT_POLL);
    }
    Ok(())
}

/// The main thread waits until `count` reaches `goal`; fails when a
/// thread has (`failed`) or after `SETUP_WAIT_MAX`.
pub fn wait_for(
    what: &str,
    count: &AtomicUsize,
    goal: usize,
    failed: &AtomicBool,
) -> anyhow::Result<()> {
    wait_until(what, SETUP_WAIT_MAX, failed, || count.load(Relaxed) >= goal)
        .map_err(|error| anyhow::anyhow!("{error} ({} of {goal})", count.load(Relaxed)))
}

/// Latencies in nanoseconds, up to a minute, to three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Executors that each run one share of a scenario's phones, placed as
/// `ConnectArgs` says, and what each ended with.
pub struct Threads<T> {
    handles: Vec<ExecutorJoinHandle<()>>,
    results: Arc<Mutex<Vec<anyhow::Result<T>>>>,
}

impl<T: Send + 'static> Threads<T> {
    /// Starts `count` executors, named `name-i`; executor `i` runs
    /// `run(i)`. One that fails sets `failed` at once, so the main thread
    /// stops waiting for it.
    pub fn spawn<F, Fut>(
        connect: &ConnectArgs,
        name: &str,
        count: usize,
        failed: Arc<AtomicBool>,
        run: F,
    ) -> anyhow::Result<Threads<T>>
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + 'static,
    {
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for thread in 0..count {
            let (run, failed, results) = (run.clone(), failed.clone(), results.clone());
            let handle = LocalExecutorBuilder::new(connect.placement(thread))
                .name(&format!("{name}-{thread}"))
                .io_memory(EXECUTOR_IO_MEMORY_BYTES)
                .ring_depth(EXECUTOR_RING_DEPTH)
                .spawn(move || async move {
                    let result = run(thread).await;
                    if result.is_err() {
                        failed.store(true, Relaxed);
                    }
                    results
                        .lock()
                        .expect("no thread panics holding it")
                        .push(result);
                })
                .map_err(|error| anyhow::anyhow!("starting thread {thread}: {error}"))?;
            handles.push(handle);
        }
        Ok(Threads { handles, results })
    }

    /// Waits for every executor; the first failure, or what each returned.
    pub fn join(self) -> anyhow::Result<Vec<T>> {
        for handle in self.handles {
            handle
                .join()
                .map_err(|error| anyhow::anyhow!("a thread failed: {error}"))?;
        }
        let results = std::mem::take(&mut *self.results.lock().expect("threads are done"));
        results.into_iter().collect()
    }
}
