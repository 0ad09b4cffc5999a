//! A bare STOMP socket for protocol-level tests.
//!
//! [`Client`](crate::Client) is well-behaved by construction; a test of how the broker handles a
//! bad frame, a half-written frame, a missing NUL or a flood needs the opposite. A
//! [`RawConnection`] writes whatever bytes it is given and decodes what comes back with the same
//! decoder as everything else, one read at a time, under explicit timeouts, with no background
//! task and no heart-beats.
//!
//! ```no_run
//! use std::time::Duration;
//! use stampede_client::raw::RawConnection;
//!
//! # async fn run() -> Result<(), stampede_client::ClientError> {
//! let mut raw = RawConnection::connect("127.0.0.1:61613").await?;
//! raw.send_bytes(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").await?;
//! let connected = raw.read_frame(Duration::from_secs(1)).await?.expect("CONNECTED");
//! raw.send_bytes(b"BOGUS\n\n\0").await?;
//! let frames = raw.expect_closed(Duration::from_secs(1)).await?;
//! assert_eq!(frames.last().map(|f| f.command), Some(stampede_client::Command::Error));
//! # let _ = connected;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use stampede_protocol::{Command, Decoder, Frame, Item, Limits, Version, encode, names};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::Instant;

use crate::{ClientError, CloseReason};

/// A TCP socket plus a decoder; see the module documentation.
#[derive(Debug)]
pub struct RawConnection {
    stream: TcpStream,
    decoder: Decoder,
    read_buf: BytesMut,
    version: Version,
    eof: bool,
}

impl RawConnection {
    /// Connects over TCP. The decoder starts with STOMP 1.2 rules; see
    /// [`RawConnection::set_version`].
    ///
    /// # Errors
    /// [`ClientError::Io`] when the connection fails.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<RawConnection, ClientError> {
        Ok(RawConnection::from_stream(TcpStream::connect(addr).await?))
    }

    /// Wraps an already connected socket.
    pub fn from_stream(stream: TcpStream) -> RawConnection {
        // Tests write partial frames on purpose and expect them on the wire at once.
        let _ = stream.set_nodelay(true);
        RawConnection {
            stream,
            decoder: Decoder::new(Limits::default()),
            read_buf: BytesMut::with_capacity(16 * 1024),
            version: Version::V1_2,
            eof: false,
        }
    }

    /// Sets the version used to unescape received headers and escape sent frames.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
        self.decoder.set_version(version);
    }

    /// Replaces the decoder's limits (e.g. to receive a frame larger than the default 4 MiB).
    pub fn set_limits(&mut self, limits: Limits) {
        self.decoder = Decoder::new(limits);
        self.decoder.set_version(self.version);
    }

    /// Writes `bytes` as they are.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.stream.write_all(bytes).await?)
    }

    /// Encodes `frame` with the current version and writes it.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        encode(frame, self.version, &mut out);
        self.send_bytes(&out).await
    }

    /// Sends CONNECT (accept-version `1.0,1.1,1.2`, host `/`, no heart-beats, plus `headers`),
    /// reads CONNECTED and switches to the negotiated version.
    ///
    /// # Errors
    /// [`ClientError::ServerError`] if the server answers ERROR; [`ClientError::Handshake`] for
    /// any other answer; [`ClientError::Timeout`] if none comes within `timeout`.
    pub async fn handshake(&mut self, headers: &[(&str, &str)], timeout: Duration) -> Result<Frame, ClientError> {
        let mut frame = Frame::new(Command::Connect)
            .with_header(names::ACCEPT_VERSION, "1.0,1.1,1.2")
            .with_header(names::HOST, "/")
            .with_header(names::HEART_BEAT, "0,0");
        for (name, value) in headers {
            frame.headers.set(name, *value);
        }
        self.send_frame(&frame).await?;
        let Some(answer) = self.read_frame(timeout).await? else {
            return Err(ClientError::Timeout { waiting_for: "CONNECTED".to_owned(), after: timeout });
        };
        match answer.command {
            Command::Connected => {
                let version = answer.header(names::VERSION).and_then(Version::parse).unwrap_or(Version::V1_0);
                self.set_version(version);
                Ok(answer)
            }
            Command::Error => Err(crate::ServerError::from_frame(&answer).into()),
            other => Err(ClientError::Handshake(format!("expected CONNECTED, got {other}"))),
        }
    }

    /// Reads the next frame, skipping heart-beats. `Ok(None)` when none arrived within
    /// `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Closed`] with [`CloseReason::ServerClosed`] when the server closed the
    /// connection first; [`ClientError::Protocol`] when it sent invalid STOMP.
    pub async fn read_frame(&mut self, timeout: Duration) -> Result<Option<Frame>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_item_until(deadline).await? {
                Some(Item::Frame(frame)) => return Ok(Some(frame)),
                Some(Item::HeartBeat) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Reads the next frame or heart-beat. `Ok(None)` when none arrived within `timeout`.
    ///
    /// # Errors
    /// As [`RawConnection::read_frame`].
    pub async fn read_item(&mut self, timeout: Duration) -> Result<Option<Item>, ClientError> {
        self.read_item_until(Instant::now() + timeout).await
    }

    async fn read_item_until(&mut self, deadline: Instant) -> Result<Option<Item>, ClientError> {
        loop {
            if let Some(item) = self.decoder.decode(&mut self.read_buf)? {
                return Ok(Some(item));
            }
            if self.eof {
                return Err(ClientError::Closed(CloseReason::ServerClosed));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Ok(None),
                Ok(result) => result?,
            }
        }
    }

    /// Reads once into the buffer; notes EOF (a reset counts as EOF: both mean "closed").
    async fn fill(&mut self) -> Result<(), ClientError> {
        self.read_buf.reserve(16 * 1024);
        match self.stream.read_buf(&mut self.read_buf).await {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if is_closed(&e) => self.eof = true,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Waits for the server to close the connection, returning the frames it sent first (an
    /// ERROR, typically). Bytes after the last complete frame are ignored.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if the connection is still open after `timeout`;
    /// [`ClientError::Protocol`] if the server sent invalid STOMP.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<Vec<Frame>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.read_item_until(deadline).await {
                Ok(Some(Item::Frame(frame))) => frames.push(frame),
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => {
                    return Err(ClientError::Timeout {
                        waiting_for: "the server to close the connection".to_owned(),
                        after: timeout,
                    });
                }
                Err(ClientError::Closed(_)) => return Ok(frames),
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the write direction (TCP FIN) and keeps reading possible.
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub async fn shutdown_write(&mut self) -> Result<(), ClientError> {
        Ok(self.stream.shutdown().await?)
    }

    /// The socket, for anything else (e.g. reading raw bytes).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> &[u8] {
        &self.read_buf
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}
