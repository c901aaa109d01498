//! The admin listener: `/healthz`, `/status.json`, `/status` (a live HTML
//! page), `/decisions` (the last choices, [`crate::decisions`]) and
//! `/metrics` (rendered from [`crate::metrics`]: OpenMetrics or Prometheus
//! text), served apart from client traffic
//! so that a flood of clients never hides the balancer's own state.
//!
//! `POST /backends` and `DELETE /backends/{addr}` register and withdraw
//! backends ([`register`], [`crate::registry`]).
//!
//! Reading (`GET`, `HEAD`) is open to whoever reaches the listener; every
//! other method needs the bearer token of `[admin] token_file`
//! ([`authorize`]). Connections get the head and idle timeouts of
//! `[timeouts]` ([`conn`]), and accepting backs off when out of file
//! descriptors, as the client listener's does.

mod api;
mod auth;
mod conn;
mod register;

pub use auth::authorize;

use std::future::Future;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use crate::pool::Pool;

/// Serves the admin endpoints until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = crate::listener::accept(&listener) => accepted,
            () = &mut shutdown => return,
        };
        conn::spawn(stream, Arc::clone(&pool));
    }
}

/// Sends `/backends/{addr}/{action}` to the admin API ([`api`]), the rest
/// to [`route`].
async fn respond(pool: &Arc<Pool>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(target) = register::target(req.uri().path()) {
        return register::handle(pool, req, target).await;
    }
    match api::target(req.uri().path()) {
        Some((addr, action)) => api::handle(pool, req, &addr, &action).await,
        None => route(pool, &req),
    }
}

fn route(pool: &Pool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Err(denied) = authorize(req, pool.snapshot().config.admin.token.as_ref()) {
            return *denied;
        }
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/status.json" => body(
            "application/json",
            serde_json::to_vec_pretty(&status(pool)).unwrap_or_default(),
        ),
        "/status" | "/" => body("text/html; charset=utf-8", STATUS_PAGE.as_bytes().to_vec()),
        "/metrics" => {
            let (content_type, text) = pool.metrics.render(req.headers().get(header::ACCEPT));
            body(content_type, text.into_bytes())
        }
        "/decisions" => {
            let recent = pool.decisions.recent();
            let list: Vec<&crate::decisions::Decision> = recent.iter().map(|d| &**d).collect();
            body(
                "application/json",
                serde_json::to_vec_pretty(&json!({ "decisions": list })).unwrap_or_default(),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /status, /status.json, /decisions, /metrics or /healthz\n",
        ),
    }
}

/// The state of every backend, as `/status.json` shows it.
pub fn status(pool: &Pool) -> serde_json::Value {
    let snap = pool.snapshot();
    let now = tokio::time::Instant::now();
    let slow_start = snap.config.balance.slow_start;
    let backends: Vec<_> = snap
        .backends
        .iter()
        .map(|b| {
            let stats = b.stats();
            let load = b.load();
            let (ejected_for, ejections) = b.ejection(now);
            json!({
                "addr": b.addr.to_string(),
                "pool": &*b.pool,
                "origin": b.origin.name(),
                "agent": b.agent.to_string(),
                "weight": b.effective_weight(),
                "config_weight": b.rotation.weight_override().map(|_| b.weight),
                "admin_state": b.rotation.reported(stats.in_flight).name(),
                "healthy": b.is_up(),
                "cpu": load.as_ref().map(|l| l.report.cpu),
                "memory": load.as_ref().map(|l| l.report.memory),
                "cores": load.as_ref().map(|l| l.report.cores),
                "cpus": load.as_ref().map(|l| l.report.capacity()),
                "load_age_ms": load.as_ref().map(|l| now.saturating_duration_since(l.at).as_millis() as u64),
                "in_flight": stats.in_flight,
                "busy": stats.busy,
                "slowness": stats.slowness,
                "service_ms": (stats.service > 0.0).then_some(stats.service * 1000.0),
                "requests": stats.requests,
                "errors": stats.errors,
                "last_error": stats.last_error.as_ref().map(|e| e.message.clone()),
                "last_error_at": stats.last_error.as_ref().and_then(|e| e.at.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                "ejected": ejected_for.is_some(),
                "ejected_for_ms": ejected_for.map(|d| d.as_millis() as u64),
                "ejections": ejections,
                "slow_start": b.ramp(now, slow_start),
                "conns_open": b.conns.open(),
                "conns_idle": b.conns.idle(),
                "hostname": b.hostname().as_deref(),
                "down_reason": b.down_reason().as_ref().map(|e| e.message.clone()),
                "down_since": b.down_reason().as_ref().and_then(|e| e.at.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                "latency_ms": b.recent_latency(now).map(|q| json!({"p50": q.p50_ms, "p99": q.p99_ms, "count": q.count})),
            })
        })
        .collect();
    let pools: Vec<_> = snap
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "name": &*u.name,
                "strategy": u.strategy.name(),
                "health_path": &*u.health_path,
                "backends": u.backends.len(),
                "panic": u.in_panic(&snap.config),
            })
        })
        .collect();
    json!({
        "strategy": snap.config.balance.strategy.name(),
        "listen": snap.config.listen.to_string(),
        "panic": snap.in_panic(),
        "pools": pools,
        "retries": pool.budget.granted(),
        "retries_denied": pool.budget.denied(),
        "backends": backends,
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn body(content_type: &'static str, bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const STATUS_PAGE: &str = include_str!("status.html");
