//! isle's load generator and a small blocking client.
//!
//! [`client::Client`] speaks the wire protocol over plain TCP or TLS with
//! std sockets; the integration tests and scripts use it. The `loadgen`
//! binary drives many phones at once on glommio executors, one scenario per
//! subcommand: [`chat`] (the reference workload), [`idle`], [`storm`],
//! [`slow`], [`groups`] and [`presence`]; [`relay`] is the bare relay
//! server they can be pointed at instead of isle, and
//! [`mqtt`] lets `chat` drive an MQTT broker with the same workload.
//! [`phone`] is one phone driven by hand from stdin, for poking a server.

pub mod chat;
pub mod client;
pub mod connection;
pub mod dial;
pub mod groups;
pub mod idle;
pub mod mqtt;
pub mod phone;
pub mod presence;
pub mod process;
pub mod relay;
pub mod report;
pub mod route;
pub mod slow;
pub mod storm;
pub mod tls;
pub mod window;

/// Where a phone's client ids start: the time now in ms (modulo 2^28,
/// about 74 hours) in the bits above the low 20, which count the phone's
/// sends. A server remembers client ids for a day (its resend table), so
/// a second run against the same server with the same numbers would
/// otherwise have its sends taken for resends of the first's: answered
/// `Sent`, never delivered.
pub fn client_id_base() -> u64 {
    const MS_BITS: u32 = 28;
    const COUNT_BITS: u32 = 20;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let ms = now.map_or(0, |since| since.as_millis() as u64);
    (ms % (1 << MS_BITS)) << COUNT_BITS
}
