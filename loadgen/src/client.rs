//! A blocking client over std sockets, for tests and scripts.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use rustls::{pki_types::ServerName, ClientConnection, StreamOwned};
use wire::{
    decode_server, encode_client, split_frame, ClientFrame, DeviceKey, Phone, ServerFrame,
    FRAME_BYTES_MAX, PROTOCOL_VERSION,
};

/// A frame from the server; it owns its data.
pub type Event = ServerFrame<'static>;

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buffer),
            Stream::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.write(bytes),
            Stream::Tls(stream) => stream.write(bytes),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

pub struct Client {
    stream: Stream,
    inbox: Vec<u8>,
}

impl Client {
    /// Connects over plain TCP and exchanges `Hello`/`Welcome`.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        Client::start(Stream::Plain(stream), true)
    }

    /// Connects over TLS, trusting `ca` (or anything, when `None`).
    pub fn connect_tls(addr: SocketAddr, ca: Option<&Path>) -> anyhow::Result<Client> {
        let config = crate::tls::client_config(ca)?;
        let name = ServerName::from(addr.ip());
        let connection = ClientConnection::new(config, name)?;
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        Client::start(
            Stream::Tls(Box::new(StreamOwned::new(connection, stream))),
            true,
        )
    }

    /// Connects over plain TCP without saying `Hello`.
    pub fn connect_raw(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        Client::start(Stream::Plain(stream), false)
    }

    /// Connects over TLS, trusting `ca` (or anything, when `None`), without
    /// saying `Hello`. The handshake happens with the first write.
    pub fn connect_tls_raw(addr: SocketAddr, ca: Option<&Path>) -> anyhow::Result<Client> {
        let config = crate::tls::client_config(ca)?;
        let connection = ClientConnection::new(config, ServerName::from(addr.ip()))?;
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        let stream = Box::new(StreamOwned::new(connection, stream));
        Client::start(Stream::Tls(stream), false)
    }

    fn start(stream: Stream, hello: bool) -> anyhow::Result<Client> {
        stream.tcp().set_nodelay(true)?;
        let mut client = Client {
            stream,
            inbox: Vec::new(),
        };
        client.set_timeout(Duration::from_secs(10))?;
        if hello {
            client.send(&ClientFrame::Hello {
                version: PROTOCOL_VERSION,
            })?;
            match client.recv()? {
                Event::Welcome { .. } => {}
                other => bail!("expected Welcome, got {other:?}"),
            }
        }
        Ok(client)
    }

    /// This end's address: the phone's address and port as the server
    /// sees them.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.tcp().local_addr()
    }

    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(Some(timeout))
    }

    pub fn send(&mut self, frame: &ClientFrame<'_>) -> io::Result<()> {
        let mut bytes = Vec::new();
        encode_client(frame, &mut bytes);
        self.send_raw(&bytes)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next frame; an error on timeout, on a closed connection (its
    /// message says so), or on bytes that do not decode.
    pub fn recv(&mut self) -> anyhow::Result<Event> {
        self.try_recv()?.ok_or_else(|| anyhow!("connection closed"))
    }

    /// The next frame, or `None` once the server closed the connection.
    pub fn try_recv(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(raw) = split_frame(&self.inbox, FRAME_BYTES_MAX)? {
                let consumed = raw.consumed;
                let event = decode_server(raw.payload)?;
                self.inbox.drain(..consumed);
                return Ok(Some(event));
            }
            let mut buffer = [0u8; 16 * 1024];
            match self.stream.read(&mut buffer) {
                Ok(0) => return Ok(None),
                Ok(n) => self.inbox.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Ok(None)
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Waits up to `wait` (more than zero) for the next frame. `Quiet`
    /// when none came: the connection stays usable, and a frame half read
    /// is kept for the next call.
    pub fn poll(&mut self, wait: Duration) -> anyhow::Result<Polled> {
        self.set_timeout(wait)?;
        match self.try_recv() {
            Ok(Some(event)) => Ok(Polled::Frame(event)),
            Ok(None) => Ok(Polled::Closed),
            Err(error) if is_timeout(&error) => Ok(Polled::Quiet),
            Err(error) => Err(error),
        }
    }

    /// Reads frames until `pick` accepts one, skipping the others; an
    /// `Error` frame is an error.
    pub fn recv_until<T>(&mut self, pick: impl Fn(&Event) -> Option<T>) -> anyhow::Result<T> {
        loop {
            let event = self.recv()?;
            if let Event::Error { kind, detail, .. } = &event {
                bail!("server error {kind:?}: {detail}");
            }
            if let Some(value) = pick(&event) {
                return Ok(value);
            }
        }
    }

    /// Requests a code and verifies it; returns the new device key.
    pub fn sign_up(
        &mut self,
        phone: Phone,
        code: impl FnOnce() -> anyhow::Result<u32>,
    ) -> anyhow::Result<DeviceKey> {
        self.send(&ClientFrame::RequestCode { phone })?;
        match self.recv()? {
            Event::CodeSent { .. } => {}
            other => bail!("expected CodeSent, got {other:?}"),
        }
        self.send(&ClientFrame::Verify {
            phone,
            code: code()?,
        })?;
        match self.recv()? {
            Event::Registered { key, .. } => Ok(key),
            other => bail!("expected Registered, got {other:?}"),
        }
    }

    pub fn login(&mut self, phone: Phone, key: DeviceKey) -> anyhow::Result<()> {
        self.send(&ClientFrame::Login { phone, key })?;
        match self.recv()? {
            Event::LoggedIn { .. } => Ok(()),
            other => bail!("expected LoggedIn, got {other:?}"),
        }
    }
}

/// What [`Client::poll`] found.
#[derive(Debug)]
pub enum Polled {
    Frame(Event),
    /// Nothing arrived in time.
    Quiet,
    /// The server closed the connection.
    Closed,
}

/// A read that ran into the socket's timeout (`WouldBlock` on Linux).
fn is_timeout(error: &anyhow::Error) -> bool {
    error.downcast_ref::<io::Error>().is_some_and(|error| {
        matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    })
}

/// The `quantile` (0 to 1) of `samples`, sorted ascending, in µs: what the
/// probes over this client print. `samples` must not be empty.
pub fn quantile_us(samples: &[std::time::Duration], quantile: f64) -> f64 {
    assert!(!samples.is_empty(), "a quantile of no samples");
    let index = ((samples.len() as f64 * quantile) as usize).min(samples.len() - 1);
    samples[index].as_secs_f64() * 1e6
}
