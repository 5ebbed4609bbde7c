//! The admin listener's connections: how many may be open, and how long
//! each may take. An admin port has few clients (a scraper, an operator's
//! `isle ctl`, a health check), so its connections are bounded by a small
//! count, and none is kept once it stops doing what HTTP clients do:
//!
//! - at most [`ADMIN_CONNECTIONS_MAX`] at once, and
//!   [`ADMIN_CONNECTIONS_PER_SOURCE_MAX`] from one source address (a
//!   place is taken before the token is read, so one host without the
//!   token must not hold them all and starve the health checks); past
//!   either a new connection is answered `503` and closed at once (best
//!   effort, never waited on), not queued: the open-file limit is shared
//!   with the phones and the shards' journals (README, "Open files");
//! - a request's head must arrive within [`ADMIN_HEAD_WAIT_MS`]. hyper's
//!   `header_read_timeout` runs from the moment the connection waits for
//!   a head: after accept, and again after each answer on a keep-alive
//!   connection, so the same deadline closes a half-sent request and an
//!   idle keep-alive connection;
//! - a connection lives [`ADMIN_CONNECTION_LIFETIME_MS`] at most: then
//!   hyper's graceful shutdown ends it after the request in flight (a
//!   keep-alive client reconnects), and [`ADMIN_CLOSE_GRACE_MS`] later it
//!   is dropped whatever it does. This is what bounds a request whose body
//!   never comes or whose answer is never read, which no head deadline
//!   sees.
//!
//! HTTP/1 only, served by hyper's connection builder (what `axum::serve`
//! uses inside, without a way to set these bounds).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Admin connections open at once, at most. Counted in the process's
/// open-file budget (`config::FILES_RESERVED_PROCESS`).
pub const ADMIN_CONNECTIONS_MAX: usize = 16;
/// Admin connections open at once from one source address, at most.
pub const ADMIN_CONNECTIONS_PER_SOURCE_MAX: usize = 4;
/// How long a connection may take to send a request's head, from accept
/// or from the previous answer (an idle keep-alive connection).
pub const ADMIN_HEAD_WAIT_MS: u64 = 5_000;
/// How long a connection lives before it is asked to close after the
/// request in flight. Every request the admin listener serves answers
/// within seconds (a shard's answer is waited on for 5 s at most).
pub const ADMIN_CONNECTION_LIFETIME_MS: u64 = 10_000;
/// How long a connection asked to close may take to finish its request
/// before it is dropped.
pub const ADMIN_CLOSE_GRACE_MS: u64 = 5_000;
/// The first wait after a failed accept, doubled up to the last: out of
/// file descriptors, the listener waits for some to be released instead
/// of spinning on the same error.
const ACCEPT_RETRY_MIN_MS: u64 = 10;
const ACCEPT_RETRY_MAX_MS: u64 = 1_000;

/// What a connection over [`ADMIN_CONNECTIONS_MAX`] is told before it is
/// closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n\r\n\
    too many admin connections open\n";

/// The admin listener: its socket, and the places for connections.
pub struct AdminListener {
    listener: TcpListener,
    places: Arc<Semaphore>,
    /// Connections open by source address.
    by_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    http: hyper::server::conn::http1::Builder,
}

impl AdminListener {
    /// Takes over a bound, listening, non-blocking socket. Must be called
    /// within the control thread's runtime. Err: tokio cannot register it.
    pub fn new(listener: std::net::TcpListener) -> std::io::Result<AdminListener> {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(ADMIN_HEAD_WAIT_MS));
        Ok(AdminListener {
            listener: TcpListener::from_std(listener)?,
            places: Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX)),
            by_source: Arc::default(),
            http,
        })
    }

    /// Serves `app` on every connection it accepts, forever.
    pub async fn serve(self, app: Router) {
        let mut retry_ms = 0;
        loop {
            let (stream, source) = match self.listener.accept().await {
                Ok((stream, peer)) => (stream, peer.ip()),
                Err(error) => {
                    retry_ms = match retry_ms {
                        0 => {
                            log::warn!("admin listener: accept failed ({error}); retrying");
                            ACCEPT_RETRY_MIN_MS
                        }
                        ms => (ms * 2).min(ACCEPT_RETRY_MAX_MS),
                    };
                    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
                    continue;
                }
            };
            retry_ms = 0;
            let source_place = SourcePlace::take(&self.by_source, source);
            let place = self.places.clone().try_acquire_owned();
            let (Some(source_place), Ok(place)) = (source_place, place) else {
                // Whatever fits in the socket's buffer now; the close
                // follows at once either way.
                let _ = stream.try_write(TOO_MANY);
                continue;
            };
            let connection = self.serve_connection(stream, app.clone());
            tokio::spawn(async move {
                connection.await;
                drop((place, source_place));
            });
        }
    }

    /// One connection, within its lifetime and then its grace.
    fn serve_connection(
        &self,
        stream: TcpStream,
        app: Router,
    ) -> impl std::future::Future<Output = ()> {
        let connection = self
            .http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
        async move {
            tokio::pin!(connection);
            let lifetime = Duration::from_millis(ADMIN_CONNECTION_LIFETIME_MS);
            match tokio::time::timeout(lifetime, connection.as_mut()).await {
                Ok(result) => return log_ended(result),
                Err(_) => connection.as_mut().graceful_shutdown(),
            }
            let grace = Duration::from_millis(ADMIN_CLOSE_GRACE_MS);
            if let Ok(result) = tokio::time::timeout(grace, connection).await {
                log_ended(result);
            }
        }
    }
}

/// A connection that ended in an error (a head too slow, a malformed
/// request, a reset) is worth a debug line: the client sees the close.
fn log_ended(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        log::debug!("admin connection closed: {error}");
    }
}

/// One of a source address's places, given back when dropped.
struct SourcePlace {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl SourcePlace {
    /// A place for `source`, unless it holds
    /// [`ADMIN_CONNECTIONS_PER_SOURCE_MAX`] already.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, source: IpAddr) -> Option<SourcePlace> {
        let mut held = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(source).or_default();
        if *count >= ADMIN_CONNECTIONS_PER_SOURCE_MAX {
            return None;
        }
        *count += 1;
        Some(SourcePlace {
            counts: counts.clone(),
            source,
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}
