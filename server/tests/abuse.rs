//! What a hostile client (or a careless operator) can do to the process:
//! anonymous connections from one source, running out of file
//! descriptors, a second server on the same address, SIGHUP.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{free_port, Server};
use wire::{encode_client, ClientFrame, PROTOCOL_VERSION};

/// A TCP connection to `to` from the loopback address `from`, with its
/// `Hello` answered; `None` when the server closed it unread.
fn anonymous(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let mut stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hello = Vec::new();
    encode_client(
        &ClientFrame::Hello {
            version: PROTOCOL_VERSION,
        },
        &mut hello,
    );
    // A refused connection may be reset before or after this write.
    let _ = stream.write_all(&hello);
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => Some(stream),
        _ => None,
    }
}

fn config_file(dir: &std::path::Path, limits: &str) -> String {
    let path = dir.join("isle.toml");
    std::fs::write(&path, format!("[limits]\n{limits}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn anonymous_connections_from_one_source_are_capped_and_phones_still_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "prelogin_per_source_max = 4");
    let server = Server::start(&["--shards", "1", "--config", &config]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| anonymous("127.0.0.2", server.plain).expect("under the cap"))
        .collect();
    assert!(
        anonymous("127.0.0.2", server.plain).is_none(),
        "the fifth from one source is closed unread"
    );
    // Another source, and a phone, are not affected.
    assert!(anonymous("127.0.0.3", server.plain).is_some());
    let _phone = server.phone("+15550000001");
    drop(held);
    // Closing gives the source its room back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while anonymous("127.0.0.2", server.plain).is_none() {
        assert!(Instant::now() < deadline, "the source stayed refused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn running_out_of_file_descriptors_backs_off_quietly_and_recovers() {
    let config_dir = tempfile::tempdir().unwrap();
    // The caps on anonymous connections would refuse the flood before the
    // descriptors run out (half the limit by default): lifted here, so
    // that accept itself fails.
    let config = config_file(
        config_dir.path(),
        "prelogin_connections_max = 1000\nprelogin_per_source_max = 1000",
    );
    // One shard needs about fifteen descriptors of its own.
    let extra = ["--shards", "1", "--config", &config];
    let server = Server::start_with_open_files(40, &extra);
    // Far more connections than descriptors: the kernel completes them
    // and they wait in the backlog while accept fails.
    let flood: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.plain).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let lines: Vec<String> = server.stderr.try_iter().collect();
    let failures = lines.iter().filter(|l| l.contains("accept failed")).count();
    // One warning per episode, not per failed accept: an episode per
    // listener (plaintext and TLS), and a few more when a descriptor
    // comes back for a moment (one accept succeeds, the next fails), far
    // below the hundred connections waiting.
    assert!((1..=6).contains(&failures), "{lines:#?}");
    drop(flood);
    // Descriptors come back as the flood's connections close: a phone
    // gets in without anyone restarting anything.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        if let Ok(client) = loadgen::client::Client::connect(server.plain) {
            break client;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        std::thread::sleep(Duration::from_millis(100));
    };
    let phone = wire::Phone::parse("+15550000001").unwrap();
    let key = client
        .sign_up(phone, || Ok(common::TEST_CODE))
        .expect("sign up after recovery");
    client.login(phone, key).expect("login after recovery");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if server
            .stderr
            .try_iter()
            .any(|l| l.contains("accepting again"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no line saying it recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_server_on_the_same_address_refuses_to_start() {
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let first = Server::start(&["--plaintext-listen", &address]);
    let other_dir = tempfile::tempdir().unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", other_dir.path().to_str().unwrap()])
        .args(["--no-tls", "--plaintext-listen", &address])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(!status.success());
    let stderr = common::stderr_of(&mut second);
    assert!(
        stderr.contains("another process is listening on"),
        "{stderr}"
    );
    // Every connection still reaches the first server.
    for n in 0..20 {
        first.phone(&format!("+155500000{n:02}"));
    }
}

/// SIGHUP reloads (the TLS certificate and key) and the server goes on:
/// without a handler it would have killed the process, losing what the
/// write-back cache held.
#[test]
fn sighup_reloads_and_the_server_goes_on() {
    let mut server = Server::start(&["--sync-delay-ms", "60000"]);
    let (mut alice, _, _) = server.phone("+15550000001");
    let (_, bob, bob_key) = server.phone("+15550000002");
    alice
        .send(&ClientFrame::Send {
            client_id: 1,
            to: bob,
            body: b"in the write-back cache",
        })
        .unwrap();
    common::expect(&mut alice, "Sent", |e| {
        matches!(e, loadgen::client::Event::Sent { client_id: 1, .. })
    });
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.is_running(), "SIGHUP killed the server");
    assert!(server
        .stderr
        .try_iter()
        .any(|l| l.contains("reload (asked by SIGHUP): TLS certificate reloaded")));
    // A clean stop afterwards still writes the cache out.
    let (status, dir) = server.stop_keeping_data();
    assert!(status.success());
    let server = Server::start_in(dir, &[]);
    let mut bob_client = server.connect();
    bob_client.login(bob, bob_key).unwrap();
    common::expect(&mut bob_client, "the cached message", |e| {
        matches!(e, loadgen::client::Event::Message { client_id: 1, .. })
    });
}

/// Descriptors the process holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_connection_that_never_reads_cannot_outlive_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "login_timeout_ms = 5000\nclose_flush_timeout_ms = 2000",
    );
    let server = Server::start(&["--shards", "1", "--config", &config]);
    // The log prepares its next segment in the background just after the
    // start, holding a descriptor meanwhile: count after it is done.
    std::thread::sleep(Duration::from_millis(1_000));
    let before = open_fds(server.pid());
    // Hello, then pings until the server stops reading, never reading a
    // byte: the replies fill its outbox, its write buffer and the socket
    // buffers (on loopback the kernel's send buffer grows to 4 MiB).
    let mut flooders = Vec::new();
    for _ in 0..2 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&server.plain.into()).unwrap();
        let mut stream = TcpStream::from(socket);
        let mut bytes = Vec::new();
        encode_client(
            &ClientFrame::Hello {
                version: PROTOCOL_VERSION,
            },
            &mut bytes,
        );
        for nonce in 0..1_500_000 {
            encode_client(&ClientFrame::Ping { nonce }, &mut bytes);
        }
        stream.set_nonblocking(true).unwrap();
        // Write until the server has stopped reading for a while.
        let (mut written, mut stalled_since) = (0, Instant::now());
        while written < bytes.len() && stalled_since.elapsed() < Duration::from_millis(300) {
            match stream.write(&bytes[written..]) {
                Ok(n) => {
                    written += n;
                    stalled_since = Instant::now();
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert!(written < bytes.len(), "the server read everything");
        assert!(open_fds(server.pid()) > before);
        flooders.push(stream);
    }
    // Login deadline, then the time to flush the Bye: every one of them
    // is gone although none ever read.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(server.pid()) > before {
        assert!(
            Instant::now() < deadline,
            "{} descriptors held, {before} before the flood",
            open_fds(server.pid())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(flooders);
}

#[test]
fn by_default_anonymous_connections_hold_at_most_half_the_descriptors() {
    // 200 descriptors: 48 kept out of the phones' budget with one shard
    // (README, "Open files"), and by default at most half of the rest
    // for connections not logged in.
    let server = Server::start_with_open_files(200, &["--shards", "1"]);
    // A flood from many sources: only that half is ever held, so the
    // server never runs out (logged-in phones keep the rest).
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|n| anonymous(&format!("127.0.1.{}", n + 1), server.plain))
        .collect();
    assert_eq!(flood.len(), 76, "half of 200 - 48");
    assert!(
        !server
            .stderr
            .try_iter()
            .any(|l| l.contains("accept failed")),
        "descriptors ran out"
    );
    // As the flood's connections go, phones get in.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = match loadgen::client::Client::connect(server.plain) {
            Ok(client) => client,
            Err(_) => {
                assert!(Instant::now() < deadline, "no room came back");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let phone = wire::Phone::parse("+15550000001").unwrap();
        let key = client.sign_up(phone, || Ok(common::TEST_CODE)).unwrap();
        client.login(phone, key).unwrap();
        break;
    }
}

#[test]
fn connections_closed_by_the_server_cannot_be_held_open_to_use_up_descriptors() {
    let server = Server::start_with_open_files(64, &["--shards", "1"]);
    // Each breaks the protocol at once (a Ping before Hello): the server
    // answers, says Bye and closes; the client never closes its end.
    let mut ping = Vec::new();
    encode_client(&ClientFrame::Ping { nonce: 1 }, &mut ping);
    let mut held = Vec::new();
    for n in 0..300 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: SocketAddr = format!("127.0.2.{}:0", n % 200 + 1).parse().unwrap();
        socket.bind(&local.into()).unwrap();
        if socket.connect(&server.plain.into()).is_err() {
            continue;
        }
        let mut stream = TcpStream::from(socket);
        let _ = stream.write_all(&ping);
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !server
            .stderr
            .try_iter()
            .any(|l| l.contains("accept failed")),
        "descriptors ran out"
    );
    // A phone still gets in while all of them are held.
    let (_phone, _, _) = server.phone("+15550000001");
    drop(held);
}
