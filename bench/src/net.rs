//! Transports (TCP, WebSocket with subprotocol v12.stomp) split into a reader and a writer, and a
//! bare STOMP session on top: CONNECT, SUBSCRIBE with a receipt, waiting for a frame.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stomp::{self, FrameRef};

pub type Error = String;

#[derive(Clone, Debug)]
pub struct Target {
    pub ws: bool,
    /// `host:port`
    pub authority: String,
    /// Full URL for WebSocket requests.
    pub url: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, Error> {
        let (ws, rest) = if let Some(r) = url.strip_prefix("tcp://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("stomp://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (true, r)
        } else {
            return Err(format!("--url {url}: use tcp://host:port or ws://host:port/path"));
        };
        let authority = rest.split('/').next().unwrap_or("").to_string();
        if authority.is_empty() {
            return Err(format!("--url {url}: no host:port"));
        }
        Ok(Target { ws, authority, url: url.to_string() })
    }

    pub fn transport(&self) -> &'static str {
        if self.ws { "ws" } else { "tcp" }
    }

    pub async fn resolve(&self) -> Result<SocketAddr, Error> {
        tokio::net::lookup_host(&self.authority)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.authority))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("{} has no IPv4 address", self.authority))
    }
}

pub enum Reader {
    Tcp(OwnedReadHalf, usize),
    Ws(SplitStream<WebSocketStream<TcpStream>>),
}

pub enum Writer {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<WebSocketStream<TcpStream>, Message>),
}

impl Reader {
    /// Reads more into `buf` unless `stop` changes first: `Ok(true)` when data arrived,
    /// `Ok(false)` when told to stop, `Err` saying why when the connection ended.
    pub async fn read_or_stop(&mut self, buf: &mut BytesMut, stop: &mut watch::Receiver<bool>) -> Result<bool, Error> {
        tokio::select! {
            biased;
            n = self.read_into(buf) => match n {
                Ok(0) => Err("connection closed by broker".into()),
                Ok(_) => Ok(true),
                Err(e) => Err(format!("read: {e}")),
            },
            _ = stop.changed() => Ok(false),
        }
    }

    /// Reads what is available (up to one chunk) onto the end of `buf`. 0 means closed.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Tcp(r, chunk) => {
                buf.reserve(*chunk);
                r.read_buf(buf).await
            }
            Reader::Ws(s) => loop {
                match s.next().await {
                    None => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        if !b.is_empty() {
                            return Ok(b.len());
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        buf.extend_from_slice(t.as_bytes());
                        if !t.is_empty() {
                            return Ok(t.len());
                        }
                    }
                    Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(_)) => {}
                }
            },
        }
    }
}

impl Writer {
    /// Writes `buf` whole (one WebSocket message) and empties it.
    pub async fn write_buf(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        match self {
            Writer::Tcp(w) => {
                w.write_all(buf).await?;
                buf.clear();
                Ok(())
            }
            Writer::Ws(s) => {
                let chunk = buf.split().freeze();
                s.send(Message::Binary(chunk)).await.map_err(io::Error::other)
            }
        }
    }

    pub async fn write_static(&mut self, bytes: &'static [u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(bytes).await,
            Writer::Ws(s) => s.send(Message::Binary(Bytes::from_static(bytes))).await.map_err(io::Error::other),
        }
    }

    pub async fn close(&mut self) {
        match self {
            Writer::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            Writer::Ws(s) => {
                let _ = s.close().await;
            }
        }
    }
}

/// Per-connection settings.
#[derive(Clone)]
pub struct ConnSettings {
    pub target: Target,
    pub login: Option<String>,
    pub passcode: Option<String>,
    pub vhost: String,
    pub heart_beat: (u32, u32),
    /// Read chunk (TCP) and WebSocket read buffer.
    pub chunk: usize,
    pub bind: Option<IpAddr>,
}

pub struct Session {
    pub reader: Reader,
    pub writer: Writer,
    pub buf: BytesMut,
    pub version12: bool,
}

impl Session {
    pub async fn open(s: &ConnSettings, addr: SocketAddr) -> Result<Session, Error> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = s.bind {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let tcp = socket.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        let (reader, writer) = if s.target.ws {
            let mut req = s.target.url.as_str().into_client_request().map_err(|e| format!("{}: {e}", s.target.url))?;
            req.headers_mut().insert("Sec-WebSocket-Protocol", "v12.stomp, v11.stomp, v10.stomp".parse().unwrap());
            let cfg = WebSocketConfig::default().read_buffer_size(s.chunk.max(4096)).write_buffer_size(0);
            let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
                .await
                .map_err(|e| format!("websocket handshake {}: {e}", s.target.url))?;
            let (w, r) = ws.split();
            (Reader::Ws(r), Writer::Ws(w))
        } else {
            let (r, w) = tcp.into_split();
            (Reader::Tcp(r, s.chunk), Writer::Tcp(w))
        };
        let mut session = Session { reader, writer, buf: BytesMut::with_capacity(s.chunk.min(4096)), version12: false };
        let mut out = BytesMut::from(
            &stomp::connect_frame(s.login.as_deref(), s.passcode.as_deref(), &s.vhost, s.heart_beat)[..],
        );
        session.writer.write_buf(&mut out).await.map_err(|e| format!("write CONNECT: {e}"))?;
        let version = session.wait_for(b"CONNECTED", |f| f.header(b"version").map(|v| v.to_vec())).await?;
        session.version12 = version.as_deref() == Some(b"1.2");
        Ok(session)
    }

    /// Reads until a frame with `command` arrives and returns `pick(frame)`. An ERROR frame or
    /// end of stream is an error. Frames of other kinds before it are dropped.
    pub async fn wait_for<T>(&mut self, command: &[u8], pick: impl Fn(&FrameRef<'_>) -> T) -> Result<T, Error> {
        loop {
            let mut used = 0;
            let mut found = None;
            while let Some((f, n)) = stomp::scan(&self.buf[used..])? {
                used += n;
                if f.is(b"ERROR") {
                    return Err(format!("ERROR from broker: {}", f.error_text()));
                }
                if f.is(command) {
                    found = Some(pick(&f));
                    break;
                }
            }
            let _ = self.buf.split_to(used);
            if let Some(v) = found {
                return Ok(v);
            }
            let n = self.reader.read_into(&mut self.buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("connection closed while waiting for {}", String::from_utf8_lossy(command)));
            }
        }
    }

    /// SUBSCRIBE with a receipt, and wait for the RECEIPT.
    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        ack: &str,
        extra: &[(String, String)],
    ) -> Result<(), Error> {
        let mut out = BytesMut::from(&stomp::subscribe_frame(id, destination, ack, extra)[..]);
        self.writer.write_buf(&mut out).await.map_err(|e| format!("write SUBSCRIBE: {e}"))?;
        self.wait_for(b"RECEIPT", |_| ()).await
    }
}
