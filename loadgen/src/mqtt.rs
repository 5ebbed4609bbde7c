//! Just enough MQTT 3.1.1 for loadgen's phones to run the chat workload on
//! an MQTT broker (mosquitto, or any other), so that isle and a broker are
//! measured with the same workload in the same run.
//!
//! The mapping, one phone to one client:
//! - the client id is `p` and the phone number's digits; the session is
//!   persistent (clean session off), so a broker queues messages for a
//!   phone that is away, as isle does;
//! - each phone subscribes to its own topic `p/DIGITS` at QoS 1;
//! - a send is a QoS 1 `PUBLISH` to the recipient's topic; its `PUBACK`
//!   stands for isle's `Sent`, and a `PUBLISH` arriving at the subscriber
//!   for isle's `Message`, which the phone answers with a `PUBACK`.
//!
//! MQTT carries no sender or message id, so the payload starts with the
//! sender's number and the client id (8 bytes each, little-endian), then the
//! body, which (as on isle) begins with the intended send time. isle's frame
//! carries the same two fields in its header, so both see the same body.
//!
//! The codec is sans-IO: [`take_packet`] parses from a buffer, the
//! `encode_*` functions append to one. Only what a broker sends a client is
//! parsed; anything malformed is an error and ends the connection.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use wire::Phone;

use crate::connection::{BoxIo, Connection};

/// Largest packet accepted from the broker: a payload header, the largest
/// body and the topic fit far below it.
pub const PACKET_BYTES_MAX: usize = 128 * 1024;

/// Bytes in front of the body in every payload: sender and client id.
pub const PAYLOAD_HEADER_BYTES: usize = 16;

/// Seconds of silence after which the broker may drop a client (1.5 times
/// this, by the spec). Phones send no pings, so it is set well past any run.
const KEEPALIVE_S: u16 = 3_600;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;

/// A packet from the broker. Slices borrow the buffer it was parsed from.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        packet_id: Option<u16>,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    PingResp,
}

/// The topic a phone subscribes to, and others publish to for it.
pub fn topic(phone: Phone) -> String {
    format!("p/{}", phone.as_u64())
}

/// Packet ids in use at once: 1..=65535 (0 is not an id).
pub const PACKET_IDS: u16 = u16::MAX;

/// The packet id a send goes under. Ids repeat every [`PACKET_IDS`] client
/// ids, so a phone must not have sends that far apart unanswered at once
/// (see [`client_id_of`]).
pub fn packet_id(client_id: u64) -> u16 {
    (client_id.wrapping_sub(1) % u64::from(PACKET_IDS) + 1) as u16
}

/// The client id, at or after `oldest`, that `packet_id` stands for.
pub fn client_id_of(packet_id: u16, oldest: u64) -> u64 {
    let ids = u64::from(PACKET_IDS);
    let want = u64::from(packet_id) - 1;
    let have = oldest.wrapping_sub(1) % ids;
    oldest + (want + ids - have) % ids
}

fn put_str(bytes: &mut Vec<u8>, s: &[u8]) {
    bytes.extend_from_slice(&(s.len() as u16).to_be_bytes());
    bytes.extend_from_slice(s);
}

/// Appends a fixed header: the first byte, then the remaining length in
/// base 128, low digits first.
fn put_header(bytes: &mut Vec<u8>, first: u8, mut remaining: usize) {
    bytes.push(first);
    loop {
        let digit = (remaining % 128) as u8;
        remaining /= 128;
        if remaining == 0 {
            bytes.push(digit);
            return;
        }
        bytes.push(digit | 0x80);
    }
}

pub fn encode_connect(client_id: &str, bytes: &mut Vec<u8>) {
    // Protocol name, level 4 (3.1.1), flags (clean session off), keepalive.
    let remaining = 2 + 4 + 1 + 1 + 2 + 2 + client_id.len();
    put_header(bytes, CONNECT << 4, remaining);
    put_str(bytes, b"MQTT");
    bytes.push(4);
    bytes.push(0);
    bytes.extend_from_slice(&KEEPALIVE_S.to_be_bytes());
    put_str(bytes, client_id.as_bytes());
}

pub fn encode_subscribe(packet_id: u16, topic: &str, bytes: &mut Vec<u8>) {
    put_header(bytes, SUBSCRIBE << 4 | 0b0010, 2 + 2 + topic.len() + 1);
    bytes.extend_from_slice(&packet_id.to_be_bytes());
    put_str(bytes, topic.as_bytes());
    bytes.push(1);
}

/// A QoS 1 publish whose payload is the sender, the client id and `body`.
/// `dup` marks a send written again after a reconnect.
pub fn encode_publish(
    topic: &str,
    packet_id: u16,
    dup: bool,
    from: Phone,
    client_id: u64,
    body: &[u8],
    bytes: &mut Vec<u8>,
) {
    let remaining = 2 + topic.len() + 2 + PAYLOAD_HEADER_BYTES + body.len();
    put_header(bytes, PUBLISH << 4 | u8::from(dup) << 3 | 1 << 1, remaining);
    put_str(bytes, topic.as_bytes());
    bytes.extend_from_slice(&packet_id.to_be_bytes());
    bytes.extend_from_slice(&from.as_u64().to_le_bytes());
    bytes.extend_from_slice(&client_id.to_le_bytes());
    bytes.extend_from_slice(body);
}

pub fn encode_puback(packet_id: u16, bytes: &mut Vec<u8>) {
    bytes.extend_from_slice(&[PUBACK << 4, 2]);
    bytes.extend_from_slice(&packet_id.to_be_bytes());
}

/// Splits a payload written by [`encode_publish`] into sender, client id
/// and body.
pub fn split_payload(payload: &[u8]) -> anyhow::Result<(Phone, u64, &[u8])> {
    if payload.len() < PAYLOAD_HEADER_BYTES {
        bail!("payload of {} bytes has no sender", payload.len());
    }
    let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    let from = Phone::from_u64(word(0)).context("payload names no valid sender")?;
    Ok((from, word(8), &payload[PAYLOAD_HEADER_BYTES..]))
}

/// Parses the packet at the front of `buffer`: `Ok(None)` until it is
/// whole, else the packet and the bytes it took.
pub fn take_packet(buffer: &[u8]) -> anyhow::Result<Option<(Packet<'_>, usize)>> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut at = 1;
    loop {
        let Some(&digit) = buffer.get(at) else {
            return Ok(None);
        };
        remaining |= usize::from(digit & 0x7F) << (7 * (at - 1));
        at += 1;
        if digit & 0x80 == 0 {
            break;
        }
        if at == 5 {
            bail!("remaining length runs past four bytes");
        }
    }
    if remaining > PACKET_BYTES_MAX {
        bail!("packet of {remaining} bytes is over {PACKET_BYTES_MAX}");
    }
    let Some(body) = buffer.get(at..at + remaining) else {
        return Ok(None);
    };
    let u16_at = |i: usize| -> anyhow::Result<u16> {
        match body.get(i..i + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => bail!("packet type {} is cut short", first >> 4),
        }
    };
    let fixed = |length: usize| -> anyhow::Result<()> {
        if remaining != length {
            bail!("packet type {} has length {remaining}", first >> 4);
        }
        Ok(())
    };
    let packet = match first >> 4 {
        CONNACK => {
            fixed(2)?;
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        PUBLISH => {
            let qos = (first >> 1) & 0b11;
            if qos == 3 {
                bail!("publish with QoS 3");
            }
            let topic_bytes = usize::from(u16_at(0)?);
            let topic = body
                .get(2..2 + topic_bytes)
                .context("publish topic runs past the packet")?;
            let mut at = 2 + topic_bytes;
            let packet_id = if qos > 0 {
                let id = u16_at(at)?;
                at += 2;
                Some(id)
            } else {
                None
            };
            Packet::Publish {
                packet_id,
                topic,
                payload: &body[at..],
            }
        }
        PUBACK => {
            fixed(2)?;
            Packet::PubAck {
                packet_id: u16_at(0)?,
            }
        }
        SUBACK => Packet::SubAck {
            packet_id: u16_at(0)?,
            codes: &body[2..],
        },
        PINGRESP => {
            fixed(0)?;
            Packet::PingResp
        }
        other => bail!("unexpected packet type {other} from the broker"),
    };
    Ok(Some((packet, at + remaining)))
}

/// Logs `number` in on `io`, a connection to the broker that has said
/// nothing yet, as a client with a persistent session, and subscribes it
/// to its own topic. Packets that arrive before the `SUBACK` (a
/// persistent session may deliver queued messages at once) stay in the
/// returned inbox, in order, for the caller to handle.
pub async fn log_in(
    mut io: BoxIo,
    number: Phone,
    server: SocketAddr,
) -> anyhow::Result<Connection> {
    let mut bytes = Vec::new();
    encode_connect(&format!("p{}", number.as_u64()), &mut bytes);
    encode_subscribe(1, &topic(number), &mut bytes);
    io.write_all(&bytes).await?;
    io.flush().await?;
    let mut inbox = Vec::new();
    let mut kept = Vec::new();
    let (mut connected, mut subscribed) = (false, false);
    let mut buffer = [0u8; 4096];
    while !(connected && subscribed) {
        while let Some((packet, length)) = take_packet(&inbox)? {
            match packet {
                Packet::ConnAck { code: 0, .. } => connected = true,
                Packet::ConnAck { code, .. } => bail!("broker refused the connection: code {code}"),
                Packet::SubAck { codes, .. } if codes.first().is_some_and(|&c| c <= 1) => {
                    subscribed = true
                }
                Packet::SubAck { codes, .. } => bail!("broker refused the subscription: {codes:?}"),
                _ => kept.extend_from_slice(&inbox[..length]),
            }
            inbox.drain(..length);
        }
        if connected && subscribed {
            break;
        }
        let n = io.read(&mut buffer).await?;
        if n == 0 {
            bail!("broker closed the connection");
        }
        inbox.extend_from_slice(&buffer[..n]);
    }
    kept.extend_from_slice(&inbox);
    Ok(Connection {
        io,
        inbox: kept,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_round_trips_at_every_digit_boundary() {
        for length in [0, 1, 127, 128, 16_383, 16_384, PACKET_BYTES_MAX] {
            let mut bytes = Vec::new();
            put_header(&mut bytes, PUBACK << 4, length);
            bytes.resize(bytes.len() + length, 0);
            // A PUBACK of any length but 2 is refused, after the length was
            // read right: the packet is whole, so the error is about it.
            let error = take_packet(&bytes).unwrap_err().to_string();
            assert!(error.contains(&format!("length {length}")), "{error}");
            // One byte short is not yet a packet.
            if length > 0 {
                assert!(take_packet(&bytes[..bytes.len() - 1]).unwrap().is_none());
            }
        }
    }

    #[test]
    fn a_publish_parses_back_to_what_was_encoded() {
        let from = Phone::from_u64(15_550_000_042).unwrap();
        let mut bytes = Vec::new();
        encode_publish("p/15550000007", 65_535, true, from, 9, b"body!", &mut bytes);
        encode_puback(7, &mut bytes);
        let (packet, length) = take_packet(&bytes).unwrap().unwrap();
        let Packet::Publish {
            packet_id,
            topic,
            payload,
        } = packet
        else {
            panic!("{packet:?}");
        };
        assert_eq!(packet_id, Some(65_535));
        assert_eq!(topic, b"p/15550000007");
        assert_eq!(bytes[0] & 0b1000, 0b1000, "dup flag");
        assert_eq!(split_payload(payload).unwrap(), (from, 9, &b"body!"[..]));
        let (packet, rest) = take_packet(&bytes[length..]).unwrap().unwrap();
        assert_eq!(packet, Packet::PubAck { packet_id: 7 });
        assert_eq!(length + rest, bytes.len());
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        // Five length bytes; a huge length; a publish whose topic runs past
        // it; QoS 3; a packet type only clients send.
        for bad in [
            &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01][..],
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
            &[0x32, 0x03, 0x00, 0x09, b'p'],
            &[0x36, 0x02, 0x00, 0x00],
            &[0x10, 0x00],
            &[0x40, 0x01, 0x00],
        ] {
            assert!(take_packet(bad).is_err(), "{bad:?}");
        }
        assert!(split_payload(&[0; 15]).is_err());
        assert!(split_payload(&[0; 16]).is_err(), "number 0 is no phone");
    }

    #[test]
    fn packet_ids_map_back_to_client_ids_within_a_window() {
        for oldest in [1u64, 2, 65_535, 65_536, 1_000_000] {
            for client_id in [oldest, oldest + 1, oldest + 65_534] {
                let id = packet_id(client_id);
                assert!(id >= 1);
                assert_eq!(client_id_of(id, oldest), client_id, "oldest {oldest}");
            }
        }
    }
}
