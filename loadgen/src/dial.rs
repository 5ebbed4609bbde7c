//! Getting a phone onto an isle server from a glommio executor: TCP (and
//! TLS), `Hello`, then `Login` with the phone's key, or a signup through
//! the server's test-number range when it has none or it is refused.
//! [`login`] holds that conversation and the cluster's part of it: which
//! server of `--target` to try, `Redirect` and `TryLater`, and the bound
//! on every wait for an answer.

mod login;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::Args;
use glommio::net::TcpStream;
use glommio::Placement;
use rustls::pki_types::ServerName;
use wire::{decode_server, split_frame, Phone, ServerFrame, FRAME_BYTES_MAX};

use crate::connection::BoxIo;
use crate::route::Nodes;

pub use login::{
    DialCounts, Dialed, NoAnswer, Turn, REDIRECTS_PER_LOGIN_MAX, TRY_LATERS_PER_LOGIN_MAX,
};

/// Where phones connect and how they are spread: the options every
/// scenario shares. Serialized into `--report`'s parameters.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ConnectArgs {
    /// Server address (its plaintext port, or its TLS port with --tls),
    /// or several, comma-separated: nodes of one cluster. Each phone
    /// starts at one of them drawn at random (see --seed), follows
    /// `Redirect`s to its home node and remembers it, honours `TryLater`,
    /// and falls back to a node of the list when the one it knows does
    /// not answer. `mqtt://ADDR` runs the phones as MQTT 3.1.1 clients of
    /// a broker instead (chat only; see `loadgen::mqtt`).
    #[arg(long, default_value = "127.0.0.1:5223")]
    pub target: Target,
    /// Seeds each phone's draw of a --target node (its first, and those
    /// it falls back to): the same seed spreads the phones the same way.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Longest wait, in ms, for each answer while a phone connects and
    /// logs in: the TCP and TLS handshakes, `Welcome`, each sign-up and
    /// login reply. A wait that runs out is counted (`answer_timeouts`)
    /// and handled like a dropped connection: back off, try again, maybe
    /// at another node. A frozen server cannot hold a run forever.
    #[arg(long, default_value_t = 5_000)]
    pub answer_timeout_ms: u64,
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// Trust this certificate (PEM); without it, --tls trusts any certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// First phone number; phones are numbered consecutively from it.
    #[arg(long, default_value = "+15550000000")]
    pub first_phone: String,
    /// The server's test-number code.
    #[arg(long, default_value_t = 111_111)]
    pub code: u32,
    /// Signups and logins in flight per thread.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Executors (threads) to spread the phones over.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin the threads to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
}

impl ConnectArgs {
    pub fn dialer(&self) -> anyhow::Result<Dialer> {
        let tls = match self.tls {
            true => Some(crate::tls::client_config(self.ca.as_deref())?),
            false => None,
        };
        if self.answer_timeout_ms == 0 {
            bail!("--answer-timeout-ms must be above 0");
        }
        Ok(Dialer {
            nodes: Nodes::new(self.target.addrs.clone(), self.seed),
            protocol: self.target.protocol,
            tls,
            code: self.code,
            answer_timeout: Duration::from_millis(self.answer_timeout_ms),
            counts: Arc::new(DialCounts::default()),
        })
    }

    /// The first phone number, checked to leave room for `phones` more.
    pub fn first(&self, phones: usize) -> anyhow::Result<u64> {
        let first = Phone::parse(&self.first_phone)?.as_u64();
        Phone::from_u64(first + phones as u64).context("the phone range runs past E.164")?;
        Ok(first)
    }

    pub fn threads(&self) -> usize {
        self.threads.max(1)
    }

    /// Where executor `thread` runs.
    pub fn placement(&self, thread: usize) -> Placement {
        match self.cpus.as_ref().and_then(|cpus| cpus.get(thread)) {
            Some(&cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        }
    }
}

/// What the phones speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// isle's own wire protocol (isle, or the bare relay).
    Isle,
    /// MQTT 3.1.1, one client per phone.
    Mqtt,
}

/// The servers to drive: `ADDR[,ADDR...]` or `isle://ADDR[,ADDR...]`
/// for isle's protocol (several: nodes of one cluster), `mqtt://ADDR` for
/// a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    /// Never empty; one address for MQTT.
    pub addrs: Vec<SocketAddr>,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Target> {
        let (protocol, list) = match s.split_once("://") {
            None => (Protocol::Isle, s),
            Some(("isle", list)) => (Protocol::Isle, list),
            Some(("mqtt", list)) => (Protocol::Mqtt, list),
            Some((scheme, _)) => bail!("unknown scheme {scheme:?}: use isle:// or mqtt://"),
        };
        let addrs = list
            .split(',')
            .map(|addr| {
                addr.trim()
                    .parse()
                    .with_context(|| format!("{addr:?} is not an IP address and port"))
            })
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        if protocol == Protocol::Mqtt && addrs.len() > 1 {
            bail!("mqtt:// takes one broker address");
        }
        Ok(Target { protocol, addrs })
    }
}

/// As it is written on the command line: `mqtt://ADDR`, or `ADDR,ADDR`
/// for isle.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.protocol == Protocol::Mqtt {
            write!(f, "mqtt://")?;
        }
        for (i, addr) in self.addrs.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(f, "{comma}{addr}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl ConnectArgs {
    /// Refuses a target whose protocol `scenario` does not speak.
    pub fn require_isle(&self, scenario: &str) -> anyhow::Result<()> {
        if self.target.protocol != Protocol::Isle {
            bail!("the {scenario} scenario drives isle's protocol only; mqtt:// runs chat");
        }
        Ok(())
    }
}

/// Where and how phones connect, and what they met on the way there
/// (`counts`, shared by every clone: one per run).
#[derive(Clone)]
pub struct Dialer {
    pub nodes: Nodes,
    pub protocol: Protocol,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The server's test-number code.
    pub code: u32,
    /// `--answer-timeout-ms`: the bound on each wait while logging in.
    pub answer_timeout: Duration,
    pub counts: Arc<DialCounts>,
}

impl Dialer {
    /// Connects `number` to `addr` (TCP, then TLS if configured) and says
    /// nothing yet. The TLS handshake is not bounded here: callers wait
    /// for this within their answer timeout.
    pub async fn open(&self, addr: SocketAddr, number: Phone) -> anyhow::Result<BoxIo> {
        let stream = match addr {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                connect_from(loopback_source(number), addr)?
            }
            _ => TcpStream::connect(addr)
                .await
                .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?,
        };
        stream
            .set_nodelay(true)
            .map_err(|e| anyhow::anyhow!("nodelay: {e}"))?;
        Ok(match self.tls.clone() {
            Some(config) => {
                let name = ServerName::from(addr.ip());
                Box::new(
                    futures_rustls::TlsConnector::from(config)
                        .connect(name, stream)
                        .await?,
                )
            }
            None => Box::new(stream),
        })
    }
}

/// Phones per loopback source address: below the server's
/// `prelogin_per_source_max` (128), so that a login storm of every phone
/// at once is not refused as a flood from one host.
const PHONES_PER_SOURCE: u64 = 64;

/// A source address in 127.1.0.0/16 for `number`, shared by at most
/// `PHONES_PER_SOURCE` consecutive phones. Tens of thousands of connections
/// from one address to one server port make the kernel search longer and
/// longer for a free ephemeral port in every `connect` (in one run, two
/// thirds of loadgen's CPU went to `__inet_hash_connect`); phones on a
/// real network come from many addresses anyway.
fn loopback_source(number: Phone) -> SocketAddr {
    let k = (number.as_u64() / PHONES_PER_SOURCE) % 65_536;
    SocketAddr::from(([127, 1, (k >> 8) as u8, k as u8], 0))
}

/// Starts a connection from `source` (its port picked at connect time) and
/// hands the socket to glommio. The connection completes in the background:
/// the first write waits for it, and fails if it is refused.
fn connect_from(source: SocketAddr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    // Without this, bind would pick the port alone, by the same search.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` for the given length; the fd is open.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        bail!(
            "IP_BIND_ADDRESS_NO_PORT: {}",
            std::io::Error::last_os_error()
        );
    }
    socket.bind(&source.into())?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => bail!("connecting from {source}: {e}"),
    }
    // SAFETY: the descriptor is a TCP socket this function owns and gives up.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Decodes and removes the whole server frames at the front of `inbox`,
/// in order. A frame that is empty, too large or undecodable is an error:
/// the caller ends the connection instead of buffering what follows it,
/// which would grow `inbox` with every read.
pub fn take_frames(
    inbox: &mut Vec<u8>,
    mut each: impl FnMut(ServerFrame<'static>),
) -> anyhow::Result<()> {
    let mut consumed = 0;
    let result = loop {
        match split_frame(&inbox[consumed..], FRAME_BYTES_MAX) {
            Ok(Some(raw)) => {
                let length = raw.consumed;
                match decode_server(raw.payload) {
                    Ok(frame) => each(frame),
                    Err(error) => break Err(error.into()),
                }
                consumed += length;
            }
            Ok(None) => break Ok(()),
            Err(error) => break Err(error.into()),
        }
    };
    inbox.drain(..consumed);
    result
}

/// Delays between connection attempts double from the minimum to the
/// maximum; each is drawn from the upper half of its range so that phones
/// cut off together do not all come back in the same millisecond.
pub const RECONNECT_DELAY_MS_MIN: u64 = 20;
pub const RECONNECT_DELAY_MS_MAX: u64 = 1_000;

pub struct Backoff {
    next_ms: u64,
    /// xorshift state for the jitter.
    rng: u64,
}

impl Backoff {
    /// `seed` spreads phones apart: give each its own.
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            next_ms: RECONNECT_DELAY_MS_MIN,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub async fn wait(&mut self) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let delay_ms = self.next_ms / 2 + self.rng % (self.next_ms / 2 + 1);
        self.next_ms = (self.next_ms * 2).min(RECONNECT_DELAY_MS_MAX);
        glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
    }
}

impl Dialer {
    /// [`log_in`](Dialer::log_in) again and again, waiting `backoff`
    /// between attempts, until it works or `give_up` says to stop (then
    /// the last attempt's error). What a phone does after its connection
    /// ended: each attempt starts where the account's route says, follows
    /// redirects and honours try-laters.
    pub async fn log_in_with_backoff(
        &self,
        number: Phone,
        account: &crate::route::Account,
        backoff: &mut Backoff,
        give_up: impl Fn() -> bool,
    ) -> anyhow::Result<crate::connection::Connection> {
        loop {
            match self.log_in(number, account).await {
                Ok(connection) => return Ok(connection),
                Err(error) if give_up() => return Err(error),
                Err(_) => backoff.wait().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::encode_server;

    #[test]
    fn a_target_is_one_address_or_a_list_and_prints_as_written() {
        let check = |written: &str, protocol, addrs: &[&str]| {
            let target: Target = written.parse().unwrap();
            let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(target, Target { protocol, addrs }, "{written}");
            let again: Target = target.to_string().parse().unwrap();
            assert_eq!(again, target, "{written} prints as {target}");
        };
        check("127.0.0.1:5223", Protocol::Isle, &["127.0.0.1:5223"]);
        check(
            "10.77.0.2:5222,10.77.0.3:5222",
            Protocol::Isle,
            &["10.77.0.2:5222", "10.77.0.3:5222"],
        );
        check(
            "isle://10.0.0.1:1, 10.0.0.2:2",
            Protocol::Isle,
            &["10.0.0.1:1", "10.0.0.2:2"],
        );
        check("mqtt://127.0.0.1:1883", Protocol::Mqtt, &["127.0.0.1:1883"]);
        for wrong in [
            "",
            "10.0.0.1:1,",
            "mqtt://10.0.0.1:1,10.0.0.2:1",
            "tcp://10.0.0.1:1",
        ] {
            assert!(wrong.parse::<Target>().is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn take_frames_drains_whole_frames_and_stops_at_a_bad_one() {
        let mut inbox = Vec::new();
        encode_server(&ServerFrame::Pong { nonce: 1 }, &mut inbox);
        encode_server(&ServerFrame::Pong { nonce: 2 }, &mut inbox);
        inbox.extend_from_slice(&[9, 0]); // half a length prefix
        let mut seen = Vec::new();
        take_frames(&mut inbox, |frame| seen.push(frame)).unwrap();
        assert_eq!(
            seen,
            [
                ServerFrame::Pong { nonce: 1 },
                ServerFrame::Pong { nonce: 2 }
            ]
        );
        assert_eq!(inbox, [9, 0], "the partial frame waits for more bytes");

        let mut inbox = Vec::new();
        encode_server(&ServerFrame::Pong { nonce: 3 }, &mut inbox);
        inbox.extend_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        let mut seen = 0;
        assert!(take_frames(&mut inbox, |_| seen += 1).is_err());
        assert_eq!(seen, 1, "frames before the bad one are still handled");
    }
}
