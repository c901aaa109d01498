//! The access log's writer: a bounded channel and a thread that formats
//! and writes what comes through it, buffered, flushed when the channel is
//! empty and at least every [`FLUSH_EVERY`] (so `tail -f` keeps up).
//! Senders never wait: a full channel drops the line and counts it.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::format::write_line;
use super::{Entry, DROPPED};
use crate::config::{Access, Format, Log};

/// The longest a written line waits in the buffer while lines keep coming.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file.
    #[error("cannot open {} for appending: {source}", .path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The writer thread.
    #[error("cannot start the access log's writer thread: {0}")]
    Thread(io::Error),
}

/// The sending end of one writer thread; the thread writes out what it was
/// sent and ends once this is dropped.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Entry>,
    /// Disconnected when the writer thread has written everything and
    /// ended (taken by [`Sink::close`]).
    done: Mutex<Option<Receiver<()>>>,
}

impl Sink {
    /// The writer `log` asks for (`None`: the log is off), with a channel
    /// of `capacity` lines.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or the thread cannot start.
    pub fn open(log: &Log, capacity: usize) -> Result<Option<Sink>, OpenError> {
        let out: Box<dyn Write + Send> = match &log.access {
            Access::Off => return Ok(None),
            Access::Stdout => Box::new(io::stdout()),
            Access::File(path) => Box::new(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(|source| OpenError::File {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        Sink::to_writer(out, log.format, capacity).map(Some)
    }

    /// A writer thread writing lines in `format` to `out`, with a channel
    /// of `capacity` lines (tests give their own writer and a small one).
    ///
    /// # Errors
    ///
    /// When the thread cannot start.
    pub fn to_writer(
        out: Box<dyn Write + Send>,
        format: Format,
        capacity: usize,
    ) -> Result<Sink, OpenError> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let (ended, done) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                run(&rx, BufWriter::with_capacity(64 * 1024, out), format);
                drop(ended);
            })
            .map_err(OpenError::Thread)?;
        Ok(Sink {
            tx,
            done: Mutex::new(Some(done)),
        })
    }

    /// Lets go of this sink and waits, up to `limit`, for its writer to
    /// write out every line it was given (once requests still holding the
    /// sink are done too): before the process exits.
    pub fn close(self: Arc<Sink>, limit: Duration) {
        let done = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(self);
        if let Some(done) = done {
            let _ = done.recv_timeout(limit);
        }
    }

    /// Hands `entry` to the writer without waiting; `false` (and counted
    /// in [`DROPPED`]) when the channel is full.
    pub fn send(&self, entry: Entry) -> bool {
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

/// The writer thread: until every sender is gone.
fn run(rx: &Receiver<Entry>, mut out: BufWriter<Box<dyn Write + Send>>, format: Format) {
    let mut line = Vec::with_capacity(512);
    let mut flushed = Instant::now();
    let mut failing = false;
    loop {
        let entry = match rx.try_recv() {
            Ok(entry) => entry,
            Err(TryRecvError::Empty) => {
                // Idle: what is written becomes visible now.
                note(out.flush(), &mut failing);
                flushed = Instant::now();
                match rx.recv() {
                    Ok(entry) => entry,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        line.clear();
        write_line(&entry, format, &mut line);
        note(out.write_all(&line), &mut failing);
        if flushed.elapsed() >= FLUSH_EVERY {
            note(out.flush(), &mut failing);
            flushed = Instant::now();
        }
    }
    note(out.flush(), &mut failing);
}

/// Logs the first of a run of write errors (a full disk must not flood
/// the log), and when writing works again.
fn note(result: io::Result<()>, failing: &mut bool) {
    match result {
        Err(e) if !*failing => {
            *failing = true;
            tracing::error!("access log: cannot write: {e}; lines are lost until it can");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("access log: writing again");
        }
        _ => {}
    }
}
