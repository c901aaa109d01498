//! The endpoint table (see the crate docs): method checks, dispatch, the
//! small handlers, and the error answers, each a one-line `text/plain`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::body::Body;
use crate::gen::{self, Kind, CHUNK};
use crate::query::{self, Query, Shape};
use crate::{cpu, upgrade, State};

/// Set on every response: which backend answered.
const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Largest N for `/text/N`, `/json/N`, `/html/N`, `/bytes/N`, `/words/N`:
/// 1 GiB.
const MAX_BODY: u64 = 1 << 30;
/// Largest `/work?ms=N`: a minute of CPU.
const MAX_WORK_MS: u64 = 60_000;
/// Largest `/delay?ms=N`: ten minutes.
const MAX_DELAY_MS: u64 = 600_000;
/// Largest `/stream?chunks=N`.
const MAX_CHUNKS: u64 = 1_000_000;
/// Largest `/stream?ms=M`: a minute between chunks.
const MAX_CHUNK_GAP_MS: u64 = 60_000;

/// A handler's answer: a response, or why the request was refused.
type Answer = Result<Response<Body>, Reject>;

/// Every way a request is refused, mapped to its status in one place
/// ([`Reject::into_response`]); each becomes a one-line `text/plain` body.
enum Reject {
    /// `400`: a bad number, parameter or body, and why.
    Bad(String),
    /// `404`: the path.
    NotFound(String),
    /// `405`: the method used and the `Allow` value.
    Method(Method, &'static str),
    /// `426`: `/echo` without upgrade headers.
    UpgradeRequired,
    /// `500`: what failed inside.
    Internal(String),
}

impl Reject {
    fn into_response(self) -> Response<Body> {
        match self {
            Reject::Bad(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            Reject::NotFound(path) => {
                text(StatusCode::NOT_FOUND, format!("no such path: {path}\n"))
            }
            Reject::Method(method, allow) => {
                let mut response = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method {method} not allowed here; use {allow}\n"),
                );
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                response
            }
            Reject::UpgradeRequired => {
                let mut response = text(
                    StatusCode::UPGRADE_REQUIRED,
                    "send Connection: upgrade and Upgrade: <protocol> to open an echo tunnel\n",
                );
                response
                    .headers_mut()
                    .insert(UPGRADE, HeaderValue::from_static("websocket"));
                response
            }
            Reject::Internal(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        }
    }
}

/// Answers one request; every response gets `X-Backend`.
pub(crate) async fn handle(req: Request<Incoming>, state: &State) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut response = route(parts, body, state)
        .await
        .unwrap_or_else(Reject::into_response);
    response.headers_mut().insert(X_BACKEND, state.id.clone());
    response
}

/// Which methods an endpoint takes.
#[derive(Clone, Copy)]
enum Allow {
    /// `GET` and `HEAD`.
    Get,
    /// `POST` only.
    Post,
}

/// `Err(405)` unless `method` is one the endpoint takes.
fn allow(method: &Method, allow: Allow) -> Result<(), Reject> {
    let (ok, header) = match allow {
        Allow::Get => (method == Method::GET || method == Method::HEAD, "GET, HEAD"),
        Allow::Post => (method == Method::POST, "POST"),
    };
    if ok {
        return Ok(());
    }
    Err(Reject::Method(method.clone(), header))
}

async fn route(mut parts: Parts, body: Incoming, state: &State) -> Answer {
    let path = parts.uri.path();
    let query = Query::new(parts.uri.query());
    let method = &parts.method;
    match path {
        "/" => {
            allow(method, Allow::Get)?;
            Ok(text(StatusCode::OK, state.root.clone()))
        }
        "/health" => {
            allow(method, Allow::Get)?;
            Ok(if state.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "down")
            })
        }
        "/health/down" | "/health/up" => {
            allow(method, Allow::Post)?;
            let up = path == "/health/up";
            state.healthy.store(up, Ordering::Relaxed);
            tracing::info!(up, "health toggled");
            let now = if up { "health: up\n" } else { "health: down\n" };
            Ok(text(StatusCode::OK, now))
        }
        "/sha1" => {
            allow(method, Allow::Post)?;
            sha1(body).await
        }
        "/work" => {
            allow(method, Allow::Get)?;
            let ms = query
                .number("ms", MAX_WORK_MS, "/work?ms=N")
                .map_err(Reject::Bad)?;
            tokio::task::spawn_blocking(move || cpu::burn(Duration::from_millis(ms)))
                .await
                .map_err(|err| Reject::Internal(format!("work failed: {err}")))?;
            Ok(text(StatusCode::OK, format!("worked {ms} ms\n")))
        }
        "/delay" => {
            allow(method, Allow::Get)?;
            let ms = query
                .number("ms", MAX_DELAY_MS, "/delay?ms=N")
                .map_err(Reject::Bad)?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(text(StatusCode::OK, format!("delayed {ms} ms\n")))
        }
        "/stream" => {
            allow(method, Allow::Get)?;
            stream(query)
        }
        "/headers" => {
            allow(method, Allow::Get)?;
            Ok(headers(&parts))
        }
        "/echo" => {
            allow(method, Allow::Get)?;
            let on_upgrade = parts.extensions.remove::<OnUpgrade>();
            echo(&parts, on_upgrade, state)
        }
        "/echo-body" => {
            allow(method, Allow::Post)?;
            let mut response = Response::new(Body::echo(body));
            if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, content_type.clone());
            }
            Ok(response)
        }
        _ => {
            if let Some((kind, n)) = generated_path(path) {
                allow(method, Allow::Get)?;
                return generated(kind, n, query);
            }
            if let Some(code) = path.strip_prefix("/status/") {
                allow(method, Allow::Get)?;
                return status(code, parts.version);
            }
            Err(Reject::NotFound(path.to_owned()))
        }
    }
}

/// `/text/N`, `/json/N`, `/html/N`, `/bytes/N`, `/words/N`: the kind and
/// the raw N.
fn generated_path(path: &str) -> Option<(Kind, &str)> {
    let (prefix, n) = path.strip_prefix('/')?.split_once('/')?;
    let kind = match prefix {
        "text" => Kind::Text,
        "json" => Kind::Json,
        "html" => Kind::Html,
        "bytes" => Kind::Bytes,
        "words" => Kind::Words,
        _ => return None,
    };
    Some((kind, n))
}

/// A `text/plain` response.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    response
}

/// The hex SHA-1 of the request body, hashed frame by frame as it arrives.
async fn sha1(mut body: Incoming) -> Answer {
    let mut sha = sha1_smol::Sha1::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| Reject::Bad(format!("cannot read the body: {err}")))?;
        if let Some(data) = frame.data_ref() {
            sha.update(data);
        }
    }
    Ok(text(StatusCode::OK, sha.digest().to_string()))
}

fn generated(kind: Kind, n: &str, query: Query<'_>) -> Answer {
    let n = query::number("N", n, MAX_BODY).map_err(Reject::Bad)?;
    let shape = Shape::parse(query).map_err(Reject::Bad)?;
    let mut response = Response::new(Body::generated(gen::layout(kind, n), !shape.chunked));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, kind.content_type());
    shape.apply(response.headers_mut());
    Ok(response)
}

fn stream(query: Query<'_>) -> Answer {
    let usage = "/stream?chunks=N&ms=M";
    let chunks = query
        .number("chunks", MAX_CHUNKS, usage)
        .map_err(Reject::Bad)?;
    let ms = query
        .number("ms", MAX_CHUNK_GAP_MS, usage)
        .map_err(Reject::Bad)?;
    let size = query
        .optional_number("size", CHUNK as u64)
        .map_err(Reject::Bad)?;
    let body = Body::ticks(chunks, Duration::from_millis(ms), size.map(|s| s as usize));
    let mut response = Response::new(body);
    response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    Ok(response)
}

/// `/status/N`: status N with a one-line body where the status allows one.
fn status(code: &str, version: Version) -> Answer {
    let code = query::number("status", code, 999).map_err(Reject::Bad)?;
    let status = u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Reject::Bad(format!("status must be from 100 to 999, got {code}")))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(Reject::Bad(format!(
            "status {code}: 1xx responses other than 101 cannot be sent"
        )));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS && version == Version::HTTP_2 {
        return Err(Reject::Bad("status 101 does not exist in HTTP/2".into()));
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut response = if bodyless {
        Response::new(Body::empty())
    } else {
        let reason = status.canonical_reason().unwrap_or("unknown");
        text(status, format!("{code} {reason}\n"))
    };
    *response.status_mut() = status;
    Ok(response)
}

/// `/headers`: the request line, then the headers in received order.
fn headers(parts: &Parts) -> Response<Body> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + parts.headers.len() * 48);
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{} {} {:?}", parts.method, parts.uri, parts.version);
    for (name, value) in &parts.headers {
        let _ = writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()));
    }
    text(StatusCode::OK, out)
}

/// `/echo`: `101` and a byte echo when an upgrade is asked for, else `426`.
fn echo(parts: &Parts, on_upgrade: Option<OnUpgrade>, state: &State) -> Answer {
    let Some(protocol) = upgrade::requested(&parts.headers) else {
        return Err(Reject::UpgradeRequired);
    };
    let Some(on_upgrade) = on_upgrade.filter(|_| parts.version == Version::HTTP_11) else {
        return Err(Reject::Bad(format!(
            "{:?} connections cannot be upgraded",
            parts.version
        )));
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, protocol.clone());
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(key) = parts.headers.get(SEC_WEBSOCKET_KEY) {
        let accept = upgrade::accept_key(key.as_bytes());
        // Base64 is always a valid header value.
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    upgrade::spawn_echo(on_upgrade, state.closing.clone());
    Ok(response)
}
