//! Listeners and the broker's lifetime.
//!
//! An accept loop only accepts and spawns: the TLS and WebSocket handshakes run inside the
//! spawned task under the connect timeout, so one slow client cannot stall new connections.
//! Accept errors (such as running out of file descriptors) back off from 10 ms to 1 s instead of
//! spinning. Connections over `max_connections` or `max_connections_per_ip` get an ERROR naming
//! the limit (at most [`MAX_REFUSALS`] such answers are in flight; beyond that the socket is
//! simply closed). Shutdown is a [`CancellationToken`]: listeners stop accepting, every
//! connection sends its client an ERROR saying the server is shutting down and closes, and
//! [`RunningBroker::shutdown`] waits for the tasks with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stampede_protocol::Version;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::config::{Config, StorageKind};
use crate::connection::{self, ConnectionContext, ConnectionSettings, Transport};
use crate::destination::router::Router;
use crate::destination::vhost::{RouterSettings, VirtualHosts};
use crate::error::ErrorKind;
use crate::error::StompError;
use crate::http::health::Readiness;
use crate::http::metrics::{Exporter, Metrics, Sources, TransportKind};
use crate::http::{HttpState, ListenerInfo};
use crate::listener::fallback::{self, FallbackRequest, FallbackSessions};
use crate::listener::public_http::{self, AllowedOrigins, Replayed, Routed};
use crate::listener::tls::Certificate;
use crate::registry::{CloseRequest, ConnectionRegistry};
use crate::security::auth::{Authenticator, Credentials};
use crate::security::{AddressPermit, PerAddress};
use stampede_storage::{MemoryStore, SledStore, Store};

/// Most refusals (ERROR frames to connections over a limit) being written at once.
pub const MAX_REFUSALS: usize = 256;

/// How long queues get to stop when a shutdown is hurried by a second signal.
pub const HURRIED_STOP: Duration = Duration::from_millis(500);

/// A broker that is accepting connections.
pub struct RunningBroker {
    /// Where STOMP over TCP listens (useful when the configured port was 0).
    pub stomp_addr: SocketAddr,
    /// Where STOMP over WebSocket listens.
    pub ws_addr: SocketAddr,
    /// Where STOMP over TLS listens, when TLS is on.
    pub stomp_tls_addr: Option<SocketAddr>,
    /// Where STOMP over secure WebSocket listens, when TLS is on.
    pub wss_addr: Option<SocketAddr>,
    /// False when `require_tls` kept the plain listeners closed (then `stomp_addr` and
    /// `ws_addr` are the TLS listeners' addresses).
    pub plain_listeners: bool,
    /// Where the management HTTP listener listens (`None` with `http_addr = none`).
    pub http_addr: Option<SocketAddr>,
    /// Where the management HTTPS listener listens, when TLS is on.
    pub https_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    auth: Arc<Authenticator>,
    per_address: Arc<PerAddress>,
    vhosts: Arc<VirtualHosts>,
    registry: Arc<ConnectionRegistry>,
    shutdown: CancellationToken,
    /// Cancelled when the listeners stop accepting (a drain), before `shutdown`.
    accepting: CancellationToken,
    tasks: TaskTracker,
    store: Arc<dyn Store>,
    /// What a reload replaces besides the users: the certificate, the allowed origins.
    certificate: Option<Certificate>,
    origins: AllowedOrigins,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker").field("stomp_addr", &self.stomp_addr).field("ws_addr", &self.ws_addr).finish()
    }
}

impl RunningBroker {
    /// The router of the default virtual host `/`, for in-process inspection.
    pub fn router(&self) -> &Arc<Router> {
        self.vhosts.default_router()
    }

    /// Every virtual host, for in-process inspection.
    pub fn vhosts(&self) -> &Arc<VirtualHosts> {
        &self.vhosts
    }

    /// The authenticator, for in-process inspection.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// This broker's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What `/readyz` reports; other parts set its flags.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Marks the broker as draining: `/readyz` answers 503 from now on, so load balancers move
    /// new clients elsewhere while existing connections go on.
    pub fn start_draining(&self) {
        self.readiness.start_draining();
    }

    /// The open client connections.
    pub fn connections(&self) -> &Arc<ConnectionRegistry> {
        &self.registry
    }

    /// Open connections from `ip`, as counted for `max_connections_per_ip`.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> usize {
        self.per_address.count(ip)
    }

    /// Reloads from `config` (SIGHUP), without dropping any connection: the users and their
    /// permissions, the token keys, `ws_allowed_origins`, and the TLS certificate and key
    /// (read again even when the paths did not change, so a renewed certificate written over
    /// the old files is picked up). Everything is read and checked first: on an error nothing
    /// changes. Returns the number of users now.
    ///
    /// # Errors
    /// The configuration is invalid, a password hash, token key or certificate is unusable, or
    /// the change needs a restart: turning authentication or TLS on or off.
    pub fn reload(&self, config: &Config) -> Result<usize, StartError> {
        config.validate().map_err(|e| StartError::Config(e.to_string()))?;
        let certificate = match (&self.certificate, &config.tls_cert, &config.tls_key) {
            (Some(current), Some(cert), Some(key)) => {
                Some(current.read_replacement(cert, key).map_err(|e| StartError::Config(e.to_string()))?)
            }
            (None, None, _) | (None, _, None) => None,
            _ => {
                return Err(StartError::Config(
                    "the new configuration would turn TLS on or off (tls_cert and tls_key); that needs a restart"
                        .to_owned(),
                ));
            }
        };
        let users = self.auth.reload(config).map_err(|e| StartError::Config(e.to_string()))?;
        if let (Some(current), Some(replacement)) = (&self.certificate, certificate) {
            current.install(replacement);
        }
        self.origins.replace(&config.ws_allowed_origins);
        Ok(users)
    }

    /// Drains the broker (lame duck): `/readyz` answers 503 at once, the STOMP and WebSocket
    /// listeners stop accepting (the management listener stays up, so the 503 can be seen),
    /// and every open connection is closed with an ERROR `server shutting down` (WebSocket
    /// close 1012, service restart), the closes spread evenly over `spread` so that clients do
    /// not all reconnect at the same instant (NATS's lame-duck mode). Returns once every
    /// connection open at the start was asked to close; [`RunningBroker::shutdown`] follows.
    pub async fn drain(&self, spread: Duration) {
        self.start_draining();
        self.accepting.cancel();
        let connections = self.registry.snapshot();
        let count = connections.len();
        info!(connections = count, "draining: listeners closed, closing connections over {spread:?}");
        let started = Instant::now();
        for (index, entry) in connections.iter().enumerate() {
            // Connection `index` is due at its share of the spread; those already due go in
            // one batch, so many connections need not one timer each.
            let due = started + spread.mul_f64(index as f64 / count as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            entry.request_close(CloseRequest { kind: ErrorKind::Shutdown, message: "server shutting down".to_owned() });
        }
    }

    /// Stops accepting, tells every client, waits for the connections to end, stops every queue
    /// (their last writes reach the store), waits for every task they started, and flushes the
    /// store: all within one `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        self.shutdown_unless(deadline, std::future::pending()).await;
    }

    /// [`RunningBroker::shutdown`], cut short when `hurry` completes (a second signal): then
    /// the broker stops waiting for connections, gives its queues [`HURRIED_STOP`] to hand
    /// their last writes to the store, and flushes it. Receipted persistent messages were
    /// stored before their receipts, so hurrying loses none of them.
    pub async fn shutdown_unless(self, deadline: Duration, hurry: impl std::future::Future<Output = ()>) {
        let mut deadline = tokio::time::Instant::now() + deadline;
        self.start_draining();
        self.shutdown.cancel();
        self.tasks.close();
        tokio::pin!(hurry);
        tokio::select! {
            waited = tokio::time::timeout_at(deadline, self.tasks.wait()) => {
                if waited.is_err() {
                    warn!(open = self.tasks.len(), "shutdown deadline passed with connections still open");
                }
            }
            () = &mut hurry => {
                warn!(open = self.tasks.len(), "second signal: stopping now (the store is still flushed)");
                deadline = deadline.min(tokio::time::Instant::now() + HURRIED_STOP);
            }
        }
        self.vhosts.stop_queues(deadline).await;
        drop(self.vhosts);
        let store = self.store;
        if Arc::strong_count(&store) > 1 {
            warn!(
                "the store is still in use after every task ended; its data directory stays locked until it is released"
            );
        }
        // Flushing (and dropping, which closes it and releases the data directory's lock) is
        // blocking work.
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!("final storage flush failed: {error}"),
            Err(error) => warn!("final storage flush failed: {error}"),
        }
    }
}

/// Why the broker could not start. Each message is a whole sentence for the person who started
/// it, so the binary prints it once, without its causes repeated after it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("{}", bind_message(what, *addr, cause))]
    Listen {
        /// Which listener, e.g. "STOMP".
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why (explained in the message, so not a `source`).
        cause: std::io::Error,
    },
    /// The settings are inconsistent or insecure, or a key, certificate or hash is unusable.
    #[error("{0}")]
    Config(String),
    /// `data_dir` names something that is not a directory.
    #[error("data_dir {} is a file, not a directory", dir.display())]
    DataDirIsFile {
        /// The path.
        dir: std::path::PathBuf,
    },
    /// The data directory could not be opened or read (the storage error names it).
    #[error("{source}")]
    Storage {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: stampede_storage::StorageError,
    },
    /// A start-up task failed inside the broker.
    #[error("internal error while starting: {0}")]
    Internal(String),
}

/// "cannot listen on ADDR (WHAT): REASON", with the usual causes explained.
fn bind_message(what: &str, addr: SocketAddr, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let reason = match error.kind() {
        ErrorKind::AddrInUse => "address already in use (is another broker running?)".to_owned(),
        ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_owned(),
        ErrorKind::AddrNotAvailable => "this machine has no such address".to_owned(),
        _ => error.to_string(),
    };
    format!("cannot listen on {addr} for {what}: {reason}")
}

/// Checks everything a start checks before it touches the data directory or the network: the
/// settings, the users' password hashes, the token keys and the TLS files. `print-config` runs
/// it, so a mistake shows there and not only at start-up.
///
/// # Errors
/// The first problem found.
pub fn check(config: &Config) -> Result<(), StartError> {
    prepare(config).map(drop)
}

/// The TLS side of the broker: the certificate every TLS listener presents (replaced by a
/// reload) and an acceptor for each kind of listener.
struct Tls {
    certificate: Certificate,
    stomp: TlsAcceptor,
    /// wss and the management HTTPS listener: both offer `http/1.1`.
    https: TlsAcceptor,
}

/// The authenticator and the TLS listeners' setup a configuration describes.
fn prepare(config: &Config) -> Result<(Authenticator, Option<Tls>), StartError> {
    config.validate().map_err(|e| StartError::Config(e.to_string()))?;
    let auth = Authenticator::from_config(config).map_err(|e| StartError::Config(e.to_string()))?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let failed = |e: crate::listener::tls::TlsError| StartError::Config(e.to_string());
            let certificate = Certificate::load(cert, key).map_err(failed)?;
            let stomp = certificate.acceptor(&[]).map_err(failed)?;
            let https = certificate.acceptor(&[b"http/1.1"]).map_err(failed)?;
            Some(Tls { certificate, stomp, https })
        }
        _ => None,
    };
    Ok((auth, tls))
}

/// Opens storage, recovers stored queues and durable subscriptions, then binds the listeners
/// and starts serving. Nothing is accepted before recovery is complete.
///
/// # Errors
/// When storage cannot be opened or a listener cannot bind (address in use, permission denied).
pub async fn start(config: &Config) -> Result<RunningBroker, StartError> {
    let (auth, tls) = prepare(config)?;
    let auth = Arc::new(auth);
    let store = open_store(config).await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let shutdown = CancellationToken::new();
    let queue_tasks = TaskTracker::new();
    let cluster = match &config.cluster {
        Some(cluster) => {
            let cluster = crate::cluster::Cluster::start(cluster, &queue_tasks, shutdown.clone())
                .await
                .map_err(|e| StartError::Config(e.to_string()))?;
            readiness.set_cluster(Arc::clone(&cluster));
            Some(cluster)
        }
        None => None,
    };
    let settings = RouterSettings {
        queue_settings: config.queue_settings(),
        queue_overrides: config.queues.clone(),
        limits: config.name_limits(),
        tasks: queue_tasks,
        metrics: Arc::clone(&metrics),
        cluster,
        retention: Arc::new(config.retention_config()),
    };
    let vhosts = VirtualHosts::new(config.declared_vhosts(), settings, Some(Arc::clone(&store)));
    let started = Instant::now().into_std();
    let recovery = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.recover())
            .await
            .map_err(|e| StartError::Internal(e.to_string()))?
            .map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?
    };
    let restored = vhosts.restore(recovery);
    match config.storage {
        StorageKind::Memory => info!("storage: in memory (nothing survives a restart)"),
        StorageKind::Sled => info!(
            "storage: sled in {} (fsync {}); recovered {} stored messages in {:?} ({} queues, {} durable subscriptions)",
            config.data_dir.display(),
            config.fsync,
            restored.messages,
            started.elapsed(),
            restored.queues,
            restored.durable_subscriptions
        ),
    }
    let tasks = TaskTracker::new();
    let registry = ConnectionRegistry::new();
    let accepting = shutdown.child_token();
    let mut session = config.session_config();
    session.auth = Arc::clone(&auth);
    session.metrics = Arc::clone(&metrics);
    session.disk = store.disk_watermark();
    // Closes detached sessions whose resumption grace is over (and all of them at shutdown).
    tasks.spawn(Arc::clone(&session.resume).run_reaper(shutdown.clone()));
    if let Some(disk) = store.disk_watermark() {
        crate::disk::spawn_monitor(disk, &tasks, shutdown.clone());
    }
    let context = ConnectionContext {
        settings: Arc::new(ConnectionSettings { metrics: Arc::clone(&metrics), ..config.connection_settings() }),
        session: Arc::new(session),
        vhosts: Arc::clone(&vhosts),
        shutdown: shutdown.clone(),
        upgrade_credentials: None,
        registry: Arc::clone(&registry),
        transport: TransportKind::Tcp,
    };
    let per_address = PerAddress::new(config.max_connections_per_ip, config.max_connections_per_ip_loopback);
    let origins = AllowedOrigins::new(&config.ws_allowed_origins);
    let shared = Arc::new(Shared {
        context,
        limit: Arc::new(Semaphore::new(config.max_connections)),
        max_connections: config.max_connections,
        per_address: Arc::clone(&per_address),
        refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        ids: SessionIds::new(),
        tasks: tasks.clone(),
        ws: WsSettings {
            path: config.ws_path.clone(),
            demo: config.demo,
            config: config.websocket_config(),
            allowed_origins: origins.clone(),
        },
        handshake_timeout: Duration::from_millis(config.connect_timeout_ms),
        metrics: Arc::clone(&metrics),
        fallback: Arc::new(FallbackSessions::new(
            config.max_body.saturating_add(config.max_header_bytes).saturating_add(1024),
            origins.clone(),
            tasks.clone(),
            shutdown.clone(),
        )),
        accepting: accepting.clone(),
    });

    let plain_listeners = !config.require_tls;
    let mut bound: Vec<(TcpListener, Listener)> = Vec::new();
    if plain_listeners {
        bound.push((bind(config.stomp_addr, "STOMP").await?, Listener::Stomp));
        bound.push((bind(config.ws_addr, "WebSocket").await?, Listener::WebSocket));
    }
    if let Some(Tls { stomp: stomp_tls, https: wss, .. }) = &tls {
        let (stomp_tls_addr, wss_addr) = config.tls_addrs();
        bound.push((bind(stomp_tls_addr, "STOMP over TLS").await?, Listener::StompTls(stomp_tls.clone())));
        bound.push((bind(wss_addr, "secure WebSocket").await?, Listener::Wss(wss.clone())));
    }
    let mut addrs = Addrs::default();
    for (listener, kind) in &bound {
        let addr = listener.local_addr().map_err(|e| StartError::Internal(e.to_string()))?;
        match kind {
            Listener::Stomp => {
                addrs.stomp = Some(addr);
                info!("STOMP over TCP listening on {addr}");
            }
            Listener::WebSocket => {
                addrs.ws = Some(addr);
                info!("STOMP over WebSocket listening on ws://{addr}{}", config.ws_path);
            }
            Listener::StompTls(_) => {
                addrs.stomp_tls = Some(addr);
                info!("STOMP over TLS listening on {addr}");
            }
            Listener::Wss(_) => {
                addrs.wss = Some(addr);
                info!("STOMP over secure WebSocket listening on wss://{addr}{}", config.ws_path);
            }
        }
    }
    let http = match config.http_addr {
        Some(addr) => Some(bind(addr, "management HTTP").await?),
        None => None,
    };
    let https = match (config.effective_https_addr(), &tls) {
        (Some(addr), Some(_)) => Some(bind(addr, "management HTTPS").await?),
        _ => None,
    };
    let local_addr = |listener: &TcpListener| listener.local_addr().map_err(|e| StartError::Internal(e.to_string()));
    let http_addr = http.as_ref().map(local_addr).transpose()?;
    let https_addr = https.as_ref().map(local_addr).transpose()?;
    let listeners: Vec<ListenerInfo> = [
        ("stomp", addrs.stomp),
        ("stomp-tls", addrs.stomp_tls),
        ("ws", addrs.ws),
        ("wss", addrs.wss),
        ("http", http_addr),
        ("https", https_addr),
    ]
    .into_iter()
    .filter_map(|(protocol, address)| address.map(|address| ListenerInfo { protocol, address }))
    .collect();
    let bridges = crate::bridge::start(
        &config.webhooks,
        &config.bridges,
        vhosts.default_router(),
        &metrics.bridges,
        &tasks,
        &shutdown,
    )
    .map_err(StartError::Config)?;
    vhosts.spawn_idle_sweeper(&tasks, shutdown.clone());
    if http.is_some() || https.is_some() {
        let rates = crate::http::rates::MessageRates::new(Arc::clone(&metrics));
        rates.spawn_sampler(Arc::clone(&vhosts), &tasks, shutdown.clone());
        let state = Arc::new(HttpState {
            auth: Arc::clone(&auth),
            vhosts: Arc::clone(&vhosts),
            metrics: Arc::clone(&metrics),
            exporter: Exporter::new(Sources {
                metrics: Arc::clone(&metrics),
                vhosts: Arc::clone(&vhosts),
                store: Arc::clone(&store),
                auth: Arc::clone(&auth),
                per_destination: config.metrics_per_destination,
            }),
            readiness: Arc::clone(&readiness),
            store: Arc::clone(&store),
            started,
            listeners,
            metrics_public: config.metrics_public,
            registry: Arc::clone(&registry),
            session: Arc::clone(&shared.context.session),
            max_body: config.max_body,
            rates,
            bridges,
        });
        let app = crate::http::app(state);
        if let (Some(listener), Some(addr)) = (http, http_addr) {
            info!("management HTTP listening on http://{addr}");
            crate::http::serve(listener, None, app.clone(), shutdown.clone(), &tasks);
        }
        if let (Some(listener), Some(addr), Some(tls)) = (https, https_addr, &tls) {
            info!("management HTTPS listening on https://{addr}");
            crate::http::serve(listener, Some(tls.https.clone()), app, shutdown.clone(), &tasks);
        }
    }
    log_posture(config, &auth);
    if config.demo {
        crate::demo::start(addrs.stomp, auth.is_open(), &tasks, &shutdown)
            .map_err(|error| StartError::Config(error.to_string()))?;
    }
    for (listener, kind) in bound {
        tasks.spawn(accept_loop(listener, kind, Arc::clone(&shared)));
    }
    readiness.set_listening();
    let missing = || StartError::Config("no listener".to_owned());
    Ok(RunningBroker {
        stomp_addr: addrs.stomp.or(addrs.stomp_tls).ok_or_else(missing)?,
        ws_addr: addrs.ws.or(addrs.wss).ok_or_else(missing)?,
        stomp_tls_addr: addrs.stomp_tls,
        wss_addr: addrs.wss,
        plain_listeners,
        http_addr,
        https_addr,
        metrics,
        readiness,
        auth,
        per_address,
        vhosts,
        registry,
        shutdown,
        accepting,
        tasks,
        store,
        certificate: tls.map(|tls| tls.certificate),
        origins,
    })
}

#[derive(Default)]
struct Addrs {
    stomp: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    stomp_tls: Option<SocketAddr>,
    wss: Option<SocketAddr>,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|cause| StartError::Listen { what, addr, cause })
}

/// Says at start-up who may connect and from where.
fn log_posture(config: &Config, auth: &Authenticator) {
    if auth.is_open() {
        if config.allow_anonymous {
            warn!(
                "authentication is OFF: no users or [jwt] configured and allow_anonymous is set; every client that can reach the listeners is accepted without credentials"
            );
        } else {
            info!(
                "authentication is off: no users or [jwt] configured, so every client is accepted with any or no credentials; the listeners are loopback only (add users with `stampede passwd` before listening on other addresses)"
            );
        }
    } else {
        info!(
            users = auth.user_count(),
            tokens = auth.accepts_tokens(),
            "authentication is on: clients must log in (CONNECT login/passcode, a token, or WebSocket upgrade credentials)"
        );
    }
    if config.ws_allowed_origins.is_empty() {
        info!("WebSocket: every Origin is allowed (ws_allowed_origins is empty)");
    } else {
        info!(origins = ?config.ws_allowed_origins, "WebSocket: only these browser Origins are allowed");
    }
    if config.require_tls {
        info!("require_tls is set: the plain STOMP and WebSocket listeners are closed");
    }
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    match config.storage {
        StorageKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StorageKind::Sled => {
            let dir = config.data_dir.clone();
            if dir.exists() && !dir.is_dir() {
                return Err(StartError::DataDirIsFile { dir });
            }
            let options = config.store_options();
            let opened = tokio::task::spawn_blocking(move || SledStore::open(&dir, options))
                .await
                .map_err(|e| StartError::Internal(e.to_string()))?;
            let store = opened.map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?;
            Ok(Arc::new(store))
        }
    }
}

#[derive(Clone)]
enum Listener {
    Stomp,
    WebSocket,
    StompTls(TlsAcceptor),
    Wss(TlsAcceptor),
}

impl Listener {
    fn transport(&self) -> TransportKind {
        match self {
            Listener::Stomp => TransportKind::Tcp,
            Listener::WebSocket => TransportKind::Ws,
            Listener::StompTls(_) => TransportKind::Tls,
            Listener::Wss(_) => TransportKind::Wss,
        }
    }
}

struct WsSettings {
    path: String,
    /// Serve the demo pages (`demo = true`).
    demo: bool,
    config: WebSocketConfig,
    allowed_origins: AllowedOrigins,
}

/// What every accept loop and connection task of one broker shares.
struct Shared {
    context: ConnectionContext,
    limit: Arc<Semaphore>,
    max_connections: usize,
    per_address: Arc<PerAddress>,
    refusals: Arc<Semaphore>,
    ids: SessionIds,
    tasks: TaskTracker,
    ws: WsSettings,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Sessions of the HTTP fallback (SSE and POST) on the WebSocket port.
    fallback: Arc<FallbackSessions>,
    /// Cancelled when the accept loops must stop (a drain, or shutdown).
    accepting: CancellationToken,
}

/// Session ids: 128 bits from the operating system's random source each. Temporary queue names
/// contain the session id, and holding a reply queue's name is what lets a user send to it, so
/// neither may be guessable from other sessions' ids or the start time.
#[derive(Debug, Default)]
struct SessionIds;

impl SessionIds {
    fn new() -> SessionIds {
        SessionIds
    }

    fn next(&self) -> Arc<str> {
        Arc::from(format!("session-{:032x}", crate::security::random_128()))
    }
}

async fn accept_loop(listener: TcpListener, kind: Listener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.accepting.cancelled() => return,
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
        let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
            warn!(%peer, "connection refused: max_connections reached");
            let error = StompError::limit("connections", shared.max_connections, "max_connections");
            refuse(stream, peer, kind.clone(), &shared, error);
            continue;
        };
        let Some(address_permit) = shared.per_address.acquire(peer.ip()) else {
            warn!(%peer, "connection refused: max_connections_per_ip reached");
            let error =
                StompError::limit("connections from one address", shared.per_address.limit(), "max_connections_per_ip");
            refuse(stream, peer, kind.clone(), &shared, error);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = shared.ids.next();
        shared.tasks.spawn(handle(stream, peer, kind.clone(), id, Arc::clone(&shared), (permit, address_permit)));
    }
}

/// One connection's task: the handshakes its listener needs, then the STOMP session.
///
/// This future is the task and lives as long as the connection, so it is kept small. Each
/// handshake is boxed (and freed once done), and what it hands over is moved at once into the
/// boxed connection future, so a value as large as a TLS stream (over a KiB) is never held
/// across an await here; otherwise the compiler would reserve room for the largest arm's
/// locals in every connection's task, plain ones included. It is an `async move` block rather
/// than an `async fn` because an `async fn` keeps a second copy of each argument.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold each argument twice")]
fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    id: Arc<str>,
    shared: Arc<Shared>,
    permits: (OwnedSemaphorePermit, AddressPermit),
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let deadline = Instant::now() + shared.handshake_timeout;
        let connection: Option<Connection> = match &kind {
            Listener::Stomp => Some(serve(Transport::Stream(stream), None, peer, id, kind.transport(), &shared)),
            Listener::WebSocket => {
                let handshaken = Box::pin(plain_websocket(stream, peer, &shared.ws, deadline)).await;
                // Boxed like the handshakes: the fallback arm holds a whole stream.
                Box::pin(after_http(handshaken, peer, id, kind.transport(), &shared)).await
            }
            Listener::StompTls(acceptor) => Box::pin(tls_handshake(acceptor, stream, peer, deadline))
                .await
                .map(|tls| serve(Transport::Stream(tls), None, peer, id, kind.transport(), &shared)),
            Listener::Wss(acceptor) => {
                let handshaken = Box::pin(secure_websocket(acceptor, stream, peer, &shared.ws, deadline)).await;
                // Boxed like the handshakes: the fallback arm holds a whole stream.
                Box::pin(after_http(handshaken, peer, id, kind.transport(), &shared)).await
            }
        };
        if let Some(connection) = connection {
            // The transport is read from `kind` on both sides rather than kept in a local, so
            // counting holds nothing extra across the connection's lifetime.
            shared.metrics.connection_opened(kind.transport());
            let reason = connection.await;
            shared.metrics.connection_closed(kind.transport(), &reason);
        }
        // The connection counts against the limits until here.
        drop(permits);
    }
}

/// What the HTTP side of the WebSocket port hands over.
enum Handshaken<S> {
    /// A WebSocket, with the credentials of the upgrade request if it had any.
    WebSocket(Transport<Replayed<S>>, Option<Credentials>),
    /// A request of the HTTP fallback.
    Fallback(FallbackRequest, Replayed<S>),
}

/// The connection future of a WebSocket; a fallback request is served here and needs none (its
/// STOMP session, if it opens one, is a task of its own, see [`open_fallback_session`]).
async fn after_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    handshaken: Option<Handshaken<S>>,
    peer: SocketAddr,
    id: Arc<str>,
    kind: TransportKind,
    shared: &Arc<Shared>,
) -> Option<Connection> {
    match handshaken? {
        Handshaken::WebSocket(transport, credentials) => Some(serve(transport, credentials, peer, id, kind, shared)),
        Handshaken::Fallback(request, stream) => {
            let open = |peer: SocketAddr| open_fallback_session(shared, peer);
            if let Err(error) = Box::pin(shared.fallback.serve(request, stream, peer, &open)).await {
                debug!(%peer, "fallback request failed: {error}");
            }
            None
        }
    }
}

/// Starts the STOMP connection of a fallback session on one end of a pipe and returns the other.
/// The session counts against the connection limits like any connection.
fn open_fallback_session(shared: &Arc<Shared>, peer: SocketAddr) -> Result<tokio::io::DuplexStream, (u16, String)> {
    let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
        return Err((503, format!("max_connections ({}) reached", shared.max_connections)));
    };
    let Some(address_permit) = shared.per_address.acquire(peer.ip()) else {
        return Err((503, format!("max_connections_per_ip ({}) reached", shared.per_address.limit())));
    };
    let (theirs, ours) = fallback::pipe();
    let id = shared.ids.next();
    let connection = serve(Transport::Stream(theirs), None, peer, id, TransportKind::Sse, shared);
    let metrics = Arc::clone(&shared.metrics);
    shared.tasks.spawn(async move {
        metrics.connection_opened(TransportKind::Sse);
        let reason = connection.await;
        metrics.connection_closed(TransportKind::Sse, &reason);
        drop((permit, address_permit));
    });
    Ok(ours)
}

/// A connection's future, boxed: its size differs per transport, and the task holds a pointer.
type Connection = std::pin::Pin<Box<dyn std::future::Future<Output = connection::CloseReason> + Send>>;

/// Builds (does not start) the connection future, moving `transport` into its box.
fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    transport: Transport<S>,
    credentials: Option<Credentials>,
    peer: SocketAddr,
    id: Arc<str>,
    kind: TransportKind,
    shared: &Shared,
) -> Connection {
    let context = ConnectionContext { upgrade_credentials: credentials, transport: kind, ..shared.context.clone() };
    Box::pin(connection::serve(transport, peer, Arc::clone(&id), context).instrument(connection_span(&id, peer, kind)))
}

/// The span every log line of one connection is in: its session id, peer and transport from
/// the start, its virtual host and user once CONNECT succeeds (recorded by the session). With
/// `--log-format json` these are the `span` fields of each line, so one connection's story is
/// one filter away; made once per connection, entered at each poll of its task.
pub(crate) fn connection_span(id: &str, peer: SocketAddr, kind: TransportKind) -> tracing::Span {
    tracing::info_span!(
        "connection",
        id,
        %peer,
        transport = kind.as_str(),
        vhost = tracing::field::Empty,
        user = tracing::field::Empty,
    )
}

async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            debug!(%peer, "TLS handshake failed: {error}");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The WebSocket handshake on a plain listener.
async fn plain_websocket(
    stream: TcpStream,
    peer: SocketAddr,
    ws: &WsSettings,
    deadline: Instant,
) -> Option<Handshaken<TcpStream>> {
    let local = stream.local_addr().unwrap_or(peer);
    websocket(stream, peer, local, false, ws, deadline).await
}

/// The TLS handshake, then the WebSocket handshake over it.
async fn secure_websocket(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    ws: &WsSettings,
    deadline: Instant,
) -> Option<Handshaken<tokio_rustls::server::TlsStream<TcpStream>>> {
    let local = stream.local_addr().unwrap_or(peer);
    let tls = tls_handshake(acceptor, stream, peer, deadline).await?;
    websocket(tls, peer, local, true, ws, deadline).await
}

/// The request head first ([`public_http::route`] answers plain HTTP requests), then the
/// WebSocket handshake, with the credentials of the upgrade request if it had any.
async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    secure: bool,
    ws: &WsSettings,
    deadline: Instant,
) -> Option<Handshaken<S>> {
    let endpoint = public_http::Endpoint { path: &ws.path, secure, local, demo: ws.demo };
    let stream = match timeout_at(deadline, public_http::route(stream, &endpoint)).await {
        Ok(Ok(Routed::Upgrade(stream))) => stream,
        Ok(Ok(Routed::Fallback(request, stream))) => return Some(Handshaken::Fallback(request, stream)),
        Ok(Ok(Routed::Answered)) => return None,
        Ok(Err(error)) => {
            debug!(%peer, "HTTP request failed: {error}");
            return None;
        }
        Err(_) => {
            debug!(%peer, "HTTP request head timed out");
            return None;
        }
    };
    let mut credentials = None;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = |request: &Request, response: Response| {
        let result = negotiate(request, response, ws);
        if result.is_ok() {
            credentials = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(Credentials::from_authorization);
        }
        result
    };
    match timeout_at(deadline, tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws.config))).await
    {
        Ok(Ok(socket)) => Some(Handshaken::WebSocket(Transport::WebSocket(Box::new(socket)), credentials)),
        Ok(Err(error)) => {
            debug!(%peer, "WebSocket handshake failed: {error}");
            None
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            None
        }
    }
}

/// Answers a connection over a limit with an ERROR that names the limit, then closes. At most
/// [`MAX_REFUSALS`] answers run at once; past that the socket is just closed.
fn refuse(stream: TcpStream, peer: SocketAddr, kind: Listener, shared: &Arc<Shared>, error: StompError) {
    let Ok(permit) = Arc::clone(&shared.refusals).try_acquire_owned() else {
        drop(stream);
        return;
    };
    shared.metrics.error_sent(error.kind);
    shared.metrics.frame_sent(stampede_protocol::Command::Error);
    let shared_for_task = Arc::clone(shared);
    shared.tasks.spawn(async move {
        let _permit = permit;
        let shared = shared_for_task;
        let bytes = stampede_protocol::encode_to_bytes(&error.to_frame(), Version::V1_2);
        let deadline = Instant::now() + shared.handshake_timeout.min(Duration::from_secs(5));
        match kind {
            Listener::Stomp => connection::send_and_close(Transport::Stream(stream), bytes).await,
            Listener::WebSocket => {
                if let Some(Handshaken::WebSocket(transport, _)) =
                    plain_websocket(stream, peer, &shared.ws, deadline).await
                {
                    connection::send_and_close(transport, bytes).await;
                }
            }
            Listener::StompTls(acceptor) => {
                if let Some(tls) = tls_handshake(&acceptor, stream, peer, deadline).await {
                    connection::send_and_close(Transport::Stream(tls), bytes).await;
                }
            }
            Listener::Wss(acceptor) => {
                if let Some(Handshaken::WebSocket(transport, _)) =
                    secure_websocket(&acceptor, stream, peer, &shared.ws, deadline).await
                {
                    connection::send_and_close(transport, bytes).await;
                }
            }
        }
    });
}

/// The WebSocket handshake check (the path was checked by [`public_http::route`]): a browser's
/// `Origin` must be allowed, and the highest STOMP subprotocol the client offers is echoed (a
/// client offering none still gets STOMP, with the version its CONNECT asks for).
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn negotiate(request: &Request, mut response: Response, ws: &WsSettings) -> Result<Response, ErrorResponse> {
    if let Some(origin) = request.headers().get("origin") {
        // An origin that is not text matches no rule but `*`.
        let origin = origin.to_str().unwrap_or_default();
        if !ws.allowed_origins.allow(Some(origin)) {
            debug!(%origin, "WebSocket refused: origin not in ws_allowed_origins");
            let mut refusal = ErrorResponse::new(Some(
                "This origin may not open STOMP WebSockets here (ws_allowed_origins).\n".to_owned(),
            ));
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            return Err(refusal);
        }
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
