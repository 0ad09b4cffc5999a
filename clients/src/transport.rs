//! The byte pipe under STOMP: a TCP socket or a WebSocket, either of them plain or inside TLS,
//! split into a read half and a write half.
//!
//! WebSocket is only a transport here, as in the broker: each received message (binary or text)
//! is appended to the decoder's buffer, so a frame split over several messages, or several frames
//! in one message, decode the same as over TCP. Outgoing bytes go out as one binary message per
//! write, which coalesces every frame queued at that moment.
//!
//! The halves are separate values so that the connection task can wait on a read and a write in
//! the same `select!`; both waits are cancel safe (see [`Reader::read`] and [`Writer::write`]).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use stampede_protocol::{Limits, Version};

use crate::tls::{TlsOptions, server_name};
use crate::{ClientError, Endpoint};

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
type WsStream = WebSocketStream<Stream>;

/// Bytes asked of the socket per read. Large enough that a burst of small MESSAGE frames is
/// decoded from one read.
const READ_CHUNK: usize = 16 * 1024;

/// Upper bound for the WebSocket layer's own write buffer; our writes are one message at a time
/// and flushed, so this only guards against a bug, instead of tungstenite's unbounded default.
const WS_MAX_WRITE_BUFFER: usize = 64 * 1024 * 1024;

/// A TCP connection, plain or inside TLS: what a WebSocket runs over.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

/// The read half.
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream>),
    Ws(SplitStream<WsStream>),
}

/// The write half.
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    Tls {
        write: WriteHalf<TlsStream>,
        /// Bytes were handed to rustls but not yet flushed to the socket.
        needs_flush: bool,
    },
    Ws {
        sink: SplitSink<WsStream, WsMessage>,
        /// A message was handed to the sink but not yet flushed to the socket.
        needs_flush: bool,
    },
}

/// Opens the transport for `endpoint`. For WebSocket this includes the HTTP upgrade, offering
/// `v12.stomp, v11.stomp, v10.stomp`; the subprotocol the server picks (if any) is returned.
pub(crate) async fn open(
    endpoint: &Endpoint,
    limits: &Limits,
    tls: &TlsOptions,
) -> Result<(Reader, Writer, Option<Version>), ClientError> {
    let tcp = TcpStream::connect((endpoint.host(), endpoint.port()))
        .await
        .map_err(|source| ClientError::Connect { address: endpoint.authority(), source })?;
    // Frames are coalesced before each write, so Nagle's delay would only add latency.
    tcp.set_nodelay(true)?;
    let stream = if endpoint.is_tls() {
        let connector = tokio_rustls::TlsConnector::from(tls.client_config()?);
        let name = server_name(endpoint.host())?;
        let tls_stream = connector.connect(name, tcp).await.map_err(|e| tls_handshake_error(endpoint, &e))?;
        Stream::Tls(Box::new(tls_stream))
    } else {
        Stream::Plain(tcp)
    };
    match (endpoint, stream) {
        (Endpoint::Tcp { .. }, Stream::Plain(tcp)) => {
            let (read, write) = tcp.into_split();
            Ok((Reader::Tcp(read), Writer::Tcp(write), None))
        }
        (Endpoint::Tcp { .. }, Stream::Tls(tls_stream)) => {
            let (read, write) = tokio::io::split(*tls_stream);
            Ok((Reader::Tls(read), Writer::Tls { write, needs_flush: false }, None))
        }
        (Endpoint::WebSocket { path, .. }, stream) => {
            let scheme = if endpoint.is_tls() { "wss" } else { "ws" };
            let url = format!("{scheme}://{}{path}", endpoint.authority());
            let mut request = url.as_str().into_client_request()?;
            let offer = [Version::V1_2, Version::V1_1, Version::V1_0].map(Version::websocket_subprotocol).join(", ");
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(&offer).map_err(tungstenite::Error::from)?);
            // Several frames may share one message, so allow a few maximal frames' worth.
            let max_frame = limits.max_body.saturating_add(limits.max_header_bytes);
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_frame.saturating_mul(2)))
                .max_frame_size(Some(max_frame.saturating_mul(2)))
                .max_write_buffer_size(WS_MAX_WRITE_BUFFER);
            let (ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| websocket_handshake_error(endpoint, &url, e))?;
            let chosen = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(Version::from_websocket_subprotocol);
            let (sink, stream) = ws.split();
            Ok((Reader::Ws(stream), Writer::Ws { sink, needs_flush: false }, chosen))
        }
    }
}

/// A failed TLS handshake, with a hint when the server answered in plain text.
fn tls_handshake_error(endpoint: &Endpoint, error: &io::Error) -> ClientError {
    let address = endpoint.authority();
    let plain = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|inner| matches!(inner, rustls::Error::InvalidMessage(_)));
    if plain {
        let scheme = if endpoint.is_websocket() { "ws" } else { "tcp" };
        ClientError::Tls(format!(
            "TLS handshake with {address} failed ({error}): the server there does not speak TLS; \
             if it is a plain port, use {scheme}://{address}"
        ))
    } else {
        ClientError::Tls(format!("TLS handshake with {address} failed: {error}"))
    }
}

/// A failed WebSocket upgrade, said in terms of the likely mistake.
fn websocket_handshake_error(endpoint: &Endpoint, url: &str, error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::Http(response) => ClientError::WebSocketRefused {
            url: url.to_owned(),
            status: response.status().as_u16(),
            body: response.body().as_deref().map(|body| String::from_utf8_lossy(body).into_owned()).unwrap_or_default(),
        },
        // The server answered, but not in HTTP, or hung up on the request: a STOMP server does
        // both (an ERROR frame for the unknown command `GET`, then close).
        tungstenite::Error::HttpFormat(_)
        | tungstenite::Error::Protocol(_)
        | tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed => {
            ClientError::NotHttp { address: endpoint.authority(), detail: error.to_string() }
        }
        tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            ClientError::NotHttp { address: endpoint.authority(), detail: e.to_string() }
        }
        other => other.into(),
    }
}

impl Reader {
    /// Appends at least one byte to `buf`, or returns `Ok(0)` when the peer has closed.
    ///
    /// Cancel safe: bytes are only ever taken from the socket and appended in one step, so
    /// dropping the future loses nothing.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> Result<usize, ClientError> {
        match self {
            Reader::Tcp(read) => {
                buf.reserve(READ_CHUNK);
                Ok(read.read_buf(buf).await?)
            }
            Reader::Tls(read) => {
                buf.reserve(READ_CHUNK);
                Ok(read.read_buf(buf).await?)
            }
            Reader::Ws(stream) => loop {
                let data = match stream.next().await {
                    None => return Ok(0),
                    Some(Ok(WsMessage::Binary(data))) => data,
                    Some(Ok(WsMessage::Text(text))) => text.into(),
                    Some(Ok(WsMessage::Close(_))) => return Ok(0),
                    // Pings are answered by tungstenite itself.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                        continue;
                    }
                    Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                        return Ok(0);
                    }
                    Some(Err(e)) => return Err(e.into()),
                };
                // An empty message carries nothing; `Ok(0)` would read as end of stream.
                if !data.is_empty() {
                    buf.extend_from_slice(&data);
                    return Ok(data.len());
                }
            },
        }
    }
}

impl Writer {
    /// True when [`Writer::write`] has something to do.
    pub(crate) fn wants_write(&self, buf: &BytesMut) -> bool {
        !buf.is_empty() || matches!(self, Writer::Ws { needs_flush: true, .. } | Writer::Tls { needs_flush: true, .. })
    }

    /// Writes some of `buf` (removing what was written), or flushes a pending WebSocket message.
    ///
    /// Cancel safe: bytes leave `buf` only once the socket (or the WebSocket sink) has taken
    /// them, and a message the sink has taken is flushed by the next call.
    pub(crate) async fn write(&mut self, buf: &mut BytesMut) -> Result<(), ClientError> {
        match self {
            Writer::Tcp(write) => {
                if write.write_buf(buf).await? == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
                Ok(())
            }
            // rustls may hold written bytes in a record until flushed, so a write is not done
            // until the flush is.
            Writer::Tls { write, needs_flush } => {
                poll_fn(|cx| {
                    if !buf.is_empty() {
                        let written = ready!(Pin::new(&mut *write).poll_write(cx, buf))?;
                        if written == 0 {
                            return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                        }
                        buf.advance(written);
                        *needs_flush = true;
                    }
                    ready!(Pin::new(&mut *write).poll_flush(cx))?;
                    *needs_flush = false;
                    Poll::Ready(Ok::<(), ClientError>(()))
                })
                .await
            }
            Writer::Ws { sink, needs_flush } => {
                poll_fn(|cx| {
                    if !buf.is_empty() {
                        ready!(sink.poll_ready_unpin(cx))?;
                        sink.start_send_unpin(WsMessage::Binary(buf.split().freeze()))?;
                        *needs_flush = true;
                    }
                    ready!(sink.poll_flush_unpin(cx))?;
                    *needs_flush = false;
                    Poll::Ready(Ok::<(), ClientError>(()))
                })
                .await
            }
        }
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all(&mut self, buf: &mut BytesMut) -> Result<(), ClientError> {
        while self.wants_write(buf) {
            self.write(buf).await?;
        }
        Ok(())
    }

    /// Closes the write direction (TCP FIN, or a WebSocket Close frame).
    pub(crate) async fn shutdown(&mut self) -> Result<(), ClientError> {
        match self {
            Writer::Tcp(write) => Ok(write.shutdown().await?),
            Writer::Tls { write, .. } => Ok(write.shutdown().await?),
            Writer::Ws { sink, .. } => Ok(sink.close().await?),
        }
    }
}
