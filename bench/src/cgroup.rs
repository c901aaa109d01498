//! CPU cgroups for simulated hosts: one per host with a CPU quota, v2
//! (`cpu.max`) or v1 (`cpu.cfs_quota_us`, with a `cpuacct` group of the
//! same name so the agent can measure usage), whichever the machine has.
//!
//! Processes join their host's group before they run their first
//! instruction: [`HostCgroup::wrap`] starts them through `sh`, which writes
//! its own PID into `cgroup.procs` and then `exec`s the real program (no
//! `unsafe` `pre_exec` needed). Dropping a [`HostCgroup`] kills whatever is
//! still inside and removes the directories.
//!
//! A group's directory is `<name>.<bench PID>`, so two `bench` runs at once
//! never share (or kill) each other's hosts. Groups left by a `bench` that
//! no longer runs are removed when empty; one still holding processes is
//! named in a warning and left alone: those processes are not ours to stop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// The cgroup layout found on this machine.
#[derive(Debug, Clone)]
enum Layout {
    /// Unified hierarchy: groups go under `parent`.
    V2 { parent: PathBuf },
    /// Separate `cpu` and `cpuacct` parents (the same directory when both
    /// controllers share a mount).
    V1 { cpu: PathBuf, cpuacct: PathBuf },
}

/// One simulated host's CPU cgroup(s).
#[derive(Debug)]
pub struct HostCgroup {
    /// The directories created: one for v2, one or two for v1.
    dirs: Vec<PathBuf>,
    /// `v1` or `v2`, for the report.
    pub version: &'static str,
}

impl HostCgroup {
    /// Creates this process's group `name` (or reuses it, if it was not
    /// removed) with a quota of `quota_us` per `period_us`. Fails with the reason when the
    /// machine has no usable CPU controller or we may not write to it.
    pub fn create(name: &str, quota_us: u64, period_us: u64) -> Result<HostCgroup> {
        let layout = detect()?;
        let name = format!("{name}.{}", std::process::id());
        let dirs: Vec<PathBuf> = parents(&layout).iter().map(|p| p.join(&name)).collect();
        let version = match layout {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
        };
        for d in &dirs {
            if !d.is_dir() {
                std::fs::create_dir(d)
                    .with_context(|| format!("cannot create cgroup {}", d.display()))?;
            }
        }
        let group = HostCgroup { dirs, version };
        group.kill_members();
        let cpu = &group.dirs[0];
        match layout {
            Layout::V2 { .. } => write(&cpu.join("cpu.max"), &format!("{quota_us} {period_us}"))?,
            Layout::V1 { .. } => {
                // Lower the quota first: the period must stay compatible.
                write(&cpu.join("cpu.cfs_quota_us"), "-1")?;
                write(&cpu.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            }
        }
        Ok(group)
    }

    /// `cmd`, started so that its process joins this group before it runs.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut script = String::new();
        for d in &self.dirs {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", d.display()));
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut out = Command::new("sh");
        out.arg("-c")
            .arg(script)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => out.env(k, v),
                None => out.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            out.current_dir(dir);
        }
        out
    }

    fn kill_members(&self) {
        for d in &self.dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        self.kill_members();
        for d in &self.dirs {
            // A killed process leaves its group a moment after it dies.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

/// Finds a writable CPU controller: v2 when the unified hierarchy has
/// `cpu` available, else v1's `cpu` and `cpuacct` mounts. Groups are made
/// inside this process's own group of each hierarchy.
fn detect() -> Result<Layout> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |pred: &dyn Fn(&str) -> bool| -> String {
        own.lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                pred(ctrl).then(|| path.trim_start_matches('/').to_string())
            })
            .next()
            .unwrap_or_default()
    };
    let mut v1_cpu = None;
    let mut v1_acct = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(fstype), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let dir = PathBuf::from(dir);
        if *fstype == "cgroup2" {
            let controllers =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                let parent = dir.join(own_path(&|c| c.is_empty()));
                // Let children of `parent` use the cpu controller.
                write(&parent.join("cgroup.subtree_control"), "+cpu").map_err(|e| {
                    anyhow!(
                        "{e:#} (a v2 group holding processes cannot delegate the cpu controller)"
                    )
                })?;
                return Ok(Layout::V2 { parent });
            }
        } else if *fstype == "cgroup" {
            let opts: Vec<&str> = opts.split(',').collect();
            if opts.contains(&"cpu") {
                v1_cpu = Some(dir.join(own_path(&|c| c.split(',').any(|x| x == "cpu"))));
            }
            if opts.contains(&"cpuacct") {
                v1_acct = Some(dir.join(own_path(&|c| c.split(',').any(|x| x == "cpuacct"))));
            }
        }
    }
    match (v1_cpu, v1_acct) {
        (Some(cpu), Some(cpuacct)) => Ok(Layout::V1 { cpu, cpuacct }),
        _ => bail!(
            "no cgroup CPU controller is mounted (neither v2 with `cpu` nor v1 `cpu` + `cpuacct`)"
        ),
    }
}

/// The directories a group is made in: one for v2, one or two for v1.
fn parents(layout: &Layout) -> Vec<PathBuf> {
    match layout {
        Layout::V2 { parent } => vec![parent.clone()],
        Layout::V1 { cpu, cpuacct } if cpu == cpuacct => vec![cpu.clone()],
        Layout::V1 { cpu, cpuacct } => vec![cpu.clone(), cpuacct.clone()],
    }
}

/// Other `bench` processes that hold host groups right now (their runs
/// compete with ours for the CPU), after removing the empty groups of
/// runs that ended without cleaning up. Warns about non-empty leftovers.
pub fn others() -> Vec<u32> {
    let Ok(layout) = detect() else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut live = Vec::new();
    for parent in parents(&layout) {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("bench-")
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == own {
                continue;
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                if !live.contains(&pid) {
                    live.push(pid);
                }
            } else if std::fs::remove_dir(e.path()).is_err() {
                let procs = std::fs::read_to_string(e.path().join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                eprintln!(
                    "  warning: {} was left by a bench run that has ended and still holds \
                     processes {procs}; they compete for the CPU: stop them (kill {procs}) and \
                     remove the directory",
                    e.path().display()
                );
            }
        }
    }
    live
}

/// Why cgroups cannot be used here, or `None` when they can: creates and
/// removes a probe group.
pub fn unavailable() -> Option<String> {
    match HostCgroup::create("bench-probe", 50_000, 100_000) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "{e:#}; stressed-host needs root and a writable cgroup CPU controller"
        )),
    }
}
