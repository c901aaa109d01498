//! A fake balancer admin API for the `--register` tests: records every
//! request and answers `POST /backends` and `DELETE /backends/{addr}` as the
//! test says, on `127.0.0.1:0` (or a listener the test gives it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The backend every test advertises (nothing needs to listen there).
pub const BACKEND: &str = "127.0.0.1:8123";

/// One request the fake admin API received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub content_type: Option<String>,
    pub body: serde_json::Value,
}

/// How the fake answers `POST /backends`.
#[derive(Debug, Clone)]
pub enum Posts {
    /// `201` the first time, `200` after, with this `heartbeat_ms`.
    Accept(u64),
    /// This status and one-line body.
    Refuse(u16, &'static str),
}

/// The fake balancer admin API's shared state.
struct State {
    seen: Mutex<Vec<Seen>>,
    posts: Mutex<Posts>,
    registered: Mutex<bool>,
    /// `DELETE` answers this once it is `Some`.
    delete: watch::Sender<Option<u16>>,
}

#[derive(Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Admin {
    /// A fake admin API on `127.0.0.1:0`.
    pub async fn start(posts: Posts) -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Admin::serve(listener, posts)
    }

    /// A fake admin API on `listener`.
    pub fn serve(listener: TcpListener, posts: Posts) -> Admin {
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            posts: Mutex::new(posts),
            registered: Mutex::new(false),
            delete: watch::channel(None).0,
        });
        let admin = Admin {
            addr: listener.local_addr().expect("local addr"),
            state: state.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let service = service_fn(move |req| answer(state.clone(), req));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        admin
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn posts(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST")
            .collect()
    }

    pub fn set_posts(&self, posts: Posts) {
        *self.state.posts.lock().unwrap() = posts;
    }

    /// Lets pending and future `DELETE`s answer `status`.
    pub fn answer_deletes(&self, status: u16) {
        self.state.delete.send_replace(Some(status));
    }

    /// Waits up to `limit` for `what` to hold of the requests seen.
    pub async fn wait_for(&self, limit: Duration, what: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if what(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "not seen within {limit:?}: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap_or("?").to_owned())
    };
    let (auth, content_type) = (header("authorization"), header("content-type"));
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
    state.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        method: method.clone(),
        path,
        auth,
        content_type,
        body: body.unwrap_or_default(),
    });
    let (status, text) = if method == "DELETE" {
        let mut gate = state.delete.subscribe();
        let status = *gate.wait_for(Option::is_some).await.expect("sender kept");
        *state.registered.lock().unwrap() = false;
        (status.unwrap_or(500), "drained\n".to_owned())
    } else {
        let posts = state.posts.lock().unwrap().clone();
        match posts {
            Posts::Refuse(status, line) => (status, format!("{line}\n")),
            Posts::Accept(ms) => {
                let new = !std::mem::replace(&mut *state.registered.lock().unwrap(), true);
                let json =
                    format!(r#"{{"addr":"{BACKEND}","pool":"default","heartbeat_ms":{ms}}}"#);
                (if new { 201 } else { 200 }, json)
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    Ok(response)
}
