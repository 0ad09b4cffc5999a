//! The public HTTP side of the WebSocket port: every request's head is read here first, then
//! either answered or handed to tungstenite for the WebSocket upgrade.
//!
//! People open the WebSocket URL in a browser, or `curl` it, before they write a client; an
//! empty reply (ERR_EMPTY_RESPONSE) tells them nothing. So a plain request on the WebSocket path
//! gets `426 Upgrade Required` naming the STOMP URL, and any other path gets `404` with a hint.
//! The HTTP fallback for clients without WebSocket ([`super::fallback`]) and its JavaScript shim
//! are routed here too.
//!
//! The head is read with a size bound and under the caller's handshake deadline; the bytes read
//! are replayed to tungstenite through [`Replayed`], so the upgrade sees the request unchanged.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::fallback;

/// Largest request head read (request line and headers); a larger one gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most request headers parsed.
const MAX_HEADERS: usize = 64;

/// `ws_allowed_origins` as compared, shared by the WebSocket handshake and the HTTP fallback so
/// a browser's origin gets the same answer on both: lower case, without a trailing `/`; empty
/// allows every origin, `*` too.
#[derive(Clone, Debug)]
pub(crate) struct AllowedOrigins(Arc<RwLock<Arc<[String]>>>);

impl AllowedOrigins {
    pub(crate) fn new(configured: &[String]) -> AllowedOrigins {
        AllowedOrigins(Arc::new(RwLock::new(normalized(configured))))
    }

    /// True for a request without an `Origin` (not from a browser page) or with an allowed one.
    pub(crate) fn allow(&self, origin: Option<&str>) -> bool {
        let allowed = Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()));
        match origin {
            Some(origin) if !allowed.is_empty() => {
                let origin = normalize_origin(origin);
                allowed.iter().any(|allowed| allowed == "*" || *allowed == origin)
            }
            _ => true,
        }
    }

    /// Every clone of this list checks against `configured` from the next request on (SIGHUP).
    pub(crate) fn replace(&self, configured: &[String]) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = normalized(configured);
    }
}

fn normalized(configured: &[String]) -> Arc<[String]> {
    configured.iter().map(|origin| normalize_origin(origin)).collect()
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Where a request goes.
pub(crate) enum Routed<S> {
    /// A WebSocket upgrade on the STOMP path: hand the stream, with the head replayed, to
    /// tungstenite.
    Upgrade(Replayed<S>),
    /// A request for the HTTP fallback (SSE and POST), to be served outside the handshake
    /// deadline (an event stream lasts as long as its session).
    Fallback(fallback::FallbackRequest, Replayed<S>),
    /// The request was answered (or the client went away) and the connection is done.
    Answered,
}

/// What [`route`] needs to know about the listener.
pub(crate) struct Endpoint<'a> {
    /// The STOMP over WebSocket path, e.g. `/ws`.
    pub path: &'a str,
    /// True for wss.
    pub secure: bool,
    /// The listener's address, for URLs when the request has no usable `Host`.
    pub local: SocketAddr,
    /// Serve the demo pages at `/demo/` (`demo = true`).
    pub demo: bool,
}

/// Reads one request head from `stream` and routes it.
///
/// # Errors
/// When reading or writing the socket fails.
pub(crate) async fn route<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    endpoint: &Endpoint<'_>,
) -> io::Result<Routed<S>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Routed::Answered);
        }
        head.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(head_len)) => {
                let target = request.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let method = request.method.unwrap_or("GET");
                if path == fallback::SHIM_PATH && (method == "GET" || method == "HEAD") {
                    fallback::serve_shim(&mut stream, method == "HEAD").await?;
                    return Ok(Routed::Answered);
                }
                let demo_path = path == crate::demo::PREFIX
                    || path.strip_prefix(crate::demo::PREFIX).is_some_and(|below| below.starts_with('/'));
                if endpoint.demo && demo_path && (method == "GET" || method == "HEAD") {
                    crate::demo::serve(&mut stream, path, endpoint.path, method == "HEAD").await?;
                    return Ok(Routed::Answered);
                }
                if let Some(below) = path.strip_prefix(fallback::PREFIX).filter(|below| below.starts_with('/')) {
                    let header = |name: &str| {
                        request
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                            .map(str::to_owned)
                    };
                    let fallback_request = fallback::FallbackRequest {
                        method: method.to_owned(),
                        path: below.to_owned(),
                        query: query.to_owned(),
                        origin: header("origin"),
                        last_event_id: header("last-event-id"),
                        content_length: header("content-length").and_then(|v| v.trim().parse().ok()),
                    };
                    // The body bytes read with the head come first when the body is read.
                    let stream = Replayed { replay: head, replayed: head_len, inner: stream };
                    return Ok(Routed::Fallback(fallback_request, stream));
                }
                let answer = answer(&request, endpoint);
                return match answer {
                    None => Ok(Routed::Upgrade(Replayed { replay: head, replayed: 0, inner: stream })),
                    Some(response) => {
                        respond(&mut stream, &response, request.method == Some("HEAD")).await?;
                        Ok(Routed::Answered)
                    }
                };
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                let response = Response::text(431, "Request Header Fields Too Large", "Request head too large.\n");
                respond(&mut stream, &response, false).await?;
                return Ok(Routed::Answered);
            }
            Err(_) => {
                let response = Response::text(400, "Bad Request", "This port speaks HTTP (STOMP over WebSocket).\n");
                respond(&mut stream, &response, false).await?;
                return Ok(Routed::Answered);
            }
        }
    }
}

/// The answer to a complete request head, or `None` to upgrade it.
fn answer(request: &httparse::Request<'_, '_>, endpoint: &Endpoint<'_>) -> Option<Response> {
    let target = request.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let scheme = if endpoint.secure { "wss" } else { "ws" };
    let host =
        header("host").filter(|host| is_plain_host(host)).map_or_else(|| endpoint.local.to_string(), str::to_owned);
    let stomp_url = format!("{scheme}://{host}{}", endpoint.path);
    if path != endpoint.path && !endpoint.demo && path.starts_with(crate::demo::PREFIX) {
        return Some(Response::text(
            404,
            "Not Found",
            &format!(
                "Not found. The demo is off: start the broker with --demo (demo = true). STOMP over WebSocket is at {stomp_url}\n"
            ),
        ));
    }
    if path != endpoint.path {
        return Some(Response::text(
            404,
            "Not Found",
            &format!("Not found. This port serves STOMP over WebSocket at {stomp_url}\n"),
        ));
    }
    let upgrade = header("upgrade")
        .is_some_and(|value| value.split(',').any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket")));
    if upgrade {
        return None;
    }
    let mut response = Response::text(
        426,
        "Upgrade Required",
        &format!(
            "This is a STOMP over WebSocket endpoint, not a web page. Connect a STOMP client (for example @stomp/stompjs) to {stomp_url}\n"
        ),
    );
    response.extra_headers = "Upgrade: websocket\r\nSec-WebSocket-Protocol: v12.stomp, v11.stomp, v10.stomp\r\n";
    Some(response)
}

/// A `Host` value safe to echo: a name or address with an optional port.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty() && host.len() <= 255 && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
}

/// A small plain-text HTTP response; the connection closes after it.
struct Response {
    status: u16,
    reason: &'static str,
    extra_headers: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response { status, reason, extra_headers: "", body: body.to_owned() }
    }
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, response: &Response, head_only: bool) -> io::Result<()> {
    let content_type = "text/plain; charset=utf-8";
    let body = response.body.as_bytes();
    write_response(stream, (response.status, response.reason), content_type, response.extra_headers, body, head_only)
        .await
}

/// Writes one HTTP/1.1 response, then closes the stream (every answer on this port is the last
/// on its connection). `extra_headers` are whole lines, each ending in CRLF.
pub(crate) async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    (status, reason): (u16, &str),
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    // One write: a client that reads the head and whatever arrived with it (tungstenite does, on
    // a refused upgrade) gets the body too.
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// A stream whose first bytes are the request head already read, replayed before the rest.
pub(crate) struct Replayed<S> {
    replay: Vec<u8>,
    replayed: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let take = (this.replay.len() - this.replayed).min(buf.remaining());
            buf.put_slice(&this.replay[this.replayed..this.replayed + take]);
            this.replayed += take;
            if this.replayed == this.replay.len() {
                // Not needed again: give the memory back for the connection's lifetime.
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
