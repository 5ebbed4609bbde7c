//! A phone's connection once it is logged in, whatever the protocol: the
//! byte stream (TCP, or TLS over it) and the bytes read past the reply
//! the login waited for. `dial` makes one for isle's protocol and `mqtt`
//! for a broker's; both depend on this module, and neither on the other's
//! connection type.

use futures_lite::{AsyncRead, AsyncWrite};

/// A byte stream a phone reads and writes: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// A logged-in connection, with the bytes that arrived after the login's
/// reply in the same reads (queued messages may follow it at once), and
/// the server it is to (in a cluster, the account's home node once the
/// redirects are followed).
pub struct Connection {
    pub io: BoxIo,
    pub inbox: Vec<u8>,
    pub server: std::net::SocketAddr,
}
