//! loadgen's side of a cluster against fake nodes: threads on loopback
//! that speak isle's wire protocol just far enough to redirect a phone,
//! tell it to try later, serve its login, or pass its messages on (and
//! refuse them `Unavailable` first). Each checks one rule of
//! docs/protocol.md ("Redirects and try-later") as loadgen keeps it, or
//! what a run reports of it.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::Parser;
use loadgen::dial::{Dialed, Dialer, REDIRECTS_PER_LOGIN_MAX};
use loadgen::route::{Account, Owner};
use wire::{
    decode_client, encode_server, split_frame, ClientFrame, DeviceKey, ErrorKind, Phone,
    ServerFrame, FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

/// What a fake node answers to the first frame that names an account.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Script {
    Redirect(SocketAddr, u64),
    /// `TryLater { after_ms }` the first time, then as `Serve`.
    TryLaterOnce(u32),
    /// Sign-up and login as a server would answer them (any code, any
    /// key); a `Send` is answered `Sent` and passed to its recipient.
    Serve,
    /// As `Serve`, but each send is refused `Unavailable` the first time
    /// it comes (as if its recipient's node were down for a moment).
    ServeRefusingEachSendOnce,
}

/// One connection a fake node accepted: when, the frames it read (by
/// name), and how the node ended it, if it did.
#[derive(Debug, Clone)]
struct Seen {
    opened: Instant,
    frames: Vec<&'static str>,
    /// "Redirect" or "TryLater", and when it was sent.
    turned: Option<(&'static str, Instant)>,
    logged_in: Option<Phone>,
}

/// What a fake node's connections share.
#[derive(Default)]
struct Node {
    script: Mutex<Option<Script>>,
    seen: Mutex<Vec<Seen>>,
    tried_later: AtomicBool,
    /// Every write to any connection holds this, so that a message
    /// passed on never lands inside a reply.
    mailroom: Mutex<Mailroom>,
}

/// The logged-in phones' connections, and the sends refused once.
#[derive(Default)]
struct Mailroom {
    phones: HashMap<Phone, TcpStream>,
    refused: HashSet<(Phone, u64)>,
    next_seq: u64,
}

struct Fake {
    addr: SocketAddr,
    node: Arc<Node>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    fn start(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap(),
            node: Arc::default(),
            stop: Arc::default(),
        };
        fake.set(script);
        let (node, stop) = (fake.node.clone(), fake.stop.clone());
        std::thread::spawn(move || {
            // Polled, so that `stop` closes the port: connections to it
            // are refused from then on.
            while !stop.load(Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let node = node.clone();
                std::thread::spawn(move || serve(stream, &node));
            }
        });
        fake
    }

    fn set(&self, script: Script) {
        *self.node.script.lock().unwrap() = Some(script);
    }

    fn seen(&self) -> Vec<Seen> {
        self.node.seen.lock().unwrap().clone()
    }

    fn logins(&self) -> Vec<Phone> {
        self.seen().iter().filter_map(|s| s.logged_in).collect()
    }

    fn stop(&self) {
        self.stop.store(true, Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One connection of a fake node, recorded in `seen` as it goes.
fn serve(mut stream: TcpStream, node: &Node) {
    stream.set_nonblocking(false).unwrap();
    let script = node.script.lock().unwrap().clone().unwrap();
    let at = {
        let mut seen = node.seen.lock().unwrap();
        seen.push(Seen {
            opened: Instant::now(),
            frames: Vec::new(),
            turned: None,
            logged_in: None,
        });
        seen.len() - 1
    };
    let record = |f: &mut dyn FnMut(&mut Seen)| f(&mut node.seen.lock().unwrap()[at]);
    let mut inbox = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        while let Some(raw) = split_frame(&inbox, FRAME_BYTES_MAX).unwrap() {
            let consumed = raw.consumed;
            let frame = decode_client(raw.payload).unwrap();
            record(&mut |s| s.frames.push(name(&frame)));
            if let Some(turn) = turn(&frame, &script, &node.tried_later) {
                let what = match turn {
                    ServerFrame::Redirect { .. } => "Redirect",
                    _ => "TryLater",
                };
                write(&mut stream, &turn, node);
                record(&mut |s| s.turned = Some((what, Instant::now())));
                return;
            }
            if let Some(reply) = answer(&frame) {
                write(&mut stream, &reply, node);
            }
            match frame {
                ClientFrame::Login { phone, .. } => {
                    let stream = stream.try_clone().unwrap();
                    node.mailroom.lock().unwrap().phones.insert(phone, stream);
                    record(&mut |s| s.logged_in = Some(phone));
                }
                ClientFrame::Send {
                    client_id,
                    to,
                    body,
                } => {
                    let from = node.seen.lock().unwrap()[at].logged_in.unwrap();
                    let refuse = script == Script::ServeRefusingEachSendOnce;
                    pass_on(&mut stream, node, refuse, from, (client_id, to, body));
                }
                _ => {}
            }
            inbox.drain(..consumed);
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => inbox.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The `Redirect` or `TryLater` the script says `frame` gets, if any.
fn turn(
    frame: &ClientFrame<'_>,
    script: &Script,
    tried_later: &AtomicBool,
) -> Option<ServerFrame<'static>> {
    match (frame, script) {
        (ClientFrame::Hello { .. }, _) => None,
        (_, Script::Redirect(addr, revision)) => Some(ServerFrame::Redirect {
            addr: addr.to_string(),
            revision: *revision,
        }),
        (_, Script::TryLaterOnce(after_ms)) if !tried_later.swap(true, Relaxed) => {
            Some(ServerFrame::TryLater {
                after_ms: *after_ms,
            })
        }
        _ => None,
    }
}

/// A send from `from`: refused `Unavailable` the first time if `refuse`,
/// else answered `Sent` and written to its recipient's connection.
fn pass_on(
    stream: &mut TcpStream,
    node: &Node,
    refuse: bool,
    from: Phone,
    send: (u64, Phone, &[u8]),
) {
    let (client_id, to, body) = send;
    let mut mailroom = node.mailroom.lock().unwrap();
    let mut bytes = Vec::new();
    if refuse && mailroom.refused.insert((from, client_id)) {
        let refusal = ServerFrame::Error {
            kind: ErrorKind::Unavailable,
            client_id: Some(client_id),
            detail: "the recipient's node is down".into(),
        };
        encode_server(&refusal, &mut bytes);
        let _ = stream.write_all(&bytes);
        return;
    }
    encode_server(
        &ServerFrame::Sent {
            client_id,
            id: client_id,
        },
        &mut bytes,
    );
    let _ = stream.write_all(&bytes);
    mailroom.next_seq += 1;
    let message = ServerFrame::Message {
        seq: mailroom.next_seq,
        from,
        client_id,
        sent_at_ms: 0,
        body: body.into(),
    };
    bytes.clear();
    encode_server(&message, &mut bytes);
    if let Some(recipient) = mailroom.phones.get_mut(&to) {
        let _ = recipient.write_all(&bytes);
    }
}

/// What a server that takes every code and key answers.
fn answer(frame: &ClientFrame<'_>) -> Option<ServerFrame<'static>> {
    Some(match *frame {
        ClientFrame::Hello { .. } => ServerFrame::Welcome {
            version: PROTOCOL_VERSION,
        },
        ClientFrame::RequestCode { phone } => ServerFrame::CodeSent {
            phone,
            expires_in_s: 600,
        },
        ClientFrame::Verify { phone, .. } => ServerFrame::Registered {
            phone,
            key: DeviceKey([7; wire::DEVICE_KEY_BYTES]),
        },
        ClientFrame::Login { phone, .. } => ServerFrame::LoggedIn { phone },
        _ => return None,
    })
}

fn name(frame: &ClientFrame<'_>) -> &'static str {
    match frame {
        ClientFrame::Hello { .. } => "Hello",
        ClientFrame::RequestCode { .. } => "RequestCode",
        ClientFrame::Verify { .. } => "Verify",
        ClientFrame::Login { .. } => "Login",
        _ => "other",
    }
}

fn write(stream: &mut TcpStream, frame: &ServerFrame<'_>, node: &Node) {
    let mut bytes = Vec::new();
    encode_server(frame, &mut bytes);
    let _writing = node.mailroom.lock().unwrap();
    let _ = stream.write_all(&bytes);
}

/// A dialer with the fakes at `targets` as the run's `--target`.
fn dialer(targets: &[&Fake]) -> Dialer {
    let list: Vec<String> = targets.iter().map(|f| f.addr.to_string()).collect();
    loadgen::chat::Args::parse_from(["loadgen", "--target", &list.join(",")])
        .connect
        .dialer()
        .unwrap()
}

const PHONE: u64 = 15_550_000_001;

/// Runs `logins` login attempts of one phone, one after the other, on a
/// glommio executor: what each came to (`Ok` with the address logged in
/// at), the phone's cached owner, and the dialer's counts.
fn log_in(dialer: &Dialer, logins: usize) -> (Vec<Result<(), String>>, Option<Owner>, Dialed) {
    let dialer = dialer.clone();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (phone, account) = (Phone::from_u64(PHONE).unwrap(), Account::default());
            let mut results = Vec::new();
            for _ in 0..logins {
                results.push(attempt(&dialer, phone, &account).await);
            }
            (results, account.route.get().owner(), dialer.counts.read())
        })
        .unwrap()
        .join()
        .unwrap()
}

/// One login: `Ok` or the error's text.
async fn attempt(dialer: &Dialer, phone: Phone, account: &Account) -> Result<(), String> {
    let result = dialer.log_in(phone, account).await;
    result.map(drop).map_err(|e| format!("{e:#}"))
}

#[test]
fn a_redirect_takes_the_phone_home_with_the_same_frame_and_is_remembered() {
    let home = Fake::start(Script::Serve);
    let first = Fake::start(Script::Redirect(home.addr, 7));
    let (results, owner, counts) = log_in(&dialer(&[&first]), 2);
    assert_eq!(results, [Ok(()), Ok(())]);
    let phone = Phone::from_u64(PHONE).unwrap();
    assert_eq!(home.logins(), [phone, phone], "logged in at home, twice");
    let away = first.seen();
    assert_eq!(away.len(), 1, "the second login went home directly");
    assert_eq!(away[0].frames, ["Hello", "RequestCode"]);
    assert_eq!(away[0].turned.map(|t| t.0), Some("Redirect"));
    let at_home: Vec<_> = home.seen().into_iter().map(|s| s.frames).collect();
    assert_eq!(
        at_home,
        [
            vec!["Hello", "RequestCode", "Verify", "Login"],
            vec!["Hello", "Login"]
        ],
        "Hello again, then the frame that was redirected"
    );
    assert_eq!(
        owner,
        Some(Owner {
            addr: home.addr,
            revision: 7
        })
    );
    assert_eq!(counts.redirects, 1);
}

#[test]
fn try_later_is_honoured_at_the_same_node_and_never_sooner() {
    const AFTER_MS: u32 = 300;
    let nodes = [
        Fake::start(Script::TryLaterOnce(AFTER_MS)),
        Fake::start(Script::TryLaterOnce(AFTER_MS)),
    ];
    let (results, _, counts) = log_in(&dialer(&[&nodes[0], &nodes[1]]), 1);
    assert_eq!(results, [Ok(())]);
    assert_eq!(counts.try_laters, 1);
    let [a, b] = nodes.map(|n| n.seen());
    assert!(a.is_empty() || b.is_empty(), "one node only: {a:?} {b:?}");
    let seen = if a.is_empty() { b } else { a };
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (what, told_at) = seen[0].turned.expect("the first was told to wait");
    assert_eq!(what, "TryLater");
    let waited = seen[1].opened - told_at;
    assert!(
        waited >= Duration::from_millis(AFTER_MS.into()),
        "came back after {waited:?}"
    );
    assert!(seen[1].logged_in.is_some(), "{seen:?}");
}

#[test]
fn a_redirect_loop_between_two_nodes_is_cut_and_counted() {
    let a = Fake::start(Script::Serve);
    let b = Fake::start(Script::Redirect(a.addr, 3));
    a.set(Script::Redirect(b.addr, 3));
    let (results, owner, counts) = log_in(&dialer(&[&a]), 1);
    let error = results[0].as_ref().unwrap_err();
    assert!(error.contains("redirect loop"), "{error}");
    assert_eq!(owner, None, "a loop leaves no owner cached");
    let followed = u64::from(REDIRECTS_PER_LOGIN_MAX) + 1;
    assert_eq!((counts.redirects, counts.redirect_loops_cut), (followed, 1));
    assert_eq!((a.seen().len() + b.seen().len()) as u64, followed);
}

#[test]
fn a_cached_owner_that_does_not_answer_is_given_up_for_a_node_of_the_list() {
    let home = Fake::start(Script::Serve);
    let first = Fake::start(Script::Redirect(home.addr, 5));
    let dialer = dialer(&[&first]);
    let (results, owner, _) = log_in(&dialer, 1);
    assert_eq!(
        (results, owner.map(|o| o.addr)),
        (vec![Ok(())], Some(home.addr))
    );
    // The home node goes away and its accounts move to the first node.
    home.stop();
    first.set(Script::Serve);
    let account_then = log_in_after_owner(&dialer, home.addr);
    assert!(account_then.0.is_err(), "the owner is gone");
    assert_eq!(account_then.1, Ok(()), "fell back to the list");
    assert_eq!(first.logins(), [Phone::from_u64(PHONE).unwrap()]);
}

/// Two logins of a phone whose cached owner is `owner`.
fn log_in_after_owner(
    dialer: &Dialer,
    owner: SocketAddr,
) -> (Result<(), String>, Result<(), String>) {
    let dialer = dialer.clone();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (phone, account) = (Phone::from_u64(PHONE).unwrap(), Account::default());
            let mut route = account.route.get();
            route.redirected(owner, 5);
            account.route.set(route);
            account
                .key
                .set(Some(DeviceKey([7; wire::DEVICE_KEY_BYTES])));
            let first = attempt(&dialer, phone, &account).await;
            (first, attempt(&dialer, phone, &account).await)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// `loadgen relay` in the background, killed when dropped.
struct Relay(std::process::Child, SocketAddr);

impl Relay {
    fn start() -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["relay", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().strip_prefix("relay ready listen=").unwrap();
        let addr = addr.parse().unwrap();
        Relay(child, addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A whole chat run that starts at a node which redirects every phone to
/// where the accounts live (the relay, standing in for a server): every
/// phone is redirected once, and every message arrives.
#[test]
fn a_chat_run_follows_redirects_to_the_home_node() {
    const PHONES: u64 = 30;
    let relay = Relay::start();
    let first = Fake::start(Script::Redirect(relay.1, 1));
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &first.addr.to_string(),
        "--phones",
        &PHONES.to_string(),
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
    ]);
    let report = loadgen::chat::run(&args).unwrap();
    assert!(report.failures().is_empty(), "{report:?}");
    assert_eq!(report.dialed.redirects, PHONES, "{report:?}");
    assert_eq!(first.seen().len() as u64, PHONES);
    assert!(report.sent > 100, "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
    assert!(report.answer_gap_ms_max > 0.0, "{report:?}");
    // The report's page shows them with the rest of the results.
    let dir = tempfile::tempdir().unwrap();
    loadgen::report::write(dir.path(), &args, &report, &report.curves).unwrap();
    let page = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    for row in [
        format!("<td>redirects</td><td>{PHONES}</td>"),
        "<td>redirect_loops_cut</td><td>0</td>".to_owned(),
        "<td>answer_gap_ms_max</td>".to_owned(),
    ] {
        assert!(page.contains(&row), "{row} in {page}");
    }
}

/// The binary with a redirect loop: phones cannot log in, the run fails,
/// and its JSON says why.
#[test]
fn a_run_whose_phones_are_sent_in_circles_fails_and_reports_the_loops() {
    let a = Fake::start(Script::Serve);
    let b = Fake::start(Script::Redirect(a.addr, 1));
    a.set(Script::Redirect(b.addr, 1));
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &a.addr.to_string(), "--phones", "3"])
        .args(["--duration", "1", "--warmup", "0", "--drain", "1"])
        .args(["--connect-patience", "0.5", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redirect loop"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(json["redirect_loops_cut"].as_u64().unwrap() >= 3, "{json}");
    assert_eq!(json["connect_failures"], 3, "{json}");
}

/// Every send refused `Unavailable` once: each is kept, written again
/// under the same client id after the retry wait, and arrives once and
/// in order; the run counts the refusals, and the longest wait between
/// answers is at least that retry wait.
#[test]
fn sends_refused_unavailable_are_sent_again_and_counted() {
    let node = Fake::start(Script::ServeRefusingEachSendOnce);
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &node.addr.to_string(),
        "--phones",
        "10",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    let report = loadgen::chat::run(&args).unwrap();
    assert!(report.failures().is_empty(), "{report:?}");
    assert!(report.sent > 20, "{report:?}");
    assert_eq!(
        report.unavailable, report.sent,
        "each refused once: {report:?}"
    );
    assert_eq!(report.refused_retryable, report.unavailable, "{report:?}");
    assert_eq!((report.acked, report.delivered), (report.sent, report.sent));
    assert_eq!((report.duplicates, report.reordered), (0, 0), "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");
    assert!(
        report.answer_gap_ms_max >= loadgen::chat::RETRY_MS as f64,
        "{report:?}"
    );
}

/// A server stopped for a while with sends outstanding: the phones' wait
/// shows in `answer_gap_ms_max`, and nothing is lost.
#[test]
fn a_server_stopped_for_a_while_shows_in_the_answer_gap() {
    const STOPPED: Duration = Duration::from_millis(1500);
    let relay = Relay::start();
    let args = loadgen::chat::Args::parse_from([
        "loadgen",
        "--target",
        &relay.1.to_string(),
        "--phones",
        "20",
        "--duration",
        "3",
        "--warmup",
        "0",
    ]);
    let run = std::thread::spawn(move || loadgen::chat::run(&args));
    std::thread::sleep(Duration::from_millis(1000));
    let pid = relay.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(STOPPED);
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let report = run.join().unwrap().unwrap();
    assert!(report.failures().is_empty(), "{report:?}");
    assert!(
        report.answer_gap_ms_max >= STOPPED.as_millis() as f64,
        "{report:?}"
    );
}
