//! Liveness and readiness, kept apart as Mercure and NATS users learned to.
//!
//! `/healthz` (liveness) answers 200 whenever this process serves HTTP: it checks nothing
//! else, so a slow disk or a cluster problem never gets a healthy broker restarted by its
//! orchestrator. `/readyz` (readiness) answers 503 as soon as one check fails, so traffic moves
//! away at once: listeners not yet bound, the store failing its last commit or marked failed,
//! or the broker draining. Every check reads a flag or an atomic; none waits on anything.
//!
//! [`Readiness`] is the one place those flags live. Whoever learns something sets it: the
//! server when its listeners are bound and when it starts draining, the store's owner when it
//! fails, and the cluster link, which passes only while connected to NATS with every
//! subscription confirmed since the last (re)connect.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use stampede_storage::DiskStatus;

use crate::http::{Observer, SharedState};

/// Flags that decide whether the broker should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
    store_failed: AtomicBool,
    /// In cluster mode: connected to the engine with every subscription confirmed.
    cluster: std::sync::OnceLock<std::sync::Arc<crate::cluster::Cluster>>,
}

/// One check's result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// True when it passes.
    pub ok: bool,
    /// What it found.
    pub detail: Cow<'static, str>,
}

/// What `/readyz` and `/healthz` answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthReport {
    /// `ok`, or `unavailable` when a check fails.
    pub status: &'static str,
    /// Every check by name.
    pub checks: BTreeMap<&'static str, Check>,
}

impl HealthReport {
    fn of(checks: BTreeMap<&'static str, Check>) -> HealthReport {
        let ok = checks.values().all(|check| check.ok);
        HealthReport { status: if ok { "ok" } else { "unavailable" }, checks }
    }

    fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

impl IntoResponse for HealthReport {
    fn into_response(self) -> Response {
        let status = if self.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, axum::Json(self)).into_response()
    }
}

impl Readiness {
    /// Every listener is bound and accepting.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// The broker is draining (shutting down or handing over): it should get no new clients.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once draining has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Adds the cluster engine's check (cluster mode).
    pub fn set_cluster(&self, cluster: std::sync::Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Marks the store failed (or recovered).
    pub fn set_store_failed(&self, failed: bool) {
        self.store_failed.store(failed, Ordering::Release);
    }

    /// The readiness checks now; `last_commit_failed` is the store's own report, `disk` its
    /// disk alarm (stores on disk only).
    ///
    /// The disk alarm is reported but passes: under it the broker still serves consumers and
    /// their ACKs, which is what frees the space, so traffic must keep reaching it.
    pub fn report(&self, last_commit_failed: bool, disk: Option<DiskStatus>) -> HealthReport {
        let mut checks = BTreeMap::new();
        let listening = self.listening.load(Ordering::Acquire);
        checks.insert(
            "listeners",
            Check { ok: listening, detail: if listening { "bound" } else { "not yet bound" }.into() },
        );
        let store_ok = !self.store_failed.load(Ordering::Acquire) && !last_commit_failed;
        checks.insert(
            "store",
            Check { ok: store_ok, detail: if store_ok { "open and writable" } else { "the last write failed" }.into() },
        );
        if let Some(status) = disk {
            checks.insert("disk", Check { ok: true, detail: crate::disk::describe(status).into() });
        }
        if let Some(cluster) = self.cluster.get() {
            let (ok, detail) = cluster.check();
            checks.insert("cluster", Check { ok, detail: detail.into() });
        }
        let draining = self.is_draining();
        checks.insert(
            "draining",
            Check { ok: !draining, detail: if draining { "the broker is draining" } else { "serving" }.into() },
        );
        HealthReport::of(checks)
    }
}

/// `GET /healthz`: the process serves HTTP.
pub async fn liveness(_: Observer) -> HealthReport {
    let mut checks = BTreeMap::new();
    checks.insert("http", Check { ok: true, detail: "serving".into() });
    HealthReport::of(checks)
}

/// `GET /readyz`: 200 when every readiness check passes, else 503 naming the failing one.
pub async fn readiness(_: Observer, State(state): State<SharedState>) -> HealthReport {
    state
        .readiness
        .report(state.store.metrics().last_commit_failed, state.store.disk_watermark().map(|disk| disk.status()))
}
