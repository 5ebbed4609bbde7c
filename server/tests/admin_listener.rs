//! The admin listener's connections are bounded in number and in time:
//! what clients that never finish a request, or never leave, would
//! otherwise hold forever (and with it file descriptors phones need).

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::Server;

/// Longer than any bound the listener sets on a connection (a head within
/// 5 s, a connection's life 10 s and 5 s of grace): a connection still
/// open after this is kept forever.
const CLOSE_WAIT: Duration = Duration::from_secs(40);

/// What a connection got before the server closed it; Err when it was
/// still open after `wait`.
fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Result<String, String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&got).into_owned());
            }
            Err(error) => {
                let got = String::from_utf8_lossy(&got);
                return Err(format!("still open after {wait:?} ({error}); got {got:?}"));
            }
        }
    }
}

fn connect(admin: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&admin, Duration::from_secs(5)).expect("connecting")
}

/// Connections that never finished a request were kept forever and
/// counted against the process's open files: 300 of them (no token
/// needed) under a limit of 256 and phones could no longer connect.
#[test]
fn idle_admin_connections_are_capped_and_leave_phones_their_files() {
    let server = Server::start_with_open_files(256, &["--shards", "1"]);
    let mut idle = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect_timeout(&server.admin, Duration::from_millis(500)) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                idle.push(stream);
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let phone = std::thread::spawn({
        let plain = server.plain;
        move || {
            let mut client = loadgen::client::Client::connect(plain)?;
            client.set_timeout(Duration::from_secs(5))?;
            let phone = wire::Phone::parse("+15550000001").unwrap();
            client.sign_up(phone, || Ok(common::TEST_CODE))
        }
    });
    let signed_up = phone.join().unwrap();
    drop(idle);
    assert!(
        signed_up.is_ok(),
        "with 300 idle admin connections open a phone could not sign up: {:?}",
        signed_up.err()
    );
}

/// Past the cap a connection is told so and closed at once, not queued;
/// the places come back when connections close.
#[test]
fn admin_connections_over_the_cap_are_refused_at_once() {
    let server = Server::start(&["--shards", "1"]);
    const OPENED: usize = 100;
    let mut opened: Vec<TcpStream> = (0..OPENED).map(|_| connect(server.admin)).collect();
    // Each answered connection waits for its head; a refused one has its
    // answer and its close in flight already.
    let refused = opened
        .iter_mut()
        .map(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buffer = [0u8; 256];
            match stream.read(&mut buffer) {
                Ok(n) => String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 503"),
                Err(_) => false,
            }
        })
        .filter(|refused| *refused)
        .count();
    let kept = OPENED - refused;
    assert!(
        (1..=64).contains(&kept),
        "{kept} of {OPENED} admin connections were kept open, {refused} refused"
    );
    drop(opened);
    // Places come back as the server sees the closes.
    let deadline = std::time::Instant::now() + CLOSE_WAIT;
    loop {
        let mut stream = connect(server.admin);
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let answer = read_until_closed(&mut stream, CLOSE_WAIT).unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request whose head never ends is closed by the head deadline.
#[test]
fn a_request_head_that_never_ends_is_closed() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = connect(server.admin);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    if let Err(still_open) = read_until_closed(&mut stream, CLOSE_WAIT) {
        panic!("a half-sent request head: {still_open}");
    }
}

/// A keep-alive connection left idle after its answer is closed.
#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = connect(server.admin);
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    match read_until_closed(&mut stream, CLOSE_WAIT) {
        Ok(answer) => assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}"),
        Err(still_open) => panic!("an idle keep-alive connection: {still_open}"),
    }
}

/// A request whose body never comes is past the head deadline's reach;
/// the connection's lifetime closes it.
#[test]
fn a_request_body_that_never_comes_is_closed() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = connect(server.admin);
    stream
        .write_all(b"PUT /log-level HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nde")
        .unwrap();
    if let Err(still_open) = read_until_closed(&mut stream, CLOSE_WAIT) {
        panic!("a request without its body: {still_open}");
    }
}

/// The health checks share the 16 admin places with everything else, and
/// a place is taken at accept, before the token is looked at. A client on
/// another host (here 127.0.0.2) that only opens connections and sends
/// nothing, opening a new one as each is closed, holds at most its own
/// source's share: the liveness probe from elsewhere still answers.
#[test]
fn a_client_without_the_token_cannot_keep_the_health_checks_from_answering() {
    let server = Server::start(&["--shards", "1"]);
    let admin = server.admin;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holders: Vec<_> = (0..24)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(mut stream) = connect_from([127, 0, 0, 2], admin) {
                        let _ = read_until_closed(&mut stream, Duration::from_secs(7));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (mut answered, mut probes) = (0, 0);
    let until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < until {
        probes += 1;
        let probe = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build()
            .get(&format!("http://{admin}/health/live"))
            .call();
        if probe.is_ok() {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for holder in holders {
        let _ = holder.join();
    }
    assert!(
        answered * 2 >= probes,
        "/health/live answered {answered} of {probes} probes while a client without the \
         token kept opening idle connections"
    );
}

/// A connection to `to` from source address `from`.
fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let source = std::net::SocketAddr::from((from, 0));
    socket.bind(&source.into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}
