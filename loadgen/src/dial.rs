//! Getting a phone onto an isle server from a glommio executor: TCP (and
//! TLS), `Hello`, then `Login` with the phone's key, or a signup through
//! the server's test-number range when it has none or it is refused.

use std::{cell::Cell, net::SocketAddr, sync::Arc};

use anyhow::bail;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use wire::{
    decode_server, encode_client, split_frame, ClientFrame, DeviceKey, Phone, ServerFrame,
    FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Where and how phones connect.
#[derive(Clone)]
pub struct Dialer {
    pub target: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The server's test-number code.
    pub code: u32,
}

/// A logged-in connection, with the bytes that arrived after `LoggedIn` in
/// the same reads (queued messages may follow it at once).
pub struct Connection {
    pub io: BoxIo,
    pub inbox: Vec<u8>,
}

impl Dialer {
    /// Connects and logs in: with `key` if set, else (or if that key is
    /// refused) by signing up first, which sets `key`.
    pub async fn log_in(
        &self,
        number: Phone,
        key: &Cell<Option<DeviceKey>>,
    ) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| anyhow::anyhow!("connecting: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| anyhow::anyhow!("nodelay: {e}"))?;
        let mut io: BoxIo = match self.tls.clone() {
            Some(config) => {
                let name = ServerName::from(self.target.ip());
                Box::new(
                    futures_rustls::TlsConnector::from(config)
                        .connect(name, stream)
                        .await?,
                )
            }
            None => Box::new(stream),
        };
        let mut inbox = Vec::new();
        request(
            &mut io,
            &mut inbox,
            &ClientFrame::Hello {
                version: PROTOCOL_VERSION,
            },
            |f| matches!(f, ServerFrame::Welcome { .. }),
        )
        .await?;
        let login = |key| ClientFrame::Login { phone: number, key };
        if let Some(known) = key.get() {
            // A refused login leaves the connection open: sign up again below.
            let accepted = request(&mut io, &mut inbox, &login(known), |f| {
                matches!(f, ServerFrame::LoggedIn { .. })
            })
            .await;
            if accepted.is_ok() {
                return Ok(Connection { io, inbox });
            }
        }
        request(
            &mut io,
            &mut inbox,
            &ClientFrame::RequestCode { phone: number },
            |f| matches!(f, ServerFrame::CodeSent { .. }),
        )
        .await?;
        let mut given = None;
        request(
            &mut io,
            &mut inbox,
            &ClientFrame::Verify {
                phone: number,
                code: self.code,
            },
            |f| match f {
                ServerFrame::Registered { key: k, .. } => {
                    given = Some(*k);
                    true
                }
                _ => false,
            },
        )
        .await?;
        let given: DeviceKey = given.expect("set by the matcher");
        key.set(Some(given));
        request(&mut io, &mut inbox, &login(given), |f| {
            matches!(f, ServerFrame::LoggedIn { .. })
        })
        .await?;
        Ok(Connection { io, inbox })
    }
}

/// Sends one frame and waits for the reply, which must satisfy `accept`.
pub async fn request(
    io: &mut BoxIo,
    inbox: &mut Vec<u8>,
    frame: &ClientFrame<'_>,
    mut accept: impl FnMut(&ServerFrame<'_>) -> bool,
) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    encode_client(frame, &mut bytes);
    io.write_all(&bytes).await?;
    io.flush().await?;
    loop {
        if let Some(raw) = split_frame(inbox, FRAME_BYTES_MAX)? {
            let consumed = raw.consumed;
            let reply = decode_server(raw.payload)?;
            inbox.drain(..consumed);
            if !accept(&reply) {
                bail!("unexpected reply {reply:?}");
            }
            return Ok(());
        }
        let mut buffer = [0u8; 4096];
        let n = io.read(&mut buffer).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        inbox.extend_from_slice(&buffer[..n]);
    }
}
