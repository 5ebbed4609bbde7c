//! The idle workload: as many phones as the open-file limit allows log in
//! and then only keep their connections alive with pings, the way most of a
//! messaging server's phones spend most of their time.
//!
//! Phones come in over `--steps` equal steps. After each step, once its
//! logins are done and the server has had a moment to settle, the server's
//! RSS is read from `/proc/PID/status` (`--server-pid`), so memory per
//! connection is the slope of RSS against phones (least squares over every
//! step, the empty server included), not one total divided by a count.
//! Login rate is phones over the time spent connecting, pauses excluded.

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use wire::{encode_client, ClientFrame, Phone, ServerFrame};

use crate::connection::Connection;
use crate::dial::{take_frames, Dialed, Dialer};
use crate::report::Heading;
use crate::route::Account;
use crate::window::{wait_until, Threads, SETUP_WAIT_MAX};

#[derive(Debug, Clone, Parser, serde::Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    pub connect: crate::dial::ConnectArgs,
    /// Phones to hold; 0: as many as this process's open-file limit allows,
    /// less `FDS_SPARE`.
    #[arg(long, default_value_t = 0)]
    pub phones: usize,
    /// Steps the phones come in by; RSS is read after each.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The server's process id, to read its RSS; without it no memory
    /// figures are reported.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds between one phone's keepalive pings.
    #[arg(long, default_value_t = 30.0)]
    pub keepalive_s: f64,
    /// Seconds everyone stays connected after the last step.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Logins started per second over all threads, in open loop: each
    /// phone starts at its intended time whether or not those before it
    /// are done, and its login time counts from then. 0: as fast as
    /// `--connect-concurrency` logins in flight allow (closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub login_rate: f64,
    /// Seconds after each step before RSS is read.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Write the report (JSON, and the login time percentile chart) into
    /// this directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

/// Descriptors left for everything but phones: the executors' rings,
/// stdio, the files loadgen reads.
pub const FDS_SPARE: usize = 1_000;

/// The server's RSS with this many phones logged in.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub phones: usize,
    pub server_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// `scenario` ("idle"), `phones`, `tls`.
    #[serde(flatten)]
    pub heading: Heading,
    pub logged_in: usize,
    pub connect_failures: u64,
    /// What phones met on their way onto a server (redirects,
    /// try-laters, loops cut, waits that ran out).
    #[serde(flatten)]
    pub dialed: Dialed,
    /// Connections that ended while they were meant to be held.
    pub disconnects: u64,
    pub pings: u64,
    pub pongs: u64,
    pub login_per_s: f64,
    pub offered_login_rate: f64,
    /// From a phone's intended start (open loop) or from when it was let
    /// go (closed loop) until it was logged in, waiting for a
    /// connection slot included.
    pub login_ms_p50: f64,
    pub login_ms_p99: f64,
    pub login_ms_max: f64,
    pub samples: Vec<Sample>,
    /// Slope of server RSS against phones (0 without `--server-pid`).
    pub server_bytes_per_phone: f64,
    /// For `--report`: not on the JSON line.
    #[serde(skip)]
    pub curves: crate::report::Curves,
}

impl Report {
    /// A run fails when a phone could not log in or was cut off.
    pub fn failed(&self) -> bool {
        self.connect_failures > 0 || self.disconnects > 0 || self.logged_in < self.heading.phones
    }

    pub fn print_summary(&self) {
        println!(
            "idle: {} of {} phones logged in ({}), {:.0} logins/s (login ms p50 {:.1} p99 {:.1} max {:.1}); \
             {} disconnects, {} of {} pings answered",
            self.logged_in,
            self.heading.phones,
            if self.heading.tls { "tls" } else { "plaintext" },
            self.login_per_s,
            self.login_ms_p50,
            self.login_ms_p99,
            self.login_ms_max,
            self.disconnects,
            self.pongs,
            self.pings,
        );
        println!("dialing: {}", self.dialed);
        if let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) {
            println!(
                "server RSS {:.1} MiB with {} phones, {:.1} MiB with {}: {:.0} bytes per phone (slope over {} samples)",
                first.server_rss_bytes as f64 / 1048576.0,
                first.phones,
                last.server_rss_bytes as f64 / 1048576.0,
                last.phones,
                self.server_bytes_per_phone,
                self.samples.len(),
            );
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Phones each thread may have connected so far.
    allowed_per_thread: AtomicUsize,
    logged_in: AtomicUsize,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    finished: AtomicBool,
}

pub fn run(args: &Args) -> anyhow::Result<Report> {
    let fd_limit = crate::process::raise_fd_limit()?;
    let phones = match args.phones {
        0 => fd_limit.saturating_sub(FDS_SPARE),
        n => n,
    };
    if phones == 0 {
        bail!("the open-file limit ({fd_limit}) leaves no room for phones");
    }
    let first = args.connect.first(phones)?;
    args.connect.require_isle("idle")?;
    let dialer = args.connect.dialer()?;
    let dial_counts = dialer.counts.clone();
    let mut samples: Vec<Sample> = sample(args.server_pid, 0)?.into_iter().collect();

    let shared = Arc::new(Shared::default());
    let threads = args.connect.threads();
    let failed = Arc::new(AtomicBool::new(false));
    let run = {
        let (args, shared) = (args.clone(), shared.clone());
        move |thread: usize| {
            let (begin, end) = (phones * thread / threads, phones * (thread + 1) / threads);
            let numbers = (begin..end)
                .map(|index| Phone::from_u64(first + index as u64).expect("range checked"))
                .collect();
            let (args, shared, dialer) = (args.clone(), shared.clone(), dialer.clone());
            run_thread(args, numbers, dialer, shared)
        }
    };
    let handles = Threads::spawn(&args.connect, "loadgen-idle", threads, failed.clone(), run)?;

    let ramped = ramp_up(args, phones, threads, &shared, &failed, &mut samples);
    if ramped.is_err() {
        shared.finished.store(true, Relaxed);
    }
    let connecting = ramped?;
    std::thread::sleep(Duration::from_secs_f64(args.hold));
    shared.finished.store(true, Relaxed);
    let mut login_ns = new_histogram();
    for histogram in handles.join()? {
        login_ns.add(&histogram)?;
    }
    let logged_in = shared.logged_in.load(Relaxed);
    let millis = |q: f64| login_ns.value_at_quantile(q) as f64 / 1e6;
    Ok(Report {
        heading: Heading::new("idle", phones, &args.connect),
        logged_in,
        connect_failures: shared.connect_failures.load(Relaxed),
        dialed: dial_counts.read(),
        disconnects: shared.disconnects.load(Relaxed),
        pings: shared.pings.load(Relaxed),
        pongs: shared.pongs.load(Relaxed),
        login_per_s: logged_in as f64 / connecting.as_secs_f64().max(1e-9),
        offered_login_rate: args.login_rate,
        login_ms_p50: millis(0.5),
        login_ms_p99: millis(0.99),
        login_ms_max: login_ns.max() as f64 / 1e6,
        server_bytes_per_phone: slope(&samples),
        curves: crate::report::Curves::new("login time", &login_ns)
            .with_memory(samples.clone(), slope(&samples)),
        samples,
    })
}

/// The main thread's part: lets the phones in over `--steps` steps, and
/// after each reads the server's RSS into `samples`. Returns the time the
/// steps took, the pauses after them left out.
fn ramp_up(
    args: &Args,
    phones: usize,
    threads: usize,
    shared: &Shared,
    failed: &AtomicBool,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<Duration> {
    let per_thread_max = phones.div_ceil(threads);
    let steps = args.steps.clamp(1, phones);
    let mut connecting = Duration::ZERO;
    for step in 1..=steps {
        let target = phones * step / steps;
        let started = Instant::now();
        shared
            .allowed_per_thread
            .store(per_thread_max * step / steps, Relaxed);
        let done =
            || shared.logged_in.load(Relaxed) + shared.connect_failures.load(Relaxed) as usize;
        let what = format!("step {step}: logins");
        wait_until(&what, SETUP_WAIT_MAX, failed, || done() >= target)?;
        connecting += started.elapsed();
        eprintln!(
            "step {step}/{steps}: {} phones logged in, {} failed",
            shared.logged_in.load(Relaxed),
            shared.connect_failures.load(Relaxed)
        );
        std::thread::sleep(Duration::from_secs_f64(args.settle));
        samples.extend(sample(args.server_pid, shared.logged_in.load(Relaxed))?);
    }
    Ok(connecting)
}

/// The server's RSS with `phones` logged in (none without `--server-pid`).
fn sample(server_pid: Option<u32>, phones: usize) -> anyhow::Result<Option<Sample>> {
    let Some(pid) = server_pid else {
        return Ok(None);
    };
    Ok(Some(Sample {
        phones,
        server_rss_bytes: crate::process::rss_bytes(pid)?,
    }))
}

/// Logs this thread's phones in as the steps allow and holds them until
/// the run ends; their login times, in nanoseconds.
async fn run_thread(
    args: Args,
    numbers: Vec<Phone>,
    dialer: Dialer,
    shared: Arc<Shared>,
) -> anyhow::Result<Histogram<u64>> {
    let permits = Rc::new(glommio::sync::Semaphore::new(
        args.connect.connect_concurrency as u64,
    ));
    let dialer = Rc::new(dialer);
    let login_ns = Rc::new(RefCell::new(new_histogram()));
    let threads = args.connect.threads() as f64;
    // Open loop: this thread's share of the rate, from when a step lets
    // more phones in.
    let interval =
        (args.login_rate > 0.0).then(|| Duration::from_secs_f64(threads / args.login_rate));
    let mut tasks = Vec::new();
    let mut next = 0;
    // Each step paces from when it began and from the phone it began at.
    let (mut step_started, mut step_first, mut step_allowed) = (Instant::now(), 0usize, 0usize);
    while !shared.finished.load(Relaxed) {
        let allowed = shared.allowed_per_thread.load(Relaxed).min(numbers.len());
        if allowed != step_allowed {
            (step_started, step_first, step_allowed) = (Instant::now(), next, allowed);
        }
        let mut wait = Duration::from_millis(5);
        while next < allowed {
            let intended = match interval {
                Some(interval) => step_started + interval * (next - step_first) as u32,
                None => Instant::now(),
            };
            let now = Instant::now();
            if intended > now {
                wait = wait.min(intended - now);
                break;
            }
            let (number, index) = (numbers[next], next);
            let (dialer, permits, shared) = (dialer.clone(), permits.clone(), shared.clone());
            let login_ns = login_ns.clone();
            let keepalive = Duration::from_secs_f64(args.keepalive_s.max(0.001));
            tasks.push(
                glommio::spawn_local(async move {
                    let connection = {
                        let _permit = permits.acquire_permit(1).await.expect("never closed");
                        match dialer.log_in(number, &Account::default()).await {
                            Ok(connection) => connection,
                            Err(error) => {
                                if shared.connect_failures.fetch_add(1, Relaxed) < 5 {
                                    eprintln!("phone {number}: {error:#}");
                                }
                                return;
                            }
                        }
                    };
                    let took = intended.elapsed().as_nanos() as u64;
                    let _ = login_ns.borrow_mut().record(took.max(1));
                    shared.logged_in.fetch_add(1, Relaxed);
                    hold(connection, index as u64, keepalive, &shared).await;
                })
                .detach(),
            );
            next += 1;
        }
        glommio::timer::sleep(wait).await;
    }
    drop(tasks);
    let login_ns = login_ns.borrow().clone();
    Ok(login_ns)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds")
}

/// Keeps one connection alive with pings until the run ends. Between pings
/// the phone holds no buffer; pings are spread over the interval so that
/// phones do not all ping at once.
async fn hold(mut connection: Connection, index: u64, keepalive: Duration, shared: &Shared) {
    let spread = keepalive.as_nanos() as u64;
    let mut wait = Duration::from_nanos(index.wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread.max(1));
    let mut nonce = 0;
    loop {
        // Wake often enough to notice the end of the run.
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if shared.finished.load(Relaxed) {
                let _ = connection.io.close().await;
                return;
            }
            glommio::timer::sleep((until - Instant::now()).min(Duration::from_millis(500))).await;
        }
        wait = keepalive;
        nonce += 1;
        shared.pings.fetch_add(1, Relaxed);
        let mut frame = Vec::new();
        encode_client(&ClientFrame::Ping { nonce }, &mut frame);
        if connection.io.write_all(&frame).await.is_err() || connection.io.flush().await.is_err() {
            shared.disconnects.fetch_add(1, Relaxed);
            return;
        }
        if !pong(&mut connection, nonce).await {
            shared.disconnects.fetch_add(1, Relaxed);
            return;
        }
        shared.pongs.fetch_add(1, Relaxed);
        connection.inbox = Vec::new();
    }
}

/// Reads until the `Pong` for `nonce`; false if the connection ends or the
/// server says anything else but a `Pong`.
async fn pong(connection: &mut Connection, nonce: u64) -> bool {
    let mut buffer = [0u8; 512];
    loop {
        let (mut answered, mut other) = (false, false);
        let taken = take_frames(&mut connection.inbox, |frame| match frame {
            ServerFrame::Pong { nonce: n } if n == nonce => answered = true,
            ServerFrame::Pong { .. } => {}
            _ => other = true,
        });
        if taken.is_err() || other {
            return false;
        }
        if answered {
            return true;
        }
        match connection.io.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => connection.inbox.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Least-squares slope of RSS against phones.
fn slope(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_x = samples.iter().map(|s| s.phones as f64).sum::<f64>() / n;
    let mean_y = samples
        .iter()
        .map(|s| s.server_rss_bytes as f64)
        .sum::<f64>()
        / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        let dx = s.phones as f64 - mean_x;
        num += dx * (s.server_rss_bytes as f64 - mean_y);
        den += dx * dx;
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_the_least_squares_fit() {
        let samples: Vec<Sample> = [(0, 1_000), (10, 1_990), (20, 3_010), (30, 4_000)]
            .into_iter()
            .map(|(phones, rss)| Sample {
                phones,
                server_rss_bytes: rss,
            })
            .collect();
        assert!(
            (slope(&samples) - 100.2).abs() < 0.01,
            "{}",
            slope(&samples)
        );
        assert_eq!(slope(&samples[..1]), 0.0);
    }
}
