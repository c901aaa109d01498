//! Registration over the admin API: `POST /backends` (register, repeated
//! as the heartbeat) and `DELETE /backends/{addr}` (withdraw, draining
//! first). What they do to the table is [`crate::registry`]'s; this module
//! reads the requests and words the answers.
//!
//! Both need the bearer token. Success is one line of JSON; a refusal is
//! one line of plain text saying why: `400` a bad body, `404` an unknown
//! pool or backend, `409` an address another source holds, `503` the
//! registration table full.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::pool::Pool;
use crate::registry::{Announcement, Joined, NotWithdrawn, Refused};

/// The most bytes an announcement may have.
const MAX_BODY: usize = 4096;

/// How long an announcement may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request path names: the collection, or one backend in it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// `/backends`.
    All,
    /// `/backends/{addr}`.
    One(String),
}

/// The target of `path`, when it is `/backends` or `/backends/{addr}`.
pub(super) fn target(path: &str) -> Option<Target> {
    if path == "/backends" || path == "/backends/" {
        return Some(Target::All);
    }
    let addr = path.strip_prefix("/backends/")?;
    (!addr.contains('/')).then(|| Target::One(super::api::decode_addr(addr)))
}

/// Answers `req` for `target`.
pub(super) async fn handle(
    pool: &Arc<Pool>,
    req: Request<Incoming>,
    target: Target,
) -> Response<Full<Bytes>> {
    let allowed = match target {
        Target::All => Method::POST,
        Target::One(_) => Method::DELETE,
    };
    if req.method() != allowed {
        let mut r = super::api::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            match target {
                Target::All => "register with POST /backends (the list is in /status.json)".into(),
                Target::One(_) => "withdraw with DELETE /backends/{addr}".into(),
            },
        );
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_str(allowed.as_str()).expect("a method"),
        );
        return r;
    }
    if let Err(denied) = super::authorize(&req, pool.snapshot().config.admin.token.as_ref()) {
        return *denied;
    }
    match target {
        Target::All => register(pool, req).await,
        Target::One(addr) => withdraw(pool, &addr).await,
    }
}

async fn register(pool: &Arc<Pool>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let announcement = match read(req).await {
        Ok(a) => a,
        Err(why) => return super::api::plain(StatusCode::BAD_REQUEST, why),
    };
    match pool.register(&announcement) {
        Ok(joined) => {
            let status = match joined {
                Joined::Created => StatusCode::CREATED,
                Joined::Refreshed => StatusCode::OK,
            };
            let pool_name = announcement.pool.as_deref().unwrap_or("default");
            let heartbeat = pool.heartbeat();
            json_answer(
                status,
                json!({
                    "addr": announcement.addr.to_string(),
                    "pool": pool_name,
                    "heartbeat_ms": heartbeat.as_millis() as u64,
                }),
            )
        }
        Err(refused) => {
            let status = match refused {
                Refused::UnknownPool(_) => StatusCode::NOT_FOUND,
                Refused::Owned { .. } => StatusCode::CONFLICT,
                Refused::Full => StatusCode::SERVICE_UNAVAILABLE,
                Refused::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            super::api::plain(status, refused.to_string())
        }
    }
}

async fn withdraw(pool: &Arc<Pool>, addr: &str) -> Response<Full<Bytes>> {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return super::api::plain(
            StatusCode::NOT_FOUND,
            format!("no backend {addr:?}: name it as IP:port, as in /status.json"),
        );
    };
    match pool.withdraw(addr).await {
        Ok(w) => json_answer(
            StatusCode::OK,
            json!({
                "addr": addr.to_string(),
                "drained": w.drained,
                "waited_ms": w.waited.as_millis() as u64,
            }),
        ),
        Err(e @ NotWithdrawn::Unknown(_)) => {
            super::api::plain(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e @ NotWithdrawn::NotRegistered(..)) => {
            super::api::plain(StatusCode::CONFLICT, e.to_string())
        }
    }
}

/// The announcement as sent: `{"addr", "agent"?, "weight"?, "pool"?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    addr: String,
    agent: Option<String>,
    weight: Option<u32>,
    pool: Option<String>,
}

/// Reads and parses the announcement in `req`'s body.
async fn read(req: Request<Incoming>) -> Result<Announcement, String> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Err(format!(
                "bad announcement: a body of at most {MAX_BODY} bytes"
            ))
        }
        Err(_) => return Err("bad announcement: the body did not arrive in time".to_owned()),
    };
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Result<Announcement, String> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "bad announcement: {e}; send JSON {{\"addr\": \"IP:port\", \"agent\"?: \"IP:port\", \"weight\"?: N, \"pool\"?: NAME}}"
        )
    })?;
    let address = |key: &str, s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("bad announcement: {key} {s:?} is not IP:port"))
    };
    Ok(Announcement {
        addr: address("addr", &wire.addr)?,
        agent: wire
            .agent
            .as_deref()
            .map(|a| address("agent", a))
            .transpose()?,
        weight: wire.weight,
        pool: wire.pool,
    })
}

fn json_answer(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_collection_or_one_backend() {
        assert_eq!(target("/backends"), Some(Target::All));
        assert_eq!(target("/backends/"), Some(Target::All));
        assert_eq!(
            target("/backends/10.0.0.1:80"),
            Some(Target::One("10.0.0.1:80".into()))
        );
        assert_eq!(
            target("/backends/%5B::1%5D:80"),
            Some(Target::One("[::1]:80".into()))
        );
        assert_eq!(target("/backends/10.0.0.1:80/drain"), None);
        assert_eq!(target("/status.json"), None);
    }

    #[test]
    fn announcements_are_json_with_an_address() {
        let a = parse(br#"{"addr": "10.0.0.5:8000", "pool": "api", "weight": 2}"#).unwrap();
        assert_eq!(a.addr, "10.0.0.5:8000".parse().unwrap());
        assert_eq!(
            (a.pool.as_deref(), a.weight, a.agent),
            (Some("api"), Some(2), None)
        );
        let a = parse(br#"{"addr": "[::1]:8000", "agent": "[::1]:9100"}"#).unwrap();
        assert_eq!(a.agent, Some("[::1]:9100".parse().unwrap()));
        for bad in [
            &b""[..],
            b"{}",
            br#"{"addr": "host:80"}"#,
            br#"{"addr": "10.0.0.5"}"#,
            br#"{"addr": "10.0.0.5:80", "agent": "x"}"#,
            br#"{"addr": "10.0.0.5:80", "weight": -1}"#,
            br#"{"addr": "10.0.0.5:80", "color": "red"}"#,
        ] {
            let why = parse(bad).unwrap_err();
            assert!(
                why.starts_with("bad announcement") && !why.contains('\n'),
                "{why}"
            );
        }
    }
}
