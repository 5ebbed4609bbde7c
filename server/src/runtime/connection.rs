//! The connection task: one hand-written future per connection that reads
//! frames into the shard, writes the connection's outbox out, hands the
//! connection over to its home shard, and lingers once it is closed.
//!
//! [`ConnectionTasks`] is what the tasks of one shard share: the waker of
//! each (so the shard's wake-ups reach it), the one read buffer, and the
//! counts of live and lingering tasks.

use std::{
    cell::{Cell, RefCell, RefMut},
    future::Future,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use ahash::AHashMap;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use server::flow::{Flow, Flush, LinkState, Read};
use shard::{island::IslandId, ConnId, FrameOutcome};
use wire::{decode_client, split_frame, ErrorKind, FrameError, FRAME_BYTES_MAX};

use super::{links::Adoption, Runtime};
use crate::transport::Transport;

/// Bytes read from a socket per call, into the shard's one scratch buffer:
/// an idle connection holds no read buffer at all.
const READ_SCRATCH_BYTES: usize = 64 * 1024;

/// How long a closing connection keeps reading (and discarding) so that its
/// last frames are not destroyed by a reset.
const LINGER_MS: u64 = 1_000;

/// Closed connections a shard lets linger at once (see `ConnTask::linger`),
/// and never more than a quarter of its places for anonymous connections.
const LINGERING_MAX: usize = 64;

/// What a lingering socket reads into (and discards) per call: it only
/// waits for the phone to close, so one small buffer on the task's stack.
const LINGER_READ_BYTES: usize = 512;

/// What the connection tasks of one shard share.
pub struct ConnectionTasks {
    /// Each live task's waker, for the wake-ups the shard asks for, and
    /// its phone's address, for the log and the operator.
    tasks: RefCell<AHashMap<ConnId, TaskEntry>>,
    /// Connections the shard woke, noted while it is borrowed and woken
    /// after (kept to reuse its memory).
    woken: RefCell<Vec<ConnId>>,
    /// The one read buffer: reads go here within a single poll.
    scratch: RefCell<Vec<u8>>,
    /// Connection tasks alive on this shard.
    live: Cell<usize>,
    /// Closed sockets still lingering (`LINGERING_MAX` at most).
    lingering: Cell<usize>,
    /// Bytes read from and written to phones' sockets since start, as
    /// they crossed the socket (TLS records included).
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
}

/// What the shard's side knows of one connection task.
struct TaskEntry {
    /// Set once the task was first polled.
    waker: Option<Waker>,
    /// The phone's address and port (`None`: the socket had none left).
    peer: Option<SocketAddr>,
}

impl ConnectionTasks {
    pub fn new() -> ConnectionTasks {
        ConnectionTasks {
            tasks: RefCell::new(AHashMap::new()),
            woken: RefCell::new(Vec::new()),
            scratch: RefCell::new(vec![0; READ_SCRATCH_BYTES]),
            live: Cell::new(0),
            lingering: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
        }
    }

    /// Bytes read from and written to phones since start.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_in.get(), self.bytes_out.get())
    }

    /// Connection tasks alive on this shard.
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Notes connections the shard woke; [`ConnectionTasks::wake_noted`]
    /// wakes their tasks once the shard is no longer borrowed.
    pub fn note_woken(&self, ids: impl IntoIterator<Item = ConnId>) {
        self.woken.borrow_mut().extend(ids);
    }

    pub fn wake_noted(&self) {
        let tasks = self.tasks.borrow();
        for id in self.woken.borrow_mut().drain(..) {
            if let Some(waker) = tasks.get(&id).and_then(|task| task.waker.as_ref()) {
                waker.wake_by_ref();
            }
        }
    }

    /// The address (with its port) of the phone on connection `id`, while
    /// its task lives on this shard.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.tasks.borrow().get(&id)?.peer
    }

    /// Keeps the waker of `id`'s task for the shard's wake-ups.
    fn register(&self, id: ConnId, waker: &Waker) {
        let mut tasks = self.tasks.borrow_mut();
        let task = tasks.entry(id).or_insert_with(|| TaskEntry {
            waker: None,
            peer: None,
        });
        match &mut task.waker {
            Some(known) if known.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    fn scratch(&self) -> RefMut<'_, Vec<u8>> {
        self.scratch.borrow_mut()
    }

    /// A task has ended.
    fn ended(&self, id: ConnId) {
        self.tasks.borrow_mut().remove(&id);
        self.live.set(self.live.get() - 1);
    }

    /// Takes a place to linger, if one of `max` is free.
    fn start_lingering(&self, max: usize) -> bool {
        if self.lingering.get() >= max {
            return false;
        }
        self.lingering.set(self.lingering.get() + 1);
        true
    }

    fn stop_lingering(&self) {
        self.lingering.set(self.lingering.get() - 1);
    }
}

/// Starts the task of connection `id`; `pending` holds plaintext already
/// read (by the shard it came from) and not yet handled.
pub fn spawn_connection(
    runtime: &Rc<Runtime>,
    id: ConnId,
    stream: TcpStream,
    transport: Transport,
    pending: Vec<u8>,
) {
    let tasks = &runtime.connections;
    tasks.live.set(tasks.live.get() + 1);
    // Asked now: once the phone resets the connection, the socket has no
    // peer any more, and that is when the log wants it.
    let peer = stream.peer_addr().ok();
    tasks
        .tasks
        .borrow_mut()
        .insert(id, TaskEntry { waker: None, peer });
    let task = ConnTask {
        runtime: runtime.clone(),
        id,
        stream: Some(stream),
        transport: Some(transport),
        flow: Flow::new(!pending.is_empty()),
        inbox: pending,
        tx: Vec::new(),
        tx_written: 0,
        handover_to: None,
    };
    glommio::spawn_local(task).detach();
}

/// One connection: reads frames into the shard, writes its outbox out.
struct ConnTask {
    runtime: Rc<Runtime>,
    id: ConnId,
    stream: Option<TcpStream>,
    transport: Option<Transport>,
    /// When to write, wait for a commit, and read (see `server::flow`).
    flow: Flow,
    /// Plaintext read but not yet handled: a partial frame, frames kept
    /// while the shard wants no input, or frames that wait for a handover.
    /// Empty (and unallocated) while idle.
    inbox: Vec<u8>,
    /// Bytes for the socket, and how many of them are written.
    tx: Vec<u8>,
    tx_written: usize,
    /// The home shard this connection moves to once its outbox is written.
    /// The tablet (island, shard) this connection moves to once its
    /// bytes are written.
    handover_to: Option<(IslandId, u16)>,
}

enum Step {
    Progress,
    Idle,
    Done,
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.flow.polled();
        this.runtime.connections.register(this.id, cx.waker());
        loop {
            let step = this.step(cx);
            match step {
                Step::Progress => continue,
                Step::Idle => return Poll::Pending,
                Step::Done => {
                    this.finish();
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl ConnTask {
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        if self.runtime.shard().is_abandoned(self.id) {
            // Closing, and the phone did not take its last bytes in time.
            return Step::Done;
        }
        let mut progress = false;
        match self.write(cx) {
            Err(()) => return Step::Done,
            Ok(wrote) => progress |= wrote,
        }
        let all_written =
            self.tx_written == self.tx.len() && self.runtime.shard().outbox_len(self.id) == 0;
        if all_written {
            if let Some(tablet) = self.handover_to {
                self.hand_over(tablet);
                return Step::Done;
            }
            if self.runtime.shard().is_closing(self.id) {
                self.linger();
                return Step::Done;
            }
        }
        let wants_input = self.handover_to.is_none() && self.runtime.shard().wants_input(self.id);
        let runtime = &self.runtime;
        let link = |destination| LinkState {
            congested: runtime.is_congested(destination),
            drains: runtime.drains(destination),
        };
        match self.flow.read(wants_input, link) {
            Read::Inbox => {
                let inbox = std::mem::take(&mut self.inbox);
                self.handle_bytes(&inbox);
                return Step::Progress;
            }
            Read::Socket => match self.read(cx) {
                Err(()) => return Step::Done,
                Ok(read) => progress |= read,
            },
            Read::Paused {
                destination,
                register,
            } => {
                if register {
                    runtime.wake_when_drained(destination, cx.waker().clone());
                }
            }
            Read::Nothing => {}
        }
        if progress {
            Step::Progress
        } else {
            Step::Idle
        }
    }

    /// Reads what the socket has into the shard's scratch buffer and
    /// handles it. Err when the connection must end now.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let runtime = self.runtime.clone();
        let mut scratch = runtime.connections.scratch();
        let stream = self.stream.as_mut().expect("present until done");
        match Pin::new(stream).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(0)) => {
                self.hung_up(&"closed the connection");
                Err(())
            }
            Poll::Ready(Err(error)) => {
                self.hung_up(&error);
                Err(())
            }
            Poll::Ready(Ok(n)) => {
                self.count_in(n);
                match self.ingest(&scratch[..n]) {
                    true => Err(()),
                    false => Ok(true),
                }
            }
            Poll::Pending => Ok(false),
        }
    }

    /// The phone ended the connection, as `how` says.
    fn hung_up(&self, how: &dyn std::fmt::Display) {
        let runtime = &self.runtime;
        let phone = runtime.shard().logged_in(self.id);
        runtime
            .events
            .hung_up(runtime.connections.peer(self.id), phone, how);
    }

    /// Counts `n` bytes read from the socket.
    fn count_in(&self, n: usize) {
        let bytes_in = &self.runtime.connections.bytes_in;
        bytes_in.set(bytes_in.get() + n as u64);
    }

    /// Decrypts (if TLS) and handles socket bytes. Returns true when the
    /// connection must end now.
    fn ingest(&mut self, bytes: &[u8]) -> bool {
        let transport = self.transport.as_mut().expect("present until done");
        if matches!(transport, Transport::Plain) && self.inbox.is_empty() {
            // The common case: whole frames straight from the scratch buffer.
            self.handle_bytes(bytes);
            return false;
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        let handshaking = transport.is_handshaking();
        match transport.ingest(bytes, &mut inbox) {
            Ok(peer_closed) => {
                self.handle_bytes(&inbox);
                if peer_closed {
                    self.hung_up(&"closed the TLS session");
                }
                peer_closed
            }
            Err(error) if handshaking => {
                let peer = self.runtime.connections.peer(self.id);
                self.runtime.events.tls_failed(peer, &error);
                true
            }
            Err(error) => {
                self.hung_up(&error);
                true
            }
        }
    }

    /// Handles every whole frame in `bytes`; keeps the rest in `inbox`.
    fn handle_bytes(&mut self, bytes: &[u8]) {
        let runtime = self.runtime.clone();
        let (rest, congested) =
            runtime.with_shard_congested(|shard| self.handle_frames(shard, bytes));
        self.inbox.clear();
        self.inbox.extend_from_slice(rest);
        if self.inbox.is_empty() {
            self.inbox = Vec::new();
        } else {
            // Frames left because of backpressure are handled again once the
            // outbox drains.
            let moving = self.handover_to.is_some();
            self.flow
                .kept(|| !moving && split_frame(rest, FRAME_BYTES_MAX).ok().flatten().is_some());
        }
        if let Some(destination) = congested {
            self.flow.pause_on(destination);
        }
    }

    /// Hands the whole frames at the start of `bytes` to the shard, until
    /// the connection moves away or wants no more input; returns the rest.
    fn handle_frames<'a>(&mut self, shard: &mut shard::Shard, bytes: &'a [u8]) -> &'a [u8] {
        let mut rest = bytes;
        loop {
            if self.handover_to.is_some() || !shard.wants_input(self.id) {
                // Moving away, closing, or the reply backlog is over its
                // limit: keep the rest for later.
                return rest;
            }
            let raw = match split_frame(rest, FRAME_BYTES_MAX) {
                Ok(Some(raw)) => raw,
                Ok(None) => return rest,
                Err(error) => {
                    let kind = match error {
                        FrameError::TooLarge { .. } => ErrorKind::FrameTooLarge,
                        FrameError::Empty => ErrorKind::Malformed,
                    };
                    shard.protocol_error(self.id, kind, error.to_string());
                    return &[];
                }
            };
            let frame = match decode_client(raw.payload) {
                Ok(frame) => frame,
                Err(error) => {
                    shard.protocol_error(self.id, ErrorKind::Malformed, error.to_string());
                    return &[];
                }
            };
            match shard.handle_frame(self.id, frame, self.runtime.now_ms()) {
                FrameOutcome::Continue => rest = &rest[raw.consumed..],
                FrameOutcome::HandOver { island, shard } => {
                    self.handover_to = Some((island, shard))
                }
            }
        }
    }

    /// Writes pending bytes; refills from the outbox. Err when the socket failed.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        loop {
            if self.tx_written == self.tx.len() {
                let outbox_len = self.runtime.shard().outbox_len(self.id);
                let transport = self.transport.as_mut().expect("present until done");
                if outbox_len == 0 && !transport.wants_write() {
                    if self.tx.capacity() > 0 {
                        self.tx = Vec::new();
                        self.tx_written = 0;
                    }
                    return Ok(progress);
                }
                let runtime = &self.runtime;
                let commits = runtime.commits.progress();
                match self.flow.flush(commits, || runtime.commit_covering_now()) {
                    Flush::Now => {}
                    Flush::Later { wake } => {
                        // To the back of the run queue, once.
                        if wake {
                            cx.waker().wake_by_ref();
                        }
                        return Ok(progress);
                    }
                    Flush::Hold { register } => {
                        if register {
                            runtime.commits.hold(cx.waker().clone());
                        }
                        return Ok(progress);
                    }
                }
                let id = self.id;
                let outbox = runtime.with_shard_no_outputs(|shard| shard.take_outbox(id));
                self.tx.clear();
                self.tx_written = 0;
                if let Err(error) = transport.seal(outbox, &mut self.tx) {
                    log::debug!("sealing failed: {error}");
                    return Err(());
                }
                // Room in the outbox again: let the shard feed the mailbox in.
                runtime.with_shard(|shard| shard.flushed(id));
            }
            let stream = self.stream.as_mut().expect("present until done");
            match Pin::new(stream).poll_write(cx, &self.tx[self.tx_written..]) {
                Poll::Ready(Ok(0)) => {
                    self.hung_up(&"took no more bytes");
                    return Err(());
                }
                Poll::Ready(Err(error)) => {
                    self.hung_up(&error);
                    return Err(());
                }
                Poll::Ready(Ok(n)) => {
                    let out = &self.runtime.connections.bytes_out;
                    out.set(out.get() + n as u64);
                    self.tx_written += n;
                    progress = true;
                }
                Poll::Pending => return Ok(progress),
            }
        }
    }

    /// Moves this connection, with its TLS state and unread frames, to its
    /// home shard. Everything queued for the phone has been written.
    fn hand_over(&mut self, (island, shard): (IslandId, u16)) {
        let id = self.id;
        // Only a connection that has not logged in moves: removing it
        // cancels a timer and makes no outputs.
        let Some(snapshot) = self.runtime.with_shard_no_outputs(|s| s.hand_over(id)) else {
            return;
        };
        let stream = self.stream.take().expect("present until done");
        // The stream's own fd closes with it; the duplicate travels.
        // SAFETY: dup of a valid fd we own; the result is checked.
        let duplicate = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        drop(stream);
        if duplicate < 0 {
            log::warn!("handover failed: {}", std::io::Error::last_os_error());
            return;
        }
        // SAFETY: `duplicate` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(duplicate) };
        let tls = match self.transport.take() {
            Some(Transport::Tls(tls)) => Some(tls),
            _ => None,
        };
        let pending = std::mem::take(&mut self.inbox);
        let adoption = Adoption {
            fd,
            tls,
            snapshot,
            pending,
        };
        self.runtime.links.stage_adoption(shard, island, adoption);
    }

    /// Half-closes and keeps reading briefly, so that the phone receives the
    /// final frames instead of a reset caused by bytes it sent meanwhile.
    fn linger(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // SAFETY: shutdown on a valid socket fd has no memory effects.
        unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
        // A lingering socket counts against no connection bound: past a
        // few, closing connections close at once (a flood of them must not
        // take the descriptors phones need).
        let prelogin_max = self.runtime.shard().config().prelogin_connections_max;
        let lingering_max = LINGERING_MAX.min((prelogin_max / 4).max(1));
        if !self.runtime.connections.start_lingering(lingering_max) {
            return;
        }
        let runtime = self.runtime.clone();
        glommio::spawn_local(async move {
            let mut stream = stream;
            let mut buffer = [0u8; LINGER_READ_BYTES];
            let drain = async {
                while let Ok(n) = futures_lite::AsyncReadExt::read(&mut stream, &mut buffer).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let timeout = async {
                glommio::timer::sleep(Duration::from_millis(LINGER_MS)).await;
            };
            futures_lite::future::or(drain, timeout).await;
            runtime.connections.stop_lingering();
        })
        .detach();
    }

    fn finish(&mut self) {
        let (id, now_ms) = (self.id, self.runtime.now_ms());
        // A close records (last seen) and may wake others: pass that on
        // now, not at the next tick (which a stopping shard no longer has).
        self.runtime.with_shard(|shard| shard.closed(id, now_ms));
        self.runtime.connections.ended(id);
        drop(self.stream.take());
    }
}
