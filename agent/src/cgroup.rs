//! Finds the cgroup this process runs in and reads its CPU quota, memory
//! limit and usage, for cgroup v1 and v2 alike.
//!
//! Discovery ([`Cgroup::discover`]) reads `/proc/self/cgroup` and
//! `/proc/self/mountinfo` once; each reading ([`Cgroup::cpu`],
//! [`Cgroup::memory`]) re-reads the small files of the cgroup and its
//! ancestors, so a limit set after start is picked up. Anything missing or
//! malformed reads as "no limit" and the sampler falls back to host-wide
//! figures: nothing here panics on file contents.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Limits at or above this are the kernel's way of saying "unlimited" (v1
/// writes `9223372036854771712`, `i64::MAX` rounded down to a page).
const NO_LIMIT: u64 = 1 << 62;

/// Where the cgroup information is read from. Injectable so that tests can
/// build a fake cgroupfs in a temporary directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPaths {
    /// Lists this process's cgroup per hierarchy (`/proc/self/cgroup`).
    pub proc_self_cgroup: PathBuf,
    /// Says where each hierarchy is mounted (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// The usual cgroupfs mount point (`/sys/fs/cgroup`): mount points under
    /// `/sys/fs/cgroup` in `mountinfo` are re-rooted here, and it is the
    /// fallback when `mountinfo` does not name a hierarchy.
    pub sys_fs_cgroup: PathBuf,
}

impl CgroupPaths {
    /// The real files of this machine.
    pub fn system() -> Self {
        Self::under(Path::new("/"))
    }

    /// The same layout under another root: `root/proc/self/cgroup`,
    /// `root/proc/self/mountinfo` and `root/sys/fs/cgroup`.
    pub fn under(root: &Path) -> Self {
        Self {
            proc_self_cgroup: root.join("proc/self/cgroup"),
            mountinfo: root.join("proc/self/mountinfo"),
            sys_fs_cgroup: root.join("sys/fs/cgroup"),
        }
    }
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self::system()
    }
}

/// A CPU quota and the cumulative usage of the cgroup it applies to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CpuReading {
    /// The quota in CPUs (`quota / period`).
    pub cores: f64,
    /// CPU time used by the cgroup since it was created, in nanoseconds.
    pub usage_ns: u64,
    /// The file `usage_ns` came from: a usage counter is only comparable
    /// with earlier readings of the same file.
    pub source: PathBuf,
}

/// A memory limit and the usage of the cgroup it applies to, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemReading {
    pub limit: u64,
    pub usage: u64,
}

/// One cgroup directory's CPU files.
#[derive(Debug, Clone, PartialEq)]
enum CpuFiles {
    V1 {
        quota: PathBuf,
        period: PathBuf,
        usage: PathBuf,
    },
    V2 {
        max: PathBuf,
        stat: PathBuf,
    },
}

/// One cgroup directory's memory files (`memory.max`/`memory.current` or
/// `memory.limit_in_bytes`/`memory.usage_in_bytes`: parsed the same way).
#[derive(Debug, Clone, PartialEq)]
struct MemFiles {
    limit: PathBuf,
    usage: PathBuf,
}

/// This process's cgroup and its ancestors, nearest first, for the CPU and
/// memory controllers. Empty when the process is in no cgroup we can read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Cgroup {
    cpu: Vec<CpuFiles>,
    memory: Vec<MemFiles>,
}

impl Cgroup {
    /// Locates the cgroup directories from `/proc/self/cgroup` and
    /// `mountinfo`; unreadable files mean no cgroup.
    pub fn discover(paths: &CgroupPaths) -> Self {
        let Ok(membership) = fs::read_to_string(&paths.proc_self_cgroup) else {
            return Self::default();
        };
        let mounts = fs::read_to_string(&paths.mountinfo).unwrap_or_default();
        let mounts = parse_mountinfo(&mounts);
        let memberships = parse_proc_cgroup(&membership);
        let dirs = |controller: &str| cgroup_dirs(&memberships, &mounts, paths, controller);

        let cpu = match (dirs("cpu"), dirs("cpuacct")) {
            (Some((false, cpu)), Some((false, acct))) => cpu
                .into_iter()
                .zip(acct)
                .map(|(c, a)| CpuFiles::V1 {
                    quota: c.join("cpu.cfs_quota_us"),
                    period: c.join("cpu.cfs_period_us"),
                    usage: a.join("cpuacct.usage"),
                })
                .collect(),
            (Some((true, dirs)), _) => dirs
                .into_iter()
                .map(|d| CpuFiles::V2 {
                    max: d.join("cpu.max"),
                    stat: d.join("cpu.stat"),
                })
                .collect(),
            _ => Vec::new(),
        };
        let memory = match dirs("memory") {
            Some((v2, dirs)) => {
                let (limit, usage) = if v2 {
                    ("memory.max", "memory.current")
                } else {
                    ("memory.limit_in_bytes", "memory.usage_in_bytes")
                };
                dirs.into_iter()
                    .map(|d| MemFiles {
                        limit: d.join(limit),
                        usage: d.join(usage),
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        Self { cpu, memory }
    }

    /// The tightest CPU quota among the cgroup and its ancestors, with that
    /// cgroup's usage; `None` when there is no (readable) quota.
    pub fn cpu(&self) -> Option<CpuReading> {
        self.cpu
            .iter()
            .filter_map(|files| {
                let (cores, usage_ns, source) = match files {
                    CpuFiles::V1 {
                        quota,
                        period,
                        usage,
                    } => (
                        parse_cfs_quota(&read(quota)?, &read(period)?)?,
                        parse_u64(&read(usage)?)?,
                        usage,
                    ),
                    CpuFiles::V2 { max, stat } => (
                        parse_cpu_max(&read(max)?)?,
                        parse_usage_usec(&read(stat)?)?.checked_mul(1000)?,
                        stat,
                    ),
                };
                Some(CpuReading {
                    cores,
                    usage_ns,
                    source: source.clone(),
                })
            })
            .min_by(|a, b| a.cores.total_cmp(&b.cores))
    }

    /// The tightest memory limit among the cgroup and its ancestors, with
    /// that cgroup's usage; `None` when there is no (readable) limit.
    pub fn memory(&self) -> Option<MemReading> {
        self.memory
            .iter()
            .filter_map(|files| {
                let limit = parse_limit(&read(&files.limit)?)?;
                let usage = parse_u64(&read(&files.usage)?)?;
                Some(MemReading { limit, usage })
            })
            .min_by_key(|m| m.limit)
    }
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, PartialEq)]
struct Membership<'a> {
    /// Empty for the v2 unified hierarchy (`0::/path`).
    controllers: Vec<&'a str>,
    path: &'a str,
}

fn parse_proc_cgroup(text: &str) -> Vec<Membership<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).collect();
            path.starts_with('/')
                .then_some(Membership { controllers, path })
        })
        .collect()
}

/// A cgroup hierarchy's mount, from one line of `mountinfo`.
#[derive(Debug, PartialEq)]
struct Mount {
    /// The cgroup path that is mounted (not `/` under a cgroup namespace or
    /// a container runtime that mounts only its own subtree).
    root: String,
    point: PathBuf,
    v2: bool,
    /// For v1: the controllers, from the super options (`rw,cpu,cpuacct`).
    options: Vec<String>,
}

/// Parses `mountinfo` lines: `id parent dev root point opts [optional...] -
/// fstype source superopts`, keeping only cgroup mounts.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            let fstype = *fields.get(dash + 1)?;
            let options = fields.get(dash + 3).unwrap_or(&"");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Mount {
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
                v2,
                options: options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories of `controller`'s cgroup and its ancestors up to the
/// mount point, nearest first, and whether the hierarchy is v2. A controller
/// named on a v1 line is v1; otherwise the unified (`0::`) line applies.
fn cgroup_dirs(
    memberships: &[Membership<'_>],
    mounts: &[Mount],
    paths: &CgroupPaths,
    controller: &str,
) -> Option<(bool, Vec<PathBuf>)> {
    let v1 = memberships
        .iter()
        .find(|m| m.controllers.contains(&controller));
    let (v2, membership) = match v1 {
        Some(m) => (false, m),
        None => (true, memberships.iter().find(|m| m.controllers.is_empty())?),
    };
    let mount = mounts
        .iter()
        .find(|m| m.v2 == v2 && (v2 || m.options.iter().any(|o| o == controller)));
    let (root, point) = match mount {
        Some(m) => (m.root.as_str(), rebase(&m.point, &paths.sys_fs_cgroup)),
        None if v2 => ("/", paths.sys_fs_cgroup.clone()),
        None => ("/", paths.sys_fs_cgroup.join(controller)),
    };
    let relative = Path::new(membership.path)
        .strip_prefix(root)
        .unwrap_or(Path::new(""));
    // A path that climbs out of the mount (possible across namespaces) is
    // not ours to follow: use the mount point itself.
    let relative = if relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        relative
    } else {
        Path::new("")
    };
    Some((v2, relative.ancestors().map(|a| point.join(a)).collect()))
}

/// Re-roots a mount point under `/sys/fs/cgroup` onto `sys_fs_cgroup`.
fn rebase(point: &Path, sys_fs_cgroup: &Path) -> PathBuf {
    match point.strip_prefix("/sys/fs/cgroup") {
        Ok(rest) => sys_fs_cgroup.join(rest),
        Err(_) => point.to_path_buf(),
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A memory limit: `None` for `max`, unlimited-looking values, 0 or garbage.
fn parse_limit(text: &str) -> Option<u64> {
    parse_u64(text).filter(|&l| l > 0 && l < NO_LIMIT)
}

/// v2 `cpu.max` (`"$MAX $PERIOD"`, `$MAX` may be `max`) as a number of CPUs.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next().map_or(Some(100_000), |p| p.parse().ok())?;
    cores(quota, period)
}

/// v1 `cpu.cfs_quota_us` (`-1` for none) over `cpu.cfs_period_us`.
fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    cores(parse_u64(quota)?, parse_u64(period)?)
}

fn cores(quota: u64, period: u64) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// The `usage_usec` line of v2 `cpu.stat`.
fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| parse_u64(line.strip_prefix("usage_usec ")?))
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
pub(crate) mod tests;
