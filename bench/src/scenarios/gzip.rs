//! `gzip`: 10 KB HTML, 100 KB JSON and 100 KB low-redundancy JSON, gzipped
//! by our balancer and by nginx at the same level (1 and 6), and by HAProxy
//! (level 1, its default maximum), same backends, one worker each, runs
//! alternating.
//!
//! The HTML and JSON bodies repeat a short pattern (25:1 and 90:1 at gzip
//! level 6), so nearly every byte is a long match and they measure mostly
//! the proxy's cost per response. The low-redundancy body (the backend's
//! `/words`, seeded random words in JSON records, 3.5:1 at level 6, like
//! real text and API responses) measures the deflate itself.
//!
//! Figures: responses/s (closed loop), mean latency, bytes on the wire per
//! response, the share of responses that came back gzipped, CPU seconds of
//! the proxy per 1,000 responses, and our compressed size against nginx's.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{ms, start_proxies, Ctx};
use crate::cluster::{Host, Hosts};
use crate::load::{self, Load};
use crate::proxies::{Kind, Opts};
use crate::report::{bar_chart, fmt, median, ratio, Goal, Report};

/// Closed-loop connections.
const CONNS: usize = 32;
/// The bodies: (name, path).
const BODIES: [(&str, &str); 3] = [
    ("10 KB HTML", "/html/10240"),
    ("100 KB JSON", "/json/102400"),
    ("100 KB low-redundancy JSON", "/words/102400"),
];

#[derive(Debug, Default, serde::Serialize)]
struct Figures {
    rps: Vec<f64>,
    mean_ms: Vec<f64>,
    cpu_per_1k: Vec<f64>,
    bytes_per_response: Option<f64>,
    gzipped_share: Option<f64>,
    errors: u64,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(&ctx.out, "gzip", "gzip: balancer vs nginx (and HAProxy)")?;
    let work = rep.dir.join("run");
    let hosts = (1..=3)
        .map(|i| Host::on([127, 0, 0, 1], &format!("b{i}")))
        .collect::<Result<Vec<_>>>()?;
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &[]).await?;
    let rounds = ctx.pick(3, 1);
    let secs = ctx.secs(4.0, 1.0);
    // (level, body, proxy) -> figures
    let mut figs: BTreeMap<(u32, &str, &str), Figures> = BTreeMap::new();
    let mut skipped = Vec::new();
    for level in [1u32, 6] {
        let kinds: &[Kind] = if level == 1 {
            &[Kind::Ours, Kind::Nginx, Kind::Haproxy]
        } else {
            &[Kind::Ours, Kind::Nginx]
        };
        let dir = work.join(format!("level{level}"));
        let (proxies, skip) = start_proxies(
            kinds,
            &cluster.hosts,
            &dir,
            Opts {
                gzip: Some(level),
                ..Opts::default()
            },
        )
        .await?;
        skipped.extend(skip);
        for round in 1..=rounds {
            for (body, path) in BODIES {
                for p in &proxies {
                    let label = format!("{} L{level} {body} r{round}", p.kind.name());
                    let mut l = Load::closed(&label, p.addr, path, CONNS, secs);
                    l.gzip = true;
                    let pr = p.proc.as_ref();
                    let cpu0 = pr.and_then(|x| x.cpu_seconds());
                    let r = load::run(l).await?;
                    let cpu1 = pr.and_then(|x| x.cpu_seconds());
                    let f = figs.entry((level, body, p.kind.name())).or_default();
                    f.rps.push(r.rps);
                    f.mean_ms.push(r.latency_ms.mean);
                    f.errors += r.errors;
                    if let (Some(a), Some(b)) = (cpu0, cpu1) {
                        f.cpu_per_1k.push((b - a) / r.ok.max(1) as f64 * 1000.0);
                    }
                    f.bytes_per_response = Some(r.body_bytes as f64 / r.ok.max(1) as f64);
                    f.gzipped_share = Some(r.gzipped as f64 / r.ok.max(1) as f64);
                }
            }
        }
    }
    cluster.stop();
    skipped.dedup();

    let med = |k: &(u32, &str, &str), f: fn(&Figures) -> &Vec<f64>| {
        figs.get(k).and_then(|x| median(f(x).clone()))
    };
    let mut rows = Vec::new();
    for (key, f) in &figs {
        let (level, body, proxy) = *key;
        let nginx_bytes = figs
            .get(&(level, body, "nginx"))
            .and_then(|n| n.bytes_per_response);
        rows.push(vec![
            format!("{proxy} level {level}"),
            body.to_string(),
            fmt(med(key, |f| &f.rps), 0),
            med(key, |f| &f.mean_ms).map_or("—".into(), ms),
            fmt(f.bytes_per_response, 0),
            fmt(f.gzipped_share.map(|s| s * 100.0), 0),
            fmt(ratio(f.bytes_per_response, nginx_bytes), 3),
            fmt(med(key, |f| &f.cpu_per_1k), 3),
            f.errors.to_string(),
        ]);
    }
    rep.para(&format!(
        "Three backends; each proxy with one worker thread gzipping compressible responses of at least 1 KiB. \
         Bodies: `/html/10240` and `/json/102400` repeat a short pattern (25:1 and 90:1 at level 6); \
         `/words/102400` is seeded random words in JSON records (3.5:1 at level 6). \
         Closed loop, {CONNS} connections, `Accept-Encoding: gzip`, {:.0} s per run, {rounds} round(s) \
         alternating between proxies; medians shown. HAProxy runs at level 1 only (its \
         `tune.comp.maxlevel`).",
        secs.as_secs_f64()
    ));
    for s in &skipped {
        rep.para(s);
    }
    rep.table(
        &[
            "proxy",
            "body",
            "responses/s",
            "mean ms",
            "bytes/response",
            "% gzipped",
            "size vs nginx",
            "CPU s / 1k responses",
            "errors",
        ],
        &rows,
    );
    let cats: Vec<String> = [1, 6]
        .iter()
        .flat_map(|l| BODIES.iter().map(move |(b, _)| format!("L{l} {b}")))
        .collect();
    let series: Vec<(String, Vec<f64>)> = ["balancer", "nginx", "haproxy"]
        .iter()
        .map(|p| {
            let v = [1, 6]
                .iter()
                .flat_map(|l| BODIES.iter().map(move |(b, _)| (*l, *b)))
                .map(|(l, b)| med(&(l, b, p), |f| &f.rps).unwrap_or(0.0))
                .collect();
            (p.to_string(), v)
        })
        .collect();
    rep.chart(
        "responses-per-second",
        "gzip responses/s",
        bar_chart("gzip responses/s", "responses/s", &cats, &series),
    )?;

    let mut goals = Vec::new();
    for level in [1, 6] {
        for (body, _) in BODIES {
            let ours = (level, body, "balancer");
            let nginx = (level, body, "nginx");
            goals.push(Goal::at_least(
                &format!("L{level} {body}: responses/s ours / nginx"),
                2.0,
                ratio(med(&ours, |f| &f.rps), med(&nginx, |f| &f.rps)),
            ));
            let size = |k| figs.get(k).and_then(|f: &Figures| f.bytes_per_response);
            goals.push(Goal::at_most(
                &format!("L{level} {body}: compressed size ours / nginx"),
                1.0,
                ratio(size(&ours), size(&nginx)),
            ));
            if level == 1 {
                goals.push(Goal::at_least(
                    &format!("L1 {body}: responses/s ours / HAProxy"),
                    1.0,
                    ratio(
                        med(&ours, |f| &f.rps),
                        med(&(1, body, "haproxy"), |f| &f.rps),
                    ),
                ));
            }
        }
    }
    rep.goals(goals);
    let raw: BTreeMap<String, &Figures> = figs
        .iter()
        .map(|((l, b, p), f)| (format!("{p} L{l} {b}"), f))
        .collect();
    rep.data("figures", raw);
    rep.data("skipped", &skipped);
    rep.finish()
}
