//! Polls the load agent of each backend host (`GET /load`) and keeps the
//! latest good report on the backend, with the time it arrived.
//!
//! A failed, slow or malformed poll makes the load *unknown* at once: the
//! backend stays in rotation on its health alone and ranks with the median
//! of the known loads. Polls are jittered and the first ones staggered, so
//! that agents are not polled in lockstep. A change between "reporting",
//! "not reporting" and "not authenticated" is logged once, not every poll.
//!
//! With `[agent] key_file`, each poll carries a fresh nonce and a MAC over
//! it, and a report counts only when its answer is authenticated over that
//! nonce and its body (the `LB-HMAC` scheme of [`agent::auth`]): an agent
//! without the key, with another key, or replaying an earlier answer leaves
//! the load unknown, as an unreachable agent does.

use std::sync::Weak;
use std::time::Duration;

use agent::{AuthError, Key, LoadReport, Nonce};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};

use crate::backend::Backend;
use crate::error_chain::error_chain;
use crate::monitor::{self, MonitorClient, Watch};

/// A report larger than this is not a report.
const MAX_REPORT: usize = 64 * 1024;

/// Starts the poll loop of `backend`, the `slot`-th of `of` started
/// together, with the poll interval in force now (`interval`).
pub(crate) fn spawn(
    watch: Watch,
    backend: Weak<Backend>,
    interval: Duration,
    slot: usize,
    of: usize,
) {
    // Half the probe stagger: load data is wanted early after a start.
    let offset = monitor::stagger(interval, slot, of) / 2;
    monitor::every(
        watch,
        backend,
        offset,
        |c| c.agent.interval,
        |backend, run| async move {
            let key = run.config.agent.key.as_ref();
            match poll(&run.client, &backend, run.config.agent.timeout, key).await {
                Ok(report) => {
                    backend.store_load(report, tokio::time::Instant::now());
                    if backend.set_agent_reporting(true) {
                        tracing::info!(backend = %backend.addr, agent = %backend.agent, "agent reporting: cpu {:.2}, memory {:.2}", report.cpu, report.memory);
                    }
                }
                Err(PollError::Failed(why)) => {
                    backend.clear_load();
                    if backend.set_agent_reporting(false) {
                        tracing::warn!(backend = %backend.addr, agent = %backend.agent, "agent not reporting, load unknown: {why}");
                    }
                }
                Err(PollError::Unauthenticated(why)) => {
                    backend.clear_load();
                    if backend.set_agent_unauthenticated() {
                        tracing::warn!(backend = %backend.addr, agent = %backend.agent, "agent report not authenticated, load unknown: {why}");
                    }
                }
            }
        },
    );
}

/// Why a poll brought no report.
enum PollError {
    /// No answer, or not a report: the agent is not reporting.
    Failed(String),
    /// An answer that is not authenticated with the key (or an agent that
    /// wants a key we do not have): someone else may be answering.
    Unauthenticated(String),
}

impl From<String> for PollError {
    fn from(why: String) -> PollError {
        PollError::Failed(why)
    }
}

/// One `GET /load`; with `key`, signed with a fresh nonce and checked.
async fn poll(
    client: &MonitorClient,
    backend: &Backend,
    timeout: Duration,
    key: Option<&Key>,
) -> Result<LoadReport, PollError> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.agent.to_string())
        .path_and_query("/load")
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = Request::get(uri).header(http::header::USER_AGENT, "balancer-agent-poll");
    let signed = match key {
        Some(key) => {
            let nonce = Nonce::random().map_err(|e| format!("no random nonce: {e}"))?;
            req = req.header(http::header::AUTHORIZATION, key.authorization(&nonce));
            Some((key, nonce))
        }
        None => None,
    };
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let why = match key {
                Some(_) => "the agent has another key",
                None => "the agent wants a key; set [agent] key_file",
            };
            return Err(PollError::Unauthenticated(format!(
                "GET /load answered 401: {why}"
            )));
        }
        if !resp.status().is_success() {
            return Err(format!("GET /load answered {}", resp.status()).into());
        }
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_REPORT)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if let Some((key, nonce)) = signed {
            let mac = parts.headers.get(agent::auth::RESPONSE_HEADER);
            key.verify(&nonce, mac.map(http::HeaderValue::as_bytes), &body)
                .map_err(|e| {
                    PollError::Unauthenticated(match e {
                        AuthError::Missing => {
                            "the answer is not signed (is the agent started with --key-file?)"
                                .to_owned()
                        }
                        other => format!("the answer is {other}"),
                    })
                })?;
        }
        let report = LoadReport::parse(&body).map_err(|e| e.to_string())?;
        backend.set_hostname(agent::report::hostname(&body));
        Ok(report)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET /load timed out after {timeout:?}").into()),
    }
}
