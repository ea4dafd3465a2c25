//! The HTTP listener's accept loop. axum's `serve` has no header timeout and no per-source
//! limit, so a client that sends half a request line, or opens thousands of connections, could
//! hold descriptors (shared with RTP) for as long as it likes. Here every connection gets a
//! deadline for its request head (also the idle limit between keep-alive requests), each
//! request a deadline for its answer, and one source a bounded number of connections; the
//! loop stops accepting when told to and lets open connections finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// `[http]` limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request head must arrive within this (and an idle keep-alive connection is closed).
    pub header_timeout: Duration,
    /// A request must be answered within this (body upload included).
    pub request_timeout: Duration,
    /// Open connections from one IP address; more are closed at once.
    pub max_connections_per_source: usize,
}

/// Open connections per source address.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
struct Slot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Serve `app` on `listener` until `stop` turns true; then stop accepting and wait (up to
/// `drain`) for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let table = Arc::new(PerSource::default());
    let mut refused: u64 = 0;
    let (conn_stop_tx, conn_stop) = watch::channel(false);
    let mut open = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = open.join_next(), if !open.is_empty() => continue,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = table.take(peer.ip(), limits.max_connections_per_source) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(source = %peer.ip(), refused, limit = limits.max_connections_per_source, "HTTP connection refused: too many open from this source");
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let mut conn_stop = conn_stop.clone();
        open.spawn(async move {
            let _slot = slot;
            let request_timeout = limits.request_timeout;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let req: Request = req.map(axum::body::Body::new);
                        match tokio::time::timeout(request_timeout, app.oneshot(req)).await {
                            Ok(r) => r,
                            Err(_) => Ok(axum::http::StatusCode::REQUEST_TIMEOUT.into_response()),
                        }
                    }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "HTTP connection closed");
                    }
                }
                _ = stopped(&mut conn_stop) => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = conn_stop_tx.send(true);
    let _ = tokio::time::timeout(drain, async { while open.join_next().await.is_some() {} }).await;
}

/// Resolves once `rx` says stop (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not across the caller's awaits.
    if rx.wait_for(|s| *s).await.is_err() {
        // No one can tell us to stop any more: serve on.
        std::future::pending::<()>().await;
    }
}
