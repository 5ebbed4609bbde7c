//! isle's wire protocol, shared by the server and `loadgen`.
//!
//! A frame is a little-endian `u32` payload length followed by the payload,
//! a postcard-encoded [`ClientFrame`] or [`ServerFrame`]. The first frame on
//! a connection is `Hello { version }`, answered by `Welcome`.
//!
//! This crate does no I/O and knows nothing of sockets or executors: callers
//! hand it bytes and get frames back, or hand it frames and get bytes.
//! Decoding arbitrary bytes never panics; the length prefix is checked
//! against [`FRAME_BYTES_MAX`] before anything is buffered.

mod codec;
mod frames;
mod group;
mod phone;
mod social;

pub use codec::{
    decode_client, decode_server, encode_client, encode_prefixed, encode_server, split_frame,
    DecodeError, FrameError, RawFrame, LENGTH_PREFIX_BYTES,
};
pub use frames::{
    ByeReason, ClientFrame, DeviceKey, ErrorKind, ReceiptKind, ServerFrame, DEVICE_KEY_BYTES,
};
pub use group::{GroupChange, GroupId, GroupIdError, GROUP_SUBJECT_BYTES_MAX};
pub use phone::{Phone, PhoneError, PHONE_DIGITS_MAX, PHONE_DIGITS_MIN};
pub use social::{
    Chat, Presence, Profile, ProfileTooLarge, PushPlatform, TypingState, PROFILE_ABOUT_BYTES_MAX,
    PROFILE_NAME_BYTES_MAX, PROFILE_PHOTO_BYTES_MAX, PUSH_TOKEN_BYTES_MAX,
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The `client_id` of the group changes the server makes itself (the
/// `Left` of an account an operator deleted). Group requests from phones
/// may not carry it, so that the server's changes never collide with a
/// phone's in a group's resend table.
pub const SERVER_CLIENT_ID: u64 = u64::MAX;

/// Longest message body a phone may send.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Longest frame payload either side accepts. Room for a full body plus the
/// fixed fields of `Message`, with margin.
pub const FRAME_BYTES_MAX: usize = BODY_BYTES_MAX + 1024;

// The largest frame is a `GroupMessage` with a full body: enum tag, seq,
// group, gseq, from, client_id and sent_at_ms as varints (at most 10 bytes
// each) plus the body's length varint. That must fit under the frame limit.
const _: () = assert!(BODY_BYTES_MAX + 1 + 6 * 10 + 5 <= FRAME_BYTES_MAX);
