//! `GET /api/v1/webhooks` and `GET /api/v1/bridges`: what each configured webhook and STOMP
//! bridge is doing (up or down, counts, the last error), read from the bridge registry's
//! atomics and never from the delivery path.
//!
//! Only what helps an operator is shown: names, sources and targets, limits and state.
//! Secrets are not: a webhook's `secret` and `headers` values (often an `Authorization`) and a
//! bridge's `passcode` never leave the broker, and a URL's user information is replaced by
//! `***`, as `print-config` does.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;

use crate::bridge::{BridgeConfig, StatusView, WebhookConfig};
use crate::http::{Admin, ApiError, ApiJson, SharedState};

/// The routes this module adds to `/api/v1/`.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/webhooks", get(list_webhooks))
        .route("/webhooks/{name}", get(show_webhook))
        .route("/bridges", get(list_bridges))
        .route("/bridges/{name}", get(show_bridge))
}

/// A listing: every item (there are as many as the configuration has, so no paging).
#[derive(Debug, Serialize)]
pub struct Listing<T> {
    /// The items, in configuration order.
    pub items: Vec<T>,
    /// How many.
    pub total_count: usize,
}

/// A webhook, as listed and shown.
#[derive(Debug, Serialize)]
pub struct WebhookView {
    /// `/queue/<name>` or `/topic/<pattern>`.
    pub source: String,
    /// Where messages are POSTed (user information hidden).
    pub url: String,
    /// Names of the extra request headers (values hidden).
    pub headers: Vec<String>,
    /// Whether requests are signed.
    pub signed: bool,
    /// Most requests in flight.
    pub concurrency: u32,
    /// Request timeout in ms.
    pub timeout_ms: u64,
    /// Attempts before a message is dead-lettered.
    pub max_deliveries: u32,
    /// State and counts.
    #[serde(flatten)]
    pub status: StatusView,
}

/// A STOMP bridge, as listed and shown.
#[derive(Debug, Serialize)]
pub struct BridgeView {
    /// `out` or `in`.
    pub direction: &'static str,
    /// What is forwarded: the local source (out) or the remote one (in).
    pub from: String,
    /// Where it goes: the remote destination (out) or the local one (in).
    pub to: String,
    /// The remote broker (user information hidden).
    pub remote_url: String,
    /// The login on the remote broker.
    pub login: Option<String>,
    /// The remote virtual host.
    pub vhost: String,
    /// Most forwards not yet confirmed.
    pub max_in_flight: u32,
    /// State and counts (`state` is `up` while connected).
    #[serde(flatten)]
    pub status: StatusView,
}

fn webhook_view(config: &WebhookConfig, status: StatusView) -> WebhookView {
    WebhookView {
        source: config.source.clone(),
        url: redact_userinfo(&config.url),
        headers: config.headers.keys().cloned().collect(),
        signed: config.secret.is_some(),
        concurrency: config.concurrency,
        timeout_ms: config.timeout_ms,
        max_deliveries: config.max_deliveries,
        status,
    }
}

fn bridge_view(config: &BridgeConfig, status: StatusView) -> BridgeView {
    let (from, to) = match config.direction {
        crate::bridge::BridgeDirection::Out => (config.source.clone(), config.remote_destination.clone()),
        crate::bridge::BridgeDirection::In => (config.remote_source.clone(), config.destination.clone()),
    };
    BridgeView {
        direction: config.direction.as_str(),
        from,
        to,
        remote_url: redact_userinfo(&config.remote_url),
        login: config.login.clone(),
        vhost: config.vhost.clone(),
        max_in_flight: config.max_in_flight,
        status,
    }
}

/// `scheme://user:pass@host/...` becomes `scheme://***@host/...`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

async fn list_webhooks(_: Admin, State(state): State<SharedState>) -> ApiJson<Listing<WebhookView>> {
    let items: Vec<WebhookView> =
        state.bridges.webhooks().map(|(config, status)| webhook_view(config, status)).collect();
    ApiJson(Listing { total_count: items.len(), items })
}

async fn show_webhook(
    _: Admin,
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    state
        .bridges
        .webhooks()
        .find(|(config, _)| config.name == name)
        .map(|(config, status)| ApiJson(webhook_view(config, status)))
        .ok_or_else(|| ApiError::not_found(format!("no webhook {name:?} (GET /api/v1/webhooks lists them)")))
}

async fn list_bridges(_: Admin, State(state): State<SharedState>) -> ApiJson<Listing<BridgeView>> {
    let items: Vec<BridgeView> = state.bridges.bridges().map(|(config, status)| bridge_view(config, status)).collect();
    ApiJson(Listing { total_count: items.len(), items })
}

async fn show_bridge(
    _: Admin,
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<ApiJson<BridgeView>, ApiError> {
    state
        .bridges
        .bridges()
        .find(|(config, _)| config.name == name)
        .map(|(config, status)| ApiJson(bridge_view(config, status)))
        .ok_or_else(|| ApiError::not_found(format!("no bridge {name:?} (GET /api/v1/bridges lists them)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_in_urls_is_hidden() {
        assert_eq!(redact_userinfo("https://u:p@hooks.example/a@b"), "https://***@hooks.example/a@b");
        assert_eq!(redact_userinfo("tcp://broker:61613"), "tcp://broker:61613");
        assert_eq!(redact_userinfo("http://hooks.example/x?to=a@b"), "http://hooks.example/x?to=a@b");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }
}
