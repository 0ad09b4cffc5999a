//! Listeners and the broker's lifetime.
//!
//! An accept loop only accepts and spawns: the WebSocket handshake runs inside the spawned task
//! under a timeout, so one slow client cannot stall new connections. Accept errors (such as
//! running out of file descriptors) back off from 10 ms to 1 s instead of spinning. Shutdown is
//! a [`CancellationToken`]: listeners stop accepting, every connection sends its client an ERROR
//! saying the server is shutting down and closes, and [`RunningBroker::shutdown`] waits for the
//! tasks with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stampede_protocol::Version;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, StorageKind};
use crate::connection::{self, ConnectionContext, Transport};
use crate::router::Router;
use stampede_storage::{MemoryStore, SledStore, Store};

/// A broker that is accepting connections.
pub struct RunningBroker {
    /// Where STOMP over TCP listens (useful when the configured port was 0).
    pub stomp_addr: SocketAddr,
    /// Where STOMP over WebSocket listens.
    pub ws_addr: SocketAddr,
    router: Arc<Router>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker").field("stomp_addr", &self.stomp_addr).field("ws_addr", &self.ws_addr).finish()
    }
}

impl RunningBroker {
    /// The router, for in-process inspection.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Stops accepting, tells every client, and waits up to `deadline` for connections to end.
    pub async fn shutdown(self, deadline: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait()).await.is_err() {
            warn!("shutdown deadline of {deadline:?} passed with connections still open");
        }
        // Queues submit their last writes as they stop; then everything is made durable.
        for queue in self.router.queues() {
            queue.shutdown(false).await;
        }
        let store = self.store;
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!("final storage flush failed: {error}"),
            Err(error) => warn!("final storage flush failed: {error}"),
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error(transparent)]
    Listen(#[from] std::io::Error),
    /// The data directory could not be opened or read.
    #[error("cannot open the data directory {dir}: {source}")]
    Storage {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: stampede_storage::StorageError,
    },
}

/// Opens storage, recovers stored queues and durable subscriptions, then binds the listeners
/// and starts serving. Nothing is accepted before recovery is complete.
///
/// # Errors
/// When storage cannot be opened or a listener cannot bind (address in use, permission denied).
pub async fn start(config: &Config) -> Result<RunningBroker, StartError> {
    let store = open_store(config).await?;
    let router = Router::with_store(config.queue_settings(), config.queues.clone(), Some(Arc::clone(&store)));
    let started = std::time::Instant::now();
    let recovery = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.recover())
            .await
            .map_err(|e| StartError::Listen(std::io::Error::other(e)))?
            .map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?
    };
    let recovered = recovery.message_count();
    router.restore(recovery);
    if recovered > 0 {
        info!("recovered {recovered} stored messages in {:?}", started.elapsed());
    }
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let context = ConnectionContext {
        settings: Arc::new(config.connection_settings()),
        session: Arc::new(config.session_config()),
        router: Arc::clone(&router),
        shutdown: shutdown.clone(),
    };
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let ids = Arc::new(SessionIds::new());

    let stomp = TcpListener::bind(config.stomp_addr).await.map_err(|e| with_addr(e, "STOMP", config.stomp_addr))?;
    let ws = TcpListener::bind(config.ws_addr).await.map_err(|e| with_addr(e, "WebSocket", config.ws_addr))?;
    let stomp_addr = stomp.local_addr()?;
    let ws_addr = ws.local_addr()?;
    info!("STOMP over TCP listening on {stomp_addr}");
    info!("STOMP over WebSocket listening on ws://{ws_addr}{}", config.ws_path);

    let ws_settings = Arc::new(WsSettings {
        path: config.ws_path.clone(),
        config: config.websocket_config(),
        handshake_timeout: Duration::from_millis(config.connect_timeout_ms),
    });
    tasks.spawn(accept_loop(
        stomp,
        Listener::Stomp,
        context.clone(),
        Arc::clone(&limit),
        Arc::clone(&ids),
        tasks.clone(),
        Arc::clone(&ws_settings),
    ));
    tasks.spawn(accept_loop(ws, Listener::WebSocket, context, limit, ids, tasks.clone(), ws_settings));
    Ok(RunningBroker { stomp_addr, ws_addr, router, shutdown, tasks, store })
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    match config.storage {
        StorageKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StorageKind::Sled => {
            let dir = config.data_dir.clone();
            let options = config.store_options();
            let opened = tokio::task::spawn_blocking(move || SledStore::open(&dir, options))
                .await
                .map_err(|e| StartError::Listen(std::io::Error::other(e)))?;
            let store = opened.map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?;
            info!(dir = %config.data_dir.display(), fsync = %config.fsync, "storage open");
            Ok(Arc::new(store))
        }
    }
}

fn with_addr(error: std::io::Error, what: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("cannot listen for {what} on {addr}: {error}"))
}

#[derive(Debug, Clone, Copy)]
enum Listener {
    Stomp,
    WebSocket,
}

#[derive(Debug)]
struct WsSettings {
    path: String,
    config: WebSocketConfig,
    handshake_timeout: Duration,
}

/// Session ids: unguessable enough to name temporary queues, short enough to log.
#[derive(Debug)]
struct SessionIds {
    prefix: u64,
    next: AtomicU64,
}

impl SessionIds {
    fn new() -> SessionIds {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mixed = seed ^ (std::process::id() as u64).rotate_left(32) ^ (&seed as *const u64 as u64);
        SessionIds { prefix: mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15), next: AtomicU64::new(1) }
    }

    fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("session-{:016x}-{n}", self.prefix))
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    context: ConnectionContext,
    limit: Arc<Semaphore>,
    ids: Arc<SessionIds>,
    tasks: TaskTracker,
    ws: Arc<WsSettings>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = context.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(error) => {
                warn!("accept failed: {error}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            warn!(%peer, "connection refused: max_connections reached");
            tasks.spawn(refuse(stream, kind, Arc::clone(&ws)));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = ids.next();
        tasks.spawn(handle(stream, peer, kind, id, context.clone(), Arc::clone(&ws), permit));
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    id: Arc<str>,
    context: ConnectionContext,
    ws: Arc<WsSettings>,
    _permit: OwnedSemaphorePermit,
) {
    let transport = match kind {
        Listener::Stomp => Transport::Stream(stream),
        Listener::WebSocket => {
            let callback = |request: &Request, response: Response| negotiate(request, response, &ws.path);
            match tokio::time::timeout(
                ws.handshake_timeout,
                tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws.config)),
            )
            .await
            {
                Ok(Ok(socket)) => Transport::WebSocket(Box::new(socket)),
                Ok(Err(error)) => {
                    debug!(%peer, "WebSocket handshake failed: {error}");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "WebSocket handshake timed out");
                    return;
                }
            }
        }
    };
    connection::serve(transport, peer, id, context).await;
}

/// Answers a connection over the limit with an ERROR that names the limit, then closes.
async fn refuse(stream: TcpStream, kind: Listener, ws: Arc<WsSettings>) {
    let error = crate::error::StompError::limit("connections", "max_connections", "max_connections").to_frame();
    let bytes = stampede_protocol::encode_to_bytes(&error, Version::V1_2);
    let transport = match kind {
        Listener::Stomp => Transport::Stream(stream),
        Listener::WebSocket => {
            let callback = |request: &Request, response: Response| negotiate(request, response, &ws.path);
            match tokio::time::timeout(
                ws.handshake_timeout,
                tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws.config)),
            )
            .await
            {
                Ok(Ok(socket)) => Transport::WebSocket(Box::new(socket)),
                _ => return,
            }
        }
    };
    connection::send_and_close(transport, bytes).await;
}

/// The WebSocket handshake check: the path must match, and the highest STOMP subprotocol the
/// client offers is echoed (a client offering none still gets STOMP, with the version its
/// CONNECT asks for).
fn negotiate(request: &Request, mut response: Response, path: &str) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        let mut refusal =
            ErrorResponse::new(Some(format!("No STOMP endpoint here; STOMP over WebSocket is served at {path}\n")));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(Version::from_websocket_subprotocol)
        .max();
    if let Some(version) = offered {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(version.websocket_subprotocol()));
    }
    Ok(response)
}
