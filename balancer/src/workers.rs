//! Worker threads: client connections served by N threads, each running its
//! own single-threaded runtime, as nginx's worker processes and HAProxy's
//! threads do.
//!
//! One acceptor takes connections off the listener and hands each to the
//! next worker in turn; from then on the connection, its requests and the
//! backend connections they use stay on that worker's thread. tokio's
//! work-stealing scheduler, by contrast, pays atomics and cross-thread
//! wake-ups on every request (measured on this project's machine: 1.3× the
//! CPU per request of nginx at two threads, against 1.2× at one).
//!
//! Why an acceptor rather than every worker accepting on the shared socket:
//! tokio cannot ask for `EPOLLEXCLUSIVE`, so every worker would wake for
//! every connection and whichever ran first took it (measured: one worker
//! ended up with nine tenths of the connections); and `SO_REUSEPORT` would
//! let a second balancer started by mistake on the same port silently share
//! its traffic instead of failing with "address in use". Handing over a
//! connection costs one channel message, once per connection, not per
//! request. TLS connections are handed over before their handshake, so
//! handshakes spread over the workers too.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::limits::ConnSlot;
use crate::listener::{Kind, Listeners};
use crate::pool::Pool;
use crate::server;
use crate::tls::Terminator;

/// An accepted connection on its way to a worker, counted against the
/// limits all along.
type Handoff = (std::net::TcpStream, SocketAddr, Kind, ConnSlot);

/// Accepted connections a worker may have waiting before the acceptor
/// waits for it (and the kernel's backlog holds the rest).
const HANDOFF_QUEUE: usize = 1024;

/// Serves `listeners` with `workers` worker threads until `shutdown`
/// resolves; then stops accepting and returns once every worker has
/// drained its connections (up to `timeouts.drain`).
///
/// # Errors
///
/// When a worker thread cannot be started.
pub(crate) async fn serve(
    workers: usize,
    listeners: Listeners,
    pool: Arc<Pool>,
    terminator: Option<Arc<Terminator>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut queues = Vec::with_capacity(workers);
    let mut finished = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = mpsc::channel::<Handoff>(HANDOFF_QUEUE);
        let (done, on_done) = tokio::sync::oneshot::channel::<()>();
        let pool = Arc::clone(&pool);
        let terminator = terminator.clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(work(rx, pool, terminator)),
                    Err(e) => tracing::error!("worker {i} cannot start its runtime: {e}"),
                }
                drop(done);
            })?;
        queues.push(tx);
        finished.push(on_done);
    }

    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        tokio::select! {
            (stream, peer, kind, slot) = listeners.accept(&pool.limiter) => {
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, "cannot hand the connection over: {e}");
                        continue;
                    }
                };
                // The next worker in turn that is still running.
                let mut conn = (stream, peer, kind, slot);
                for _ in 0..queues.len() {
                    let queue = &queues[next];
                    next = (next + 1) % queues.len();
                    match queue.send(conn).await {
                        Ok(()) => break,
                        Err(mpsc::error::SendError(back)) => conn = back,
                    }
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listeners);
    // Closing the queues tells the workers to drain.
    drop(queues);
    for worker in finished {
        // Resolves (with an error: the sender is dropped) when the worker
        // has drained and ended.
        let _ = worker.await;
    }
    Ok(())
}

/// One worker: serves the connections it is handed until the acceptor
/// closes its queue, then drains them.
async fn work(
    mut queue: mpsc::Receiver<Handoff>,
    pool: Arc<Pool>,
    terminator: Option<Arc<Terminator>>,
) {
    let (stop, _) = watch::channel(());
    while let Some((stream, peer, kind, slot)) = queue.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                server::spawn(stream, peer, kind, slot, &pool, terminator.as_ref(), &stop)
            }
            Err(e) => tracing::debug!(%peer, "cannot take the connection: {e}"),
        }
    }
    server::drain(&pool, stop).await;
}
