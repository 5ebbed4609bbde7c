//! The bare relay: a server that speaks just enough of isle's wire protocol
//! for loadgen's phones and only forwards messages between connections. No
//! authentication (every code and key is accepted), no storage, no receipts,
//! no flow control: a `Send` is answered `Sent` and written to the
//! recipient's connection if it has one, and dropped (counted) if not, or if
//! that connection has `OUTBOX_BYTES_MAX` waiting already.
//!
//! It is the ceiling for this machine: what moving the same frames between
//! the same sockets costs with nothing else done. One executor, pinned with
//! `--cpu`, like isle with one shard.
//!
//! Like isle, a connection's replies and forwarded messages are gathered
//! and written once per pass of its writer, not once per frame.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
    task::Waker,
};

use ahash::AHashMap;
use clap::Parser;
use futures_lite::{
    io::{split, ReadHalf, WriteHalf},
    AsyncReadExt, AsyncWriteExt,
};
use glommio::{
    net::{TcpListener, TcpStream},
    LocalExecutorBuilder, Placement,
};
use wire::{
    decode_client, encode_server, split_frame, ClientFrame, DeviceKey, Phone, ServerFrame,
    FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:5230")]
    pub listen: SocketAddr,
    /// CPU to pin the relay's one executor to.
    #[arg(long)]
    pub cpu: Option<usize>,
}

/// Bytes one connection's outbox may hold before messages to it are
/// dropped. Far above what a reading phone ever has waiting.
const OUTBOX_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Bytes waiting to be written to one connection.
#[derive(Default)]
struct Outbox {
    bytes: RefCell<Vec<u8>>,
    waker: RefCell<Option<Waker>>,
}

impl Outbox {
    fn push(&self, frame: &ServerFrame<'_>) {
        encode_server(frame, &mut self.bytes.borrow_mut());
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

#[derive(Default)]
struct Relay {
    /// The connection each logged-in phone is on.
    phones: RefCell<AHashMap<Phone, Rc<Outbox>>>,
    next_id: Cell<u64>,
    /// Messages to phones with no connection, which the relay drops.
    dropped: Cell<u64>,
}

/// Runs the relay until the process is killed. Prints `relay ready
/// listen=ADDR` on stdout once it accepts connections.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let placement = match args.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let listen = args.listen;
    LocalExecutorBuilder::new(placement)
        .name("relay")
        .spawn(move || async move {
            let error = |e: glommio::GlommioError<()>| anyhow::anyhow!("{listen}: {e}");
            let listener = TcpListener::bind(listen).map_err(error)?;
            println!(
                "relay ready listen={}",
                listener.local_addr().map_err(error)?
            );
            let relay = Rc::new(Relay::default());
            loop {
                let stream = listener.accept().await.map_err(error)?;
                let relay = relay.clone();
                glommio::spawn_local(connection(relay, stream)).detach();
            }
        })
        .map_err(|e| anyhow::anyhow!("starting the relay: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("relay failed: {e}"))?
}

async fn connection(relay: Rc<Relay>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let outbox = Rc::new(Outbox::default());
    let (reader, writer) = split(stream);
    let phone = Cell::new(None);
    futures_lite::future::or(
        read_loop(&relay, &outbox, &phone, reader),
        write_loop(&outbox, writer),
    )
    .await;
    if let Some(phone) = phone.get() {
        let mut phones = relay.phones.borrow_mut();
        if phones.get(&phone).is_some_and(|o| Rc::ptr_eq(o, &outbox)) {
            phones.remove(&phone);
        }
    }
}

async fn read_loop(
    relay: &Relay,
    outbox: &Rc<Outbox>,
    phone: &Cell<Option<Phone>>,
    mut reader: ReadHalf<TcpStream>,
) {
    let mut inbox = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        inbox.extend_from_slice(&buffer[..n]);
        let mut consumed = 0;
        loop {
            // A bad frame ends the connection: buffering past it would let
            // the peer grow `inbox` without bound.
            let raw = match split_frame(&inbox[consumed..], FRAME_BYTES_MAX) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(_) => return,
            };
            let payload = consumed + wire::LENGTH_PREFIX_BYTES..consumed + raw.consumed;
            consumed += raw.consumed;
            let Ok(frame) = decode_client(&inbox[payload]) else {
                return;
            };
            handle(relay, outbox, phone, frame);
        }
        inbox.drain(..consumed);
        if inbox.is_empty() && inbox.capacity() > 4096 {
            inbox = Vec::new();
        }
    }
}

fn handle(relay: &Relay, outbox: &Rc<Outbox>, phone: &Cell<Option<Phone>>, frame: ClientFrame<'_>) {
    match frame {
        ClientFrame::Hello { .. } => outbox.push(&ServerFrame::Welcome {
            version: PROTOCOL_VERSION,
        }),
        ClientFrame::RequestCode { phone } => outbox.push(&ServerFrame::CodeSent {
            phone,
            expires_in_s: 600,
        }),
        ClientFrame::Verify { phone, .. } => outbox.push(&ServerFrame::Registered {
            phone,
            key: DeviceKey([0; wire::DEVICE_KEY_BYTES]),
        }),
        ClientFrame::Login { phone: number, .. } => {
            phone.set(Some(number));
            relay.phones.borrow_mut().insert(number, outbox.clone());
            outbox.push(&ServerFrame::LoggedIn { phone: number });
        }
        ClientFrame::Ping { nonce } => outbox.push(&ServerFrame::Pong { nonce }),
        ClientFrame::Send {
            client_id,
            to,
            body,
        } => {
            let id = relay.next_id.get() + 1;
            relay.next_id.set(id);
            outbox.push(&ServerFrame::Sent { client_id, id });
            let Some(from) = phone.get() else {
                return;
            };
            match relay.phones.borrow().get(&to) {
                // A recipient that does not read would make its outbox
                // grow without end: past the bound, drop like the offline.
                Some(recipient) if recipient.bytes.borrow().len() >= OUTBOX_BYTES_MAX => {
                    relay.dropped.set(relay.dropped.get() + 1)
                }
                Some(recipient) => recipient.push(&ServerFrame::Message {
                    seq: id,
                    from,
                    client_id,
                    sent_at_ms: 0,
                    body: body.into(),
                }),
                None => relay.dropped.set(relay.dropped.get() + 1),
            }
        }
        ClientFrame::Ack { .. } | ClientFrame::Read { .. } => {}
        // The baseline relays 1:1 messages only.
        ClientFrame::CreateGroup { client_id, .. }
        | ClientFrame::GroupSend { client_id, .. }
        | ClientFrame::ChangeGroup { client_id, .. } => outbox.push(&ServerFrame::Error {
            kind: wire::ErrorKind::BadRequest,
            client_id: Some(client_id),
            detail: "the relay has no groups".into(),
        }),
        // Nor presence, contacts or profiles: nothing is visible.
        ClientFrame::Subscribe { phone } => outbox.push(&ServerFrame::Presence {
            phone,
            presence: wire::Presence::Unavailable,
        }),
        ClientFrame::GetProfile { phone } => outbox.push(&ServerFrame::Profile {
            phone,
            profile: None,
        }),
        ClientFrame::Unsubscribe { .. }
        | ClientFrame::SetPresence { .. }
        | ClientFrame::Typing { .. } => {}
        ClientFrame::SyncContacts { client_id, .. }
        | ClientFrame::SetProfile { client_id, .. }
        | ClientFrame::SetPrivacy { client_id, .. }
        | ClientFrame::RegisterPush { client_id, .. } => outbox.push(&ServerFrame::Error {
            kind: wire::ErrorKind::BadRequest,
            client_id: Some(client_id),
            detail: "the relay keeps no contacts, profiles or push tokens".into(),
        }),
    }
}

async fn write_loop(outbox: &Outbox, mut writer: WriteHalf<TcpStream>) {
    let mut sending = Vec::new();
    loop {
        futures_lite::future::poll_fn(|cx| {
            if !outbox.bytes.borrow().is_empty() {
                return std::task::Poll::Ready(());
            }
            *outbox.waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        // Let the other connections' reads of this pass add their frames
        // first: one write then carries all of them.
        futures_lite::future::yield_now().await;
        std::mem::swap(&mut sending, &mut *outbox.bytes.borrow_mut());
        if writer.write_all(&sending).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        sending.clear();
        if sending.capacity() > 64 * 1024 {
            sending = Vec::new();
        }
    }
}
