//! `bench demo`: the `lb.toml` cluster on this machine. A backend and an
//! agent per configured backend, then the balancer in the foreground, the
//! URLs to try, and everything stopped on Ctrl-C or SIGTERM.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::cluster::START_TIMEOUT;
use crate::procs::{ensure_free, project_bin, Group, Proc};

/// Runs the demo until the balancer exits on its own (an error). The
/// caller drops this future on Ctrl-C or SIGTERM: every process it started
/// is then stopped (by the `Drop` of [`Group`]).
pub async fn run(config_path: &Path, out: &Path) -> Result<()> {
    let config = balancer::Config::load(config_path).map_err(|e| anyhow!("{e}"))?;
    // Fail before starting anything when a port is taken.
    let agents: BTreeSet<SocketAddr> = config.backends.iter().map(|b| b.agent).collect();
    for b in &config.backends {
        ensure_free(b.addr, "backend")?;
    }
    for a in &agents {
        ensure_free(*a, "agent")?;
    }
    ensure_free(config.listen, "balancer")?;
    ensure_free(config.admin.listen, "admin")?;
    let (backend, agent, balancer) = (
        project_bin("backend")?,
        project_bin("agent")?,
        project_bin("balancer")?,
    );

    let logs = out.join("demo");
    std::fs::create_dir_all(&logs)?;
    let mut procs = Group::default();
    let mut waits = Vec::new();
    for (i, b) in config.backends.iter().enumerate() {
        let id = format!("host-{}", i + 1);
        let mut cmd = Command::new(&backend);
        cmd.args(["--listen", &b.addr.to_string(), "--id", &id]);
        let log = logs.join(format!("{id}-backend.log"));
        let i = procs.push(Proc::spawn(
            &format!("backend {id} ({})", b.addr),
            cmd,
            Some(&log),
        )?);
        waits.push((i, b.addr));
    }
    for (i, a) in agents.iter().enumerate() {
        let mut cmd = Command::new(&agent);
        cmd.args(["--listen", &a.to_string()]);
        // The name of the (first) backend it reports for, as its
        // `X-Backend` says, so the status page shows `host-1` beside it.
        if let Some(n) = config.backends.iter().position(|b| b.agent == *a) {
            cmd.args(["--hostname", &format!("host-{}", n + 1)]);
        }
        let log = logs.join(format!("agent-{}.log", i + 1));
        let i = procs.push(Proc::spawn(&format!("agent {a}"), cmd, Some(&log))?);
        waits.push((i, *a));
    }
    for (i, addr) in waits {
        procs.0[i].wait_listening(addr, START_TIMEOUT).await?;
    }
    eprintln!(
        "bench demo: {} backend(s) and {} agent(s) up; their logs are in {}",
        config.backends.len(),
        agents.len(),
        logs.display()
    );

    let mut cmd = Command::new(&balancer);
    cmd.arg("-c").arg(config_path);
    let lb = procs.push(Proc::spawn("balancer", cmd, None)?);
    procs.0[lb]
        .wait_listening(config.listen, START_TIMEOUT)
        .await?;
    procs.0[lb]
        .wait_listening(config.admin.listen, START_TIMEOUT)
        .await?;
    print_urls(&config);

    let mut reported = vec![false; procs.0.len()];
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(status) = procs.0[lb].exited() {
            bail!("the balancer exited ({status})");
        }
        for (p, seen) in procs.0.iter_mut().zip(reported.iter_mut()) {
            if !*seen {
                if let Some(status) = p.exited() {
                    eprintln!(
                        "bench demo: {} exited ({status}); the balancer routes around it",
                        p.name
                    );
                    *seen = true;
                }
            }
        }
    }
}

fn print_urls(config: &balancer::Config) {
    let lb = config.listen;
    let admin = config.admin.listen;
    println!();
    println!(
        "The demo cluster is up: balancer on http://{lb}/ ({} strategy)",
        config.balance.strategy.name()
    );
    println!();
    println!("  status page    http://{admin}/status");
    println!("  status JSON    http://{admin}/status.json");
    println!("  metrics        http://{admin}/metrics");
    println!();
    println!("Try:");
    println!("  curl -i http://{lb}/                 # X-Backend names the host that answered");
    println!("  curl -i 'http://{lb}/work?ms=50'     # 50 ms of CPU work on the chosen host");
    println!("  curl -s --compressed -D- http://{lb}/text/20000 -o /dev/null   # gzip");
    println!("  curl -s http://{admin}/status.json");
    println!();
    println!("Press Ctrl-C to stop everything.");
}
