//! The `agent` binary: parses flags, sets up logging, binds, and hands over
//! to [`agent::run`] until SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Reports this host's (or its cgroup's) CPU and memory load as JSON on
/// `GET /load`, for the balancer's least-loaded strategy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve `GET /load` on. The default, 0.0.0.0:9100, is every
    /// interface: only the balancer's hosts should reach this port (a
    /// private network, a firewall rule or a security group), and with
    /// --key-file only they can read or fake a report.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9100")]
    listen: SocketAddr,
    /// The key shared with the balancer (its `[agent] key_file`), read once
    /// at start: at least 16 bytes, trailing newline trimmed. With it,
    /// requests without valid credentials get 401 and every report is
    /// authenticated (HMAC-SHA256 over the balancer's nonce and the body);
    /// the key itself never crosses the wire.
    /// Make one with: head -c 32 /dev/urandom | base64 > /etc/balancer/agent.key
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The host name to report beside the load (shown on the balancer's
    /// status page); default: this machine's.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let key = match args.key_file.as_deref().map(agent::Key::read).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("agent: --key-file {e}");
            return ExitCode::from(2);
        }
    };

    // One thread is plenty for a handful of polls a second, and keeps the
    // agent's own footprint off the load it measures.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("agent: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let options = agent::Options {
            key,
            hostname: args.hostname,
        };
        match agent::run_with(listener, options, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when the future is first polled: the agent
/// logs that it is serving before it polls this, and a SIGTERM sent right
/// after that line must stop it rather than kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot watch SIGTERM/SIGINT ({e}); only Ctrl-C stops the agent");
                ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        ctrl_c().await;
        tracing::info!("signal received");
    }
}

/// Completes on Ctrl-C; never, if it cannot be watched (rather than
/// shutting down at once).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
