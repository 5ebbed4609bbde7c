//! Round trips for every frame, and decoding of hostile input.

use wire::*;

fn phone(text: &str) -> Phone {
    Phone::parse(text).unwrap()
}

fn client_frames() -> Vec<ClientFrame<'static>> {
    vec![
        ClientFrame::Hello {
            version: PROTOCOL_VERSION,
        },
        ClientFrame::RequestCode {
            phone: phone("+15550000001"),
        },
        ClientFrame::Verify {
            phone: phone("+15550000001"),
            code: 123_456,
        },
        ClientFrame::Login {
            phone: phone("+4930123456"),
            key: DeviceKey([7; DEVICE_KEY_BYTES]),
        },
        ClientFrame::Ping { nonce: u64::MAX },
        ClientFrame::Send {
            client_id: 42,
            to: phone("+15550000002"),
            body: b"hello",
        },
        ClientFrame::Send {
            client_id: 0,
            to: phone("+15550000002"),
            body: &[],
        },
        ClientFrame::Send {
            client_id: 1,
            to: phone("+15550000002"),
            body: &[0xAB; BODY_BYTES_MAX],
        },
        ClientFrame::Ack { up_to: 99 },
        ClientFrame::Read {
            from: phone("+15550000003"),
            client_id: 5,
        },
        ClientFrame::CreateGroup {
            client_id: 6,
            subject: "ünïcode subject",
            members: vec![phone("+15550000002"), phone("+4930123456")],
        },
        ClientFrame::GroupSend {
            client_id: 7,
            group: GroupId::derive(phone("+15550000001"), 6),
            body: &[0xEF; BODY_BYTES_MAX],
        },
        ClientFrame::ChangeGroup {
            client_id: 8,
            group: GroupId::derive(phone("+15550000001"), 6),
            change: GroupChange::Added(vec![phone("+15550000009")]),
        },
        ClientFrame::Subscribe {
            phone: phone("+15550000002"),
        },
        ClientFrame::Unsubscribe {
            phone: phone("+15550000002"),
        },
        ClientFrame::SetPresence { available: false },
        ClientFrame::Typing {
            chat: Chat::Direct(phone("+15550000002")),
            state: TypingState::Composing,
        },
        ClientFrame::Typing {
            chat: Chat::Group(GroupId::derive(phone("+15550000001"), 6)),
            state: TypingState::Paused,
        },
        ClientFrame::SyncContacts {
            client_id: 9,
            full: true,
            add: vec![phone("+15550000002"), phone("+4930123456")],
            remove: vec![],
        },
        ClientFrame::SetProfile {
            client_id: 10,
            profile: Profile {
                name: "Ada".into(),
                about: "at the engine".into(),
                photo: vec![1; PROFILE_PHOTO_BYTES_MAX],
            },
        },
        ClientFrame::GetProfile {
            phone: phone("+15550000002"),
        },
        ClientFrame::SetPrivacy {
            client_id: 11,
            hide_last_seen: true,
        },
        ClientFrame::RegisterPush {
            client_id: 12,
            platform: PushPlatform::Apns,
            token: "ab".repeat(PUSH_TOKEN_BYTES_MAX / 2),
        },
    ]
}

fn server_frames() -> Vec<ServerFrame<'static>> {
    vec![
        ServerFrame::Welcome {
            version: PROTOCOL_VERSION,
        },
        ServerFrame::CodeSent {
            phone: phone("+15550000001"),
            expires_in_s: 600,
        },
        ServerFrame::Registered {
            phone: phone("+15550000001"),
            key: DeviceKey([9; DEVICE_KEY_BYTES]),
        },
        ServerFrame::LoggedIn {
            phone: phone("+15550000001"),
        },
        ServerFrame::Pong { nonce: 3 },
        ServerFrame::Sent {
            client_id: 42,
            id: 7,
        },
        ServerFrame::Message {
            seq: u64::MAX,
            from: phone("+999999999999999"),
            client_id: u64::MAX,
            sent_at_ms: u64::MAX,
            body: vec![0xCD; BODY_BYTES_MAX].into(),
        },
        ServerFrame::Receipt {
            seq: 1,
            kind: ReceiptKind::Read,
            by: phone("+15550000002"),
            client_id: 42,
        },
        ServerFrame::Error {
            kind: ErrorKind::BadCode,
            client_id: Some(3),
            detail: "wrong".into(),
        },
        ServerFrame::Bye {
            reason: ByeReason::Replaced,
        },
        // The largest frame there is: every varint at its widest.
        ServerFrame::GroupMessage {
            seq: u64::MAX,
            group: GroupId::from_u64(u64::MAX).unwrap(),
            gseq: u64::MAX,
            from: phone("+999999999999999"),
            client_id: u64::MAX,
            sent_at_ms: u64::MAX,
            body: vec![0xCD; BODY_BYTES_MAX].into(),
        },
        ServerFrame::GroupNotice {
            seq: 4,
            group: GroupId::derive(phone("+15550000001"), 6),
            gseq: 1,
            by: phone("+15550000001"),
            at_ms: 5,
            change: GroupChange::Created {
                subject: "plans".into(),
                members: vec![phone("+15550000001"), phone("+15550000002")],
            },
        },
        ServerFrame::Presence {
            phone: phone("+15550000002"),
            presence: Presence::Offline {
                last_seen_ms: Some(1_795_000_000_000),
            },
        },
        ServerFrame::Presence {
            phone: phone("+15550000002"),
            presence: Presence::Unavailable,
        },
        ServerFrame::Typing {
            from: phone("+15550000002"),
            group: Some(GroupId::derive(phone("+15550000001"), 6)),
            state: TypingState::Composing,
        },
        ServerFrame::Contacts {
            client_id: 9,
            registered: vec![phone("+15550000002")],
        },
        ServerFrame::Profile {
            phone: phone("+15550000002"),
            profile: Some(Profile::default()),
        },
        ServerFrame::Profile {
            phone: phone("+15550000002"),
            profile: None,
        },
        ServerFrame::Done { client_id: 10 },
        ServerFrame::Redirect {
            addr: "node2.example:5222".into(),
            revision: 7,
        },
        ServerFrame::TryLater { after_ms: 1_500 },
        ServerFrame::Receipt {
            seq: 2,
            kind: ReceiptKind::Expired,
            by: phone("+15550000002"),
            client_id: 43,
        },
    ]
}

/// Every profile field is bounded, and the error names the one over.
#[test]
fn profiles_are_checked_field_by_field() {
    let mut profile = Profile {
        name: "n".repeat(PROFILE_NAME_BYTES_MAX),
        about: "a".repeat(PROFILE_ABOUT_BYTES_MAX),
        photo: vec![0; PROFILE_PHOTO_BYTES_MAX],
    };
    assert_eq!(profile.check(), Ok(()));
    profile.about.push('!');
    assert!(profile.check().unwrap_err().to_string().contains("about"));
}

/// A group id is recognisable by its top bit: one without it, a phone's
/// integer for instance, does not decode.
#[test]
fn group_ids_carry_their_mark() {
    let id = GroupId::derive(phone("+15550000001"), 1);
    assert!(id.as_u64() >= 1 << 63);
    assert_ne!(id, GroupId::derive(phone("+15550000001"), 2));
    assert_ne!(id, GroupId::derive(phone("+15550000002"), 1));
    assert!(GroupId::from_u64(15_550_000_001).is_err());
    let as_phone = ClientFrame::Send {
        client_id: 1,
        to: phone("+15550000001"),
        body: b"x",
    };
    let mut forged = Vec::new();
    encode_client(&as_phone, &mut forged);
    // Same shape, tag changed to GroupSend: the phone's integer is refused.
    let raw = split_frame(&forged, FRAME_BYTES_MAX).unwrap().unwrap();
    let mut payload = raw.payload.to_vec();
    assert_eq!(payload[0], 5, "Send's tag");
    payload[0] = 9;
    assert!(decode_client(&payload).is_err());
    // The same bytes with a group id in place of the phone decode.
    let mut real = Vec::new();
    let group_send = ClientFrame::GroupSend {
        client_id: 1,
        group: id,
        body: b"x",
    };
    encode_client(&group_send, &mut real);
    let raw = split_frame(&real, FRAME_BYTES_MAX).unwrap().unwrap();
    assert_eq!(raw.payload[0], 9);
    assert_eq!(decode_client(raw.payload).unwrap(), group_send);
}

#[test]
fn client_frames_round_trip() {
    for frame in client_frames() {
        let mut bytes = Vec::new();
        encode_client(&frame, &mut bytes);
        let raw = split_frame(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(raw.consumed, bytes.len());
        assert_eq!(decode_client(raw.payload).unwrap(), frame);
    }
}

#[test]
fn server_frames_round_trip() {
    for frame in server_frames() {
        let mut bytes = Vec::new();
        encode_server(&frame, &mut bytes);
        let raw = split_frame(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(raw.consumed, bytes.len());
        assert_eq!(decode_server(raw.payload).unwrap(), frame);
    }
}

/// The byte layout of a `Message`, pinned: phones in the field decode it.
#[test]
fn message_layout_is_pinned() {
    let frame = ServerFrame::Message {
        seq: 300,
        from: phone("+15550000001"),
        client_id: 7,
        sent_at_ms: 1,
        body: b"hi!"[..].into(),
    };
    let mut bytes = Vec::new();
    encode_server(&frame, &mut bytes);
    let expected = [
        14, 0, 0, 0, // payload length
        6, // variant: Message
        172, 2, // seq 300
        129, 215, 232, 246, 57, // from: the varint of 15550000001
        7, 1, // client_id, sent_at_ms
        3, 104, 105, 33, // body: length, then the bytes
    ];
    assert_eq!(bytes, expected);
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut bytes = Vec::new();
    encode_client(&ClientFrame::Ping { nonce: 1 }, &mut bytes);
    encode_client(&ClientFrame::Ack { up_to: 2 }, &mut bytes);
    let first_len = {
        let raw = split_frame(&bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        raw.consumed
    };
    for cut in 0..first_len {
        assert_eq!(
            split_frame(&bytes[..cut], FRAME_BYTES_MAX),
            Ok(None),
            "cut at {cut}"
        );
    }
    let second = split_frame(&bytes[first_len..], FRAME_BYTES_MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        decode_client(second.payload).unwrap(),
        ClientFrame::Ack { up_to: 2 }
    );
}

#[test]
fn oversize_length_prefix_is_refused_before_buffering() {
    let length = (FRAME_BYTES_MAX + 1) as u32;
    let bytes = length.to_le_bytes();
    assert_eq!(
        split_frame(&bytes, FRAME_BYTES_MAX),
        Err(FrameError::TooLarge {
            length: FRAME_BYTES_MAX + 1,
            max: FRAME_BYTES_MAX
        })
    );
    assert_eq!(
        split_frame(&u32::MAX.to_le_bytes(), 16),
        Err(FrameError::TooLarge {
            length: u32::MAX as usize,
            max: 16
        })
    );
    assert_eq!(
        split_frame(&[0, 0, 0, 0], FRAME_BYTES_MAX),
        Err(FrameError::Empty)
    );
}

#[test]
fn malformed_payloads_are_errors() {
    // Unknown variant tag.
    assert!(matches!(
        decode_client(&[200]),
        Err(DecodeError::Malformed(_))
    ));
    // Truncated Send.
    assert!(matches!(
        decode_client(&[5, 1]),
        Err(DecodeError::Malformed(_))
    ));
    // Phone out of the E.164 range (tag 1 = RequestCode, value 5).
    assert!(matches!(
        decode_client(&[1, 5]),
        Err(DecodeError::Malformed(_))
    ));
    // A body length that runs past the end of the payload.
    assert!(matches!(
        decode_client(&[5, 1, 0xC0, 0x84, 0x3D, 0xFF, 0xFF, 0x0F]),
        Err(DecodeError::Malformed(_))
    ));
    // Trailing bytes after a valid Ping.
    let mut bytes = Vec::new();
    encode_client(&ClientFrame::Ping { nonce: 1 }, &mut bytes);
    bytes.push(0);
    let payload = &bytes[LENGTH_PREFIX_BYTES..];
    assert_eq!(decode_client(payload), Err(DecodeError::TrailingBytes(1)));
}

/// A cheap deterministic sweep over random and mutated payloads: decoding must
/// return, never panic. The fuzz target in `fuzz/` explores further.
#[test]
fn decoding_arbitrary_bytes_never_panics() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for frame in client_frames() {
        let mut bytes = Vec::new();
        encode_client(&frame, &mut bytes);
        seeds.push(bytes[LENGTH_PREFIX_BYTES..].to_vec());
    }
    for round in 0..200_000 {
        let mut payload = if round % 2 == 0 {
            seeds[(next() % seeds.len() as u64) as usize].clone()
        } else {
            (0..next() % 64).map(|_| next() as u8).collect()
        };
        if !payload.is_empty() {
            for _ in 0..(next() % 4) {
                let at = (next() % payload.len() as u64) as usize;
                payload[at] = next() as u8;
            }
            payload.truncate((next() % (payload.len() as u64 + 1)) as usize);
        }
        let _ = decode_client(&payload);
        let _ = decode_server(&payload);
        let _ = split_frame(&payload, FRAME_BYTES_MAX);
    }
}
