//! From runs to the report: per worker count a table of rates, latency and
//! memory and one of CPU per request; charts of requests/s, CPU per request
//! and latency over both worker counts; issue 8's goals, one row per worker
//! count per goal.

use anyhow::Result;

use super::{Figures, Pass, Shape, CONNS, KINDS};
use crate::procs::CpuTimes;
use crate::proxies::{Kind, INSTALL_HINT};
use crate::report::{bar_chart, fmt, ratio, Goal, Report};
use crate::scenarios::ms;

/// The proxies the goals compare ours with; the better of them counts.
const RIVALS: [&str; 2] = ["nginx", "haproxy"];
/// Issue 8: requests/s at least this many times the better rival's.
const RPS_GOAL: f64 = 1.1;
/// Issue 8: CPU per request at most this many times the better rival's.
const CPU_GOAL: f64 = 0.9;
/// Issue 8: open-loop p99 at most this many times the better rival's.
const P99_GOAL: f64 = 1.0;

/// "1 worker", "2 workers".
pub(crate) fn workers_label(n: usize) -> String {
    if n == 1 {
        "1 worker".into()
    } else {
        format!("{n} workers")
    }
}

/// The targets measured in `passes`, in the order of [`KINDS`].
fn present(passes: &[Pass]) -> Vec<&'static str> {
    KINDS
        .map(Kind::name)
        .into_iter()
        .filter(|k| passes.iter().any(|p| p.figures.contains_key(k)))
        .collect()
}

/// Writes the text, tables, charts and goals into `rep`.
pub(super) fn write(
    rep: &mut Report,
    passes: &[Pass],
    skipped: &[String],
    shape: Shape,
) -> Result<()> {
    let Shape { rounds, secs, wrk } = shape;
    let secs = secs.as_secs_f64();
    rep.para(&format!(
        "Three backends (`backend --threads 1`) on 127.0.0.1; our balancer (`--threads N`), nginx \
         (`worker_processes N`; a master process when N > 1) and HAProxy (`nbthread N`) in front of them with \
         keep-alive to the backends, at N = 1 and N = 2; `direct` is the load straight to one backend (the \
         ceiling). Per N: {rounds} round(s), targets alternating, medians shown. Requests/s: closed loop, \
         {CONNS} connections, `GET /`, {secs:.1} s per run, from our driver and from `wrk -tN -c{CONNS}` \
         (whole seconds, at least 1), both every round. Latency: our driver, open loop (Poisson) at one rate \
         per N (half the slowest proxy's requests/s), at most {CONNS} connections; \"held back\" counts the \
         arrivals that found all {CONNS} busy and waited (the target fell behind the rate, so its latency \
         shows saturation, not service time). CPU: the proxy's user and system seconds per 100,000 \
         requests, read from `/proc` around each closed-loop run (ours and wrk's), over its whole process \
         tree (nginx's master and workers). Peak RSS: `VmHWM` summed over the process tree. The load \
         generators share this machine's 2 cores with everything measured: compare ratios, not absolutes.",
    ));
    if !wrk {
        rep.para(&format!(
            "wrk runs skipped: not installed ({INSTALL_HINT})."
        ));
    }
    for s in skipped {
        rep.para(s);
    }
    for pass in passes {
        tables(rep, pass);
    }
    charts(rep, passes, wrk)?;
    let goals = passes.iter().flat_map(goals).collect();
    rep.goals(goals);
    Ok(())
}

/// One worker count's two tables.
fn tables(rep: &mut Report, pass: &Pass) {
    rep.para(&format!(
        "## {} (open loop at {:.0} requests/s)",
        workers_label(pass.workers),
        pass.rate
    ));
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    for k in KINDS.map(Kind::name) {
        let Some(f) = pass.figures.get(k) else {
            continue;
        };
        rows.push(vec![
            k.to_string(),
            fmt(pass.med(k, |f| &f.rps), 0),
            fmt(pass.med(k, |f| &f.wrk_rps), 0),
            pass.med(k, |f| &f.p50).map_or("—".into(), ms),
            pass.med(k, |f| &f.p99).map_or("—".into(), ms),
            pass.med(k, |f| &f.p999).map_or("—".into(), ms),
            fmt(f.peak_rss_mib, 1),
            format!("{} / {}", f.errors, f.wrk_errors),
            f.throttled.to_string(),
        ]);
        if f.cpu.is_empty() && f.wrk_cpu.is_empty() {
            continue;
        }
        let mut row = vec![k.to_string()];
        for c in [
            pass.med_cpu(k, |f: &Figures| &f.cpu),
            pass.med_cpu(k, |f: &Figures| &f.wrk_cpu),
        ] {
            row.extend([
                fmt(c.map(|c| c.user), 2),
                fmt(c.map(|c| c.system), 2),
                fmt(c.map(CpuTimes::total), 2),
            ]);
        }
        cpu_rows.push(row);
    }
    rep.table(
        &[
            "target",
            "req/s",
            "wrk req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "peak RSS MiB",
            "errors (driver / wrk)",
            "held back",
        ],
        &rows,
    );
    rep.para(
        "CPU seconds per 100,000 requests (the median round by total, so user + system = total):",
    );
    rep.table(
        &[
            "proxy",
            "driver user",
            "driver system",
            "driver total",
            "wrk user",
            "wrk system",
            "wrk total",
        ],
        &cpu_rows,
    );
}

/// Requests/s per target, CPU per request per proxy, latency per target;
/// each over both worker counts.
fn charts(rep: &mut Report, passes: &[Pass], wrk: bool) -> Result<()> {
    let targets = present(passes);
    let names: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    let mut rps = Vec::new();
    for pass in passes {
        let w = pass.workers;
        let series = |f: fn(&Figures) -> &Vec<f64>| -> Vec<f64> {
            targets
                .iter()
                .map(|k| pass.med(k, f).unwrap_or(0.0))
                .collect()
        };
        rps.push((format!("driver ×{w}"), series(|f| &f.rps)));
        if wrk {
            rps.push((format!("wrk ×{w}"), series(|f| &f.wrk_rps)));
        }
    }
    rep.chart(
        "requests-per-second",
        "requests/s per target, our driver and wrk, 1 and 2 workers",
        bar_chart(
            &format!("Requests/s (closed loop, {CONNS} connections)"),
            "requests/s",
            &names,
            &rps,
        ),
    )?;

    // CPU: one group per (proxy, worker count), user and system side by
    // side for each load generator.
    let mut cats = Vec::new();
    let mut labels = vec!["user (driver)", "system (driver)"];
    if wrk {
        labels.extend(["user (wrk)", "system (wrk)"]);
    }
    let mut cpu: Vec<(String, Vec<f64>)> =
        labels.iter().map(|s| (s.to_string(), Vec::new())).collect();
    for pass in passes {
        for k in &targets {
            if pass.figures.get(k).map_or(true, |f| f.cpu.is_empty()) {
                continue;
            }
            cats.push(format!("{k} ×{}", pass.workers));
            let d = pass.med_cpu(k, |f| &f.cpu).unwrap_or_default();
            let w = pass.med_cpu(k, |f| &f.wrk_cpu).unwrap_or_default();
            for (i, v) in [d.user, d.system, w.user, w.system]
                .into_iter()
                .take(cpu.len())
                .enumerate()
            {
                cpu[i].1.push(v);
            }
        }
    }
    rep.chart(
        "cpu-per-request",
        "proxy CPU seconds per 100,000 requests, user and system",
        bar_chart("Proxy CPU per 100k requests", "CPU seconds", &cats, &cpu),
    )?;

    let mut lat_cats = Vec::new();
    let mut lat: Vec<(String, Vec<f64>)> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    for pass in passes {
        for (label, f) in [
            ("p50", (|f: &Figures| &f.p50) as fn(&Figures) -> &Vec<f64>),
            ("p99", |f| &f.p99),
            ("p99.9", |f| &f.p999),
        ] {
            lat_cats.push(format!("{label} ×{}", pass.workers));
            for (i, k) in targets.iter().enumerate() {
                lat[i].1.push(pass.med(k, f).unwrap_or(0.0));
            }
        }
    }
    let rates: Vec<String> = passes
        .iter()
        .map(|p| format!("{:.0}/s ×{}", p.rate, p.workers))
        .collect();
    rep.chart(
        "latency",
        "open-loop latency percentiles per target, 1 and 2 workers",
        bar_chart(
            &format!("Latency, open loop ({})", rates.join(", ")),
            "ms",
            &lat_cats,
            &lat,
        ),
    )
}

/// Issue 8's goals at one worker count, against the better of nginx and
/// HAProxy.
fn goals(pass: &Pass) -> Vec<Goal> {
    let w = workers_label(pass.workers);
    let n = pass.workers;
    let best = |f: fn(&Figures) -> &Vec<f64>, high: bool| {
        RIVALS
            .iter()
            .filter_map(|k| pass.med(k, f))
            .reduce(if high { f64::max } else { f64::min })
    };
    let best_cpu = |f: fn(&Figures) -> &Vec<CpuTimes>| {
        RIVALS
            .iter()
            .filter_map(|k| pass.med_cpu(k, f).map(CpuTimes::total))
            .reduce(f64::min)
    };
    let ours = |f: fn(&Figures) -> &Vec<f64>| pass.med("balancer", f);
    let ours_cpu =
        |f: fn(&Figures) -> &Vec<CpuTimes>| pass.med_cpu("balancer", f).map(CpuTimes::total);
    vec![
        Goal::at_least(
            &format!("{w}: requests/s (wrk -t{n} -c{CONNS}): ours / better of nginx, HAProxy"),
            RPS_GOAL,
            ratio(ours(|f| &f.wrk_rps), best(|f| &f.wrk_rps, true)),
        ),
        Goal::at_least(
            &format!("{w}: requests/s (our driver): ours / better of nginx, HAProxy"),
            RPS_GOAL,
            ratio(ours(|f| &f.rps), best(|f| &f.rps, true)),
        ),
        Goal::at_most(
            &format!("{w}: CPU per request (wrk): ours / better of nginx, HAProxy"),
            CPU_GOAL,
            ratio(ours_cpu(|f| &f.wrk_cpu), best_cpu(|f| &f.wrk_cpu)),
        ),
        Goal::at_most(
            &format!("{w}: CPU per request (our driver): ours / better of nginx, HAProxy"),
            CPU_GOAL,
            ratio(ours_cpu(|f| &f.cpu), best_cpu(|f| &f.cpu)),
        ),
        Goal::at_most(
            &format!("{w}: open-loop p99: ours / better of nginx, HAProxy"),
            P99_GOAL,
            ratio(ours(|f| &f.p99), best(|f| &f.p99, false)),
        ),
    ]
}
