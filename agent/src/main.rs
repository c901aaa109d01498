//! The `agent` binary: parses flags, sets up logging, binds, and hands over
//! to [`agent::run`] until SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agent::register::{self, Registration, Token};
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
    /// Register this host's backend with the balancer whose admin listener
    /// is at URL (http://IP:port; plain HTTP only), heartbeat it, and
    /// withdraw it on SIGTERM or Ctrl-C, waiting (up to 60 s, serving
    /// /load meanwhile) for the balancer to drain it. Needs --advertise
    /// and --token-file; failures are logged and retried.
    #[arg(
        long,
        value_name = "URL",
        help_heading = "Self-registration",
        requires = "advertise",
        requires = "token_file"
    )]
    register: Option<agent::register::AdminUrl>,
    /// The backend to register: this host's IP and the port its server
    /// listens on, as the balancer should reach it (e.g. 10.0.0.11:8000).
    #[arg(
        long,
        value_name = "ADDR",
        help_heading = "Self-registration",
        requires = "register",
        value_parser = agent::register::reachable_addr,
    )]
    advertise: Option<SocketAddr>,
    /// Where the balancer should poll this agent; default: --listen, or,
    /// when that is 0.0.0.0/[::], the --advertise IP with the --listen port.
    #[arg(
        long,
        value_name = "ADDR",
        help_heading = "Self-registration",
        requires = "register",
        value_parser = agent::register::reachable_addr,
    )]
    advertise_agent: Option<SocketAddr>,
    /// The balancer pool ([[pool]] name) to join; default: the balancer's
    /// default pool.
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Self-registration",
        requires = "register",
        value_parser = clap::builder::NonEmptyStringValueParser::new(),
    )]
    pool: Option<String>,
    /// The backend's weight, 1..=1000 as in lb.toml; default: the
    /// balancer's (1).
    #[arg(
        long,
        value_name = "N",
        help_heading = "Self-registration",
        requires = "register",
        value_parser = clap::value_parser!(u32).range(1..=1000),
    )]
    weight: Option<u32>,
    /// The balancer's admin bearer token (the same file as its [admin]
    /// token_file), read once at start, trailing newline trimmed.
    #[arg(
        long,
        value_name = "PATH",
        help_heading = "Self-registration",
        requires = "register"
    )]
    token_file: Option<PathBuf>,
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

    let token = match args.token_file.as_deref().map(Token::read).transpose() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("agent: --token-file {e}");
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
        let shutdown = shutdown_signal();
        let served = match (args.register, args.advertise, token) {
            (Some(admin), Some(addr), Some(token)) => {
                let listen = listener.local_addr().unwrap_or(args.listen);
                let agent = args
                    .advertise_agent
                    .unwrap_or_else(|| register::agent_addr(listen, addr));
                let pool = args.pool.as_deref();
                let registration = Registration::new(admin, addr, agent, args.weight, pool, token);
                // Serve /load until the registration is withdrawn: the
                // balancer polls it while it drains the backend.
                agent::run_with(listener, options, registration.run(shutdown)).await
            }
            _ => agent::run_with(listener, options, shutdown).await,
        };
        match served {
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
