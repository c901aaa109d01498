//! `wrk` as a load generator: one run, and its summary parsed.
//!
//! wrk costs less CPU per request than our driver, so on a shared 2-core
//! machine it leaves more to the proxy under test and reads closer to the
//! proxy's own capacity. Over `https://` it uses the system's OpenSSL, whose
//! protocol, cipher suites and groups [`Run::openssl_conf`] can pin (the
//! `OPENSSL_CONF` file, which libssl reads when wrk initialises it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WrkResult {
    /// Responses received ("N requests in"), whatever their status: the
    /// denominator of CPU per request.
    pub requests: u64,
    /// "Requests/sec".
    pub rps: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// One wrk run: `GET /` on `threads` threads over `conns` keep-alive
/// connections for `secs`.
#[derive(Debug, Clone)]
pub struct Run {
    pub addr: SocketAddr,
    /// `https://` rather than `http://`.
    pub tls: bool,
    pub threads: usize,
    pub conns: usize,
    /// Whole seconds (at least one), as wrk takes them.
    pub secs: Duration,
    /// The `OPENSSL_CONF` file wrk's libssl reads; the system's when `None`.
    pub openssl_conf: Option<PathBuf>,
}

impl Run {
    /// The command line, without the program.
    fn args(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.conns),
            format!("-d{}s", self.secs.as_secs().max(1)),
            format!("{scheme}://{}/", self.addr),
        ]
    }
}

/// `wrk -t<threads> -c<conns> -d<secs>s http://<addr>/`, whole seconds
/// (at least one), as wrk takes them; `label` names it in the progress line.
pub async fn run(
    wrk: &Path,
    label: &str,
    addr: SocketAddr,
    threads: usize,
    conns: usize,
    secs: Duration,
) -> Result<WrkResult> {
    let spec = Run {
        addr,
        tls: false,
        threads,
        conns,
        secs,
        openssl_conf: None,
    };
    run_spec(wrk, label, &spec).await
}

/// Runs wrk as `spec` says and reads its summary.
pub async fn run_spec(wrk: &Path, label: &str, spec: &Run) -> Result<WrkResult> {
    let args = spec.args();
    let mut cmd = Command::new(wrk);
    cmd.args(&args);
    if let Some(conf) = &spec.openssl_conf {
        cmd.env("OPENSSL_CONF", conf);
    }
    eprintln!("  [{label}] wrk {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("cannot run {}", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match parse(&text) {
        Some(r) if out.status.success() => Ok(r),
        _ => bail!(
            "wrk against {} failed ({}): {}{}",
            spec.addr,
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// The figures of wrk's summary, or `None` when a line is missing.
pub fn parse(text: &str) -> Option<WrkResult> {
    let mut requests = None;
    let mut rps = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.split_once(" requests in ").map(|(n, _)| n) {
            requests = n.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                errors += part.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
    }
    Some(WrkResult {
        requests: requests?,
        rps: rps?,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::{parse, Run, WrkResult};

    #[test]
    fn parses_the_summary() {
        let out = "Running 5s test @ http://127.0.0.1:41234/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21ms  150.22us   5.61ms   91.02%
    Req/Sec    52.61k     1.90k   55.51k    78.00%
  261786 requests in 5.00s, 39.94MB read
Requests/sec:  52348.76
Transfer/sec:      7.99MB
";
        assert_eq!(
            parse(out),
            Some(WrkResult {
                requests: 261_786,
                rps: 52_348.76,
                errors: 0
            })
        );
    }

    #[test]
    fn counts_bad_statuses_and_socket_errors() {
        let out = "  1000 requests in 1.00s, 1.00MB read
  Socket errors: connect 2, read 3, write 0, timeout 4
  Non-2xx or 3xx responses: 10
Requests/sec:   1000.00
";
        let r = parse(out).unwrap();
        assert_eq!((r.requests, r.errors), (1000, 19));
    }

    #[test]
    fn https_runs_name_the_scheme_and_whole_seconds() {
        let mut r = Run {
            addr: "127.0.0.1:8443".parse().unwrap(),
            tls: true,
            threads: 2,
            conns: 64,
            secs: std::time::Duration::from_millis(1500),
            openssl_conf: None,
        };
        assert_eq!(r.args(), ["-t2", "-c64", "-d1s", "https://127.0.0.1:8443/"]);
        r.tls = false;
        r.secs = std::time::Duration::from_millis(300);
        assert_eq!(r.args()[2..], ["-d1s", "http://127.0.0.1:8443/"]);
    }

    #[test]
    fn a_missing_summary_is_none() {
        assert_eq!(
            parse("unable to connect to 127.0.0.1:1 Connection refused"),
            None
        );
    }
}
