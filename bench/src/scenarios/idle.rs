//! `idle-conns`: many idle keep-alive client connections (10,000; 2,000
//! with `--quick`) held open against each proxy; the proxy's resident
//! memory before and after, and so its memory per idle connection.
//!
//! Each connection sends one `GET /` (so it is a real HTTP connection the
//! proxy has parsed a request on) and then stays open, idle.
//!
//! The warm-up runs at the concurrency the connections are then opened
//! with, so that what that concurrency costs once (upstream connections,
//! buffers of the requests in progress together) is in the "before"
//! figure and not spread over the idle connections.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{start_proxies, Ctx};
use crate::cluster::{Host, Hosts};
use crate::load::{self, Load};
use crate::proxies::{Kind, Opts};
use crate::report::{bar_chart, fmt, ratio, Goal, Report};

/// How many connections are opened at once (and warm up the proxy).
const OPENING: usize = 200;

#[derive(Debug, Serialize)]
struct Figures {
    proxy: String,
    connections: usize,
    failed: usize,
    rss_before_mib: f64,
    rss_after_mib: f64,
    peak_rss_mib: f64,
    bytes_per_conn: Option<f64>,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(
        &ctx.out,
        "idle-conns",
        "Idle keep-alive connections: memory per connection",
    )?;
    let work = rep.dir.join("run");
    // 10,000 unless the open-files limit, which we cannot raise, allows
    // fewer: HAProxy needs two descriptors per connection, the others one.
    let wanted = ctx.pick(10_000, 2_000);
    let limit = crate::procs::max_proxy_conns() as usize;
    let hard = crate::procs::nofile_hard_limit()
        .unwrap_or(20_000)
        .min(200_000) as usize;
    let conns = |kind: Kind| {
        let room = if kind == Kind::Haproxy { limit } else { hard };
        wanted.min(room.saturating_sub(200) / 500 * 500)
    };
    let hosts = (1..=3)
        .map(|i| Host::on([127, 0, 0, 1], &format!("b{i}")))
        .collect::<Result<Vec<_>>>()?;
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &[]).await?;
    let mut figs = Vec::new();
    let mut skipped = Vec::new();
    for kind in [Kind::Ours, Kind::Nginx, Kind::Haproxy] {
        // One proxy at a time: the others' memory is not under test.
        let (mut proxies, skip) = start_proxies(
            &[kind],
            &cluster.hosts,
            &work,
            Opts {
                gzip: Some(6),
                ..Opts::default()
            },
        )
        .await?;
        skipped.extend(skip);
        let Some(p) = proxies.pop() else { continue };
        let Some(pr) = p.proc.as_ref() else { continue };
        let name = kind.name();
        let n = conns(kind);
        load::run(Load::closed(
            &format!("{name} warm-up"),
            p.addr,
            "/",
            OPENING,
            Duration::from_millis(500),
        ))
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = pr.rss().unwrap_or(0);
        eprintln!("  [{name}] opening {n} idle connections");
        let gate = Arc::new(tokio::sync::Semaphore::new(OPENING));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let gate = gate.clone();
                let addr = p.addr;
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await;
                    load::open_idle(addr, "/").await
                })
            })
            .collect();
        let mut held = Vec::with_capacity(n);
        let mut failed = 0;
        for t in tasks {
            match t.await? {
                Ok(c) => held.push(c),
                Err(_) => failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = pr.rss().unwrap_or(0);
        let mib = |b: u64| b as f64 / 1048576.0;
        let f = Figures {
            proxy: name.to_string(),
            connections: held.len(),
            failed,
            rss_before_mib: mib(before),
            rss_after_mib: mib(after),
            peak_rss_mib: mib(pr.peak_rss().unwrap_or(0)),
            bytes_per_conn: (!held.is_empty())
                .then(|| after.saturating_sub(before) as f64 / held.len() as f64),
        };
        eprintln!(
            "  [{name}] {} connections held ({failed} failed): RSS {:.1} -> {:.1} MiB",
            held.len(),
            f.rss_before_mib,
            f.rss_after_mib
        );
        figs.push(f);
        drop(held);
        drop(proxies);
        drop(p);
    }
    cluster.stop();

    rep.para(&format!(
        "{wanted} keep-alive connections, each having sent one `GET /`, held open and idle for 1 s against each \
         proxy in turn (one worker each), opened {OPENING} at a time after a warm-up at that concurrency. RSS \
         from `/proc/PID/status` (`VmRSS`) before opening them and after; the difference over the connections \
         held is the memory per idle connection.{}",
        if conns(Kind::Haproxy) < wanted {
            format!(
                " (HAProxy gets {}: this machine's hard limit of {} open files leaves room for {limit} HAProxy \
                 connections, at two descriptors each.)",
                conns(Kind::Haproxy),
                crate::procs::nofile_hard_limit().unwrap_or(0)
            )
        } else {
            String::new()
        }
    ));
    for s in &skipped {
        rep.para(s);
    }
    let rows: Vec<Vec<String>> = figs
        .iter()
        .map(|f| {
            vec![
                f.proxy.clone(),
                f.connections.to_string(),
                f.failed.to_string(),
                format!("{:.1}", f.rss_before_mib),
                format!("{:.1}", f.rss_after_mib),
                format!("{:.1}", f.peak_rss_mib),
                fmt(f.bytes_per_conn, 0),
            ]
        })
        .collect();
    rep.table(
        &[
            "proxy",
            "connections",
            "failed",
            "RSS before MiB",
            "RSS after MiB",
            "peak RSS MiB",
            "bytes / idle conn",
        ],
        &rows,
    );
    let names: Vec<String> = figs.iter().map(|f| f.proxy.clone()).collect();
    let per: Vec<f64> = figs
        .iter()
        .map(|f| f.bytes_per_conn.unwrap_or(0.0) / 1024.0)
        .collect();
    rep.chart(
        "memory-per-connection",
        "memory per idle connection",
        bar_chart(
            "Memory per idle keep-alive connection",
            "KiB",
            &names,
            &[("KiB / connection".into(), per)],
        ),
    )?;
    let per_conn = |p: &str| {
        figs.iter()
            .find(|f| f.proxy == p)
            .and_then(|f| f.bytes_per_conn)
    };
    rep.goals(vec![Goal::at_most(
        "memory per idle connection: ours / nginx",
        1.0,
        ratio(per_conn("balancer"), per_conn("nginx")),
    )]);
    rep.data("figures", &figs);
    rep.data("skipped", &skipped);
    rep.finish()
}
