//! One simulated phone of the chat workload: its state that outlives any
//! one connection, and the loop that keeps it connected.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet, VecDeque},
    rc::Rc,
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use futures_lite::io::split;
use wire::Phone;

use super::read::read_loop;
use super::thread::Thread;
use super::write::write_loop;
use crate::connection::Connection;
use crate::dial::Backoff;
use crate::route::Account;

/// How long a phone waits after a retryable refusal before writing its
/// refused sends again (ms); each round refused again doubles it, up to
/// [`RETRY_MS_MAX`], and a `Sent` brings it back (a server refusing
/// everything, a full disk say, is not hammered).
pub const RETRY_MS: u64 = 100;
pub const RETRY_MS_MAX: u64 = 5_000;

/// One simulated phone: what outlives any one of its connections.
pub(super) struct PhoneState {
    pub(super) index: u32,
    pub(super) number: Phone,
    /// Reads nothing and sends nothing until sending stops.
    pub(super) stalled: bool,
    /// The device key sign-up gave, to log in again after a reconnect,
    /// and where its account lives.
    pub(super) account: Account,
    /// Intended send times (ns since the epoch) of sends not yet written.
    pub(super) queue: RefCell<VecDeque<u64>>,
    /// Highest mailbox seq received and not yet acknowledged.
    pub(super) ack_up_to: Cell<u64>,
    /// MQTT: packet ids of messages received and not yet acknowledged.
    pub(super) pubacks: RefCell<Vec<u16>>,
    pub(super) waker: RefCell<Option<std::task::Waker>>,
    pub(super) next_client_id: Cell<u64>,
    /// Sends written and not yet answered, by client id: a new connection
    /// writes them again in the order they were first written.
    pub(super) in_flight: RefCell<BTreeMap<u64, InFlight>>,
    /// When one of its sends was last answered (`Sent` or a final
    /// refusal), or when it began waiting with none outstanding: where
    /// the gap `answer_gap_ms_max` measures starts (ns since the epoch).
    pub(super) answer_mark_ns: Cell<u64>,
    /// Set for each new connection, until its writer has resent `in_flight`.
    pub(super) resend: Cell<bool>,
    /// Sends refused with a retryable error, to write again in this order
    /// once `retry_due` is set (a timer sets it [`RETRY_MS`] after the
    /// first of them).
    pub(super) refused: RefCell<BTreeSet<u64>>,
    pub(super) retry_due: Cell<bool>,
    /// The wait before the next round of resends (see [`RETRY_MS`]).
    pub(super) retry_wait_ms: Cell<u64>,
    /// Set to make the phone hang up; it stays away until `offline_until_ns`.
    pub(super) hang_up: Cell<bool>,
    pub(super) offline_until_ns: Cell<u64>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    pub(super) intended_ns: u64,
    pub(super) to: Phone,
}

impl PhoneState {
    pub(super) fn new(index: u32, number: Phone, stalled: bool) -> PhoneState {
        PhoneState {
            index,
            number,
            stalled,
            account: Account::default(),
            queue: RefCell::new(VecDeque::new()),
            ack_up_to: Cell::new(0),
            pubacks: RefCell::new(Vec::new()),
            waker: RefCell::new(None),
            next_client_id: Cell::new(crate::client_id_base() + 1),
            in_flight: RefCell::new(BTreeMap::new()),
            answer_mark_ns: Cell::new(0),
            resend: Cell::new(false),
            refused: RefCell::new(BTreeSet::new()),
            retry_due: Cell::new(false),
            retry_wait_ms: Cell::new(RETRY_MS),
            hang_up: Cell::new(false),
            offline_until_ns: Cell::new(0),
        }
    }

    /// Whether a refused send to `to` waits to be written again.
    pub(super) fn refused_to(&self, to: Phone) -> bool {
        let in_flight = self.in_flight.borrow();
        self.refused
            .borrow()
            .iter()
            .any(|id| in_flight.get(id).is_some_and(|sent| sent.to == to))
    }

    pub(super) fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Runs one phone's connections until the run finishes: when one ends, the
/// phone backs off, connects and logs in again, and carries on.
pub(super) async fn phone_loop(thread: Rc<Thread>, phone: Rc<PhoneState>, first: Connection) {
    let mut connection = first;
    loop {
        phone.resend.set(true);
        let (reader, writer) = split(connection.io);
        // Whichever side ends first ends the connection: dropping the other
        // half closes the socket.
        futures_lite::future::or(
            read_loop(&thread, &phone, reader, connection.inbox),
            write_loop(&thread, &phone, writer),
        )
        .await;
        let finished = || thread.shared.finished.load(Relaxed);
        if finished() {
            return;
        }
        let offline_ns = phone.offline_until_ns.get().saturating_sub(thread.now_ns());
        if offline_ns > 0 {
            glommio::timer::sleep(Duration::from_nanos(offline_ns)).await;
        }
        // The server may have just gone away: wait before the first try too.
        let mut backoff = Backoff::new(thread.random(u64::MAX));
        backoff.wait().await;
        connection = match connect_with_backoff(&thread, &phone, &mut backoff, finished).await {
            Ok(connection) if !finished() => connection,
            _ => return,
        };
        thread.logged_in_at(&phone, connection.server);
        thread.shared.reconnects.fetch_add(1, Relaxed);
    }
}

/// Connects and logs in, backing off between attempts, until it works or
/// `give_up` says to stop (then the last attempt's error).
pub(super) async fn connect_with_backoff(
    thread: &Thread,
    phone: &PhoneState,
    backoff: &mut Backoff,
    give_up: impl Fn() -> bool,
) -> anyhow::Result<Connection> {
    (thread.dialer)
        .log_in_with_backoff(phone.number, &phone.account, backoff, give_up)
        .await
}

/// Whether phone `index` is one of the `share` that stall: spread evenly
/// over the range, so every thread gets its part.
pub(super) fn stalled(index: usize, share: f64) -> bool {
    (index as f64 * share).floor() != ((index + 1) as f64 * share).floor()
}

pub(super) fn key(phone_index: u32, client_id: u64) -> u64 {
    (u64::from(phone_index) << 32) | (client_id & 0xFFFF_FFFF)
}

/// The phone index and (low 32 bits of the) client id a [`key`] holds.
pub(super) fn unkey(key: u64) -> (u32, u64) {
    ((key >> 32) as u32, key & 0xFFFF_FFFF)
}
