//! The management HTTP surface: one listener (plus its TLS twin) serving the versioned JSON API
//! under `/api/v1/`, Prometheus `/metrics`, the `/healthz` and `/readyz` probes, and the web
//! dashboard at `/` ([`dashboard`]).
//!
//! It is a separate listener from the STOMP and WebSocket ones (RabbitMQ's management port,
//! 15672, by default on loopback) so that operators can firewall it apart, and so that nothing
//! served here shares a code path with client traffic: every handler only reads state the
//! broker keeps anyway (counters, registries), never holding a broker lock while it serialises.
//!
//! The pieces endpoints are built from live here: [`ApiError`] (every failure is
//! `{"error": "...", "reason": "..."}` with its status), [`ApiJson`] (a JSON body whose
//! rejection is such an error), and the extractors [`Admin`] (an admin user or token),
//! [`Authenticated`] (any user, for endpoints checked against the user's own permissions) and
//! [`Observer`] (metrics and health: anyone when `metrics_public`, else an admin). Users and
//! tokens are the broker's own: HTTP Basic, or `Authorization: Bearer <JWT>` checked exactly
//! like a STOMP token, with the same failure delay per address.

pub mod api;
pub mod bridges;
pub mod dashboard;
pub mod health;
pub mod manage;
pub mod metrics;
pub mod publish;
pub mod rates;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::destination::vhost::VirtualHosts;
use crate::http::health::Readiness;
use crate::http::metrics::{Exporter, Metrics};
use crate::security::auth::{Authenticator, Credentials, Principal};

/// Longest a client may take to send a request's headers (and a TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an open request may go on once the broker shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What every handler of the management listener reads.
pub struct HttpState {
    /// Users and tokens.
    pub auth: Arc<Authenticator>,
    /// Queues and topics.
    pub vhosts: Arc<VirtualHosts>,
    /// The broker's counters.
    pub metrics: Arc<Metrics>,
    /// `/metrics`' registry.
    pub exporter: Exporter,
    /// What `/readyz` reports.
    pub readiness: Arc<Readiness>,
    /// The message store (for the readiness check).
    pub store: Arc<dyn stampede_storage::Store>,
    /// When the broker started.
    pub started: Instant,
    /// Every listener of the broker, for the overview.
    pub listeners: Vec<ListenerInfo>,
    /// `/metrics`, `/healthz` and `/readyz` need no credentials.
    pub metrics_public: bool,
    /// The open client connections.
    pub registry: Arc<crate::registry::ConnectionRegistry>,
    /// What the sessions of HTTP publishes are built with (those of STOMP clients).
    pub session: Arc<crate::session::SessionConfig>,
    /// Largest body one published message may have (`max_body`).
    pub max_body: usize,
    /// Message rates for the overview.
    pub rates: Arc<rates::MessageRates>,
    /// The webhooks and STOMP bridges, for their listings.
    pub bridges: Arc<crate::bridge::Registry>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").field("listeners", &self.listeners).finish_non_exhaustive()
    }
}

/// A listener of the broker, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerInfo {
    /// `stomp`, `stomp-tls`, `ws`, `wss`, `http` or `https`.
    pub protocol: &'static str,
    /// Where it listens.
    pub address: SocketAddr,
}

/// The shared state handlers extract with `State`.
pub type SharedState = Arc<HttpState>;

/// The management application: every route, with JSON answers for unknown paths and methods.
pub fn app(state: SharedState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(health::liveness))
        .route("/readyz", get(health::readiness))
        .route("/metrics", get(scrape))
        .nest("/api/v1", api::routes())
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; the API is under /api/v1/") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this endpoint does not accept that method")
        })
        .layer(axum::middleware::from_fn(dashboard::same_origin_writes))
        .with_state(state)
}

async fn scrape(_: Observer, State(state): State<SharedState>) -> Response {
    let text = state.exporter.scrape();
    ([(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE))], text).into_response()
}

/// Accepts management connections on `listener` (with TLS when `tls` is given) until
/// `shutdown`, serving `app`. Every task it starts is tracked by `tasks`.
pub fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let connections = tasks.clone();
    tasks.spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(10);
                    pair
                }
                Err(error) => {
                    warn!("management accept failed: {error}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let app = app.clone();
            let shutdown = shutdown.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                match tls {
                    None => serve_connection(stream, peer, app, shutdown).await,
                    Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, app, shutdown).await,
                        Ok(Err(error)) => debug!(%peer, "management TLS handshake failed: {error}"),
                        Err(_) => debug!(%peer, "management TLS handshake timed out"),
                    },
                }
            });
        }
    });
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, app: axum::Router, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%peer, "management connection ended: {error}");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}

/// A failed request: its status and the JSON body `{"error": "...", "reason": "..."}`.
///
/// `error` is a stable word per status (`bad_request`, `unauthorized`, `forbidden`,
/// `not_found`, `conflict`, ...) for programs; `reason` says in words what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub reason: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    reason: &'a str,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError { status, reason: reason.into() }
    }

    /// 400: the request is malformed or a value is out of range.
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }

    /// 401: no credentials, or they were not accepted.
    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, reason)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, reason)
    }

    /// 404: no such thing.
    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, reason)
    }

    /// 409: it conflicts with the current state (exists already, in use, not empty).
    pub fn conflict(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, reason)
    }

    /// 500: the broker failed.
    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, reason)
    }

    /// The stable word of the `error` field.
    pub fn error_code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            status if status.is_client_error() => "client_error",
            _ => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.error_code(), reason: &self.reason };
        let mut response = (self.status, axum::Json(body)).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            // The refusals that end by themselves (a queue drains, storage recovers).
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"stampede\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for ApiError {}

/// A JSON request body or response. A body that is not valid JSON for `T` is a 400
/// [`ApiError`] saying why (axum's own rejection is plain text).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Any user or token the broker accepts. Endpoints that take it check the principal's own
/// permissions (for example `write` for publishing).
#[derive(Debug)]
pub struct Authenticated(pub Principal);

/// A user with `admin = true` or a token with the `stampede.admin` scope.
#[derive(Debug)]
pub struct Admin(pub Principal);

/// Whoever may read metrics and health: anyone when `metrics_public` is set, else an admin.
#[derive(Debug)]
pub struct Observer;

impl FromRequestParts<SharedState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await.map(Authenticated)
    }
}

impl FromRequestParts<SharedState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        if !principal.is_admin() {
            return Err(ApiError::forbidden(format!(
                "user {} is not an administrator (admin = true in [users.<name>], or a token with the stampede.admin scope)",
                principal.name.as_deref().unwrap_or("(unnamed)")
            )));
        }
        Ok(Admin(principal))
    }
}

impl FromRequestParts<SharedState> for Observer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        if state.metrics_public {
            return Ok(Observer);
        }
        Admin::from_request_parts(parts, state).await.map(|_| Observer)
    }
}

/// Who sent the request: HTTP Basic or a Bearer token, checked by the broker's authenticator.
async fn authenticate(parts: &Parts, state: &HttpState) -> Result<Principal, ApiError> {
    if state.auth.is_open() {
        return Ok(Principal::anonymous(None));
    }
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "credentials required: send Authorization: Basic (a broker user) or Bearer (a token)",
        ));
    };
    let Some(credentials) = value.to_str().ok().and_then(Credentials::from_authorization) else {
        return Err(ApiError::unauthorized(
            "the Authorization header is neither Basic user:password nor Bearer <token>",
        ));
    };
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let principal = state
        .auth
        .authenticate(&credentials, peer)
        .await
        .map_err(|_| ApiError::unauthorized("login failed: the user, password or token was not accepted"))?;
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable_words_per_status() {
        assert_eq!(ApiError::bad_request("x").error_code(), "bad_request");
        assert_eq!(ApiError::unauthorized("x").error_code(), "unauthorized");
        assert_eq!(ApiError::forbidden("x").error_code(), "forbidden");
        assert_eq!(ApiError::not_found("x").error_code(), "not_found");
        assert_eq!(ApiError::conflict("x").error_code(), "conflict");
        assert_eq!(ApiError::internal("x").error_code(), "internal_error");
    }
}
