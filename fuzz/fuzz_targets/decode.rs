//! Decoding arbitrary bytes must never panic, and whatever decodes must
//! re-encode to a frame that decodes to the same value.
//!
//! Run with `cargo +nightly fuzz run decode` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{decode_client, decode_server, encode_client, encode_server, split_frame, FRAME_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let _ = split_frame(data, FRAME_BYTES_MAX);
    if let Ok(frame) = decode_client(data) {
        let mut bytes = Vec::new();
        encode_client(&frame, &mut bytes);
        let raw = split_frame(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(decode_client(raw.payload).unwrap(), frame);
    }
    if let Ok(frame) = decode_server(data) {
        let mut bytes = Vec::new();
        encode_server(&frame, &mut bytes);
        let raw = split_frame(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(decode_server(raw.payload).unwrap(), frame);
    }
});
