//! isle's load generator and a small blocking client.
//!
//! [`client::Client`] speaks the wire protocol over plain TCP or TLS with
//! std sockets; the integration tests and scripts use it. The `loadgen`
//! binary drives many phones at once on glommio executors ([`chat`]).

pub mod chat;
pub mod client;
pub mod tls;
