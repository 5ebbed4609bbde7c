//! Plaintext or TLS, as a sans-IO layer between socket bytes and frames.
//!
//! Driving rustls directly (rather than through an async wrapper) keeps the
//! whole TLS state in one value that moves with the connection's fd when a
//! connection is handed to its home shard.

use std::io::{Read, Write};

use rustls::ServerConnection;

/// Plaintext taken from rustls per read: one TLS record's worth (a record
/// carries at most 16 KiB), on the stack.
const TLS_PLAINTEXT_CHUNK_BYTES: usize = 16 * 1024;

pub enum Transport {
    Plain,
    Tls(Box<ServerConnection>),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Transport {
    /// Feeds bytes read from the socket. Plaintext is appended to `plain`.
    /// Returns true when the peer closed the TLS session cleanly.
    pub fn ingest(
        &mut self,
        mut bytes: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<bool, TransportError> {
        let Transport::Tls(tls) = self else {
            plain.extend_from_slice(bytes);
            return Ok(false);
        };
        let mut closed = false;
        while !bytes.is_empty() {
            tls.read_tls(&mut bytes)?;
            let state = tls.process_new_packets()?;
            closed |= state.peer_has_closed();
            let mut buffer = [0u8; TLS_PLAINTEXT_CHUNK_BYTES];
            loop {
                match tls.reader().read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&buffer[..n]),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(closed)
    }

    /// True while a TLS handshake is under way.
    pub fn is_handshaking(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(tls) => tls.is_handshaking(),
        }
    }

    /// True when TLS has bytes of its own to send (handshake, alerts).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(tls) => tls.wants_write(),
        }
    }

    /// Turns plaintext into bytes for the socket, appended to `out`.
    pub fn seal(&mut self, plaintext: Vec<u8>, out: &mut Vec<u8>) -> Result<(), TransportError> {
        match self {
            Transport::Plain if out.is_empty() => *out = plaintext,
            Transport::Plain => out.extend_from_slice(&plaintext),
            Transport::Tls(tls) => {
                if !plaintext.is_empty() {
                    tls.writer().write_all(&plaintext)?;
                }
                while tls.wants_write() {
                    tls.write_tls(out)?;
                }
            }
        }
        Ok(())
    }
}
