//! The frames a link carries, as bytes: encoding and a decoder that checks
//! every length before it trusts it. No I/O. The byte layout is written up
//! in `docs/links.md`.
//!
//! Every frame is a little-endian `u32` length (of the bytes after it),
//! then a kind byte, then the kind's fields. The length is checked against
//! [`FRAME_BYTES_MAX`] before anything past it is looked at, so a peer
//! cannot make a reader buffer more than one bounded frame.

/// The first bytes of both handshake frames: a stranger that happens to
/// connect is told apart from a node of another version.
pub const MAGIC: [u8; 4] = *b"ISLK";

/// The link protocol's version; a peer with another is refused. Version 2
/// added the proofs of membership to the handshake; version 3 the island
/// to every payload's envelope (the payloads' layout is the routing's,
/// but a node that cannot read them must be refused at the handshake,
/// not drop what they carry).
pub const VERSION: u16 = 3;

/// An HMAC-SHA256 under the cluster's secret (`remote::proof`), or zeros
/// from a node without one.
pub const PROOF_BYTES: usize = 32;

/// What a hello or welcome carries to show it comes from a member.
pub type Proof = [u8; PROOF_BYTES];

/// The largest payload one data frame carries. The routing side encodes one
/// message per payload; the largest it makes (a message body of 64 KiB with
/// its envelope) is far below this.
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;

/// The longest cluster name a handshake carries.
pub const CLUSTER_NAME_BYTES_MAX: usize = 255;

/// The length prefix before every frame.
pub const LENGTH_BYTES: usize = 4;

/// A data frame's kind and sequence number, before its payload.
const DATA_HEADER_BYTES: usize = 1 + 8;

/// The longest frame after its length prefix: a data frame with the
/// largest payload. Handshakes are far smaller.
pub const FRAME_BYTES_MAX: usize = DATA_HEADER_BYTES + PAYLOAD_BYTES_MAX;

const _: () = assert!(HELLO_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// A hello with the longest cluster name: kind, magic, version, name
/// length and name, two endpoints, session, window, proof. The first frame
/// on the peer port may be no longer (a replication hello is shorter).
pub const HELLO_BYTES_MAX: usize =
    1 + 4 + 2 + 1 + CLUSTER_NAME_BYTES_MAX + 12 + 12 + 8 + 4 + 8 + PROOF_BYTES;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_REFUSED: u8 = 3;
const KIND_DATA: u8 = 4;
const KIND_ACK: u8 = 5;
const KIND_PING: u8 = 6;

/// One shard of one incarnation of a node: who is at either end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub node: u16,
    /// The node's etcd lease id: a restarted node has another.
    pub incarnation: i64,
    pub shard: u16,
}

/// The dialing side's first frame: who it is, whom it wants, and which of
/// its sessions this connection continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    pub version: u16,
    pub cluster: &'a [u8],
    pub from: Endpoint,
    /// The node, incarnation (as the dialer last knew it) and shard wanted.
    pub to: Endpoint,
    /// The dialer's session with this receiver: new numbers mean the
    /// sequence starts over.
    pub session: u64,
    /// The dialer's queue bounds: the most it may have sent and not had
    /// acknowledged, in messages and payload bytes.
    pub window_messages: u32,
    pub window_bytes: u64,
    /// The dialer's proof of membership over the fields above.
    pub proof: Proof,
}

/// The listening side's answer to an accepted hello: who it is, and where
/// the session resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome<'a> {
    pub version: u16,
    pub cluster: &'a [u8],
    pub from: Endpoint,
    /// The last sequence number handed to the application in this session
    /// (0: none): the dialer sends on from the one after.
    pub received: u64,
    /// The last sequence number the application released: acknowledged.
    pub released: u64,
    /// The listener's proof of membership over the fields above and the
    /// hello's proof.
    pub proof: Proof,
}

/// Why a listener refused a hello, sent before it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it speaks another protocol version")]
    Version = 1,
    #[error("it belongs to another cluster")]
    OtherCluster = 2,
    #[error("it wants another node")]
    WrongNode = 3,
    #[error("it wants a shard this node does not have")]
    NoSuchShard = 4,
    #[error("its node and incarnation are not approved (unknown, or an old incarnation)")]
    NotApproved = 5,
    #[error("it resumes a session older than the one this node holds")]
    StaleSession = 6,
    #[error("its window is larger than this node accepts")]
    WindowTooLarge = 7,
    #[error("this node cannot take the connection now (stopping, or its handover queue is full)")]
    Busy = 8,
    #[error("its proof of membership does not match this node's cluster secret")]
    Unproven = 9,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::Version,
        Refusal::OtherCluster,
        Refusal::WrongNode,
        Refusal::NoSuchShard,
        Refusal::NotApproved,
        Refusal::StaleSession,
        Refusal::WindowTooLarge,
        Refusal::Busy,
        Refusal::Unproven,
    ];

    fn from_byte(byte: u8) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| *r as u8 == byte)
    }
}

/// A decoded frame; a data frame's payload borrows the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    Welcome(Welcome<'a>),
    Refused(Refusal),
    /// One message of the session, numbered from 1.
    Data {
        seq: u64,
        payload: &'a [u8],
    },
    /// Everything up to `seq` is released by the receiving application.
    /// Also the receiver's heartbeat.
    Ack {
        seq: u64,
    },
    /// The sender's heartbeat while it has nothing to send.
    Ping,
}

/// Bytes that are not a frame; the connection that sent them is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {length} is over the limit of {max} bytes")]
    TooLong { length: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of kind {kind} ends early (needs more than its {length} bytes)")]
    Truncated { kind: u8, length: usize },
    #[error("frame of kind {kind} has {extra} bytes past its fields")]
    Trailing { kind: u8, extra: usize },
    #[error("handshake without the link magic (got {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("cluster name of {0} bytes is over {CLUSTER_NAME_BYTES_MAX}")]
    ClusterName(usize),
    #[error("unknown refusal {0}")]
    UnknownRefusal(u8),
    #[error("data frame with sequence number 0 (sessions count from 1)")]
    SeqZero,
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and how many bytes (prefix included) it took.
    Frame(Frame<'a>, usize),
    /// Not a whole frame yet: the buffer must reach this many bytes.
    Incomplete(usize),
}

/// Decodes the frame at the start of `buffer`. The length prefix is checked
/// first: an over-long frame is an error before its bytes arrive.
pub fn decode(buffer: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let Some(prefix) = buffer.get(..LENGTH_BYTES) else {
        return Ok(Decoded::Incomplete(LENGTH_BYTES));
    };
    let length = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(FrameError::TooLong {
            length,
            max: FRAME_BYTES_MAX,
        });
    }
    let total = LENGTH_BYTES + length;
    let Some(body) = buffer.get(LENGTH_BYTES..total) else {
        return Ok(Decoded::Incomplete(total));
    };
    let (&kind, fields) = body.split_first().ok_or(FrameError::Empty)?;
    let mut reader = Reader {
        bytes: fields,
        kind,
        length,
    };
    let frame = match kind {
        KIND_HELLO => Frame::Hello(reader.hello()?),
        KIND_WELCOME => Frame::Welcome(reader.welcome()?),
        KIND_REFUSED => {
            let byte = reader.u8()?;
            Frame::Refused(Refusal::from_byte(byte).ok_or(FrameError::UnknownRefusal(byte))?)
        }
        KIND_DATA => {
            let seq = reader.u64()?;
            if seq == 0 {
                return Err(FrameError::SeqZero);
            }
            let payload = std::mem::take(&mut reader.bytes);
            Frame::Data { seq, payload }
        }
        KIND_ACK => Frame::Ack { seq: reader.u64()? },
        KIND_PING => Frame::Ping,
        other => return Err(FrameError::UnknownKind(other)),
    };
    reader.finish()?;
    Ok(Decoded::Frame(frame, total))
}

/// The fields of one frame, read front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    kind: u8,
    length: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < count {
            return Err(FrameError::Truncated {
                kind: self.kind,
                length: self.length,
            });
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, FrameError> {
        self.array().map(i64::from_le_bytes)
    }

    fn endpoint(&mut self) -> Result<Endpoint, FrameError> {
        Ok(Endpoint {
            node: self.u16()?,
            incarnation: self.i64()?,
            shard: self.u16()?,
        })
    }

    /// Magic, version and cluster name: how both handshakes begin.
    fn preamble(&mut self) -> Result<(u16, &'a [u8]), FrameError> {
        let magic = self.array::<4>()?;
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = self.u16()?;
        let name_bytes = self.u8()? as usize;
        let cluster = self.take(name_bytes)?;
        Ok((version, cluster))
    }

    fn hello(&mut self) -> Result<Hello<'a>, FrameError> {
        let (version, cluster) = self.preamble()?;
        Ok(Hello {
            version,
            cluster,
            from: self.endpoint()?,
            to: self.endpoint()?,
            session: self.u64()?,
            window_messages: self.u32()?,
            window_bytes: self.u64()?,
            proof: self.array()?,
        })
    }

    fn welcome(&mut self) -> Result<Welcome<'a>, FrameError> {
        let (version, cluster) = self.preamble()?;
        Ok(Welcome {
            version,
            cluster,
            from: self.endpoint()?,
            received: self.u64()?,
            released: self.u64()?,
            proof: self.array()?,
        })
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(FrameError::Trailing {
                kind: self.kind,
                extra,
            }),
        }
    }
}

/// Appends one frame: its length, then what `fields` writes after the kind.
fn frame(out: &mut Vec<u8>, kind: u8, fields: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.push(kind);
    fields(out);
    let length = out.len() - start - LENGTH_BYTES;
    debug_assert!(length <= FRAME_BYTES_MAX);
    out[start..start + LENGTH_BYTES].copy_from_slice(&(length as u32).to_le_bytes());
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: &Endpoint) {
    out.extend_from_slice(&endpoint.node.to_le_bytes());
    out.extend_from_slice(&endpoint.incarnation.to_le_bytes());
    out.extend_from_slice(&endpoint.shard.to_le_bytes());
}

/// Magic, version and the cluster name. Panics on a name over
/// [`CLUSTER_NAME_BYTES_MAX`]: `Local::new` refuses one.
fn put_preamble(out: &mut Vec<u8>, version: u16, cluster: &[u8]) {
    assert!(cluster.len() <= CLUSTER_NAME_BYTES_MAX, "checked by Local");
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.push(cluster.len() as u8);
    out.extend_from_slice(cluster);
}

pub fn encode_hello(out: &mut Vec<u8>, hello: &Hello<'_>) {
    frame(out, KIND_HELLO, |out| {
        put_hello_fields(out, hello);
        out.extend_from_slice(&hello.proof);
    });
}

pub fn encode_welcome(out: &mut Vec<u8>, welcome: &Welcome<'_>) {
    frame(out, KIND_WELCOME, |out| {
        put_welcome_fields(out, welcome);
        out.extend_from_slice(&welcome.proof);
    });
}

/// What a hello's proof is made over: its kind byte and every field
/// before the proof, as on the wire.
pub fn signed_hello(out: &mut Vec<u8>, hello: &Hello<'_>) {
    out.push(KIND_HELLO);
    put_hello_fields(out, hello);
}

/// What a welcome's proof is made over (with the hello's proof after it).
pub fn signed_welcome(out: &mut Vec<u8>, welcome: &Welcome<'_>) {
    out.push(KIND_WELCOME);
    put_welcome_fields(out, welcome);
}

fn put_hello_fields(out: &mut Vec<u8>, hello: &Hello<'_>) {
    put_preamble(out, hello.version, hello.cluster);
    put_endpoint(out, &hello.from);
    put_endpoint(out, &hello.to);
    out.extend_from_slice(&hello.session.to_le_bytes());
    out.extend_from_slice(&hello.window_messages.to_le_bytes());
    out.extend_from_slice(&hello.window_bytes.to_le_bytes());
}

fn put_welcome_fields(out: &mut Vec<u8>, welcome: &Welcome<'_>) {
    put_preamble(out, welcome.version, welcome.cluster);
    put_endpoint(out, &welcome.from);
    out.extend_from_slice(&welcome.received.to_le_bytes());
    out.extend_from_slice(&welcome.released.to_le_bytes());
}

pub fn encode_refused(out: &mut Vec<u8>, refusal: Refusal) {
    frame(out, KIND_REFUSED, |out| out.push(refusal as u8));
}

/// Appends a data frame. The caller keeps payloads within
/// [`PAYLOAD_BYTES_MAX`] (the queue refuses larger ones).
pub fn encode_data(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= PAYLOAD_BYTES_MAX && seq > 0);
    frame(out, KIND_DATA, |out| {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(payload);
    });
}

pub fn encode_ack(out: &mut Vec<u8>, seq: u64) {
    frame(out, KIND_ACK, |out| {
        out.extend_from_slice(&seq.to_le_bytes())
    });
}

pub fn encode_ping(out: &mut Vec<u8>) {
    frame(out, KIND_PING, |_| {});
}

/// The bytes a data frame of `payload_bytes` takes on the wire.
pub fn data_frame_bytes(payload_bytes: usize) -> usize {
    LENGTH_BYTES + DATA_HEADER_BYTES + payload_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: u16) -> Endpoint {
        Endpoint {
            node,
            incarnation: -7_000_000_000 + node as i64,
            shard: node + 1,
        }
    }

    fn one(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
        match decode(bytes)? {
            Decoded::Frame(frame, used) => {
                assert_eq!(used, bytes.len(), "one frame takes every byte");
                Ok(frame)
            }
            Decoded::Incomplete(need) => panic!("incomplete, needs {need}"),
        }
    }

    fn check(frame: Frame<'_>) {
        let mut out = Vec::new();
        match frame {
            Frame::Hello(hello) => encode_hello(&mut out, &hello),
            Frame::Welcome(welcome) => encode_welcome(&mut out, &welcome),
            Frame::Refused(refusal) => encode_refused(&mut out, refusal),
            Frame::Data { seq, payload } => encode_data(&mut out, seq, payload),
            Frame::Ack { seq } => encode_ack(&mut out, seq),
            Frame::Ping => encode_ping(&mut out),
        }
        assert_eq!(one(&out), Ok(frame));
        // Every strict prefix is incomplete, never an error or a frame.
        for cut in 0..out.len() {
            assert!(
                matches!(decode(&out[..cut]), Ok(Decoded::Incomplete(n)) if n > cut),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn every_kind_round_trips_and_its_prefixes_are_incomplete() {
        let name = [b'x'; CLUSTER_NAME_BYTES_MAX];
        check(Frame::Hello(Hello {
            version: VERSION,
            cluster: &name,
            from: endpoint(1),
            to: endpoint(2),
            session: u64::MAX,
            window_messages: 8192,
            window_bytes: 1 << 40,
            proof: [7; PROOF_BYTES],
        }));
        check(Frame::Welcome(Welcome {
            version: VERSION,
            cluster: b"/isle/v1/",
            from: endpoint(3),
            received: 9,
            released: 4,
            proof: [0; PROOF_BYTES],
        }));
        for refusal in Refusal::ALL {
            check(Frame::Refused(refusal));
        }
        check(Frame::Data {
            seq: 1,
            payload: b"",
        });
        check(Frame::Data {
            seq: 77,
            payload: &[9; 1000],
        });
        check(Frame::Ack { seq: 0 });
        check(Frame::Ping);
    }

    #[test]
    fn the_bytes_of_a_data_frame_are_pinned() {
        let mut out = Vec::new();
        encode_data(&mut out, 2, b"hi");
        assert_eq!(out, [11, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(out.len(), data_frame_bytes(2));
    }

    #[test]
    fn an_over_long_length_is_refused_before_its_bytes_arrive() {
        let length = (FRAME_BYTES_MAX as u32 + 1).to_le_bytes();
        assert_eq!(
            decode(&length),
            Err(FrameError::TooLong {
                length: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            })
        );
        // An HTTP request's first bytes read as a length of about 0.5 GB.
        assert!(matches!(
            decode(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: [(&[u8], FrameError); 7] = [
            (&[0, 0, 0, 0], FrameError::Empty),
            (&[1, 0, 0, 0, 99], FrameError::UnknownKind(99)),
            (
                &[5, 0, 0, 0, KIND_ACK, 1, 2, 3, 4],
                FrameError::Truncated { kind: 5, length: 5 },
            ),
            (
                &[2, 0, 0, 0, KIND_PING, 0],
                FrameError::Trailing { kind: 6, extra: 1 },
            ),
            (
                &[5, 0, 0, 0, KIND_HELLO, b'H', b'T', b'T', b'P'],
                FrameError::BadMagic(*b"HTTP"),
            ),
            (
                &[2, 0, 0, 0, KIND_REFUSED, 0],
                FrameError::UnknownRefusal(0),
            ),
            (
                &[9, 0, 0, 0, KIND_DATA, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::SeqZero,
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode(bytes), Err(error), "{bytes:?}");
        }
    }

    /// Random bytes never panic the decoder, and what it takes is within
    /// the buffer.
    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut buffer = Vec::new();
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buffer.clear();
            let len = (state % 48) as usize;
            let mut s = state;
            for _ in 0..len {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                buffer.push((s >> 56) as u8);
            }
            // Small lengths, so that some decode as whole frames.
            if len >= 4 {
                buffer[1..4].fill(0);
                buffer[0] %= 44;
            }
            if let Ok(Decoded::Frame(_, used)) = decode(&buffer) {
                assert!(used <= buffer.len());
            }
        }
    }
}
