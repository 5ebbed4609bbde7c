//! The task of one outgoing link: dial (at most `dials_max` of a shard's
//! links at once), say hello, take the welcome, then write data and read
//! acks until the connection ends; then dial again after a jittered,
//! growing delay. What the queue holds stays across connections: the
//! session resumes from the receiver's resume point.

use std::{rc::Rc, time::Duration};

use futures_lite::{
    io::{split, ReadHalf, WriteHalf},
    AsyncWriteExt,
};
use glommio::net::TcpStream;

use super::{
    backoff::Backoff,
    frame::{self, Frame, Hello, Proof, Refusal, Welcome, PROOF_BYTES, VERSION},
    io::{wait_signal_until, within, FrameReader, Killer, WRITE_BYTES_TARGET},
    links::{bump, OutLink, RemoteLinks},
    proof::proofs_match,
    SessionError,
};

/// How a connection (or the attempt at one) ended.
#[derive(Debug)]
enum Ended {
    /// It served until this happened; the next dial comes soon.
    Served(String),
    /// The receiver is a new incarnation: the session was reset, and the
    /// next dial names the new session at once.
    Reset,
    /// No connection: dial again after the backoff.
    Failed(String),
    /// The links stop.
    Stopped,
}

/// Runs the link until it is forgotten or the links stop.
pub async fn run_link(links: Rc<RemoteLinks>, link: Rc<OutLink>, seed: u64) {
    let config = links.config;
    let mut backoff = Backoff::new(config.redial_min_ms, config.redial_max_ms, seed);
    let mut failures = 0_u64;
    while !link.forgotten.get() && !links.stopping.get() {
        let ended = dial_and_serve(&links, &link).await;
        link.connection.borrow_mut().take();
        link.session.borrow_mut().on_disconnect();
        let shard = links.local.shard;
        let delay_ms = match ended {
            Ended::Served(why) => {
                log::info!("shard {shard}: link to node {} ended: {why}", link.node);
                backoff.reset();
                failures = 0;
                backoff.next_ms()
            }
            Ended::Reset => 0,
            Ended::Failed(why) => {
                bump(&link.dial_failures);
                failures += 1;
                // One line per run of failures: a node that is down for
                // minutes would otherwise log every few seconds per shard.
                if failures == 1 {
                    log::warn!(
                        "shard {shard}: link to node {} cannot connect: {why}; \
                         dialing again with backoff",
                        link.node
                    );
                }
                backoff.next_ms()
            }
            Ended::Stopped => return,
        };
        if delay_ms > 0 {
            let wait = glommio::timer::sleep(Duration::from_millis(delay_ms));
            futures_lite::future::or(wait, link.wake_task.wait()).await;
        }
    }
}

/// One connection: dial, handshake, serve.
async fn dial_and_serve(links: &Rc<RemoteLinks>, link: &Rc<OutLink>) -> Ended {
    let Ok(permit) = links.dials.acquire_permit(1).await else {
        return Ended::Stopped;
    };
    if link.forgotten.get() {
        return Ended::Stopped;
    }
    let target = link.target.get();
    let timeout = Duration::from_millis(links.config.dial_timeout_ms.max(1));
    let stream = match TcpStream::connect_timeout(target.addr, timeout).await {
        Ok(stream) => stream,
        Err(error) => return Ended::Failed(format!("connect to {}: {error}", target.addr)),
    };
    let _ = stream.set_nodelay(true);
    let killer = match Killer::of(&stream) {
        Ok(killer) => killer,
        Err(error) => return Ended::Failed(format!("dup of the socket: {error}")),
    };
    let (mut read, mut write) = split(stream);
    let mut reader = FrameReader::new(Vec::new());
    let handshake = handshake(links, link, (&mut read, &mut write), &mut reader);
    let handshake = within(links.config.handshake_timeout_ms, handshake).await;
    drop(permit);
    match handshake {
        None => return Ended::Failed("no welcome within the handshake timeout".into()),
        Some(Err(ended)) => return ended,
        Some(Ok(())) => {}
    }
    bump(&link.connects);
    *link.connection.borrow_mut() = Some(killer);
    // The welcome's resume point may have acknowledged what the last
    // connection's acks did not reach: room for whoever waits for it.
    link.wake_room();
    if link.forgotten.get() {
        return Ended::Stopped;
    }
    log::info!(
        "shard {}: link to node {} shard {} at {} is up",
        links.local.shard,
        link.node,
        target.shard,
        target.addr
    );
    let reading = read_acks(links, link, read, reader);
    let writing = write_data(links, link, write);
    futures_lite::future::or(reading, writing).await
}

/// Writes the hello and takes the welcome into the session.
async fn handshake(
    links: &RemoteLinks,
    link: &OutLink,
    (read, write): (&mut ReadHalf<TcpStream>, &mut WriteHalf<TcpStream>),
    reader: &mut FrameReader,
) -> Result<(), Ended> {
    let (hello, proof) = hello_bytes(links, link);
    if let Err(error) = write.write_all(&hello).await {
        return Err(Ended::Failed(format!("writing the hello: {error}")));
    }
    loop {
        match reader.next() {
            Ok(Some(frame)) => return take_welcome(links, link, &frame, &proof),
            Ok(None) => {}
            Err(error) => return Err(refused_by_peer(links, link, error.to_string())),
        }
        match reader.fill(read).await {
            Ok(0) => return Err(Ended::Failed("closed before its welcome".into())),
            Ok(_) => {}
            Err(error) => return Err(Ended::Failed(format!("reading the welcome: {error}"))),
        }
    }
}

/// The hello's bytes, and its proof (which the welcome must answer).
fn hello_bytes(links: &RemoteLinks, link: &OutLink) -> (Vec<u8>, Proof) {
    let target = link.target.get();
    let session = link.session.borrow();
    let queue = links.config.queue;
    let mut hello = Hello {
        version: VERSION,
        cluster: links.local.cluster.as_bytes(),
        from: links.endpoint(),
        to: frame::Endpoint {
            node: link.node,
            incarnation: target.incarnation,
            shard: target.shard,
        },
        session: session.session(),
        window_messages: queue.messages_max.min(u32::MAX as usize) as u32,
        window_bytes: queue.bytes_max as u64,
        proof: [0; PROOF_BYTES],
    };
    if let Some(secret) = &links.secret {
        hello.proof = secret.prove_hello(&hello);
    }
    let mut out = Vec::new();
    frame::encode_hello(&mut out, &hello);
    (out, hello.proof)
}

/// Checks the receiver's first frame and resumes the session from it.
fn take_welcome(
    links: &RemoteLinks,
    link: &OutLink,
    frame: &Frame<'_>,
    hello_proof: &Proof,
) -> Result<(), Ended> {
    let welcome: &Welcome<'_> = match frame {
        Frame::Welcome(welcome) => welcome,
        Frame::Refused(refusal) => return Err(refused(links, link, *refusal)),
        other => {
            let what = format!(
                "a {} frame instead of a welcome",
                super::send::kind_name(other)
            );
            return Err(refused_by_peer(links, link, what));
        }
    };
    let target = link.target.get();
    let from = welcome.from;
    if welcome.version != VERSION
        || welcome.cluster != links.local.cluster.as_bytes()
        || from.node != link.node
        || from.shard != target.shard
    {
        let what = format!(
            "a welcome from node {} shard {} version {} of cluster {:?}",
            from.node,
            from.shard,
            welcome.version,
            String::from_utf8_lossy(welcome.cluster)
        );
        return Err(refused_by_peer(links, link, what));
    }
    if let Some(secret) = &links.secret {
        if !proofs_match(&secret.prove_welcome(welcome, hello_proof), &welcome.proof) {
            let what = format!(
                "node {} answers without a valid proof of the cluster's secret",
                from.node
            );
            return Err(refused_by_peer(links, link, what));
        }
    }
    if !(links.approve)(from.node, from.incarnation) {
        return Err(Ended::Failed(format!(
            "node {} answers as incarnation {:x}, which is not approved",
            from.node, from.incarnation
        )));
    }
    let now_ms = links.now_ms();
    let mut session = link.session.borrow_mut();
    match session.on_welcome(welcome, now_ms) {
        Ok(()) => Ok(()),
        Err(SessionError::ReceiverRestarted { expected, found }) => {
            log::warn!(
                "shard {}: node {} is incarnation {found:x}, not {expected:x}: its link \
                 starts its session over and sends its queue again",
                links.local.shard,
                link.node
            );
            session.reset(links.take_session_number(), Some(found));
            Err(Ended::Reset)
        }
        Err(error) => {
            drop(session);
            Err(refused_by_peer(links, link, error.to_string()))
        }
    }
}

fn refused(links: &RemoteLinks, link: &OutLink, refusal: Refusal) -> Ended {
    if refusal == Refusal::Busy {
        return Ended::Failed(format!("node {} is busy", link.node));
    }
    if links.log_limit.allow(links.now_ms()) {
        log::warn!(
            "shard {}: node {} refused this shard's link: {refusal}",
            links.local.shard,
            link.node
        );
    }
    Ended::Failed(format!("refused: {refusal}"))
}

/// The receiver broke the protocol: counted, logged (within the limit),
/// and the connection closed.
fn refused_by_peer(links: &RemoteLinks, link: &OutLink, what: String) -> Ended {
    bump(&link.frames_refused);
    if links.log_limit.allow(links.now_ms()) {
        log::warn!(
            "shard {}: closing the link to node {}: {what}",
            links.local.shard,
            link.node
        );
    }
    Ended::Failed(what)
}

/// Reads acks (and the receiver's heartbeats) until the connection ends.
async fn read_acks(
    links: &RemoteLinks,
    link: &OutLink,
    mut read: ReadHalf<TcpStream>,
    mut reader: FrameReader,
) -> Ended {
    loop {
        let now_ms = links.now_ms();
        let mut freed = 0;
        loop {
            let mut session = link.session.borrow_mut();
            match reader.next() {
                Ok(Some(frame)) => match session.on_frame(&frame, now_ms) {
                    Ok(count) => freed += count,
                    // Reset under this connection: it is being closed.
                    Err(SessionError::NotConnected) => return Ended::Served("reset".into()),
                    Err(error) => {
                        drop(session);
                        return refused_by_peer(links, link, error.to_string());
                    }
                },
                Ok(None) => break,
                Err(error) => {
                    drop(session);
                    return refused_by_peer(links, link, error.to_string());
                }
            }
        }
        if freed > 0 {
            link.wake_room();
        }
        match reader.fill(&mut read).await {
            Ok(0) => return Ended::Served("closed by the peer".into()),
            Ok(_) => {}
            Err(error) => return Ended::Served(format!("read: {error}")),
        }
    }
}

/// Writes what the session has to send (data, heartbeats) until the
/// connection ends or falls silent.
async fn write_data(links: &RemoteLinks, link: &OutLink, mut write: WriteHalf<TcpStream>) -> Ended {
    let mut out = Vec::new();
    loop {
        if link.forgotten.get() {
            return Ended::Stopped;
        }
        let now_ms = links.now_ms();
        out.clear();
        let deadline = {
            let mut session = link.session.borrow_mut();
            if let Err(silent) = session.check_silence(now_ms) {
                return Ended::Served(silent.to_string());
            }
            session.poll_transmit(now_ms, &mut out, WRITE_BYTES_TARGET);
            session.poll_timeout()
        };
        if out.is_empty() {
            wait_signal_until(&link.wake_writer, &links.clock, deadline).await;
            continue;
        }
        if let Err(ended) = write_watched(links, link, &mut write, &out).await {
            return ended;
        }
    }
}

/// Writes `out`, checking the receiver's silence while the write is
/// blocked (a silent partition fills the socket's buffer, and the write
/// would wait for TCP's own retransmits, minutes): a link silent for
/// `silent_close_ms` closes even mid-write.
async fn write_watched(
    links: &RemoteLinks,
    link: &OutLink,
    write: &mut WriteHalf<TcpStream>,
    out: &[u8],
) -> Result<(), Ended> {
    let silent_close_ms = links.config.timing.silent_close_ms;
    let mut writing = std::pin::pin!(write.write_all(out));
    loop {
        let now_ms = links.now_ms();
        let heard_ms = link.session.borrow().silent_ms(now_ms).unwrap_or(0);
        let budget_ms = silent_close_ms.saturating_sub(heard_ms).max(1);
        match within(budget_ms, writing.as_mut()).await {
            Some(Ok(())) => return Ok(()),
            Some(Err(error)) => return Err(Ended::Served(format!("write: {error}"))),
            None => {
                let session = link.session.borrow();
                if let Err(silent) = session.check_silence(links.now_ms()) {
                    return Err(Ended::Served(format!(
                        "{silent} (while a write was blocked)"
                    )));
                }
            }
        }
    }
}
