//! Active health probes: one task per backend sends `GET [health] path`
//! every interval and feeds the result to the backend's rise/fall counter
//! (see [`Backend::record_probe`]). Passive marking — a refused connection
//! takes a backend down at once — happens where each attempt's outcome is
//! reported ([`Backend::report`]).
//!
//! First probes are staggered across the interval and every interval is
//! jittered by ±5 % (see [`crate::monitor`]). Only transitions are logged,
//! with the reason.

use std::sync::Weak;
use std::time::Duration;

use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};

use crate::backend::{Backend, Transition};
use crate::error_chain::error_chain;
use crate::monitor::{self, MonitorClient, Watch};

/// Starts the probe loop of `backend`, the `slot`-th of `of` started
/// together, with the probe interval in force now (`interval`).
pub(crate) fn spawn(
    watch: Watch,
    backend: Weak<Backend>,
    interval: Duration,
    slot: usize,
    of: usize,
) {
    let offset = monitor::stagger(interval, slot, of);
    monitor::every(
        watch,
        backend,
        offset,
        |c| c.health.interval,
        |backend, run| async move {
            let h = &run.config.health;
            let result = probe(&run.client, &backend, &run.health_path, h.timeout).await;
            match (
                backend.record_probe(result.is_ok(), h.rise, h.fall),
                &result,
            ) {
                (Some(Transition::WentDown), Err(why)) => {
                    tracing::warn!(backend = %backend.addr, "backend down: health probe failed {} times in a row: {why}", h.fall);
                    backend.set_down_reason(format!(
                        "health probe failed {} times in a row: {why}",
                        h.fall
                    ));
                }
                (Some(Transition::WentUp), _) => {
                    tracing::info!(backend = %backend.addr, "backend up: {} health probes passed in a row", h.rise);
                }
                _ => {}
            }
        },
    );
}

/// One probe: `Ok` on a 2xx or 3xx answer within `timeout`.
async fn probe(
    client: &MonitorClient,
    backend: &Backend,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    let req = Request::get(uri)
        .header(http::header::USER_AGENT, "balancer-health")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        // Read the (small) body so the connection can be reused.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET {path} timed out after {timeout:?}")),
    }
}
