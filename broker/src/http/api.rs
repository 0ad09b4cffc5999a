//! The versioned JSON API, mounted under `/api/v1/`.
//!
//! Field names are part of the API: they change only with a new version prefix. Handlers read
//! counters and registries and never hold a broker lock while serialising.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use crate::http::metrics::DestinationTotals;
use crate::http::{Admin, ApiJson, ListenerInfo, SharedState};

/// The routes of `/api/v1/`.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/overview", get(overview))
        .merge(crate::http::manage::routes())
        .merge(crate::http::publish::routes())
}

/// `GET /api/v1/overview`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The broker's version.
    pub version: &'static str,
    /// Seconds since the broker started.
    pub uptime_seconds: u64,
    /// Every listener.
    pub listeners: Vec<ListenerInfo>,
    /// Broker-wide totals.
    pub totals: Totals,
}

/// Broker-wide totals of the overview.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Totals {
    /// Open client connections (every transport).
    pub connections: u64,
    /// Queue consumers and topic subscriptions.
    pub subscriptions: u64,
    /// Queues.
    pub queues: u64,
    /// Messages waiting in queues.
    pub messages_ready: u64,
    /// Queue messages delivered and not yet acknowledged.
    pub messages_unacked: u64,
}

async fn overview(_: Admin, State(state): State<SharedState>) -> ApiJson<Overview> {
    let totals = DestinationTotals::of(&state.vhosts);
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    ApiJson(Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        listeners: state.listeners.clone(),
        totals: Totals {
            connections: state.metrics.open_connections(),
            subscriptions: count(totals.subscriptions),
            queues: count(totals.queues),
            messages_ready: count(totals.ready),
            messages_unacked: count(totals.unacked),
        },
    })
}
