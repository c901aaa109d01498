//! The admin API's per-backend actions, `/backends/{addr}/{action}`:
//! `POST …/drain`, `POST …/enable`, `POST …/disable` and `PUT …/weight`
//! (body: the new weight, 1..1000 as in `lb.toml`).
//!
//! Every one needs the bearer token ([`super::authorize`]); the answer is
//! one line: JSON with the backend's new state on success, plain text
//! saying why otherwise (`404` unknown backend or action, `400` bad
//! weight, `405` wrong method). Each change is logged at info. What the
//! states mean for selection is [`crate::rotation`]'s.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::backend::Backend;
use crate::pool::Pool;
use crate::rotation::AdminState;

/// The most bytes a weight body may have.
const MAX_BODY: usize = 1024;

/// How long the weight body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a draining backend is looked at, to log when it is drained.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// The weights `lb.toml` accepts.
const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=1000;

/// What a request asks of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Set(AdminState),
    Weight,
}

impl Action {
    fn parse(name: &str) -> Option<Action> {
        match name {
            "drain" => Some(Action::Set(AdminState::Draining)),
            "enable" => Some(Action::Set(AdminState::Enabled)),
            "disable" => Some(Action::Set(AdminState::Disabled)),
            "weight" => Some(Action::Weight),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Action::Set(_) => Method::POST,
            Action::Weight => Method::PUT,
        }
    }
}

/// `(addr, action)` when `path` is `/backends/{addr}/{action}`; other
/// paths are the main router's.
/// An IPv6 address may come as `[::1]:8000` or percent-encoded
/// (`%5B::1%5D:8000`, `%3A` for `:`), as clients differ.
pub(super) fn target(path: &str) -> Option<(String, String)> {
    let (addr, action) = path.strip_prefix("/backends/")?.split_once('/')?;
    let addr = decode_addr(addr);
    (!addr.is_empty() && !action.contains('/')).then(|| (addr, action.to_owned()))
}

/// A backend address from a path segment: `[`, `]` and `:` may come
/// percent-encoded.
pub(super) fn decode_addr(segment: &str) -> String {
    segment
        .replace("%5B", "[")
        .replace("%5b", "[")
        .replace("%5D", "]")
        .replace("%5d", "]")
        .replace("%3A", ":")
        .replace("%3a", ":")
}

/// Answers `req`, whose path is `/backends/{addr}/{action}`.
pub(super) async fn handle(
    pool: &Arc<Pool>,
    req: Request<Incoming>,
    addr: &str,
    action: &str,
) -> Response<Full<Bytes>> {
    let reading = req.method() == Method::GET || req.method() == Method::HEAD;
    if !reading {
        if let Err(denied) = super::authorize(&req, pool.snapshot().config.admin.token.as_ref()) {
            return *denied;
        }
    }
    let Some(act) = Action::parse(action) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}; try drain, enable, disable (POST) or weight (PUT)"),
        );
    };
    if req.method() != act.method() {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{action} needs {}", act.method()),
        );
        let allow = match act {
            Action::Set(_) => "POST",
            Action::Weight => "PUT",
        };
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    let Some(backend) = addr.parse::<SocketAddr>().ok().and_then(|a| pool.find(a)) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no backend {addr:?}; the backends are listed, as IP:port, in /status.json"),
        );
    };
    match act {
        Action::Set(state) => set_state(&backend, state),
        Action::Weight => match read_weight(req).await {
            Ok(weight) => set_weight(pool, &backend, weight),
            Err(why) => plain(StatusCode::BAD_REQUEST, why),
        },
    }
}

fn set_state(backend: &Arc<Backend>, state: AdminState) -> Response<Full<Bytes>> {
    let was = backend.rotation.set(state);
    if was == state {
        tracing::debug!("backend {} already {state} (admin)", backend.addr);
    } else {
        tracing::info!("backend {} {state} (admin)", backend.addr);
        if state == AdminState::Draining {
            watch_drain(Arc::downgrade(backend));
        }
    }
    answer(backend)
}

fn set_weight(pool: &Arc<Pool>, backend: &Arc<Backend>, weight: u32) -> Response<Full<Bytes>> {
    // The file's own weight is no override: setting it back clears it.
    let weight_override = (weight != backend.weight).then_some(weight);
    let was = backend.effective_weight();
    backend.rotation.set_weight(weight_override);
    pool.reschedule();
    if was != weight {
        match weight_override {
            Some(w) => tracing::info!(
                "backend {} weight {w} (admin; lb.toml says {})",
                backend.addr,
                backend.weight
            ),
            None => tracing::info!(
                "backend {} weight {weight}, lb.toml's again (admin)",
                backend.addr
            ),
        }
    }
    answer(backend)
}

/// Logs once when a draining backend has nothing in flight any more. The
/// task stops then, when the backend leaves draining or leaves the pool.
fn watch_drain(backend: Weak<Backend>) {
    tokio::spawn(async move {
        loop {
            let Some(b) = backend.upgrade() else { return };
            match b.rotation.reported(b.stats().in_flight) {
                AdminState::Drained => {
                    tracing::info!("backend {} drained: no request in flight (admin)", b.addr);
                    return;
                }
                AdminState::Draining => {}
                _ => return,
            }
            drop(b);
            tokio::time::sleep(DRAIN_CHECK).await;
        }
    });
}

/// The weight in `req`'s body: a whole number in 1..1000, optionally
/// surrounded by blanks (`3`, `3\n`), or JSON `{"weight": 3}`.
async fn read_weight(req: Request<Incoming>) -> Result<u32, String> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => return Err(format!("bad weight: a body of at most {MAX_BODY} bytes")),
        Err(_) => return Err("bad weight: the body did not arrive in time".to_owned()),
    };
    parse_weight(&bytes)
}

fn parse_weight(bytes: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(bytes).unwrap_or("").trim();
    let number = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => o.get("weight").and_then(serde_json::Value::as_i64),
        _ => text.parse::<i64>().ok(),
    };
    number
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| WEIGHTS.contains(n))
        .ok_or_else(|| {
            let shown: String = text.chars().take(40).collect();
            format!(
                "bad weight {shown:?}: send a whole number in {}..{} (or {{\"weight\": N}})",
                WEIGHTS.start(),
                WEIGHTS.end()
            )
        })
}

/// `200` with the backend's state as one line of JSON.
fn answer(b: &Backend) -> Response<Full<Bytes>> {
    let in_flight = b.stats().in_flight;
    let mut state = json!({
        "addr": b.addr.to_string(),
        "admin_state": b.rotation.reported(in_flight).name(),
        "weight": b.effective_weight(),
        "in_flight": in_flight,
    });
    if b.rotation.weight_override().is_some() {
        state["config_weight"] = json!(b.weight);
    }
    let mut r = Response::new(Full::new(Bytes::from(format!("{state}\n"))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `status` with `why` as a one-line plain-text body.
pub(super) fn plain(status: StatusCode, why: String) -> Response<Full<Bytes>> {
    let one_line: String = why.lines().next().unwrap_or("").to_owned();
    let mut r = Response::new(Full::new(Bytes::from(one_line + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_whole_numbers_in_the_config_range() {
        let table: [(&[u8], Option<u32>); 12] = [
            (b"3", Some(3)),
            (b" 1000\n", Some(1000)),
            (b"1", Some(1)),
            (br#"{"weight": 7}"#, Some(7)),
            (b"0", None),
            (b"1001", None),
            (b"-2", None),
            (b"2.5", None),
            (b"", None),
            (b"three", None),
            (br#"{"w": 7}"#, None),
            (b"\xff\xfe", None),
        ];
        for (body, want) in table {
            assert_eq!(parse_weight(body).ok(), want, "{body:?}");
        }
        let why = parse_weight(b"x\ny").unwrap_err();
        assert!(!why.contains('\n') && why.contains("1..1000"), "{why}");
    }

    #[test]
    fn only_backend_actions_are_this_modules() {
        let t = |p: &str| target(p);
        assert_eq!(
            t("/backends/10.0.0.1:80/drain"),
            Some(("10.0.0.1:80".into(), "drain".into()))
        );
        let v6 = Some(("[::1]:8000".into(), "enable".into()));
        assert_eq!(t("/backends/%5B::1%5D:8000/enable"), v6);
        assert_eq!(t("/backends/%5b%3A%3a1%5d:8000/enable"), v6);
        let uri: http::Uri = "/backends/[::1]:8000/enable".parse().expect("a valid URI");
        assert_eq!(t(uri.path()), v6);
        assert_eq!(t("/backends"), None);
        assert_eq!(t("/backends/10.0.0.1:80"), None);
        assert_eq!(t("/backends//drain"), None);
        assert_eq!(t("/backends/a/b/c"), None);
        assert_eq!(t("/status.json"), None);
    }
}
