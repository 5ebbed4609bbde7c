//! What both sides of a link connection share: the framed reader (bounded
//! by the largest frame), a connection's kill switch, a one-waiter signal,
//! waits with a deadline, and the per-second limit on log lines about
//! peers.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    net::Shutdown,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::{AsyncRead, AsyncReadExt};

use super::frame::{self, Decoded, Frame, FrameError};

/// Bytes asked of the socket per read. The buffer grows past it only
/// while one frame larger than this arrives, and never past one frame of
/// [`frame::FRAME_BYTES_MAX`] plus this.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes a writer gathers before it writes: frames pushed meanwhile leave
/// in the same write.
pub const WRITE_BYTES_TARGET: usize = 256 * 1024;

/// Reads whole frames from a socket into a buffer that only grows as far
/// as the frame being read needs (its length is checked first).
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Bytes before this offset are handled.
    start: usize,
}

impl FrameReader {
    /// A reader that starts with `pending` (bytes already read by the
    /// shard that handed the connection over).
    pub fn new(pending: Vec<u8>) -> FrameReader {
        FrameReader {
            buffer: pending,
            start: 0,
        }
    }

    /// The bytes read and not yet handled.
    pub fn unread(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    /// Gives up the unread bytes (to hand them over with the socket).
    pub fn into_unread(mut self) -> Vec<u8> {
        self.buffer.drain(..self.start);
        self.buffer
    }

    /// Reads once from `socket`, making room for the frame in progress.
    /// `Ok(0)`: the peer closed.
    pub async fn fill(&mut self, socket: &mut (impl AsyncRead + Unpin)) -> std::io::Result<usize> {
        let needed = match frame::decode(self.unread()) {
            Ok(Decoded::Incomplete(needed)) => needed,
            // A whole frame, or an error: the caller takes it first.
            _ => 0,
        };
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        if self.buffer.is_empty() && self.buffer.capacity() > 4 * READ_CHUNK_BYTES {
            // A large frame passed: give its memory back.
            self.buffer = Vec::new();
        }
        let end = self.buffer.len();
        let want = (needed.saturating_sub(end)).max(READ_CHUNK_BYTES);
        self.buffer.resize(end + want, 0);
        let result = socket.read(&mut self.buffer[end..]).await;
        self.buffer.truncate(end + *result.as_ref().unwrap_or(&0));
        result
    }

    /// The next whole frame read, if there is one; the reader moves past
    /// it.
    pub fn next(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        match frame::decode(&self.buffer[self.start..])? {
            Decoded::Frame(frame, used) => {
                self.start += used;
                Ok(Some(frame))
            }
            Decoded::Incomplete(_) => Ok(None),
        }
    }

    /// The next whole frame without moving past it (a hello that may be
    /// handed over with its bytes).
    pub fn peek(&self) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
        match frame::decode(self.unread())? {
            Decoded::Frame(frame, used) => Ok(Some((frame, used))),
            Decoded::Incomplete(_) => Ok(None),
        }
    }

    /// Moves past `bytes` that [`FrameReader::peek`] returned.
    pub fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        debug_assert!(self.start <= self.buffer.len());
    }
}

/// A duplicate of a connection's socket, kept by the link so that the
/// connection can be ended from outside its task (a newer connection, a
/// forgotten node, a stop, a test): shutting the socket down ends the
/// task's reads and writes as a network failure would.
pub struct Killer(OwnedFd);

impl Killer {
    /// Duplicates the socket of `stream`.
    pub fn of(stream: &impl AsRawFd) -> std::io::Result<Killer> {
        // SAFETY: fcntl on an fd the stream owns and keeps open for the
        // duration of the call; the result is checked before use.
        let duplicate = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if duplicate < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `duplicate` is a fresh fd that nothing else owns.
        Ok(Killer(unsafe { OwnedFd::from_raw_fd(duplicate) }))
    }

    /// Shuts the socket down both ways (the peer sees the connection end).
    pub fn kill(&self) {
        let _ = socket2::SockRef::from(&self.0).shutdown(Shutdown::Both);
    }

    /// The duplicate itself, to hand the socket to another shard.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

/// A wake-up for one task on this executor; raising it before the task
/// waits is not lost.
#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// Waits for `signal`, or until `deadline_ms` on `clock` (no deadline:
/// the signal alone).
pub async fn wait_signal_until(signal: &Signal, clock: &Clock, deadline_ms: Option<u64>) {
    match deadline_ms {
        None => signal.wait().await,
        Some(deadline) => {
            let wait = Duration::from_millis(deadline.saturating_sub(clock.now_ms()).max(1));
            futures_lite::future::or(signal.wait(), glommio::timer::sleep(wait)).await;
        }
    }
}

/// Runs `future` for at most `limit_ms`; `None` when it ran out.
pub async fn within<T>(limit_ms: u64, future: impl Future<Output = T>) -> Option<T> {
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(limit_ms)).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, timeout).await
}

/// The links' clock: milliseconds since they started.
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// At most [`LOG_LINES_PER_S`] warnings a second about peers (a stranger
/// hammering the port must not flood the log); the rest are counted.
pub struct LogLimit {
    second: Cell<u64>,
    lines: Cell<u32>,
    dropped: Cell<u64>,
}

pub const LOG_LINES_PER_S: u32 = 10;

impl LogLimit {
    pub fn new() -> LogLimit {
        LogLimit {
            second: Cell::new(u64::MAX),
            lines: Cell::new(0),
            dropped: Cell::new(0),
        }
    }

    /// Whether a line may be written at `now_ms`; counts it if not.
    pub fn allow(&self, now_ms: u64) -> bool {
        let second = now_ms / 1_000;
        if self.second.get() != second {
            self.second.set(second);
            self.lines.set(0);
        }
        if self.lines.get() >= LOG_LINES_PER_S {
            self.dropped.set(self.dropped.get() + 1);
            return false;
        }
        self.lines.set(self.lines.get() + 1);
        true
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_lets_ten_lines_a_second_through() {
        let limit = LogLimit::new();
        let allowed = (0..15).filter(|_| limit.allow(5_000)).count();
        assert_eq!(allowed, 10);
        assert_eq!(limit.dropped(), 5);
        assert!(limit.allow(6_000));
    }

    #[test]
    fn the_reader_takes_frames_split_across_reads_and_hands_back_the_rest() {
        let mut bytes = Vec::new();
        frame::encode_data(&mut bytes, 1, &[7; 100_000]);
        frame::encode_ping(&mut bytes);
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let mut socket = futures_lite::io::Cursor::new(bytes);
                let mut reader = FrameReader::new(Vec::new());
                let mut seen = Vec::new();
                while reader.fill(&mut socket).await.unwrap() > 0 {
                    while let Some(frame) = reader.next().unwrap() {
                        seen.push(matches!(frame, Frame::Data { payload, .. } if payload.len() == 100_000));
                    }
                }
                assert_eq!(seen, [true, false]);
                assert!(reader.into_unread().is_empty());
            })
            .unwrap();
        executor.join().unwrap();
    }
}
