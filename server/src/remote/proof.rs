//! The proof that a handshake comes from a member of the cluster: an
//! HMAC-SHA256 under the cluster's shared secret (`[cluster]
//! secret_file`) over the hello, and over the welcome together with the
//! hello's proof it answers. No I/O.
//!
//! What it covers: a host that can connect to the peer port but does not
//! hold the secret cannot open a session as a node, so it cannot start a
//! sender's session over (which would refuse the real one's resume as
//! stale) nor hand payloads to a shard. What it does not cover: data and
//! acks after the handshake travel unsigned, so a host that can read and
//! write the traffic between two nodes can still replay a hello or
//! inject into a connection (docs/security.md, "The peer port").
//!
//! HMAC (RFC 2104) is written here over `sha2`, which the server already
//! depends on, and checked against the test vectors of RFC 4231.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::frame::{self, Hello, Proof, Welcome, PROOF_BYTES};

/// The shortest secret taken: 16 bytes, 128 bits if they are random.
pub const SECRET_BYTES_MIN: usize = 16;
/// The longest secret file read.
pub const SECRET_FILE_BYTES_MAX: usize = 4096;

/// SHA-256's block: an HMAC key longer than this is hashed first.
const BLOCK_BYTES: usize = 64;

/// The cluster's shared secret (the bytes of its file, surrounding
/// whitespace trimmed). Its `Debug` shows no byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.key.len())
    }
}

/// A secret file the node cannot use.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error(
        "the cluster secret file {path} holds {bytes} bytes after trimming: \
         at least {SECRET_BYTES_MIN} are needed (for example 32 random bytes, hex-encoded)"
    )]
    TooShort { path: String, bytes: usize },
    #[error("the cluster secret file {path} is over {SECRET_FILE_BYTES_MAX} bytes")]
    TooLong { path: String },
}

impl ClusterSecret {
    /// The secret held in the file at `path`: read with a bound, trimmed.
    pub fn read(path: &std::path::Path) -> Result<ClusterSecret, SecretError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let read_error = |error| SecretError::Read {
            path: shown.clone(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(SECRET_FILE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() > SECRET_FILE_BYTES_MAX {
            return Err(SecretError::TooLong { path: shown });
        }
        ClusterSecret::new(&bytes).ok_or(SecretError::TooShort {
            bytes: bytes.trim_ascii().len(),
            path: shown,
        })
    }

    /// `bytes` trimmed, if at least [`SECRET_BYTES_MIN`] remain.
    pub fn new(bytes: &[u8]) -> Option<ClusterSecret> {
        let key = bytes.trim_ascii();
        (key.len() >= SECRET_BYTES_MIN).then(|| ClusterSecret { key: key.to_vec() })
    }

    /// The proof a hello carries: over its fields, its own proof left out.
    pub fn prove_hello(&self, hello: &Hello<'_>) -> Proof {
        let mut signed = Vec::with_capacity(128);
        frame::signed_hello(&mut signed, hello);
        hmac_sha256(&self.key, &[&signed])
    }

    /// The proof over `signed`, the fields of another handshake (the
    /// replication connection's hello, `shard::island::codec::Hello`).
    pub fn prove(&self, signed: &[u8]) -> Proof {
        hmac_sha256(&self.key, &[signed])
    }

    /// The proof a welcome carries: over its fields and the proof of the
    /// hello it answers, so that it cannot answer another.
    pub fn prove_welcome(&self, welcome: &Welcome<'_>, hello_proof: &Proof) -> Proof {
        let mut signed = Vec::with_capacity(128);
        frame::signed_welcome(&mut signed, welcome);
        hmac_sha256(&self.key, &[&signed, hello_proof])
    }
}

/// Whether two proofs are equal, in time that does not depend on where
/// they differ.
pub fn proofs_match(expected: &Proof, got: &Proof) -> bool {
    expected.ct_eq(got).into()
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts` under `key`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; PROOF_BYTES] {
    let mut block = [0u8; BLOCK_BYTES];
    if key.len() > BLOCK_BYTES {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        // Test case 2: a short key.
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than a block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_secret_is_trimmed_and_must_be_long_enough() {
        assert!(ClusterSecret::new(b"  short  \n").is_none());
        let secret = ClusterSecret::new(b"0123456789abcdef\n").unwrap();
        assert_eq!(secret, ClusterSecret::new(b"0123456789abcdef").unwrap());
        assert_eq!(format!("{secret:?}"), "ClusterSecret(16 bytes)");
    }
}
