//! The benchmark scenarios, one module each, and `all`, which runs them in
//! turn and writes a summary of every goal.

pub mod failover;
pub mod gzip;
pub mod idle;
pub mod stressed;
pub mod throughput;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::proxies::{self, Kind, Proxy};
use crate::report::{md_table, Goal};

/// What every scenario gets from the command line.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Reports go to `<out>/<scenario>/`.
    pub out: PathBuf,
    /// Shorter runs and fewer rounds: a smoke run in seconds.
    pub quick: bool,
}

impl Ctx {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// `secs` seconds normally, `quick_secs` with `--quick`.
    pub fn secs(&self, secs: f64, quick_secs: f64) -> Duration {
        Duration::from_secs_f64(self.pick(secs, quick_secs))
    }
}

/// The scenarios `all` runs, in order.
pub const ALL: [&str; 6] = [
    "failover",
    "throughput",
    "tls",
    "gzip",
    "idle-conns",
    "stressed-host",
];

/// Runs one scenario by name.
pub async fn run(name: &str, ctx: &Ctx) -> Result<Vec<Goal>> {
    eprintln!("\n=== {name}{}", if ctx.quick { " (quick)" } else { "" });
    match name {
        "stressed-host" => stressed::run(ctx).await,
        "throughput" => throughput::run(ctx).await,
        "tls" => tls::run(ctx).await,
        "gzip" => gzip::run(ctx).await,
        "failover" => failover::run(ctx).await,
        "idle-conns" => idle::run(ctx).await,
        _ => anyhow::bail!("unknown scenario {name:?}"),
    }
}

/// Runs every scenario (one failing does not stop the others) and writes
/// `<out>/summary.md` with all the goals.
pub async fn all(ctx: &Ctx) -> Result<()> {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for name in ALL {
        match run(name, ctx).await {
            Ok(goals) => rows.extend(goals.iter().map(|g| {
                let mut r = vec![name.to_string()];
                r.extend(g.row());
                r
            })),
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                failed.push(format!("- {name}: failed: {e:#}"));
            }
        }
    }
    let mut md = format!(
        "# Benchmark summary{}\n\nEach scenario's report is in its own directory beside this file.\n\n",
        if ctx.quick { " (quick run)" } else { "" }
    );
    md.push_str(&md_table(
        &["scenario", "goal", "target", "measured", ""],
        &rows,
    ));
    if !failed.is_empty() {
        md.push('\n');
        md.push_str(&failed.join("\n"));
        md.push('\n');
    }
    std::fs::create_dir_all(&ctx.out)?;
    let path = ctx.out.join("summary.md");
    std::fs::write(&path, &md)?;
    println!("{md}\n(summary: {})", path.display());
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} scenario(s) failed", failed.len())
    }
}

/// Starts each of `kinds` in front of `hosts`, printing a "skipped" line
/// for those not installed; returns the started ones and the skip notes.
pub async fn start_proxies(
    kinds: &[Kind],
    hosts: &[crate::cluster::Host],
    dir: &std::path::Path,
    opts: proxies::Opts,
) -> Result<(Vec<Proxy>, Vec<String>)> {
    let mut started = Vec::new();
    let mut skipped = Vec::new();
    for &kind in kinds {
        match proxies::start(kind, hosts, dir, opts.clone()).await? {
            Ok(p) => started.push(p),
            Err(why) => {
                eprintln!("  {why}");
                skipped.push(why);
            }
        }
    }
    Ok((started, skipped))
}

/// Milliseconds with a sensible precision.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
