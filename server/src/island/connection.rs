//! The replication connection of one tablet pair (docs/islands.md, "On the
//! wire"): the primary's shard dials the secondary's peer port, both sides
//! say hello (with a proof under the cluster's secret when it has one),
//! then each side's [`Tablet`] messages go out as they come and the
//! peer's go in. The connection carries no state of its own: when it
//! ends, the members ship again or ask again on their retry interval.

use std::{cell::RefCell, net::SocketAddr, rc::Rc, time::Duration};

use futures_lite::{
    io::{split, ReadHalf, WriteHalf},
    AsyncReadExt, AsyncWriteExt,
};
use glommio::net::TcpStream;
use shard::island::{
    codec::{self, CodecError, Decoded, Hello, ReplFrame, PROOF_BYTES, VERSION},
    IslandId, NodeId,
};

use super::tablet::Tablet;
use crate::remote::{proof::ClusterSecret, Killer};

/// How long a dial and a peer's hello may take.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;
/// The first pause before dialling again, and the longest.
pub const REDIAL_MS: (u64, u64) = (100, 2_000);
/// Bytes read from the socket at a time (a frame larger than this is read
/// in as many reads as it needs, its length checked first).
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of messages gathered into one write, at most (one shipped batch
/// may be larger; it then goes alone).
const WRITE_BYTES_TARGET: usize = 256 * 1024;

/// Why a replication connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] CodecError),
    #[error("closed by the peer")]
    Closed,
    #[error("no hello within {HANDSHAKE_TIMEOUT_MS} ms")]
    Timeout,
    #[error("refused hello: {0}")]
    Refused(String),
    #[error("a hello after the handshake")]
    HelloAgain,
}

/// Who this side is, for the hellos it sends.
#[derive(Debug, Clone, Copy)]
pub struct Speaker {
    pub node: NodeId,
    pub incarnation: i64,
}

/// This side's hello for tablet (`island`, `shard`), proven under
/// `secret` when the cluster has one.
pub fn hello(
    secret: Option<&ClusterSecret>,
    speaker: Speaker,
    island: IslandId,
    shard: u16,
) -> Hello {
    let mut hello = Hello {
        version: VERSION,
        island,
        shard,
        node: speaker.node,
        incarnation: speaker.incarnation,
        proof: [0; PROOF_BYTES],
    };
    if let Some(secret) = secret {
        hello.proof = secret.prove(&hello.signed_bytes());
    }
    hello
}

/// Whether `hello` is of this protocol's version and, when the cluster
/// has a secret, carries its proof.
pub fn check_hello(secret: Option<&ClusterSecret>, hello: &Hello) -> Result<(), String> {
    if hello.version != VERSION {
        return Err(format!(
            "replication version {} (this node speaks {VERSION})",
            hello.version
        ));
    }
    if let Some(secret) = secret {
        let expected = secret.prove(&hello.signed_bytes());
        if !crate::remote::proof::proofs_match(&expected, &hello.proof) {
            return Err("its proof does not match the cluster's secret".into());
        }
    }
    Ok(())
}

/// Reads whole replication frames; the buffer grows only as far as the
/// frame in progress needs, after its length was checked.
pub struct ReplReader {
    buffer: Vec<u8>,
    start: usize,
}

impl ReplReader {
    /// A reader that starts with `pending`, bytes read before (a hello
    /// read by the accept loop that passed the connection on).
    pub fn new(pending: Vec<u8>) -> ReplReader {
        ReplReader {
            buffer: pending,
            start: 0,
        }
    }

    /// The next frame, reading as much as it takes.
    pub async fn next(
        &mut self,
        read: &mut ReadHalf<TcpStream>,
    ) -> Result<ReplFrame, ConnectionError> {
        loop {
            let needed = match codec::decode(&self.buffer[self.start..])? {
                Decoded::Frame(frame, used) => {
                    self.start += used;
                    return Ok(frame);
                }
                Decoded::Incomplete(needed) => needed,
            };
            self.buffer.drain(..self.start);
            self.start = 0;
            let end = self.buffer.len();
            let want = needed.saturating_sub(end).max(READ_CHUNK_BYTES);
            self.buffer.resize(end + want, 0);
            let got = read.read(&mut self.buffer[end..]).await;
            self.buffer.truncate(end + *got.as_ref().unwrap_or(&0));
            if got? == 0 {
                return Err(ConnectionError::Closed);
            }
        }
    }
}

/// Runs an established connection for `tablet` with node `peer`: the
/// peer's messages go to the tablet, the tablet's to the peer, until
/// either side fails.
pub async fn run(
    tablet: &Rc<RefCell<Tablet>>,
    peer: NodeId,
    mut read: ReadHalf<TcpStream>,
    mut write: WriteHalf<TcpStream>,
    mut reader: ReplReader,
) -> ConnectionError {
    let reading = async {
        loop {
            match reader.next(&mut read).await {
                Ok(ReplFrame::Msg(msg)) => tablet.borrow_mut().receive(peer, msg),
                Ok(ReplFrame::Hello(_)) => return ConnectionError::HelloAgain,
                Err(error) => return error,
            }
        }
    };
    let writing = async {
        let mut out = Vec::new();
        loop {
            out.clear();
            while out.len() < WRITE_BYTES_TARGET {
                let Some(msg) = tablet.borrow_mut().next_message() else {
                    break;
                };
                codec::encode_msg(&msg, &mut out);
            }
            if out.is_empty() {
                let signal = tablet.borrow().outbox_signal.clone();
                signal.wait().await;
                continue;
            }
            if let Err(error) = write.write_all(&out).await {
                return ConnectionError::Io(error);
            }
        }
    };
    let ended = futures_lite::future::or(reading, writing).await;
    tablet.borrow_mut().disconnected();
    ended
}

/// Dials `addr` and exchanges hellos: ours, then the peer's, which must be
/// from `peer` for the same tablet.
pub async fn dial(
    addr: SocketAddr,
    ours: &Hello,
    peer: NodeId,
    secret: Option<&ClusterSecret>,
) -> Result<
    (
        ReadHalf<TcpStream>,
        WriteHalf<TcpStream>,
        ReplReader,
        Killer,
    ),
    ConnectionError,
> {
    let handshake = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let killer = Killer::of(&stream)?;
        let (mut read, mut write) = split(stream);
        let mut out = Vec::new();
        codec::encode_hello(ours, &mut out);
        write.write_all(&out).await?;
        let mut reader = ReplReader::new(Vec::new());
        let ReplFrame::Hello(theirs) = reader.next(&mut read).await? else {
            return Err(ConnectionError::Refused(
                "a message before its hello".into(),
            ));
        };
        check_hello(secret, &theirs).map_err(ConnectionError::Refused)?;
        if theirs.node != peer || theirs.island != ours.island || theirs.shard != ours.shard {
            return Err(ConnectionError::Refused(format!(
                "node {} answered for island {} shard {}",
                theirs.node, theirs.island, theirs.shard
            )));
        }
        Ok((read, write, reader, killer))
    };
    within(HANDSHAKE_TIMEOUT_MS, handshake).await
}

/// `future`, or `Timeout` after `ms`.
pub async fn within<T>(
    ms: u64,
    future: impl std::future::Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    futures_lite::future::or(future, async {
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        Err(ConnectionError::Timeout)
    })
    .await
}
