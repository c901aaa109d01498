//! `bench`: brings up a local demo cluster and runs the benchmark
//! scenarios that compare this balancer with round robin, nginx and
//! HAProxy, side by side on this machine.
//!
//! Module map:
//!
//! - [`demo`]: `bench demo`, the `lb.toml` cluster in the foreground.
//! - [`procs`]: child processes: spawn, wait, measure (`/proc`), stop.
//! - [`cluster`]: simulated hosts (backend + agent) and generated `lb.toml`s.
//! - [`cgroup`]: CPU-quota cgroups (v1 or v2) for simulated hosts.
//! - [`proxies`]: nginx and HAProxy configurations, and how to start each.
//! - [`certs`]: a self-signed certificate for the TLS listeners.
//! - [`load`]: the load driver (open and closed loop, HDR histograms).
//! - [`handshake`]: the TLS handshake driver (full handshakes, one request
//!   each) and the TLS settings of every client.
//! - [`wrk`]: wrk as a second load generator.
//! - [`report`]: Markdown tables, SVG charts and raw JSON per scenario.
//! - [`scenarios`]: `stressed-host`, `throughput`, `tls`, `gzip`,
//!   `failover`, `idle-conns`, and `all`.

#![forbid(unsafe_code)]

mod certs;
mod cgroup;
mod cluster;
mod demo;
mod handshake;
mod load;
mod procs;
mod proxies;
mod report;
mod scenarios;
mod wrk;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

/// Brings up a local demo cluster and runs benchmark scenarios.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the lb.toml cluster (backends, agents, balancer) in the
    /// foreground and print the URLs to try; Ctrl-C stops everything.
    Demo {
        /// The balancer configuration whose backends to start.
        #[arg(short, long, value_name = "PATH", default_value = "lb.toml")]
        config: PathBuf,
        /// Where the backends' and agents' logs go (under `demo/`).
        #[arg(long, value_name = "DIR", default_value = "bench-results")]
        out: PathBuf,
    },
    /// Hosts in CPU cgroups: every strategy, open and closed loop, with no
    /// host busy, mixed work, one host busy, three balancers, and unequal
    /// hosts; issue 7's goals (root).
    StressedHost(Opts),
    /// Requests/s, latency, CPU per request and peak RSS: our balancer,
    /// nginx, HAProxy, and straight to a backend.
    Throughput(Opts),
    /// TLS: requests/s over TLS with keep-alive and full handshakes/s, with
    /// CPU per request and per handshake: ours against nginx and HAProxy.
    Tls(Opts),
    /// gzip of 10 KB HTML and 100 KB JSON at levels 1 and 6: ours against
    /// nginx (and HAProxy at level 1).
    Gzip(Opts),
    /// A backend killed and restarted under steady load: failed requests,
    /// time to route around it and to bring it back.
    Failover(Opts),
    /// 10,000 idle keep-alive connections: memory per connection, ours
    /// against nginx and HAProxy.
    IdleConns(Opts),
    /// Every scenario in turn, then a summary of all goals.
    All(Opts),
}

/// Options shared by the scenarios.
#[derive(Debug, clap::Args)]
struct Opts {
    /// Short runs, one round: the whole scenario in seconds.
    #[arg(long)]
    quick: bool,
    /// Reports go to DIR/<scenario>/ (report.md, report.json, *.svg).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,
}

impl Opts {
    fn ctx(self) -> scenarios::Ctx {
        scenarios::Ctx {
            out: self.out,
            quick: self.quick,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Watch the signals before starting anything, so that a Ctrl-C
        // during start-up also stops what was started.
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("bench: cannot watch SIGINT/SIGTERM");
            return ExitCode::FAILURE;
        };
        let signalled = async {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        };
        let is_demo = matches!(cli.command, Cmd::Demo { .. });
        // Dropping the command's future stops every process it started.
        let result = tokio::select! {
            r = run(cli.command) => r,
            sig = signalled => {
                eprintln!("bench: {sig} received, stopping");
                if is_demo { Ok(()) } else { Err(anyhow::anyhow!("interrupted by {sig}")) }
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Demo { config, out } => demo::run(&config, &out).await,
        Cmd::StressedHost(o) => scenarios::run("stressed-host", &o.ctx()).await.map(drop),
        Cmd::Throughput(o) => scenarios::run("throughput", &o.ctx()).await.map(drop),
        Cmd::Tls(o) => scenarios::run("tls", &o.ctx()).await.map(drop),
        Cmd::Gzip(o) => scenarios::run("gzip", &o.ctx()).await.map(drop),
        Cmd::Failover(o) => scenarios::run("failover", &o.ctx()).await.map(drop),
        Cmd::IdleConns(o) => scenarios::run("idle-conns", &o.ctx()).await.map(drop),
        Cmd::All(o) => scenarios::all(&o.ctx()).await,
    }
}

/// Logs (ours and our children's failures) go to stderr; level from
/// `RUST_LOG`, default `info`.
fn tracing_init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
