//! The receiving side of links: the accept loop on this shard's peer
//! listener, the hello of each incoming connection (checked, then either
//! served here or handed to the shard it names), and the served
//! connection: data in, handed to the application in order; acks and
//! heartbeats out.

use std::{os::fd::FromRawFd, os::fd::IntoRawFd, rc::Rc, time::Duration};

use futures_lite::{
    io::{split, ReadHalf, WriteHalf},
    AsyncWriteExt,
};
use glommio::net::{TcpListener, TcpStream};

use shard::island::codec::CodecError;

use super::{
    frame::{self, Endpoint, Frame, Hello, Proof, Refusal, Welcome, PROOF_BYTES, VERSION},
    handover::Handover,
    io::{wait_signal_until, within, FrameReader, Killer},
    links::{bump, InLink, RemoteLinks},
    receive::{admit, check_hello, Admission, ReceiveSession},
    Delivery, Origin,
};

/// The first wait after a failed accept, and the longest (out of file
/// descriptors, wait for some to close rather than spin).
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

/// Accepts link connections until the links stop.
pub async fn accept_loop(links: Rc<RemoteLinks>, listener: TcpListener) {
    let mut backoff_ms = ACCEPT_BACKOFF_MIN_MS;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            links.stop_accepting.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                if links.log_limit.allow(links.now_ms()) {
                    log::warn!("shard {}: peer accept failed: {error}", links.local.shard);
                }
                glommio::timer::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(ACCEPT_BACKOFF_MAX_MS);
                continue;
            }
        };
        backoff_ms = ACCEPT_BACKOFF_MIN_MS;
        if links.stopping.get() {
            return;
        }
        links.spawn(serve_incoming(links.clone(), stream, Vec::new()));
    }
}

/// Takes the connections other shards of this node hand over.
pub async fn take_handovers(links: Rc<RemoteLinks>) {
    let shard = links.local.shard;
    while let Some(Handover { fd, pending }) = links.handovers.take(shard, &links.stopping).await {
        // SAFETY: the fd is a connected TCP socket whose other copy the
        // shard that sent it closed.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        links.spawn(serve_incoming(links.clone(), stream, pending));
    }
}

/// What the first frame of a connection makes it.
enum Incoming {
    /// A link from a shard of another node.
    Link(Admitted),
    /// A replication connection (docs/islands.md) for tablet `shard`:
    /// checked by the islands' runtime, not here.
    Replication { shard: u16 },
}

/// What the hello of a connection said, once checked.
struct Admitted {
    sender: Endpoint,
    to_shard: u16,
    session: u64,
    /// The hello's proof, which the welcome's answers.
    proof: Proof,
    /// The hello's bytes, to move past when served here.
    bytes: usize,
}

/// One incoming connection, from its hello to its end.
async fn serve_incoming(links: Rc<RemoteLinks>, stream: TcpStream, pending: Vec<u8>) {
    let _ = stream.set_nodelay(true);
    let Ok(killer) = Killer::of(&stream) else {
        return;
    };
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let (mut read, mut write) = split(stream);
    let mut reader = FrameReader::new(pending);
    // Until its hello, the connection holds a place that a newer one may
    // take (see `handshakes`): its kill switch goes with the place.
    let place = links.places.enter(peer.ip(), killer);
    let hello = within(
        links.config.handshake_timeout_ms,
        read_hello(&links, &mut read, &mut reader),
    )
    .await;
    let killer = place.finish();
    let checked = match (hello, killer) {
        (None, _) => Err((None, "no hello within the handshake timeout".to_owned())),
        (Some(_), None) => Err((
            None,
            "shut down before its hello was read, to make room for newer connections".to_owned(),
        )),
        (Some(result), Some(killer)) => result.map(|admitted| (admitted, killer)),
    };
    let checked = match checked {
        Ok((Incoming::Replication { shard }, killer)) => {
            drop((read, write));
            return replication(&links, shard, killer, reader.into_unread());
        }
        Ok((Incoming::Link(admitted), killer)) => Ok((admitted, killer)),
        Err(error) => Err(error),
    };
    let (admitted, killer) = match checked {
        Ok(checked) => checked,
        Err((refusal, why)) => {
            bump(&links.counters.handshakes_refused);
            match refusal {
                Some(Refusal::Unproven) => bump(&links.counters.hellos_unproven),
                Some(Refusal::NotApproved) => bump(&links.counters.hellos_not_approved),
                _ => {}
            }
            if links.log_limit.allow(links.now_ms()) {
                log::warn!(
                    "shard {}: refused a link from {peer}: {why}",
                    links.local.shard
                );
            }
            if let Some(refusal) = refusal {
                let mut out = Vec::new();
                frame::encode_refused(&mut out, refusal);
                let _ = write.write_all(&out).await;
            }
            return;
        }
    };
    if links.stopping.get() {
        return;
    }
    if admitted.to_shard != links.local.shard {
        drop((read, write));
        hand_over(&links, admitted.to_shard, killer, reader.into_unread());
        return;
    }
    reader.consume(admitted.bytes);
    serve_here(&links, admitted, killer, (read, write), reader).await;
}

/// Reads the first frame, which must be a hello this node accepts. A
/// refusal comes back with the frame to tell the dialer, if it is one.
async fn read_hello(
    links: &RemoteLinks,
    read: &mut ReadHalf<TcpStream>,
    reader: &mut FrameReader,
) -> Result<Incoming, (Option<Refusal>, String)> {
    loop {
        // Nothing is buffered for a stranger past the longest hello: the
        // frame bounds of links (1 MiB) and replication (8 MiB) hold only
        // once a hello was accepted.
        if let Some(prefix) = reader.unread().get(..frame::LENGTH_BYTES) {
            let length = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
            if length > frame::HELLO_BYTES_MAX {
                return Err((
                    None,
                    format!(
                        "a first frame of {length} bytes: a hello has at most {}",
                        frame::HELLO_BYTES_MAX
                    ),
                ));
            }
        }
        if let Some(found) = replication_hello(reader.unread()) {
            match found {
                Ok(Some(shard)) => return Ok(Incoming::Replication { shard }),
                Ok(None) => {}
                Err(error) => return Err((None, format!("replication hello: {error}"))),
            }
        } else {
            match reader.peek() {
                Ok(Some((Frame::Hello(hello), bytes))) => {
                    return check(links, &hello, bytes).map(Incoming::Link)
                }
                Ok(Some((other, _))) => {
                    let kind = super::send::kind_name(&other);
                    return Err((None, format!("a {kind} frame before any hello")));
                }
                Ok(None) => {}
                Err(error) => return Err((None, error.to_string())),
            }
        }
        match reader.fill(read).await {
            Ok(0) => return Err((None, "closed before its hello".into())),
            Ok(_) => {}
            Err(error) => return Err((None, format!("read: {error}"))),
        }
    }
}

fn check(
    links: &RemoteLinks,
    hello: &Hello<'_>,
    bytes: usize,
) -> Result<Admitted, (Option<Refusal>, String)> {
    let approve = |node, incarnation| (links.approve)(node, incarnation);
    let secret = links.secret.as_ref();
    if let Err(refusal) = check_hello(hello, &links.local, secret, links.config.queue, approve) {
        let why = format!(
            "{refusal} (it claims node {} incarnation {:x} shard {} of cluster {:?}, \
             for node {} shard {})",
            hello.from.node,
            hello.from.incarnation,
            hello.from.shard,
            String::from_utf8_lossy(hello.cluster),
            hello.to.node,
            hello.to.shard
        );
        return Err((Some(refusal), why));
    }
    Ok(Admitted {
        sender: hello.from,
        to_shard: hello.to.shard,
        session: hello.session,
        proof: hello.proof,
        bytes,
    })
}

/// Whether `unread` starts with a replication hello (its length, kind 1,
/// then the replication magic): `None` if not; else the tablet's shard,
/// once the hello is whole (`Ok(None)` until then), or why it is no hello.
/// A replication hello after its length: kind, magic, version, island,
/// shard, node, incarnation, proof (`shard::island::codec::Hello`).
const REPLICATION_HELLO_BYTES: usize =
    1 + 4 + 2 + 2 + 2 + 2 + 8 + shard::island::codec::PROOF_BYTES;
const _: () = assert!(REPLICATION_HELLO_BYTES <= frame::HELLO_BYTES_MAX);

fn replication_hello(unread: &[u8]) -> Option<Result<Option<u16>, CodecError>> {
    use shard::island::codec::{self, Decoded, ReplFrame, MAGIC};
    let prefix = codec::LENGTH_BYTES;
    if unread.len() < prefix + 1 + MAGIC.len()
        || unread[prefix] != 1
        || unread[prefix + 1..prefix + 1 + MAGIC.len()] != MAGIC
    {
        return None;
    }
    Some(match codec::decode(unread) {
        Ok(Decoded::Frame(ReplFrame::Hello(hello), _)) => Ok(Some(hello.shard)),
        Ok(Decoded::Frame(ReplFrame::Msg(_), _)) => Err(CodecError::UnknownKind(unread[prefix])),
        Ok(Decoded::Incomplete(_)) => Ok(None),
        Err(error) => Err(error),
    })
}

/// A replication connection: to the islands' runtime of the shard whose
/// tablet it carries (handed over there first, when that is another).
fn replication(links: &RemoteLinks, shard: u16, killer: Killer, pending: Vec<u8>) {
    if shard != links.local.shard {
        if shard >= links.handovers.shards() {
            log::warn!(
                "shard {}: refused a replication connection for shard {shard}, which this node \
                 does not run",
                links.local.shard
            );
            return;
        }
        return hand_over(links, shard, killer, pending);
    }
    match &links.replication {
        Some(take) => take(killer.into_fd(), pending),
        None => {
            if links.log_limit.allow(links.now_ms()) {
                log::warn!(
                    "shard {}: refused a replication connection: this node does not replicate \
                     (cluster.replication is off)",
                    links.local.shard
                );
            }
        }
    }
}

/// Passes the connection to the shard its hello named, hello and all.
fn hand_over(links: &RemoteLinks, shard: u16, killer: Killer, pending: Vec<u8>) {
    let handover = Handover {
        fd: killer.into_fd(),
        pending,
    };
    match links.handovers.offer(shard, handover) {
        Ok(()) => bump(&links.counters.handovers),
        Err(refused) => {
            // Closed as it drops; the dialer tries again after its backoff.
            drop(refused);
            bump(&links.counters.handovers_refused);
            if links.log_limit.allow(links.now_ms()) {
                log::warn!(
                    "shard {}: shard {shard}'s handover inbox is full: closed a link connection",
                    links.local.shard
                );
            }
        }
    }
}

/// Admits the sender's session here, welcomes it, and serves it.
async fn serve_here(
    links: &Rc<RemoteLinks>,
    admitted: Admitted,
    killer: Killer,
    (read, mut write): (ReadHalf<TcpStream>, WriteHalf<TcpStream>),
    reader: FrameReader,
) {
    let Some((link, generation, welcome)) = admit_here(links, &admitted, killer) else {
        let mut out = Vec::new();
        frame::encode_refused(&mut out, Refusal::StaleSession);
        let _ = write.write_all(&out).await;
        return;
    };
    let origin = Origin {
        sender: admitted.sender,
        session: admitted.session,
    };
    let ended = match write.write_all(&welcome).await {
        Err(error) => format!("writing the welcome: {error}"),
        Ok(()) => {
            let reading = read_data(links, &link, generation, origin, read, reader);
            let writing = write_acks(links, &link, generation, write);
            futures_lite::future::or(reading, writing).await
        }
    };
    if link.generation.get() == generation {
        link.connection.borrow_mut().take();
        link.session.borrow_mut().on_disconnect();
    }
    log::info!(
        "shard {}: link from node {} shard {} ended: {ended}",
        links.local.shard,
        origin.sender.node,
        origin.sender.shard
    );
}

/// Decides resume or start over, makes this connection the sender's
/// current one (ending any before it), and returns the welcome's bytes.
fn admit_here(
    links: &RemoteLinks,
    admitted: &Admitted,
    killer: Killer,
) -> Option<(Rc<InLink>, u64, Vec<u8>)> {
    let sender = admitted.sender;
    let key = (sender.node, sender.shard);
    let fresh = || {
        ReceiveSession::new(
            sender,
            admitted.session,
            links.config.queue,
            links.config.timing,
        )
    };
    let held = links.held_inbound(key);
    let admission = {
        let session = held.as_ref().map(|link| link.session.borrow());
        admit(session.as_deref(), sender, admitted.session)
    };
    let link = match admission {
        Err(refusal) => {
            bump(&links.counters.handshakes_refused);
            if links.log_limit.allow(links.now_ms()) {
                log::warn!(
                    "shard {}: refused a link from node {} shard {}: its session {} is older \
                     than the one held ({refusal:?}); a delayed connection of a sender that \
                     has dialed again since",
                    links.local.shard,
                    sender.node,
                    sender.shard,
                    admitted.session
                );
            }
            return None;
        }
        Ok(Admission::Resume) => held.expect("resume needs a held session"),
        Ok(Admission::Fresh { replaced }) => {
            if replaced.is_some() {
                bump(&links.counters.sender_resets);
            }
            let link = links.inbound(key, fresh);
            *link.session.borrow_mut() = fresh();
            link
        }
    };
    let generation = link.generation.get() + 1;
    link.generation.set(generation);
    if let Some(old) = link.connection.replace(Some(killer)) {
        old.kill();
    }
    let mut session = link.session.borrow_mut();
    session.on_connect(links.now_ms());
    let (received, released) = session.resume_point();
    let mut welcome = Welcome {
        version: VERSION,
        cluster: links.local.cluster.as_bytes(),
        from: links.endpoint(),
        received,
        released,
        proof: [0; PROOF_BYTES],
    };
    if let Some(secret) = &links.secret {
        welcome.proof = secret.prove_welcome(&welcome, &admitted.proof);
    }
    let mut bytes = Vec::new();
    frame::encode_welcome(&mut bytes, &welcome);
    let welcome = bytes;
    drop(session);
    Some((link, generation, welcome))
}

/// Reads data until the connection ends, handing each read's payloads to
/// the application in one delivery.
async fn read_data(
    links: &RemoteLinks,
    link: &InLink,
    generation: u64,
    origin: Origin,
    mut read: ReadHalf<TcpStream>,
    mut reader: FrameReader,
) -> String {
    loop {
        if link.generation.get() != generation {
            return "replaced by a newer connection".into();
        }
        let (delivery, broken) = take_frames(links, link, origin, &mut reader);
        // What the session took is handed up even when a later frame broke
        // the rules: its numbers are spent.
        if let Some(delivery) = delivery {
            (links.deliver)(delivery);
        }
        if let Some(why) = broken {
            bump(&links.counters.frames_refused);
            if links.log_limit.allow(links.now_ms()) {
                log::warn!(
                    "shard {}: closing the link from node {} shard {}: {why}",
                    links.local.shard,
                    origin.sender.node,
                    origin.sender.shard
                );
            }
            return why;
        }
        match reader.fill(&mut read).await {
            Ok(0) => return "closed by the peer".into(),
            Ok(_) => {}
            Err(error) => return format!("read: {error}"),
        }
    }
}

/// The frames read so far, through the session: the payloads to deliver,
/// and what was wrong if a frame broke the rules.
fn take_frames(
    links: &RemoteLinks,
    link: &InLink,
    origin: Origin,
    reader: &mut FrameReader,
) -> (Option<Delivery>, Option<String>) {
    let now_ms = links.now_ms();
    let mut session = link.session.borrow_mut();
    let mut delivery: Option<Delivery> = None;
    loop {
        let frame = match reader.next() {
            Ok(Some(frame)) => frame,
            Ok(None) => return (delivery, None),
            Err(error) => return (delivery, Some(error.to_string())),
        };
        match session.on_frame(&frame, now_ms) {
            Ok(None) => {}
            Ok(Some((seq, payload))) => {
                let delivery = delivery.get_or_insert_with(|| Delivery {
                    origin,
                    first_seq: seq,
                    payloads: Vec::new(),
                });
                delivery.payloads.push(payload.to_vec());
            }
            Err(error) => return (delivery, Some(error.to_string())),
        }
    }
}

/// Writes acks as the application releases, and heartbeats, until the
/// connection ends, is replaced, or falls silent.
async fn write_acks(
    links: &RemoteLinks,
    link: &InLink,
    generation: u64,
    mut write: WriteHalf<TcpStream>,
) -> String {
    let mut out = Vec::new();
    loop {
        if link.generation.get() != generation {
            return "replaced by a newer connection".into();
        }
        let now_ms = links.now_ms();
        out.clear();
        let deadline = {
            let mut session = link.session.borrow_mut();
            if let Err(silent) = session.check_silence(now_ms) {
                return silent.to_string();
            }
            session.poll_transmit(now_ms, &mut out);
            session.poll_timeout()
        };
        if out.is_empty() {
            wait_signal_until(&link.wake_writer, &links.clock, deadline).await;
            continue;
        }
        if let Err(error) = write.write_all(&out).await {
            return format!("write: {error}");
        }
    }
}
