//! `loadgen phone`: one phone driven by hand, for poking a server. It
//! reads commands from its input, one a line (`signup`, `code`, `login`,
//! `send`, `ack`, `read`, `ping`, `quit`, `help`), sends the frames they
//! stand for, and prints every frame the server sends as it arrives.
//!
//! Output lines start with `>` for a frame sent, `<` for a frame
//! received, `#` for a note and `!` for a command that could not be
//! carried out. A signup's device key is saved in `--keys DIR`, so a
//! later `login PHONE` finds it.
//!
//! It speaks through the blocking [`Client`]: the input is read on a
//! thread of its own and handed over a channel, and the main loop
//! alternates between the socket (a short timeout) and the commands.

use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::mpsc::{self, TryRecvError},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use wire::{ClientFrame, DeviceKey, Phone, ServerFrame, DEVICE_KEY_BYTES, PROTOCOL_VERSION};

use crate::client::{Client, Event, Polled};

#[derive(Debug, Clone, clap::Parser)]
pub struct Args {
    /// Server address (its plaintext port, or its TLS port with --tls).
    #[arg(long, default_value = "127.0.0.1:5223")]
    pub target: SocketAddr,
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// Trust this certificate (PEM); without it, --tls trusts any
    /// certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Where device keys from signups are saved, one `PHONE.key` file
    /// each (hex), and where `login PHONE` looks for them.
    #[arg(long, default_value = "isle-keys")]
    pub keys: PathBuf,
}

/// How long the main loop waits on the socket before it looks at the
/// commands again: short enough that typing feels immediate.
const POLL_WAIT: Duration = Duration::from_millis(20);

/// After the input ends, frames are still printed until none has come for
/// this long (answers to the last commands), or `DRAIN_MAX` has passed.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// What the phone can be told, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Ask for a code for this number (`RequestCode`).
    SignUp(Phone),
    /// The code for the number of the last `signup` (`Verify`).
    Code(u32),
    /// Log in, with the key given or the one saved for the number.
    Login(Phone, Option<DeviceKey>),
    /// A 1:1 message with this text.
    Send(Phone, String),
    /// Acknowledge everything received so far.
    Ack,
    /// Tell the sender its message was read.
    Read(Phone, u64),
    Ping,
    Quit,
    Help,
}

/// A line that is not a command, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (try `help`)")]
pub struct CommandError(String);

const HELP: &str = "\
commands:
  signup PHONE            ask for a code by SMS (RequestCode)
  code 123456             prove the number of the last signup; the key is saved and used to log in
  login PHONE [KEY_HEX]   log in with the key given, or the one saved for PHONE
  send PHONE TEXT...      send TEXT to PHONE
  ack                     acknowledge everything received so far
  read PHONE CLIENT_ID    tell PHONE its message CLIENT_ID was read
  ping                    keepalive
  quit                    hang up
  help                    this";

impl std::str::FromStr for Command {
    type Err = CommandError;

    fn from_str(line: &str) -> Result<Command, CommandError> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let rest: Vec<&str> = words.collect();
        let phone = |text: &str| {
            Phone::parse(text).map_err(|error| CommandError(format!("{text}: {error}")))
        };
        let number = |text: &str| {
            text.parse::<u64>()
                .map_err(|_| CommandError(format!("{text:?} is not a number")))
        };
        match (verb, rest.as_slice()) {
            ("signup", [number]) => Ok(Command::SignUp(phone(number)?)),
            ("code", [text]) => match text.parse() {
                Ok(code) if text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Command::Code(code))
                }
                _ => Err(CommandError(format!("{text:?} is not a six-digit code"))),
            },
            ("login", [number]) => Ok(Command::Login(phone(number)?, None)),
            ("login", [number, key]) => Ok(Command::Login(phone(number)?, Some(parse_key(key)?))),
            ("send", [to, text @ ..]) if !text.is_empty() => {
                Ok(Command::Send(phone(to)?, text.join(" ")))
            }
            ("read", [from, client_id]) => Ok(Command::Read(phone(from)?, number(client_id)?)),
            ("ack", []) => Ok(Command::Ack),
            ("ping", []) => Ok(Command::Ping),
            ("quit" | "exit", []) => Ok(Command::Quit),
            ("help" | "?", []) => Ok(Command::Help),
            _ => Err(CommandError(format!("cannot read {:?}", line.trim()))),
        }
    }
}

/// A device key written as 64 hex digits.
fn parse_key(text: &str) -> Result<DeviceKey, CommandError> {
    let bad = || CommandError(format!("a key is {} hex digits", DEVICE_KEY_BYTES * 2));
    if text.len() != DEVICE_KEY_BYTES * 2 || !text.is_ascii() {
        return Err(bad());
    }
    let mut key = [0u8; DEVICE_KEY_BYTES];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(DeviceKey(key))
}

fn key_hex(key: &DeviceKey) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// One frame as a line people read (without the `<`).
pub fn describe(frame: &Event) -> String {
    match frame {
        ServerFrame::Welcome { version } => format!("Welcome version={version}"),
        ServerFrame::CodeSent {
            phone,
            expires_in_s,
        } => format!("CodeSent {phone} expires_in_s={expires_in_s}"),
        ServerFrame::Registered { phone, key } => {
            format!("Registered {phone} key={}", key_hex(key))
        }
        ServerFrame::LoggedIn { phone } => format!("LoggedIn {phone}"),
        ServerFrame::Pong { nonce } => format!("Pong nonce={nonce}"),
        ServerFrame::Sent { client_id, id } => format!("Sent client_id={client_id} id={id}"),
        ServerFrame::Message {
            seq,
            from,
            client_id,
            sent_at_ms,
            body,
        } => format!(
            "Message seq={seq} from={from} client_id={client_id} sent_at_ms={sent_at_ms} body={}",
            show_body(body)
        ),
        ServerFrame::Receipt {
            seq,
            kind,
            by,
            client_id,
        } => format!("Receipt seq={seq} {kind:?} by={by} client_id={client_id}"),
        ServerFrame::Error {
            kind,
            client_id,
            detail,
        } => {
            let about = client_id.map_or(String::new(), |id| format!(" client_id={id}"));
            let retry = if kind.is_retryable() {
                " (retryable)"
            } else {
                ""
            };
            format!("Error {kind:?}{about}{retry}: {detail}")
        }
        ServerFrame::Bye { reason } => format!("Bye {reason:?}"),
        ServerFrame::GroupMessage {
            seq,
            group,
            gseq,
            from,
            client_id,
            sent_at_ms,
            body,
        } => format!(
            "GroupMessage seq={seq} group={group} gseq={gseq} from={from} \
             client_id={client_id} sent_at_ms={sent_at_ms} body={}",
            show_body(body)
        ),
        other => format!("{other:?}"),
    }
}

/// A body as quoted text when it is UTF-8, else as hex.
fn show_body(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => format!("{text:?}"),
        Err(_) => body.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// What to do after a command.
enum Next {
    Go,
    Quit,
}

/// The phone: its connection and what it remembers between lines.
pub struct Session<W: Write> {
    client: Client,
    out: W,
    keys: PathBuf,
    /// The number of the last `signup`, which `code` proves.
    signing_up: Option<Phone>,
    /// The next `client_id`: time-based, so that ids do not repeat across
    /// runs (the server recognises a resend by them for a day).
    next_client_id: u64,
    next_nonce: u64,
    /// The highest mailbox seq received, what `ack` acknowledges.
    received_up_to: u64,
}

impl<W: Write> Session<W> {
    /// Connects as `args` say, says `Hello`, and prints the answer.
    pub fn connect(args: &Args, out: W) -> anyhow::Result<Session<W>> {
        if args.ca.is_some() && !args.tls {
            // Plaintext to a TLS port would only hang.
            bail!("--ca is for --tls");
        }
        let client = match args.tls {
            true => Client::connect_tls_raw(args.target, args.ca.as_deref())?,
            false => Client::connect_raw(args.target)?,
        };
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let mut session = Session {
            client,
            out,
            keys: args.keys.clone(),
            signing_up: None,
            next_client_id: now_ms,
            next_nonce: 1,
            received_up_to: 0,
        };
        session.send(
            &ClientFrame::Hello {
                version: PROTOCOL_VERSION,
            },
            format!("Hello version={PROTOCOL_VERSION}"),
        )?;
        Ok(session)
    }

    /// Prints a line of output at once (the output may be a pipe).
    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.out, "{line}")?;
        self.out.flush()?;
        Ok(())
    }

    fn send(&mut self, frame: &ClientFrame<'_>, shown: String) -> anyhow::Result<()> {
        self.client.send(frame).context("sending")?;
        self.say(&format!("> {shown}"))
    }

    /// Carries out one input line.
    fn line(&mut self, line: &str) -> anyhow::Result<Next> {
        if line.trim().is_empty() {
            return Ok(Next::Go);
        }
        match line.parse::<Command>() {
            Ok(command) => self.command(command),
            Err(error) => {
                self.say(&format!("! {error}"))?;
                Ok(Next::Go)
            }
        }
    }

    fn command(&mut self, command: Command) -> anyhow::Result<Next> {
        match command {
            Command::SignUp(phone) => {
                self.signing_up = Some(phone);
                self.send(
                    &ClientFrame::RequestCode { phone },
                    format!("RequestCode {phone}"),
                )?;
            }
            Command::Code(code) => match self.signing_up {
                Some(phone) => {
                    let frame = ClientFrame::Verify { phone, code };
                    self.send(&frame, format!("Verify {phone} code={code:06}"))?;
                }
                None => self.say("! `code` proves the number of a `signup`: sign up first")?,
            },
            Command::Login(phone, key) => self.login(phone, key)?,
            Command::Send(to, text) => {
                let client_id = self.client_id();
                let frame = ClientFrame::Send {
                    client_id,
                    to,
                    body: text.as_bytes(),
                };
                self.send(
                    &frame,
                    format!("Send client_id={client_id} to={to} {text:?}"),
                )?;
            }
            Command::Ack if self.received_up_to == 0 => {
                self.say("! nothing received to acknowledge")?;
            }
            Command::Ack => {
                let up_to = self.received_up_to;
                self.send(&ClientFrame::Ack { up_to }, format!("Ack up_to={up_to}"))?;
            }
            Command::Read(from, client_id) => {
                let frame = ClientFrame::Read { from, client_id };
                self.send(&frame, format!("Read from={from} client_id={client_id}"))?;
            }
            Command::Ping => {
                let nonce = self.next_nonce;
                self.next_nonce += 1;
                self.send(&ClientFrame::Ping { nonce }, format!("Ping nonce={nonce}"))?;
            }
            Command::Quit => return Ok(Next::Quit),
            Command::Help => self.say(HELP)?,
        }
        Ok(Next::Go)
    }

    fn client_id(&mut self) -> u64 {
        let id = self.next_client_id;
        self.next_client_id += 1;
        id
    }

    fn key_path(&self, phone: Phone) -> PathBuf {
        self.keys.join(format!("{phone}.key"))
    }

    fn login(&mut self, phone: Phone, key: Option<DeviceKey>) -> anyhow::Result<()> {
        let key = match key {
            Some(key) => key,
            None => match read_key(&self.key_path(phone)) {
                Ok(key) => key,
                Err(error) => return self.say(&format!("! {error:#}")),
            },
        };
        self.send(&ClientFrame::Login { phone, key }, format!("Login {phone}"))
    }

    /// Prints a frame, and does what a phone does on it: a new key is
    /// saved and logged in with, mailbox seqs are remembered for `ack`.
    fn frame(&mut self, frame: Event) -> anyhow::Result<()> {
        self.say(&format!("< {}", describe(&frame)))?;
        match frame {
            ServerFrame::Registered { phone, key } => {
                let path = self.key_path(phone);
                match save_key(&path, &key) {
                    Ok(()) => self.say(&format!("# key saved to {}", path.display()))?,
                    Err(error) => self.say(&format!("! saving the key: {error:#}"))?,
                }
                self.send(&ClientFrame::Login { phone, key }, format!("Login {phone}"))?;
            }
            ServerFrame::Message { seq, .. }
            | ServerFrame::Receipt { seq, .. }
            | ServerFrame::GroupMessage { seq, .. }
            | ServerFrame::GroupNotice { seq, .. } => {
                self.received_up_to = self.received_up_to.max(seq);
            }
            _ => {}
        }
        Ok(())
    }

    /// Prints what arrives within `wait`; false once the connection closed.
    fn receive(&mut self, wait: Duration) -> anyhow::Result<bool> {
        match self.client.poll(wait)? {
            Polled::Frame(frame) => self.frame(frame)?,
            Polled::Quiet => {}
            Polled::Closed => {
                self.say("# the server closed the connection")?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The input ended: prints the answers still coming, until the
    /// connection is quiet.
    fn drain(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < DRAIN_QUIET && started.elapsed() < DRAIN_MAX {
            match self.client.poll(POLL_WAIT)? {
                Polled::Frame(frame) => {
                    self.frame(frame)?;
                    quiet_since = Instant::now();
                }
                Polled::Quiet => {}
                Polled::Closed => return self.say("# the server closed the connection"),
            }
        }
        Ok(())
    }
}

/// Reads a key saved by [`save_key`].
fn read_key(path: &Path) -> anyhow::Result<DeviceKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no saved key at {}: sign up, or give the key",
            path.display()
        )
    })?;
    Ok(parse_key(text.trim())?)
}

/// Saves a device key as hex, readable by its owner only: it is the
/// account's only credential.
fn save_key(path: &Path, key: &DeviceKey) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}", key_hex(key))?;
    Ok(())
}

/// Runs the phone: commands from `input`, everything printed to `out`,
/// until `quit`, the end of the input (after the last answers), or the
/// server closing the connection.
pub fn run(
    args: &Args,
    input: impl BufRead + Send + 'static,
    out: impl Write,
) -> anyhow::Result<()> {
    let mut session = Session::connect(args, out)?;
    let (lines, commands) = mpsc::channel();
    // A blocking read of the input cannot wait on the socket too: it gets
    // a thread, and the main loop takes its lines when it looks.
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else {
                break;
            };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        if !session.receive(POLL_WAIT)? {
            return Ok(());
        }
        loop {
            match commands.try_recv() {
                Ok(line) => {
                    if let Next::Quit = session.line(&line)? {
                        return Ok(());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return session.drain(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(text: &str) -> Phone {
        Phone::parse(text).unwrap()
    }

    fn check(line: &str, expected: Result<Command, ()>) {
        assert_eq!(
            line.parse::<Command>().map_err(|_| ()),
            expected,
            "{line:?}"
        );
    }

    #[test]
    fn commands_are_read_from_lines() {
        check(
            "signup +15550000001",
            Ok(Command::SignUp(phone("+15550000001"))),
        );
        check("code 012345", Ok(Command::Code(12345)));
        check("code 12345", Err(()));
        check("code 1234567", Err(()));
        check(
            "login +15550000001",
            Ok(Command::Login(phone("+15550000001"), None)),
        );
        let key = "ab".repeat(DEVICE_KEY_BYTES);
        check(
            &format!("login +15550000001 {key}"),
            Ok(Command::Login(
                phone("+15550000001"),
                Some(DeviceKey([0xab; 32])),
            )),
        );
        check("login +15550000001 abc", Err(()));
        check(
            "send +15550000002  hello   there ",
            Ok(Command::Send(phone("+15550000002"), "hello there".into())),
        );
        check("send +15550000002", Err(()));
        check(
            "read +15550000001 42",
            Ok(Command::Read(phone("+15550000001"), 42)),
        );
        check("read +15550000001 x", Err(()));
        check("ack", Ok(Command::Ack));
        check("ping", Ok(Command::Ping));
        check("quit", Ok(Command::Quit));
        check("help", Ok(Command::Help));
        check("signup 15550000001", Err(()));
        check("dance", Err(()));
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let key = DeviceKey(std::array::from_fn(|i| i as u8 * 7));
        assert_eq!(parse_key(&key_hex(&key)).unwrap(), key);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("+15550000001.key");
        save_key(&path, &key).unwrap();
        assert_eq!(read_key(&path).unwrap(), key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a key is readable by its owner only");
    }

    #[test]
    fn frames_read_as_lines() {
        let message = ServerFrame::Message {
            seq: 3,
            from: phone("+15550000001"),
            client_id: 7,
            sent_at_ms: 9,
            body: b"hi \"you\""[..].to_vec().into(),
        };
        assert_eq!(
            describe(&message),
            r#"Message seq=3 from=+15550000001 client_id=7 sent_at_ms=9 body="hi \"you\"""#
        );
        let error = ServerFrame::Error {
            kind: wire::ErrorKind::RateLimited,
            client_id: Some(7),
            detail: "sending too fast".into(),
        };
        assert_eq!(
            describe(&error),
            "Error RateLimited client_id=7 (retryable): sending too fast"
        );
        assert_eq!(show_body(&[0xff, 0x00]), "ff00");
    }
}
