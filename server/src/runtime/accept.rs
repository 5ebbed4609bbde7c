//! The accept loops: one per listener, each handing new connections to the
//! shard and starting their tasks.

use std::{rc::Rc, time::Duration, time::Instant};

use glommio::net::TcpListener;
use rustls::ServerConnection;
use shard::Source;

use super::{connection::spawn_connection, Runtime};
use crate::transport::Transport;

/// The first wait after a failed accept, and the longest: out of file
/// descriptors, the shard waits for connections to close, doubling the
/// wait, instead of spinning on the same error.
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;
/// How often an accept loop waiting for a connection looks whether the
/// shard stopped taking them.
const STOP_CHECK_MS: u64 = 250;

/// Accepts connections on `listener` (TLS with the runtime's current TLS
/// configuration when `tls`, else plaintext) until the shard stops.
pub async fn accept(runtime: Rc<Runtime>, listener: TcpListener, tls: bool) {
    let mut failing = AcceptFailures::default();
    loop {
        // A drain or a stop ends the loop, and the listener with it, within
        // this long: a phone that connects then is refused, not left in
        // the backlog.
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            glommio::timer::sleep(Duration::from_millis(STOP_CHECK_MS)).await;
            None
        })
        .await;
        if runtime.stopping.get() {
            return;
        }
        let Some(accepted) = accepted else {
            continue;
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                let wait_ms = failing.failed(runtime.shard_id, &error);
                glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                continue;
            }
        };
        failing.recovered(runtime.shard_id);
        if runtime.stopping.get() {
            return;
        }
        let source = match stream.peer_addr() {
            Ok(addr) => Source::new(addr.ip()),
            // Already reset by the peer: nothing to serve.
            Err(_) => continue,
        };
        // Opening arms the connection's login deadline and makes no outputs.
        let now_ms = runtime.now_ms();
        let opened = runtime.with_shard_no_outputs(|shard| shard.open(source, now_ms));
        let Ok(id) = opened else {
            // Closed unread: too many connections that have not logged in
            // (counted in `connections_refused`).
            continue;
        };
        let _ = stream.set_nodelay(true);
        let config = tls.then(|| runtime.tls.borrow().clone()).flatten();
        let transport = match &config {
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(connection) => Transport::Tls(Box::new(connection)),
                Err(error) => {
                    log::warn!("TLS session setup failed: {error}");
                    let now_ms = runtime.now_ms();
                    runtime.with_shard(|shard| shard.closed(id, now_ms));
                    continue;
                }
            },
            None => Transport::Plain,
        };
        spawn_connection(&runtime, id, stream, transport, Vec::new());
    }
}

/// A listener's run of failed accepts: one warning when it starts, one
/// line when it ends, and a doubling wait in between, however long the
/// run (usually EMFILE: the process is out of file descriptors).
#[derive(Default)]
struct AcceptFailures {
    count: u64,
    wait_ms: u64,
    since: Option<Instant>,
}

impl AcceptFailures {
    /// Notes a failure; returns how long to wait before the next accept.
    fn failed(&mut self, shard: u16, error: &dyn std::fmt::Display) -> u64 {
        if self.count == 0 {
            log::warn!(
                shard; "accept failed ({error}); backing off up to \
                 {ACCEPT_BACKOFF_MAX_MS} ms until it works again"
            );
            self.since = Some(Instant::now());
            self.wait_ms = ACCEPT_BACKOFF_MIN_MS;
        } else {
            self.wait_ms = (self.wait_ms * 2).min(ACCEPT_BACKOFF_MAX_MS);
        }
        self.count += 1;
        self.wait_ms
    }

    fn recovered(&mut self, shard: u16) {
        if self.count > 0 {
            let ms = self.since.map_or(0, |t| t.elapsed().as_millis());
            log::warn!(
                shard; "accepting again after {} failed accepts over {ms} ms",
                self.count
            );
            *self = AcceptFailures::default();
        }
    }
}
