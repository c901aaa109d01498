//! Self-registration: the agent announces its host's backend to a
//! balancer's admin API, keeps it there with heartbeats, and withdraws it
//! (drained) when the agent stops.
//!
//! # Wire protocol
//!
//! Register, and heartbeat with the same request:
//!
//! ```text
//! POST {URL}/backends HTTP/1.1
//! Authorization: Bearer <token>
//! Content-Type: application/json
//!
//! {"addr":"10.0.0.11:8000","agent":"10.0.0.11:9100","weight":2,"pool":"api"}
//! ```
//!
//! (`weight` and `pool` left out when not given). The balancer answers
//! `201` for a new registration, `200` for a heartbeat of a known one, with
//! `{"addr": "...", "pool": "...", "heartbeat_ms": N}`; the agent re-posts
//! every `heartbeat_ms` (clamped to 100 ms..60 s, 2 s when absent), and
//! the balancer drops a registration after three missed heartbeats. Any
//! other status comes with a one-line text body, logged with the status.
//!
//! Withdraw: `DELETE {URL}/backends/{addr}` with the same token. The
//! balancer answers once the backend is drained, so the agent waits up to
//! [`WITHDRAW_TIMEOUT`] for it, serving `/load` meanwhile.
//!
//! # Failures
//!
//! Nothing after start-up is fatal: a balancer that is restarting, refuses
//! the token or does not know the pool is retried with a capped
//! exponential back-off, and each change of state (registered, failing
//! for a new reason, registered again) is logged once, not every attempt.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{sleep_until, timeout, Instant};

use crate::auth::{read_secret, KeyError};

/// The heartbeat period before the balancer has named one, or when its
/// answer does not.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(2000);

/// The range a balancer's `heartbeat_ms` is clamped to: a typo on its side
/// must neither flood it nor let the registration lapse for hours.
pub const HEARTBEAT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(60));

/// The longest one register or heartbeat request may take (and never more
/// than the period), so a hung balancer cannot hold the loop past the
/// missed heartbeats that drop the registration.
const MAX_POST_TIME: Duration = Duration::from_secs(5);

/// Back-off after a failed attempt: doubled from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// How long the agent waits for the balancer to drain its backend on
/// withdrawal; past it, it exits anyway (the balancer then drops the
/// backend after missed heartbeats).
pub const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of an answer's body read: a JSON object or one line of text.
const MAX_ANSWER: usize = 64 * 1024;

/// The balancer's admin base URL (`--register`): `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl(String);

/// Why a `--register` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a URL: {1} (expected http://IP:port of the balancer's admin listener)")]
    Malformed(String, String),
    #[error(
        "{0:?}: only http:// is supported (the balancer's admin listener speaks plain HTTP; \
         keep it on a private network)"
    )]
    Scheme(String),
    #[error("{0:?}: expected http://IP:port of the balancer's admin listener, with a host")]
    NoHost(String),
    #[error("{0:?}: no user name or password in the URL; the token comes from --token-file")]
    UserInfo(String),
    #[error("{0:?}: no query or fragment; give the admin listener's base URL, e.g. http://10.0.0.10:9000")]
    Query(String),
}

impl FromStr for AdminUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<AdminUrl, UrlError> {
        let malformed = |why: String| UrlError::Malformed(s.to_owned(), why);
        if !s.contains("://") {
            return Err(malformed("no scheme".into()));
        }
        let uri: Uri = s.parse().map_err(|e| malformed(format!("{e}")))?;
        if !uri
            .scheme_str()
            .is_some_and(|x| x.eq_ignore_ascii_case("http"))
        {
            return Err(UrlError::Scheme(s.to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| UrlError::NoHost(s.to_owned()))?;
        if authority.as_str().contains('@') {
            return Err(UrlError::UserInfo(s.to_owned()));
        }
        if authority.host().is_empty() {
            return Err(UrlError::NoHost(s.to_owned()));
        }
        if uri.query().is_some() || s.contains('#') {
            return Err(UrlError::Query(s.to_owned()));
        }
        let prefix = uri.path().trim_end_matches('/');
        Ok(AdminUrl(format!("http://{authority}{prefix}")))
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `--advertise`/`--advertise-agent`: an `IP:port` the balancer can
/// connect to, so not `0.0.0.0` and not port 0.
///
/// # Errors
///
/// A message for clap when the address is unusable.
pub fn reachable_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP:port (e.g. 10.0.0.11:8000)"))?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!(
            "{addr} cannot be reached by the balancer: name this host's own IP and a port"
        ));
    }
    Ok(addr)
}

/// Where the balancer should poll this agent: `listen` when it names an
/// IP, else the advertised backend's IP with the listen port.
pub fn agent_addr(listen: SocketAddr, advertise: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(advertise.ip(), listen.port())
    } else {
        listen
    }
}

/// The bearer token of the balancer's `[admin] token_file`. `Debug` never
/// shows it.
#[derive(Clone)]
pub struct Token(HeaderValue);

/// Why `--token-file` was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    File(#[from] KeyError),
    #[error("{}: the token holds bytes an HTTP header cannot carry (control characters?)", .0.display())]
    NotHeader(PathBuf),
}

impl Token {
    /// Reads the token in `path` as the balancer reads its `token_file`
    /// (trailing line ends trimmed, at least 16 bytes), so the same file
    /// works on both sides byte for byte.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is empty or too short, or holds bytes
    /// a header cannot carry.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let bytes = read_secret(path)?;
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(&bytes);
        let mut value =
            HeaderValue::from_bytes(&value).map_err(|_| TokenError::NotHeader(path.to_owned()))?;
        value.set_sensitive(true);
        Ok(Token(value))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// What to announce, and where: the parsed `--register` flags.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The balancer's admin base URL, for logs.
    pub admin: AdminUrl,
    /// The backend announced (`--advertise`).
    pub addr: SocketAddr,
    /// `POST` here to register and heartbeat.
    register: Uri,
    /// `DELETE` here to withdraw.
    withdraw: Uri,
    /// The JSON body of every register and heartbeat request.
    body: Bytes,
    token: Token,
}

/// The fields of a registration, as the balancer reads them.
#[derive(serde::Serialize)]
struct Wire<'a> {
    addr: SocketAddr,
    agent: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'a str>,
}

impl Registration {
    /// A registration of backend `addr`, polled at `agent`, with the
    /// balancer at `admin`.
    pub fn new(
        admin: AdminUrl,
        addr: SocketAddr,
        agent: SocketAddr,
        weight: Option<u32>,
        pool: Option<&str>,
        token: Token,
    ) -> Registration {
        let wire = Wire {
            addr,
            agent,
            weight,
            pool,
        };
        // A struct of addresses, a number and a string always serializes.
        let body = serde_json::to_vec(&wire).unwrap_or_default().into();
        // `[` and `]` of an IPv6 address are not allowed in a path.
        let path_addr = addr.to_string().replace('[', "%5B").replace(']', "%5D");
        // Both parse: `admin` is a checked http:// base, the rest is ASCII.
        let uri = |path: &str| format!("{admin}{path}").parse().unwrap_or_default();
        Registration {
            register: uri("/backends"),
            withdraw: uri(&format!("/backends/{path_addr}")),
            admin,
            addr,
            body,
            token,
        }
    }

    /// The JSON body sent to register and heartbeat.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Registers, heartbeats until `shutdown` completes, then withdraws the
    /// backend and waits (up to [`WITHDRAW_TIMEOUT`]) for the balancer to
    /// drain it. Never fails: every error is logged and retried, or (on
    /// withdrawal) left to the balancer's missed-heartbeat timeout.
    ///
    /// The agent passes this as its server's shutdown future, so `/load`
    /// is served until the withdrawal is answered.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let client = client();
        tokio::pin!(shutdown);
        let mut state = State::Starting;
        let mut period = DEFAULT_HEARTBEAT;
        let mut backoff = BACKOFF.0;
        tracing::info!(addr = %self.addr, admin = %self.admin, "registering with the balancer");
        loop {
            let started = Instant::now();
            let attempt = timeout(period.min(MAX_POST_TIME), self.post(&client));
            let result = tokio::select! {
                r = attempt => r.unwrap_or(Err(Failure::Timeout(period.min(MAX_POST_TIME)))),
                () = &mut shutdown => break,
            };
            let next = match result {
                Ok(answer) => {
                    state.registered(&self, &answer, period);
                    period = answer.period;
                    backoff = BACKOFF.0;
                    started + period
                }
                Err(failure) => {
                    state.failed(&self, failure, backoff);
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    Instant::now() + wait
                }
            };
            tokio::select! {
                () = sleep_until(next) => {}
                () = &mut shutdown => break,
            }
        }
        self.withdraw(&client).await;
    }

    /// One register or heartbeat request.
    async fn post(&self, client: &HttpClient) -> Result<Answer, Failure> {
        let request = self.request(Method::POST, &self.register, self.body.clone());
        let (status, body) = send(client, request).await?;
        if !status.is_success() {
            return Err(Failure::Status(status, line(&body)));
        }
        Ok(Answer::parse(status, &body))
    }

    /// Withdraws the backend, waiting for the balancer to drain it, and
    /// logs what came of it.
    async fn withdraw(&self, client: &HttpClient) {
        let addr = self.addr;
        tracing::info!(
            %addr, admin = %self.admin,
            "withdrawing: waiting up to {WITHDRAW_TIMEOUT:?} for the balancer to drain it"
        );
        let request = self.request(Method::DELETE, &self.withdraw, Bytes::new());
        match timeout(WITHDRAW_TIMEOUT, send(client, request)).await {
            Ok(Ok((status, _))) if status.is_success() => {
                tracing::info!(%addr, "withdrawn: the balancer drained it ({status})");
            }
            Ok(Ok((status, body))) => tracing::warn!(
                %addr,
                "withdrawal refused: {status}: {}; the balancer drops it after three missed heartbeats",
                line(&body)
            ),
            Ok(Err(failure)) => tracing::warn!(
                %addr,
                "withdrawal failed: {failure}; the balancer drops it after three missed heartbeats"
            ),
            Err(_) => tracing::warn!(
                %addr,
                "no answer to the withdrawal within {WITHDRAW_TIMEOUT:?}; exiting anyway"
            ),
        }
    }

    fn request(&self, method: Method, uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
        let json = method == Method::POST;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.token.0.clone());
        if json {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        request
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client that opens a connection per request: one every heartbeat is
/// nothing, and each then proves the balancer reachable rather than
/// failing on a pooled connection the balancer has since closed.
fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(MAX_POST_TIME));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// Sends `request`, reading at most [`MAX_ANSWER`] bytes of the answer.
async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), Failure> {
    let response = client.request(request).await.map_err(|e| {
        // The innermost cause says what happened ("Connection refused").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        Failure::Unreachable(cause.to_string())
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| Failure::Unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// The first line of an error answer's body, bounded, for the log.
fn line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let first = text.lines().next().unwrap_or("").trim();
    first.chars().take(200).collect()
}

/// A successful register or heartbeat answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    /// `201`: the balancer added the backend now; `200`: it knew it.
    created: bool,
    /// The pool the balancer put it in, when it says.
    pool: Option<String>,
    /// The heartbeat period it asks for, clamped.
    period: Duration,
}

impl Answer {
    fn parse(status: StatusCode, body: &[u8]) -> Answer {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name| json.as_ref().and_then(|j| j.get(name));
        let period = field("heartbeat_ms")
            .and_then(serde_json::Value::as_u64)
            .map_or(DEFAULT_HEARTBEAT, |ms| {
                Duration::from_millis(ms).clamp(HEARTBEAT_RANGE.0, HEARTBEAT_RANGE.1)
            });
        Answer {
            created: status == StatusCode::CREATED,
            pool: field("pool").and_then(|p| p.as_str()).map(str::to_owned),
            period,
        }
    }
}

/// Why a register or heartbeat request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No connection, or it broke: the balancer is down or restarting.
    Unreachable(String),
    /// No answer in time.
    Timeout(Duration),
    /// The balancer refused, with its one-line reason.
    Status(StatusCode, String),
}

impl Failure {
    /// The state a failure puts the registration in: a change of it is
    /// logged, a repeat is not.
    fn kind(&self) -> Option<StatusCode> {
        match self {
            Failure::Status(status, _) => Some(*status),
            Failure::Unreachable(_) | Failure::Timeout(_) => None,
        }
    }

    /// What the operator should do about a refusal.
    fn hint(status: StatusCode) -> &'static str {
        match status.as_u16() {
            401 => " (wrong token: --token-file must hold the balancer's [admin] token_file)",
            403 => " (the balancer has no [admin] token_file, so it accepts no registrations)",
            404 => " (unknown --pool, or a balancer without registration)",
            409 => " (that address is already the balancer's: listed in its lb.toml or found by its DNS discovery)",
            _ => "",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(why) => write!(f, "balancer unreachable: {why}"),
            Failure::Timeout(limit) => write!(f, "no answer within {limit:?}"),
            Failure::Status(status, body) => {
                write!(f, "refused: {status}: {body}{}", Failure::hint(*status))
            }
        }
    }
}

/// Where the registration stands, to log changes only.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Registered,
    /// Failing for this reason (a status, or unreachable).
    Failing(Option<StatusCode>),
}

impl State {
    fn registered(&mut self, reg: &Registration, answer: &Answer, old_period: Duration) {
        let (addr, pool) = (reg.addr, answer.pool.as_deref().unwrap_or("default"));
        let every = answer.period;
        match self {
            State::Registered if answer.created => tracing::warn!(
                %addr, pool,
                "the balancer had forgotten this backend (restarted?); registered it again"
            ),
            State::Registered if every != old_period => {
                tracing::info!(%addr, "the balancer now asks for a heartbeat every {every:?}");
            }
            State::Registered => tracing::debug!(%addr, "heartbeat"),
            State::Starting => tracing::info!(
                %addr, pool, admin = %reg.admin, "registered; heartbeat every {every:?}"
            ),
            State::Failing(_) => tracing::info!(
                %addr, pool, admin = %reg.admin, "registered again; heartbeat every {every:?}"
            ),
        }
        *self = State::Registered;
    }

    fn failed(&mut self, reg: &Registration, failure: Failure, retry: Duration) {
        let kind = failure.kind();
        let (addr, admin) = (reg.addr, &reg.admin);
        match self {
            State::Failing(was) if *was == kind => {
                tracing::debug!(%addr, "still failing: {failure}");
            }
            State::Registered => tracing::warn!(
                %addr, %admin,
                "heartbeat failed: {failure}; retrying (back-off up to {:?})", BACKOFF.1
            ),
            _ => tracing::warn!(
                %addr, %admin,
                "registration failed: {failure}; retrying in {retry:?} (back-off up to {:?})",
                BACKOFF.1
            ),
        }
        *self = State::Failing(kind);
    }
}

#[cfg(test)]
#[path = "register_tests.rs"]
mod tests;
