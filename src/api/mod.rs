//! HTTP: health now; the Studio REST API v2 mounts here.

use axum::routing::get;
use axum::Router;

pub fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}
