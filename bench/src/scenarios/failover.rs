//! `failover`: steady open-loop GET load through our balancer to three
//! backends; one backend is killed (SIGKILL, a crash) and later restarted.
//!
//! Reports the failed requests (goal: 0), how long the dead backend kept
//! getting attempts and when it was marked down (from the balancer's
//! `/status.json`, polled every 100 ms), and how long after the restart it
//! got its share of the traffic again (from the responses' `X-Backend`).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;

use super::Ctx;
use crate::cluster::{Host, Hosts, LbConfig};
use crate::load::{self, Load, Mode};
use crate::report::{line_chart, Goal, Report};

/// The backend that is killed (index into the hosts).
const VICTIM: usize = 1;
/// Width of the timeline buckets.
const BUCKET: Duration = Duration::from_millis(250);

/// One poll of the victim's counters in `/status.json`.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    healthy: bool,
    /// `requests + errors`: every attempt the balancer made there.
    attempts: u64,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(
        &ctx.out,
        "failover",
        "Failover: a backend killed and restarted under load",
    )?;
    let work = rep.dir.join("run");
    let logs = work.join("logs");
    let hosts = (1..=3)
        .map(|i| Host::on([127, 0, 0, 1], &format!("b{i}")))
        .collect::<Result<Vec<_>>>()?;
    let mut cluster = Hosts::start(hosts, 1, &logs, &[]).await?;
    let lb = LbConfig::local()?;
    let _balancer = lb.start(&cluster.hosts, 1, &work, "balancer").await?;
    let (kill_at, restart_at, total) = ctx.pick((3.0, 8.0, 16.0), (1.5, 3.5, 7.0));
    let rate = ctx.pick(500.0, 200.0);
    let victim = cluster.hosts[VICTIM].id.clone();

    let mut l = Load::closed(
        "failover",
        lb.listen,
        "/",
        32,
        Duration::from_secs_f64(total),
    );
    l.mode = Mode::Open { rate, conns: 32 };
    l.bucket = BUCKET;
    let start = Instant::now();
    let at = |s: f64| start + Duration::from_secs_f64(s);
    let control = async {
        tokio::time::sleep_until(at(kill_at)).await;
        eprintln!("  [failover] killing backend {victim} (SIGKILL)");
        cluster.backends[VICTIM].kill_now();
        let killed = start.elapsed().as_secs_f64();
        tokio::time::sleep_until(at(restart_at)).await;
        eprintln!("  [failover] restarting backend {victim}");
        cluster.restart_backend(VICTIM, 1, &logs).await?;
        anyhow::Ok((killed, start.elapsed().as_secs_f64()))
    };
    let poll = async {
        let mut samples = Vec::new();
        while start.elapsed().as_secs_f64() < total {
            if let Ok((200, body)) = load::get(lb.admin, "/status.json").await {
                if let Some(s) = parse_sample(&body, VICTIM, start.elapsed().as_secs_f64()) {
                    samples.push(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    };
    let (result, times, samples) = tokio::join!(load::run(l), control, poll);
    let (result, (killed, restarted)) = (result?, times?);
    cluster.stop();

    // Attempts on the dead backend: the last poll at which its counter was
    // still rising, and when it was first seen down.
    let before = samples
        .iter()
        .rev()
        .find(|s| s.t_s <= killed)
        .map_or(0, |s| s.attempts);
    let dead: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s > killed && s.t_s < restarted)
        .collect();
    let after_kill = dead.last().map_or(0, |s| s.attempts).saturating_sub(before);
    let mut last_rise = None;
    let mut prev = before;
    for s in &dead {
        if s.attempts > prev {
            last_rise = Some(s.t_s - killed);
        }
        prev = s.attempts;
    }
    let marked_down = dead.iter().find(|s| !s.healthy).map(|s| s.t_s - killed);
    // Back to its share: the first bucket after the restart in which it
    // answered at least 80% of an even share.
    let fair = 1.0 / cluster_size(&result) as f64;
    let share_at = |b: &load::Bucket| {
        b.by_backend.get(&victim).copied().unwrap_or(0) as f64 / b.ok.max(1) as f64
    };
    let bucket_s = BUCKET.as_secs_f64();
    let first_answer = result
        .timeline
        .iter()
        .find(|b| b.t_ms as f64 / 1000.0 >= restarted && b.by_backend.contains_key(&victim))
        .map(|b| (b.t_ms as f64 / 1000.0 + bucket_s - restarted).max(0.0));
    let share_back = result
        .timeline
        .iter()
        .find(|b| b.t_ms as f64 / 1000.0 >= restarted && share_at(b) >= 0.8 * fair)
        .map(|b| (b.t_ms as f64 / 1000.0 + bucket_s - restarted).max(0.0));

    let opt_s = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.2} s"));
    rep.para(&format!(
        "Three backends behind our balancer (least-loaded, health probes every 1 s, fall 2, rise 2). Open loop, \
         {rate:.0} requests/s of `GET /` for {total:.0} s; backend {victim} killed with SIGKILL at {killed:.2} s \
         and restarted at {restarted:.2} s."
    ));
    let rows = vec![
        vec!["requests answered".into(), result.ok.to_string()],
        vec!["failed requests".into(), result.errors.to_string()],
        vec![
            "attempts on the dead backend after the kill".into(),
            after_kill.to_string(),
        ],
        vec![
            "dead backend last attempted".into(),
            last_rise.map_or("not after the kill".into(), |v| {
                format!("{v:.2} s after the kill")
            }),
        ],
        vec![
            "dead backend marked down".into(),
            marked_down.map_or("not seen".into(), |v| format!("{v:.2} s after the kill")),
        ],
        vec![
            "restarted backend's first answer".into(),
            opt_s(first_answer) + " after the restart",
        ],
        vec![
            "restarted backend back to ≥ 80% of its share".into(),
            opt_s(share_back) + " after the restart",
        ],
    ];
    rep.table(&["", "value"], &rows);
    if !result.error_samples.is_empty() {
        rep.para(&format!("Errors seen: {}", result.error_samples.join("; ")));
    }
    let names: Vec<String> = cluster_names(&result);
    let series: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|n| {
            let pts = result
                .timeline
                .iter()
                .map(|b| {
                    (
                        b.t_ms as f64 / 1000.0,
                        b.by_backend.get(n).copied().unwrap_or(0) as f64 / bucket_s,
                    )
                })
                .collect();
            (n.clone(), pts)
        })
        .collect();
    let markers = [
        (killed, format!("{victim} killed")),
        (restarted, format!("{victim} restarted")),
    ];
    rep.chart(
        "timeline",
        "responses per second per backend",
        line_chart("Responses/s per backend", "responses/s", &series, &markers),
    )?;
    rep.goals(vec![Goal::at_most(
        "failed requests during failover",
        0.0,
        Some(result.errors as f64),
    )]);
    rep.data("result", &result);
    rep.data("victim_samples", &samples);
    rep.data("killed_at_s", killed);
    rep.data("restarted_at_s", restarted);
    rep.data("attempts_after_kill", after_kill);
    rep.data("last_attempt_after_kill_s", last_rise);
    rep.data("marked_down_after_s", marked_down);
    rep.data("first_answer_after_restart_s", first_answer);
    rep.data("share_back_after_restart_s", share_back);
    rep.finish()
}

fn cluster_names(r: &load::LoadResult) -> Vec<String> {
    r.by_backend.keys().cloned().collect()
}

fn cluster_size(r: &load::LoadResult) -> usize {
    r.by_backend.len().max(1)
}

fn parse_sample(body: &[u8], i: usize, t_s: f64) -> Option<Sample> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let b = v.get("backends")?.get(i)?;
    Some(Sample {
        t_s,
        healthy: b.get("healthy")?.as_bool()?,
        attempts: b.get("requests")?.as_u64()?
            + b.get("errors").and_then(|e| e.as_u64()).unwrap_or(0),
    })
}
