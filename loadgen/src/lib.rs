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
