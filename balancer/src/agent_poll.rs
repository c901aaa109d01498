//! Polls the load agent of each backend host (`GET /load`) and keeps the
//! latest good report on the backend, with the time it arrived.
//!
//! A failed, slow or malformed poll makes the load *unknown* at once: the
//! backend stays in rotation on its health alone and ranks with the median
//! of the known loads. Polls are jittered and the first ones staggered, so
//! that agents are not polled in lockstep. A change between "reporting"
//! and "not reporting" is logged once, not every poll.

use std::sync::Weak;
use std::time::Duration;

use agent::LoadReport;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};

use crate::backend::Backend;
use crate::health::error_chain;
use crate::monitor;
use crate::pool::{MonitorClient, Pool};

/// A report larger than this is not a report.
const MAX_REPORT: usize = 64 * 1024;

/// Starts the poll loop of `backend`, the `slot`-th of `of` started together.
pub(crate) fn spawn(pool: Weak<Pool>, backend: Weak<Backend>, slot: usize, of: usize) {
    let Some(interval) = pool.upgrade().map(|p| p.snapshot().config.agent.interval) else {
        return;
    };
    // Half the probe stagger: load data is wanted early after a start.
    let offset = monitor::stagger(interval, slot, of) / 2;
    monitor::every(
        pool,
        backend,
        offset,
        |c| c.agent.interval,
        |pool, backend, config| async move {
            match poll(&pool.monitor_client, &backend, config.agent.timeout).await {
                Ok(report) => {
                    backend.store_load(report, tokio::time::Instant::now());
                    if backend.set_agent_reporting(true) {
                        tracing::info!(backend = %backend.addr, agent = %backend.agent, "agent reporting: cpu {:.2}, memory {:.2}", report.cpu, report.memory);
                    }
                }
                Err(why) => {
                    backend.clear_load();
                    if backend.set_agent_reporting(false) {
                        tracing::warn!(backend = %backend.addr, agent = %backend.agent, "agent not reporting, load unknown: {why}");
                    }
                }
            }
        },
    );
}

async fn poll(
    client: &MonitorClient,
    backend: &Backend,
    timeout: Duration,
) -> Result<LoadReport, String> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.agent.to_string())
        .path_and_query("/load")
        .build()
        .map_err(|e| e.to_string())?;
    let req = Request::get(uri)
        .header(http::header::USER_AGENT, "balancer-agent-poll")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("GET /load answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_REPORT)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        LoadReport::parse(&body).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET /load timed out after {timeout:?}")),
    }
}
