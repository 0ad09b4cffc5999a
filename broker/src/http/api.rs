//! The versioned JSON API, mounted under `/api/v1/`.
//!
//! Field names are part of the API: they change only with a new version prefix. Handlers read
//! counters and registries and never hold a broker lock while serialising.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use crate::http::metrics::{DestinationTotals, MessageTotals};
use crate::http::rates::Rates;
use crate::http::{Admin, ApiJson, ListenerInfo, SharedState};

/// The routes of `/api/v1/`.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/overview", get(overview))
        .merge(crate::http::manage::routes())
        .merge(crate::http::publish::routes())
        .merge(crate::http::bridges::routes())
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
    /// Message counters since the broker started.
    pub messages: MessageTotals,
    /// Messages per second over the last 5 and 60 seconds.
    pub rates: Rates,
    /// The process's memory.
    pub memory: Memory,
    /// The disk alarm of the data directory (`null` for a store in memory).
    pub disk: Option<Disk>,
    /// The readiness checks all pass (`/readyz` would answer 200).
    pub ready: bool,
}

/// The overview's `memory`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Resident memory in bytes (`null` where the platform does not say).
    pub resident_bytes: Option<u64>,
}

/// The overview's `disk`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Disk {
    /// True while persistent messages are refused because free space is below the limit.
    pub alarm: bool,
    /// Free bytes on the data directory's file system.
    pub free_bytes: u64,
    /// The file system's size in bytes.
    pub total_bytes: u64,
    /// `disk_free_limit` in bytes.
    pub limit_bytes: u64,
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
    let disk = state.store.disk_watermark().map(|disk| disk.status());
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
        messages: state.metrics.message_totals(),
        rates: state.rates.rates(),
        memory: Memory { resident_bytes: crate::http::metrics::resident_memory_bytes() },
        disk: disk.map(|status| Disk {
            alarm: status.alarm,
            free_bytes: status.free,
            total_bytes: status.total,
            limit_bytes: status.limit,
        }),
        ready: state.readiness.report(state.store.metrics().last_commit_failed, disk).status == "ok",
    })
}
