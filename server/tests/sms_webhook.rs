//! Signup codes POSTed to a webhook, received by an HTTP listener the test runs.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::mpsc,
    time::Duration,
};

use common::{expect, Server};
use loadgen::client::Event;
use wire::{ClientFrame, Phone};

#[test]
fn codes_are_posted_as_json_and_verify() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    let (tx, bodies) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            assert!(request_line.starts_with("POST /sms "), "{request_line}");
            stream
                .write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
            let _ = tx.send(String::from_utf8(body).unwrap());
        }
    });

    let server = Server::start(&["--sms-webhook", &url]);
    let phone = Phone::parse("+4915112345678").unwrap();
    let mut client = server.connect();
    let key = client
        .sign_up(phone, || {
            let body = bodies.recv_timeout(Duration::from_secs(10))?;
            let json: serde_json::Value = serde_json::from_str(&body)?;
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
