//! `docs/protocol.md` is what phone developers implement from: these tests
//! fail when it falls behind the code.
//!
//! Every enum on the wire must have one table in the document listing
//! each variant with its number. The variants are not written out here
//! by hand (a hand list would fall behind the same way): serde's derive
//! hands every `Deserialize` enum's variant names, in declaration order,
//! to `Deserializer::deserialize_enum`, and a variant's position in that
//! list is the number postcard writes. A variant appended to an enum
//! therefore fails `every_wire_enum_is_listed_with_its_numbers`, naming
//! the row to add, until the document lists it.
//!
//! The worked examples' bytes are compared with the real encoder's.

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use wire::*;

/// The document, read at test time so that an edit to it is checked by
/// the next run without a rebuild.
fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The error that stops the probe once it has what it came for.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Stop {
        Stop
    }
}

/// A deserializer that answers nothing but records the enum it is asked
/// for: its name and its variants, in declaration order.
#[derive(Default)]
struct EnumProbe {
    found: Option<(&'static str, &'static [&'static str])>,
}

impl<'de> Deserializer<'de> for &mut EnumProbe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.found = Some((name, variants));
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// An enum's name and its variants, numbered as postcard numbers them.
fn variants<'de, T: Deserialize<'de>>() -> (&'static str, &'static [&'static str]) {
    let mut probe = EnumProbe::default();
    let _ = T::deserialize(&mut probe);
    probe.found.expect("the type is an enum")
}

/// Payloads of one byte: each a variant number below 128, which is its
/// own varint.
static NUMBERS: [u8; 128] = {
    let mut numbers = [0; 128];
    let mut i = 0;
    while i < 128 {
        numbers[i] = i as u8;
        i += 1;
    }
    numbers
};

/// Checks that postcard agrees on how many variants `T` has: a payload
/// that is only a variant number decodes, or runs short, for every
/// number below the count, and is refused as an unknown variant at the
/// count.
fn check_count_with_postcard<T: Deserialize<'static>>(name: &str, count: usize) {
    assert!(
        count < NUMBERS.len(),
        "{name}: one-byte variant numbers only"
    );
    for number in 0..=count {
        let unknown = matches!(
            postcard::from_bytes::<T>(&NUMBERS[number..=number]),
            Err(postcard::Error::SerdeDeCustom)
        );
        assert_eq!(
            unknown,
            number == count,
            "{name}: postcard and serde disagree about variant {number}"
        );
    }
}

/// Every enum a frame can carry, with what the document must list.
fn wire_enums() -> Vec<(&'static str, &'static [&'static str])> {
    let enums = [
        variants::<ClientFrame>(),
        variants::<ServerFrame>(),
        variants::<ErrorKind>(),
        variants::<ReceiptKind>(),
        variants::<ByeReason>(),
        variants::<GroupChange>(),
        variants::<Chat>(),
        variants::<TypingState>(),
        variants::<Presence>(),
        variants::<PushPlatform>(),
    ];
    check_count_with_postcard::<ClientFrame>("ClientFrame", enums[0].1.len());
    check_count_with_postcard::<ServerFrame>("ServerFrame", enums[1].1.len());
    check_count_with_postcard::<ErrorKind>("ErrorKind", enums[2].1.len());
    check_count_with_postcard::<ReceiptKind>("ReceiptKind", enums[3].1.len());
    check_count_with_postcard::<ByeReason>("ByeReason", enums[4].1.len());
    check_count_with_postcard::<GroupChange>("GroupChange", enums[5].1.len());
    check_count_with_postcard::<Chat>("Chat", enums[6].1.len());
    check_count_with_postcard::<TypingState>("TypingState", enums[7].1.len());
    check_count_with_postcard::<Presence>("Presence", enums[8].1.len());
    check_count_with_postcard::<PushPlatform>("PushPlatform", enums[9].1.len());
    enums.to_vec()
}

/// The document's variant tables: a header row `| # | `Enum` | ...`
/// followed by rows `| 7 | `Variant` | ...`, keyed by the enum's name.
/// A second table for the same enum is an error.
fn tables(document: &str) -> BTreeMap<String, Vec<(u32, String)>> {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_owned()).collect()
    };
    let code = |cell: &str| -> Option<String> {
        let name = cell.strip_prefix('`')?.strip_suffix('`')?;
        Some(name.to_owned())
    };
    let mut tables = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in document.lines() {
        if !line.trim_start().starts_with('|') {
            current = None;
            continue;
        }
        let row = cells(line);
        if row.len() < 2 || row[0].starts_with("---") {
            continue;
        }
        if row[0] == "#" {
            let name = code(&row[1]).unwrap_or_else(|| panic!("table header {line:?}"));
            assert!(
                !tables.contains_key(&name),
                "docs/protocol.md lists {name} twice"
            );
            tables.insert(name.clone(), Vec::new());
            current = Some(name);
            continue;
        }
        let Some(name) = &current else {
            continue;
        };
        let number = row[0]
            .parse()
            .unwrap_or_else(|_| panic!("{name}: row without a number: {line:?}"));
        let variant = code(&row[1]).unwrap_or_else(|| panic!("{name}: row {line:?}"));
        tables
            .get_mut(name)
            .expect("inserted")
            .push((number, variant));
    }
    tables
}

#[test]
fn every_wire_enum_is_listed_with_its_numbers() {
    let documented = tables(&document());
    let enums = wire_enums();
    for (name, variants) in &enums {
        let expected: Vec<(u32, String)> = variants
            .iter()
            .enumerate()
            .map(|(number, variant)| (number as u32, variant.to_string()))
            .collect();
        let listed = documented.get(*name).unwrap_or_else(|| {
            panic!("docs/protocol.md has no table whose header is `| # | `{name}` |`")
        });
        for (number, variant) in &expected {
            assert!(
                listed.contains(&(*number, variant.clone())),
                "docs/protocol.md: {name} lacks the row `| {number} | `{variant}` |`"
            );
        }
        assert_eq!(
            listed, &expected,
            "docs/protocol.md: {name}'s table must list exactly its variants, in order"
        );
    }
    for name in documented.keys() {
        assert!(
            enums.iter().any(|(known, _)| known == name),
            "docs/protocol.md has a table for {name}, which is not an enum on the wire"
        );
    }
}

/// The bytes of the fenced block after `<!-- example: NAME -->`: on each
/// line, the hex pairs before the first run of two spaces.
fn example(document: &str, name: &str) -> Vec<u8> {
    let marker = format!("<!-- example: {name} -->");
    let start = document
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/protocol.md has no {marker}"));
    let mut lines = document[start..].lines().skip(1);
    assert!(lines.next().is_some_and(|l| l.starts_with("```")), "{name}");
    let mut bytes = Vec::new();
    for line in lines.take_while(|l| !l.starts_with("```")) {
        let hex = line.split("  ").next().expect("split yields one part");
        for pair in hex.split_whitespace() {
            let byte = u8::from_str_radix(pair, 16)
                .unwrap_or_else(|_| panic!("{name}: {pair:?} in {line:?} is not a hex byte"));
            bytes.push(byte);
        }
    }
    bytes
}

fn phone(text: &str) -> Phone {
    Phone::parse(text).unwrap()
}

fn client(frame: ClientFrame<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_client(&frame, &mut bytes);
    bytes
}

fn server(frame: ServerFrame<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_server(&frame, &mut bytes);
    bytes
}

#[test]
fn worked_examples_are_what_the_encoder_writes() {
    let document = document();
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
    };
    let welcome = ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
    };
    let cases = [
        ("hello", client(hello)),
        ("hello", server(welcome)),
        (
            "send",
            client(ClientFrame::Send {
                client_id: 300,
                to: phone("+15550000002"),
                body: b"hi",
            }),
        ),
        (
            "message",
            server(ServerFrame::Message {
                seq: 1,
                from: phone("+15550000001"),
                client_id: 300,
                sent_at_ms: 1_767_225_600_000,
                body: b"hi"[..].into(),
            }),
        ),
        (
            "sent",
            server(ServerFrame::Sent {
                client_id: 300,
                id: 1,
            }),
        ),
        (
            "error",
            server(ServerFrame::Error {
                kind: ErrorKind::RateLimited,
                client_id: Some(300),
                detail: "sending too fast".into(),
            }),
        ),
        (
            "login",
            client(ClientFrame::Login {
                phone: phone("+15550000001"),
                key: DeviceKey([0xab; DEVICE_KEY_BYTES]),
            }),
        ),
    ];
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x} ")).collect() };
    for (name, encoded) in cases {
        assert_eq!(
            hex(&example(&document, name)),
            hex(&encoded),
            "docs/protocol.md's {name} example is not what the encoder writes"
        );
    }
}

/// The document states the limits a phone meets; the fixed ones are
/// constants, checked here.
#[test]
fn the_documented_limits_are_the_constants() {
    let document = document();
    let stated = [
        ("FRAME_BYTES_MAX", FRAME_BYTES_MAX),
        ("BODY_BYTES_MAX", BODY_BYTES_MAX),
        ("GROUP_SUBJECT_BYTES_MAX", GROUP_SUBJECT_BYTES_MAX),
        ("PUSH_TOKEN_BYTES_MAX", PUSH_TOKEN_BYTES_MAX),
    ];
    for (name, value) in stated {
        let with_commas = thousands(value);
        let said = [
            format!("`{name}` = {with_commas}"),
            format!("| `{name}` | {with_commas} "),
        ];
        assert!(
            said.iter().any(|s| document.contains(s)),
            "docs/protocol.md should state `{name}` = {with_commas}"
        );
    }
    assert!(document.contains(&format!("Protocol version: **{PROTOCOL_VERSION}**")));
    let profile = format!(
        "| {}, {}, {} bytes |",
        PROFILE_NAME_BYTES_MAX, PROFILE_ABOUT_BYTES_MAX, PROFILE_PHOTO_BYTES_MAX
    );
    assert!(document.contains(&profile), "{profile}");
}

fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The probe finds what it should: a guard on the guard.
#[test]
fn the_probe_reads_variants_in_declaration_order() {
    let (name, listed) = variants::<ByeReason>();
    assert_eq!(name, "ByeReason");
    assert_eq!(
        listed,
        [
            "Replaced",
            "Revoked",
            "IdleTimeout",
            "ProtocolError",
            "ShuttingDown",
            "AccountDeleted"
        ]
    );
    // A unit variant's number decodes to the variant of that name.
    for (number, variant) in variants::<ErrorKind>().1.iter().enumerate() {
        let kind: ErrorKind = postcard::from_bytes(&[number as u8]).unwrap();
        assert_eq!(format!("{kind:?}"), *variant);
    }
    let tables =
        tables("| # | `Chat` | x |\n| --- | --- | --- |\n| 0 | `Direct` | y |\n\n| 1 | `Not` |\n");
    assert_eq!(tables["Chat"], [(0, "Direct".to_owned())]);
}
