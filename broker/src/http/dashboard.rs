//! The live web dashboard at `/` of the management listener, and the same-origin rule that
//! keeps a browser's saved credentials from being used by other sites.
//!
//! The dashboard is three small files (HTML, CSS, JavaScript) compiled into the binary with
//! `include_str!`: no framework, no build step, no CDN, so it works offline and what is served
//! is exactly what was reviewed. It reads and acts only through the JSON API, polling it, so it
//! can show nothing and do nothing the API does not allow, and the API stays the one contract.
//! It is served to administrators only, with the API's own authentication: the first request
//! gets the API's `401` with a `Basic` challenge, the browser asks for a user and password, and
//! then sends them with every request to this origin, the page's API calls included.
//!
//! A browser that holds those credentials would attach them to a request another site's page
//! makes to this listener too (a form POSTed to `/api/v1/queues/.../move`, say). So every
//! request that can change something (any method but GET, HEAD and OPTIONS) from a browser page
//! of another origin is refused with 403: a browser says where a request comes from in `Origin`
//! and `Sec-Fetch-Site`, which a page cannot forge. Programs (curl, backends, `stampede ctl`)
//! send neither and are not affected.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::{Admin, ApiError, SharedState};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// The dashboard's routes.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(|_: Admin| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard.js", get(|_: Admin| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard.css", get(|_: Admin| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                ),
            ),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        body,
    )
        .into_response()
}

/// Refuses requests that change something when a browser says they come from a page of another
/// origin (see the module documentation).
pub async fn same_origin_writes(request: Request, next: Next) -> Response {
    if let Some(reason) = cross_origin_write(request.method(), request.headers()) {
        return ApiError::forbidden(reason).into_response();
    }
    next.run(request).await
}

/// Why a request is refused as a cross-origin write, if it is one.
fn cross_origin_write(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        // `none` is the user's own navigation (typed URL, bookmark).
        return (!matches!(site, "same-origin" | "none")).then_some(
            "a request that changes something must come from the dashboard's own origin, not another site's page",
        );
    }
    let origin = text(header::ORIGIN)?;
    let host = text(header::HOST)?;
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest).trim_end_matches('/');
    (!origin_host.eq_ignore_ascii_case(host)).then_some(
        "a request that changes something must come from the dashboard's own origin, not another site's page",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn writes_from_another_sites_page_are_refused_and_programs_are_not_affected() {
        let post = Method::POST;
        assert!(cross_origin_write(&post, &headers(&[])).is_none(), "curl sends neither header");
        assert!(cross_origin_write(&post, &headers(&[("sec-fetch-site", "same-origin")])).is_none());
        assert!(cross_origin_write(&post, &headers(&[("sec-fetch-site", "cross-site")])).is_some());
        assert!(cross_origin_write(&post, &headers(&[("sec-fetch-site", "same-site")])).is_some());
        assert!(cross_origin_write(&Method::GET, &headers(&[("sec-fetch-site", "cross-site")])).is_none());
        let same = headers(&[("origin", "http://127.0.0.1:15672"), ("host", "127.0.0.1:15672")]);
        assert!(cross_origin_write(&Method::DELETE, &same).is_none());
        let other = headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:15672")]);
        assert!(cross_origin_write(&Method::DELETE, &other).is_some());
    }
}
