//! `loadgen phone` against the real server: two phones sign up with a
//! code, log in, message each other, acknowledge and read, and log in
//! again later with the key the first run saved. Each phone is driven
//! through a pipe as its standard input, and its output is read as a
//! person would read it.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use clap::Parser;
use common::Server;

/// Longest wait for a line a phone should print.
const LINE_WAIT: Duration = Duration::from_secs(10);

/// One `loadgen phone`, its input a pipe the test writes commands into and
/// its output a pipe read line by line.
struct Phone {
    name: &'static str,
    input: Option<std::io::PipeWriter>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    run: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Phone {
    fn start(name: &'static str, server: &Server, keys: &std::path::Path) -> Phone {
        let target = server.plain.to_string();
        let keys = keys.to_str().unwrap();
        let args = loadgen::phone::Args::parse_from(["phone", "--target", &target, "--keys", keys]);
        let (input_reader, input) = std::io::pipe().unwrap();
        let (output, output_writer) = std::io::pipe().unwrap();
        let run = std::thread::spawn(move || {
            loadgen::phone::run(&args, BufReader::new(input_reader), output_writer)
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Phone {
            name,
            input: Some(input),
            lines,
            seen: Vec::new(),
            run: Some(run),
        }
    }

    fn say(&mut self, command: &str) {
        let input = self.input.as_mut().expect("input open");
        writeln!(input, "{command}").unwrap();
    }

    /// The next line that contains `wanted`, within `LINE_WAIT`.
    fn expect(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(wanted) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{} never printed {wanted:?}; it printed {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Ends the input; the phone prints what is still coming and ends.
    fn finish(mut self) {
        drop(self.input.take());
        let run = self.run.take().unwrap();
        run.join().unwrap().expect("the phone ran");
    }
}

/// `value` in a line's `name=value` field.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

#[test]
fn a_phone_driven_by_hand_signs_up_sends_acknowledges_and_reads() {
    let server = Server::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let mut alice = Phone::start("alice", &server, keys.path());
    alice.expect("< Welcome version=1");
    alice.say("signup +15550000001");
    alice.expect("< CodeSent +15550000001 expires_in_s=600");
    alice.say("code 111111");
    alice.expect("< Registered +15550000001 key=");
    alice.expect("# key saved to");
    alice.expect("< LoggedIn +15550000001");
    let mut bob = Phone::start("bob", &server, keys.path());
    bob.say("signup +15550000002");
    bob.say("code 111111");
    let registered = bob.expect("< Registered +15550000002 key=");
    let bob_key = field(&registered, "key").to_owned();
    bob.expect("< LoggedIn +15550000002");

    alice.say("send +15550000002 hello bob");
    let sent = alice.expect("> Send client_id=");
    let client_id = field(&sent, "client_id").to_owned();
    alice.expect(&format!("< Sent client_id={client_id} id=1"));
    let message = bob.expect("< Message seq=1 from=+15550000001");
    assert!(
        message.contains(&format!("client_id={client_id} "))
            && message.ends_with("body=\"hello bob\""),
        "{message}"
    );
    bob.say("ack");
    bob.expect("> Ack up_to=1");
    alice.expect(&format!("Delivered by=+15550000002 client_id={client_id}"));
    bob.say(&format!("read +15550000001 {client_id}"));
    alice.expect(&format!("Read by=+15550000002 client_id={client_id}"));

    // Mistakes are reported, and the phone goes on.
    alice.say("send +15550000009 anyone there?");
    alice.expect("< Error UnknownRecipient client_id=");
    alice.say("dance");
    alice.expect("! cannot read \"dance\"");
    alice.say("ping");
    alice.expect("< Pong nonce=1");
    alice.say("quit");
    alice.finish();

    // Later: alice with the key the signup saved, bob with his key typed
    // in; his first connection is replaced.
    let mut alice = Phone::start("alice again", &server, keys.path());
    alice.say("login +15550000001");
    alice.expect("< LoggedIn +15550000001");
    alice.finish();
    let mut bob_again = Phone::start("bob again", &server, keys.path());
    bob_again.say(&format!("login +15550000002 {bob_key}"));
    bob_again.expect("< LoggedIn +15550000002");
    bob.expect("< Bye Replaced");
    bob.expect("# the server closed the connection");
    bob.finish();
    bob_again.finish();
}
