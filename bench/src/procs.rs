//! The child processes a scenario starts: finding the binaries, spawning
//! them with their logs in files, waiting until they answer, reading their
//! CPU time and memory from `/proc`, and stopping them.
//!
//! CPU time and memory are those of the whole process tree: a child and
//! every live process descended from it (nginx's master and its workers),
//! plus the CPU time of descendants that exited and were reaped.
//!
//! Every [`Proc`] stops its process when dropped (SIGTERM, then SIGKILL
//! after a grace period), so an error, a panic or a Ctrl-C that drops a
//! scenario's future leaves nothing running. [`stop_all`] stops a group in
//! parallel rather than one grace period after another.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The directory holding `balancer`, `agent` and `backend`: the one the
/// running `bench` executable sits in (`target/release` or `target/debug`).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no parent directory")?;
    // Test harnesses run from target/<profile>/deps; the binaries sit one up.
    if dir.ends_with("deps") {
        if let Some(up) = dir.parent() {
            return Ok(up.to_path_buf());
        }
    }
    Ok(dir.to_path_buf())
}

/// The path of one of the project's binaries, or an error that names it
/// and the command that builds it.
pub fn project_bin(name: &str) -> Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let profile = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    bail!(
        "cannot find the `{name}` binary in {} (build it with `cargo build{profile} -p {name}`, \
         or everything with `cargo build{profile}`)",
        dir.display()
    )
}

/// Finds a system program (nginx, haproxy, wrk) on `PATH` or in the sbin
/// directories, which a non-root `PATH` often lacks.
pub fn system_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Fails with a message naming `addr` when something already listens there.
pub fn ensure_free(addr: SocketAddr, what: &str) -> Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => bail!("{what} address {addr} is busy ({e}): stop whatever listens there first"),
    }
}

/// A free loopback port on `ip`, found by binding port 0. Another process
/// could take it before our child binds it; the child then fails loudly.
pub fn free_addr(ip: [u8; 4]) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// One running child process, stopped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Shown in messages and used for the log file's name.
    pub name: String,
    child: Child,
    /// Where its stdout and stderr go, for error messages.
    log: Option<PathBuf>,
    stopped: bool,
}

impl Proc {
    /// Starts `cmd` with stdin closed and its output appended to `log`
    /// (or inherited when `log` is `None`).
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Result<Proc> {
        cmd.stdin(Stdio::null());
        if let Some(log) = log {
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file =
                File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.map(Path::to_path_buf),
            stopped: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts TCP connections; fails at once if the
    /// process exits first (with the end of its log) or after `timeout`.
    pub async fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                bail!(
                    "{} exited ({status}) before listening on {addr}{}",
                    self.name,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr} within {timeout:?}{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `None` while running; the exit status once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, formatted for an error message.
    fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        format!("; its log ({}) ends with:\n  {tail}", log.display())
    }

    /// CPU seconds used so far (user + system) by the process tree.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.cpu_times().map(CpuTimes::total)
    }

    /// CPU time used so far by the process tree, user and system apart.
    pub fn cpu_times(&self) -> Option<CpuTimes> {
        tree_cpu_times(self.pid())
    }

    /// Resident memory now, in bytes (`VmRSS`), summed over the tree.
    pub fn rss(&self) -> Option<u64> {
        tree_status_kb(self.pid(), "VmRSS:").map(|kb| kb * 1024)
    }

    /// Peak resident memory so far, in bytes (`VmHWM`), summed over the
    /// tree: for several processes an upper bound, since their peaks need
    /// not coincide and pages shared since `fork` count in each.
    pub fn peak_rss(&self) -> Option<u64> {
        tree_status_kb(self.pid(), "VmHWM:").map(|kb| kb * 1024)
    }

    /// Kills it at once (SIGKILL) and reaps it: a crash, for failover.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = true;
    }

    /// Sends SIGTERM (without waiting).
    fn terminate(&mut self) {
        if self.stopped || self.exited().is_some() {
            return;
        }
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = self.child.kill();
        }
    }

    /// Waits for the exit until `deadline`, then SIGKILLs and reaps.
    fn reap(&mut self, deadline: Instant) {
        if self.stopped {
            return;
        }
        while Instant::now() < deadline {
            if self.exited().is_some() {
                self.stopped = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_now();
    }

    /// SIGTERM, then SIGKILL after the grace period.
    pub fn stop(&mut self) {
        self.terminate();
        self.reap(Instant::now() + GRACE);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops every process in `procs` in parallel: SIGTERM to all, then one
/// shared grace period, then SIGKILL to the stragglers.
pub fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        p.terminate();
    }
    let deadline = Instant::now() + GRACE;
    for p in procs.iter_mut() {
        p.reap(deadline);
    }
}

/// Processes stopped together, in parallel, when the group is dropped.
#[derive(Debug, Default)]
pub struct Group(pub Vec<Proc>);

impl Group {
    /// Adds `p` and returns its index.
    pub fn push(&mut self, p: Proc) -> usize {
        self.0.push(p);
        self.0.len() - 1
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        stop_all(&mut self.0);
    }
}

/// CPU time in seconds, user and system apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    /// User plus system.
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// Both parts multiplied by `k` (say, per 100,000 requests).
    pub fn scale(self, k: f64) -> CpuTimes {
        CpuTimes {
            user: self.user * k,
            system: self.system * k,
        }
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + o.user,
            system: self.system + o.system,
        }
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - o.user,
            system: self.system - o.system,
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name, which may hold
/// spaces; `fields[0]` is the state, field 3 of stat(5).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // The state is a letter (parsed as 0): kept so that `fields[i]` is
    // field `i + 3` of stat(5).
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU time of one process (all its threads), plus that of its children
/// that exited and were waited for (`cutime`, `cstime`), in clock ticks
/// assumed 100/s, as on every mainstream Linux configuration.
fn own_cpu_times(pid: u32) -> Option<CpuTimes> {
    let f = stat_fields(pid)?;
    // Fields 14-17 of stat(5): utime, stime, cutime, cstime.
    let tick = |i: usize| f.get(i).map(|&t| t as f64 / 100.0);
    Some(CpuTimes {
        user: tick(11)? + tick(13)?,
        system: tick(12)? + tick(14)?,
    })
}

/// `pid` and every live process descended from it, parents first, found
/// by one pass over `/proc/*/stat` (the parent is field 4). Processes that
/// exit during the pass are left out.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(child).and_then(|f| f.get(1).copied()) {
                children.entry(ppid as u32).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(c) = children.get(&tree[i]) {
            tree.extend(c);
        }
        i += 1;
    }
    tree
}

/// CPU time of `pid`'s process tree; `None` when `pid` itself is gone.
fn tree_cpu_times(pid: u32) -> Option<CpuTimes> {
    let own = own_cpu_times(pid)?;
    let rest = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(own_cpu_times)
        .fold(CpuTimes::default(), |a, b| a + b);
    Some(own + rest)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// A `/proc/PID/status` figure summed over `pid`'s process tree; `None`
/// when `pid` itself is gone.
fn tree_status_kb(pid: u32, key: &str) -> Option<u64> {
    let own = status_kb(pid, key)?;
    let rest: u64 = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(|p| status_kb(p, key))
        .sum();
    Some(own + rest)
}

/// A command for one of the project's binaries, logging at `warn` so that
/// per-request logs do not cost CPU during measurements.
pub fn project_cmd(name: &str) -> Result<Command> {
    let mut cmd = Command::new(project_bin(name)?);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    Ok(cmd)
}

/// This process's hard limit on open files (`/proc/self/limits`), which
/// children inherit and, without `CAP_SYS_RESOURCE`, cannot raise.
pub fn nofile_hard_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let hard = line.split_whitespace().nth(4)?;
    if hard == "unlimited" {
        return Some(u64::MAX);
    }
    hard.parse().ok()
}

/// The most client connections a proxy that may need two descriptors per
/// connection (HAProxy's `maxconn` rule) can be given under that limit.
pub fn max_proxy_conns() -> u64 {
    let hard = nofile_hard_limit().unwrap_or(20_000).min(200_000);
    (hard / 2).saturating_sub(300).max(100)
}
