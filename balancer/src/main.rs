//! `balancer`: the command line around [`balancer::Balancer`].

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use balancer::{Balancer, Config, Listeners};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// An HTTP load balancer that routes on real host load.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file.
    #[arg(short, long, value_name = "PATH", default_value = "lb.toml")]
    config: PathBuf,
    /// Validate the configuration, print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Worker threads serving client connections (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<std::num::NonZeroUsize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("balancer: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        // Written, not `println!`: a reader that stops early (`| head`)
        // closes the pipe, which is no reason to panic.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{}: configuration ok\n{}",
            args.config.display(),
            config.summary()
        );
        return ExitCode::SUCCESS;
    }

    // Client connections are served by `workers` threads, each with its own
    // single-threaded runtime (see `Balancer::serve_workers`); this thread
    // runs the probes, agent polls, the admin listener and the signals.
    let workers = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("balancer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args.config, config, workers))
}

async fn serve(path: PathBuf, config: Config, workers: usize) -> ExitCode {
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| eprintln!("balancer: cannot listen on {addr}: {e}"))
    };
    let Ok(listener) = bind(config.listen).await else {
        return ExitCode::FAILURE;
    };
    let Ok(admin) = bind(config.admin.listen).await else {
        return ExitCode::FAILURE;
    };
    let tls = match &config.tls {
        Some(t) => match bind(t.listen).await {
            Ok(l) => Some(l),
            Err(()) => return ExitCode::FAILURE,
        },
        None => None,
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("balancer: cannot install signal handlers");
        return ExitCode::FAILURE;
    };

    tracing::info!(
        "listening on {} (admin on {}), {} backend(s), strategy {}, {workers} worker thread(s)",
        config.listen,
        config.admin.listen,
        config.backends.len(),
        config.balance.strategy.name()
    );
    if let Some(t) = &config.tls {
        tracing::info!("TLS on {} (HTTP/2 and HTTP/1.1)", t.listen);
    }
    let balancer = Balancer::start(config);
    let listeners = Listeners {
        plain: listener,
        tls,
    };
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    let serving = balancer.serve_workers(workers, listeners, admin, shutdown);
    tokio::pin!(serving);
    loop {
        tokio::select! {
            served = &mut serving => {
                // The last requests' access log lines are written before exit.
                balancer.pool().access_log.close();
                return match served {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("balancer: cannot start the workers: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            _ = hup.recv() => match Config::load(&path) {
                Ok(config) => balancer.reload(config),
                Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
            },
        }
    }
}
