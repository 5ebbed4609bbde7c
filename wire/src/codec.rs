//! Framing: a little-endian `u32` length, then that many bytes of postcard.

use serde::Serialize;

use crate::{ClientFrame, ServerFrame, FRAME_BYTES_MAX};

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the {max} byte limit")]
    TooLarge { length: usize, max: usize },
    #[error("zero-length frame")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

/// A complete frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub payload: &'a [u8],
    /// Bytes of the buffer the frame used, prefix included.
    pub consumed: usize,
}

/// Looks for one whole frame at the start of `buffer`.
///
/// Returns `Ok(None)` when more bytes are needed. The length is checked
/// against `frame_bytes_max` before the caller buffers anything, so a peer
/// cannot make the reader allocate more than that.
pub fn split_frame(
    buffer: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<RawFrame<'_>>, FrameError> {
    let Some(prefix) = buffer.get(..LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let length = u32::from_le_bytes(prefix.try_into().expect("slice of four bytes")) as usize;
    if length == 0 {
        return Err(FrameError::Empty);
    }
    if length > frame_bytes_max {
        return Err(FrameError::TooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    let end = LENGTH_PREFIX_BYTES + length;
    Ok(buffer
        .get(LENGTH_PREFIX_BYTES..end)
        .map(|payload| RawFrame {
            payload,
            consumed: end,
        }))
}

/// Decodes a frame payload; every byte must belong to the frame.
pub fn decode_client(payload: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
    decode(payload)
}

/// Decodes a frame payload; every byte must belong to the frame. The frame
/// owns its data, so it outlives `payload`.
pub fn decode_server(payload: &[u8]) -> Result<ServerFrame<'static>, DecodeError> {
    decode(payload)
}

fn decode<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, DecodeError> {
    let (frame, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(frame)
}

/// Appends `frame`, length prefix included, to `out`.
///
/// Every frame either side builds is at most `FRAME_BYTES_MAX`: bodies are
/// checked against `BODY_BYTES_MAX` before they are accepted, and the
/// relation between the two limits is asserted at compile time.
pub fn encode_client(frame: &ClientFrame<'_>, out: &mut Vec<u8>) {
    encode(frame, out)
}

/// Appends `frame`, length prefix included, to `out`.
pub fn encode_server(frame: &ServerFrame<'_>, out: &mut Vec<u8>) {
    // Room for the whole frame at once: postcard extends byte by byte, and
    // a fresh outbox would otherwise grow through several reallocations.
    let body = match frame {
        ServerFrame::Message { body, .. } => body.len(),
        _ => 0,
    };
    out.reserve(LENGTH_PREFIX_BYTES + SERVER_FIELDS_BYTES_MAX + body);
    encode(frame, out)
}

/// The most a server frame's fields other than a message body take: a tag,
/// four varint u64s, a phone and a body length.
const SERVER_FIELDS_BYTES_MAX: usize = 64;

fn encode<T: Serialize>(frame: &T, out: &mut Vec<u8>) {
    let length = encode_prefixed(frame, out);
    assert!(
        length <= FRAME_BYTES_MAX,
        "encoded a frame of {length} bytes"
    );
}

/// Appends `value` as postcard behind a u32 little-endian length prefix and
/// returns the length: the framing of the wire and of the storage log alike.
pub fn encode_prefixed<T: Serialize>(value: &T, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    // Serializing into a Vec only fails on types postcard cannot express;
    // every type framed here is plain data, so this is a programming error.
    let mut taken = std::mem::take(out);
    taken = postcard::to_extend(value, taken).expect("plain data always serializes");
    *out = taken;
    let length = out.len() - start - LENGTH_PREFIX_BYTES;
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(length as u32).to_le_bytes());
    length
}
