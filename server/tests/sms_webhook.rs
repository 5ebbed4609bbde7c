//! Signup codes POSTed to a webhook, received by an HTTP listener the test runs.

mod common;

use std::time::Duration;

use common::{expect, http_receiver, Server};
use loadgen::client::Event;
use wire::{ClientFrame, Phone};

#[test]
fn codes_are_posted_as_json_and_verify() {
    let (url, bodies) = http_receiver(|_| 204);
    let server = Server::start(&["--sms-webhook", &url]);
    common::await_sms_budget();
    let phone = Phone::parse("+4915112345678").unwrap();
    let mut client = server.connect();
    let key = client
        .sign_up(phone, || {
            let json = bodies.recv_timeout(Duration::from_secs(10))?;
            assert_eq!(json["phone"], "+4915112345678");
            let code = json["code"].as_str().unwrap();
            assert_eq!(code.len(), 6);
            assert!(json["text"].as_str().unwrap().contains(code));
            Ok(code.parse()?)
        })
        .unwrap();
    client.login(phone, key).unwrap();
    client.send(&ClientFrame::Ping { nonce: 2 }).unwrap();
    expect(&mut client, "Pong", |e| *e == Event::Pong { nonce: 2 });
    assert!(
        !server.data_dir().join("sms-outbox.log").exists(),
        "the webhook replaces the outbox"
    );
}
