//! One phone's way onto a server: the login conversation on one
//! connection (`Hello`, then `Login`, or a signup first), and around it
//! the cluster's rules from docs/protocol.md ("Redirects and
//! try-later"). A `Redirect` is followed at once (`Hello` again on the
//! new server and the same frame again) and its owner cached in the
//! phone's [`Route`]; a `TryLater` is honoured by waiting what it asks,
//! then trying the same server again. Every wait for an answer is bounded
//! by `--answer-timeout-ms`, so a server that accepts and then says
//! nothing (stopped with SIGSTOP, say) costs a phone that long, not the
//! run.

use std::{
    cell::Cell,
    future::Future,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use anyhow::{bail, Context};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use wire::{
    decode_server, encode_client, split_frame, ClientFrame, DeviceKey, Phone, ServerFrame,
    FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

use super::{Dialer, Protocol};
use crate::connection::{BoxIo, Connection};
use crate::route::{Account, Route};

/// Redirects one login follows before it calls them a loop and gives up:
/// servers that agree on the map need one, and one more follows a map
/// that changed under the phone.
pub const REDIRECTS_PER_LOGIN_MAX: u32 = 3;

/// `TryLater`s in a row one login honours before it hands the failure to
/// its caller, whose backoff and patience decide what comes next (a
/// server's hint is a second or more, so a login cannot stay out of its
/// caller's hands for long).
pub const TRY_LATERS_PER_LOGIN_MAX: u32 = 3;

/// What phones met on their way onto a server over a run, on every
/// thread: each [`Dialer`] clone shares one.
#[derive(Debug, Default)]
pub struct DialCounts {
    redirects: AtomicU64,
    try_laters: AtomicU64,
    redirect_loops_cut: AtomicU64,
    answer_timeouts: AtomicU64,
}

impl DialCounts {
    /// The counts now.
    pub fn read(&self) -> Dialed {
        Dialed {
            redirects: self.redirects.load(Relaxed),
            try_laters: self.try_laters.load(Relaxed),
            redirect_loops_cut: self.redirect_loops_cut.load(Relaxed),
            answer_timeouts: self.answer_timeouts.load(Relaxed),
        }
    }
}

/// [`DialCounts`] as a report shows them (flattened: its fields are keys
/// of the report's JSON object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dialed {
    /// `Redirect`s followed.
    pub redirects: u64,
    /// `TryLater`s honoured.
    pub try_laters: u64,
    /// Logins given up after [`REDIRECTS_PER_LOGIN_MAX`] redirects.
    pub redirect_loops_cut: u64,
    /// Waits for an answer that ran out (`--answer-timeout-ms`).
    pub answer_timeouts: u64,
}

impl std::fmt::Display for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redirects={} try_laters={} redirect_loops_cut={} answer_timeouts={}",
            self.redirects, self.try_laters, self.redirect_loops_cut, self.answer_timeouts
        )
    }
}

/// A server's word that the phone should go elsewhere, or come back
/// later; the server closes the connection after either. It travels as
/// an error out of one connection's conversation to the loop that
/// follows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Turn {
    #[error("redirected to {addr} (map revision {revision})")]
    Redirect { addr: String, revision: u64 },
    #[error("told to try again in {after_ms} ms")]
    TryLater { after_ms: u32 },
}

/// No answer came within `--answer-timeout-ms`: handled like a dropped
/// connection, and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no answer ({waiting_for}) from {addr} within {timeout_ms} ms")]
pub struct NoAnswer {
    pub waiting_for: &'static str,
    pub addr: SocketAddr,
    pub timeout_ms: u64,
}

impl Dialer {
    /// Connects and logs in: with the account's key if it has one, else
    /// (or if that key is refused) by signing up first, which sets it.
    /// Starts where the account's route says, follows redirects and
    /// try-laters, and leaves in the route what it learned. An error when
    /// the server it ended at did not answer, refused, or kept it in a
    /// redirect loop: the caller backs off and calls again.
    pub async fn log_in(&self, number: Phone, account: &Account) -> anyhow::Result<Connection> {
        let mut route = account.route.get();
        let result = self.follow(number, &account.key, &mut route).await;
        account.route.set(route);
        result
    }

    /// [`log_in`](Self::log_in)'s loop over connections: one per redirect
    /// or try-later, each bounded by its own count.
    async fn follow(
        &self,
        number: Phone,
        key: &Cell<Option<DeviceKey>>,
        route: &mut Route,
    ) -> anyhow::Result<Connection> {
        let mut addr = route.start(&self.nodes, number);
        let (mut redirects, mut try_laters) = (0, 0);
        loop {
            let error = match self.attempt(addr, number, key).await {
                Ok(connection) => return Ok(connection),
                Err(error) => error,
            };
            match error.downcast::<Turn>() {
                Ok(Turn::Redirect { addr: to, revision }) => {
                    self.counts.redirects.fetch_add(1, Relaxed);
                    redirects += 1;
                    if redirects > REDIRECTS_PER_LOGIN_MAX {
                        self.counts.redirect_loops_cut.fetch_add(1, Relaxed);
                        route.loop_cut(&self.nodes, number);
                        bail!(
                            "cut a redirect loop: {REDIRECTS_PER_LOGIN_MAX} redirects \
                             followed, then {addr} sent the phone to {to} again"
                        );
                    }
                    let to: SocketAddr = to
                        .parse()
                        .with_context(|| format!("{addr} redirected to {to:?}"))?;
                    route.redirected(to, revision);
                    addr = to;
                }
                Ok(Turn::TryLater { after_ms }) => {
                    self.counts.try_laters.fetch_add(1, Relaxed);
                    // Never sooner: the wait is how the server spreads a
                    // crowd of phones over time.
                    glommio::timer::sleep(Duration::from_millis(after_ms.into())).await;
                    try_laters += 1;
                    if try_laters >= TRY_LATERS_PER_LOGIN_MAX {
                        bail!("{addr} said to try later {try_laters} times in a row");
                    }
                }
                Err(error) => {
                    if error.is::<NoAnswer>() {
                        self.counts.answer_timeouts.fetch_add(1, Relaxed);
                    }
                    route.failed(&self.nodes, number, addr);
                    return Err(error);
                }
            }
        }
    }

    /// One connection to `addr` and its login conversation. A `Redirect`
    /// or `TryLater` ends it with the error [`Turn`].
    async fn attempt(
        &self,
        addr: SocketAddr,
        number: Phone,
        key: &Cell<Option<DeviceKey>>,
    ) -> anyhow::Result<Connection> {
        let timeout = self.answer_timeout;
        let io = within("connecting", addr, timeout, self.open(addr, number)).await?;
        if self.protocol == Protocol::Mqtt {
            let connack = crate::mqtt::log_in(io, number, addr);
            return within("CONNACK", addr, timeout, connack).await;
        }
        let mut exchange = Exchange {
            addr,
            timeout,
            io,
            inbox: Vec::new(),
        };
        let hello = ClientFrame::Hello {
            version: PROTOCOL_VERSION,
        };
        exchange
            .expect(&hello, "Welcome", |f| {
                matches!(f, ServerFrame::Welcome { .. })
            })
            .await?;
        let login = |key| ClientFrame::Login { phone: number, key };
        if let Some(known) = key.get() {
            // A refused login leaves the connection open: sign up again below.
            let reply = exchange.ask(&login(known), "LoggedIn").await?;
            if matches!(reply, ServerFrame::LoggedIn { .. }) {
                return Ok(exchange.into_connection());
            }
        }
        let request = ClientFrame::RequestCode { phone: number };
        exchange
            .expect(&request, "CodeSent", |f| {
                matches!(f, ServerFrame::CodeSent { .. })
            })
            .await?;
        let verify = ClientFrame::Verify {
            phone: number,
            code: self.code,
        };
        let reply = exchange.ask(&verify, "Registered").await?;
        let ServerFrame::Registered { key: given, .. } = reply else {
            bail!("unexpected reply {reply:?} from {addr}, waiting for Registered");
        };
        key.set(Some(given));
        exchange
            .expect(&login(given), "LoggedIn", |f| {
                matches!(f, ServerFrame::LoggedIn { .. })
            })
            .await?;
        Ok(exchange.into_connection())
    }
}

/// One connection's requests and replies before it is logged in.
struct Exchange {
    addr: SocketAddr,
    timeout: Duration,
    io: BoxIo,
    /// Bytes read and not yet taken as a reply.
    inbox: Vec<u8>,
}

impl Exchange {
    /// Sends `frame` and waits, within the answer timeout, for the reply.
    /// `Redirect` and `TryLater` come back as the error [`Turn`].
    async fn ask(
        &mut self,
        frame: &ClientFrame<'_>,
        waiting_for: &'static str,
    ) -> anyhow::Result<ServerFrame<'static>> {
        let (io, inbox) = (&mut self.io, &mut self.inbox);
        let reply = within(waiting_for, self.addr, self.timeout, async move {
            let mut bytes = Vec::new();
            encode_client(frame, &mut bytes);
            io.write_all(&bytes).await?;
            io.flush().await?;
            read_reply(io, inbox).await
        })
        .await?;
        match reply {
            ServerFrame::Redirect { addr, revision } => {
                Err(Turn::Redirect { addr, revision }.into())
            }
            ServerFrame::TryLater { after_ms } => Err(Turn::TryLater { after_ms }.into()),
            reply => Ok(reply),
        }
    }

    /// [`ask`](Self::ask), where any reply `accept` refuses is an error.
    async fn expect(
        &mut self,
        frame: &ClientFrame<'_>,
        waiting_for: &'static str,
        accept: impl FnOnce(&ServerFrame<'_>) -> bool,
    ) -> anyhow::Result<()> {
        let reply = self.ask(frame, waiting_for).await?;
        if !accept(&reply) {
            bail!(
                "unexpected reply {reply:?} from {}, waiting for {waiting_for}",
                self.addr
            );
        }
        Ok(())
    }

    /// The logged-in connection, with what arrived after the last reply.
    fn into_connection(self) -> Connection {
        Connection {
            io: self.io,
            inbox: self.inbox,
            server: self.addr,
        }
    }
}

/// The next whole frame from `io`, `inbox` holding what was read before.
async fn read_reply(io: &mut BoxIo, inbox: &mut Vec<u8>) -> anyhow::Result<ServerFrame<'static>> {
    loop {
        if let Some(raw) = split_frame(inbox, FRAME_BYTES_MAX)? {
            let consumed = raw.consumed;
            let reply = decode_server(raw.payload)?;
            inbox.drain(..consumed);
            return Ok(reply);
        }
        let mut buffer = [0u8; 4096];
        let n = io.read(&mut buffer).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        inbox.extend_from_slice(&buffer[..n]);
    }
}

/// `work`, or the error [`NoAnswer`] once `timeout` has passed without it
/// finishing.
async fn within<T>(
    waiting_for: &'static str,
    addr: SocketAddr,
    timeout: Duration,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    futures_lite::future::or(work, async {
        glommio::timer::sleep(timeout).await;
        Err(NoAnswer {
            waiting_for,
            addr,
            timeout_ms: timeout.as_millis() as u64,
        }
        .into())
    })
    .await
}
