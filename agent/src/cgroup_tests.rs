//! Unit tests for cgroup discovery and parsing, against fake cgroupfs trees
//! built in a temporary directory.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fake root (`proc/self/...`, `sys/fs/cgroup/...`), removed on drop.
pub(crate) struct FakeRoot(PathBuf);

impl FakeRoot {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("agent-cgroup-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// Writes `contents` at `path` (relative to the root), creating parents.
    pub(crate) fn write(&self, path: &str, contents: &str) -> &Self {
        let path = self.0.join(path);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
        fs::write(path, contents).expect("write fake file");
        self
    }

    pub(crate) fn paths(&self) -> CgroupPaths {
        CgroupPaths::under(&self.0)
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const V2_MOUNTINFO: &str =
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

const V1_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const V1_CGROUP: &str = "\
9:name=systemd:/docker/abc
4:memory:/docker/abc
2:cpu,cpuacct:/docker/abc
0::/docker/abc
";

#[test]
fn parses_proc_self_cgroup() {
    let parsed =
        parse_proc_cgroup("4:memory:/a\n2:cpu,cpuacct:/b:c\n0::/\ngarbage\n3:x:relative\n");
    assert_eq!(
        parsed,
        vec![
            Membership {
                controllers: vec!["memory"],
                path: "/a"
            },
            Membership {
                controllers: vec!["cpu", "cpuacct"],
                path: "/b:c"
            },
            Membership {
                controllers: vec![],
                path: "/"
            },
        ]
    );
}

#[test]
fn parses_mountinfo_cgroup_lines_only() {
    let text = format!(
        "{V1_MOUNTINFO}50 23 0:40 /x /mnt/with\\040space rw - cgroup2 none rw\nshort line\n"
    );
    let mounts = parse_mountinfo(&text);
    assert_eq!(mounts.len(), 4, "{mounts:?}");
    assert_eq!(mounts[0].root, "/docker/abc");
    assert_eq!(mounts[0].point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(mounts[0].options, ["rw", "cpu", "cpuacct"]);
    assert!(!mounts[0].v2 && mounts[2].v2);
    assert_eq!(mounts[3].point, PathBuf::from("/mnt/with space"));
}

#[test]
fn parses_limits() {
    for (text, want) in [
        ("50000 100000\n", Some(0.5)),
        ("200000 100000", Some(2.0)),
        ("150000", Some(1.5)),
        ("max 100000\n", None),
        ("0 100000", None),
        ("50000 0", None),
        ("-1 100000", None),
        ("fifty 100000", None),
        ("", None),
    ] {
        assert_eq!(parse_cpu_max(text), want, "cpu.max {text:?}");
    }
    for (quota, period, want) in [
        ("100000\n", "100000\n", Some(1.0)),
        ("25000", "100000", Some(0.25)),
        ("-1", "100000", None),
        ("50000", "0", None),
        ("x", "100000", None),
    ] {
        assert_eq!(
            parse_cfs_quota(quota, period),
            want,
            "cfs {quota:?}/{period:?}"
        );
    }
    for (text, want) in [
        ("1073741824\n", Some(1 << 30)),
        ("max\n", None),
        ("9223372036854771712\n", None),
        ("18446744073709551615", None),
        ("0", None),
        ("-5", None),
        ("12 MB", None),
    ] {
        assert_eq!(parse_limit(text), want, "limit {text:?}");
    }
    for (text, want) in [
        (
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            Some(1500),
        ),
        ("user_usec 1\nusage_usec 42", Some(42)),
        ("usage_usec lots\n", None),
        ("nr_periods 0\n", None),
    ] {
        assert_eq!(parse_usage_usec(text), want, "cpu.stat {text:?}");
    }
}

#[test]
fn unescapes_mountinfo_fields() {
    for (raw, want) in [
        ("/plain", "/plain"),
        ("/a\\040b", "/a b"),
        ("/tab\\011x\\134", "/tab\tx\\"),
        ("/trailing\\04", "/trailing\\04"),
        ("/not\\9octal", "/not\\9octal"),
    ] {
        assert_eq!(unescape(raw), want);
    }
}

#[test]
fn reads_a_v2_cgroup() {
    let root = FakeRoot::new();
    root.write("proc/self/cgroup", "0::/system.slice/app.service\n")
        .write("proc/self/mountinfo", V2_MOUNTINFO)
        .write(
            "sys/fs/cgroup/system.slice/app.service/cpu.max",
            "150000 100000\n",
        )
        .write(
            "sys/fs/cgroup/system.slice/app.service/cpu.stat",
            "usage_usec 2500\nuser_usec 2000\n",
        )
        .write(
            "sys/fs/cgroup/system.slice/app.service/memory.max",
            "1073741824\n",
        )
        .write(
            "sys/fs/cgroup/system.slice/app.service/memory.current",
            "268435456\n",
        );
    let cgroup = Cgroup::discover(&root.paths());

    let cpu = cgroup.cpu().expect("a CPU quota");
    assert_eq!((cpu.cores, cpu.usage_ns), (1.5, 2_500_000));
    assert!(cpu.source.ends_with("system.slice/app.service/cpu.stat"));
    assert_eq!(
        cgroup.memory(),
        Some(MemReading {
            limit: 1 << 30,
            usage: 1 << 28
        })
    );
}

#[test]
fn reads_a_v1_cgroup_mounted_at_its_own_root() {
    let root = FakeRoot::new();
    root.write("proc/self/cgroup", V1_CGROUP)
        .write("proc/self/mountinfo", V1_MOUNTINFO)
        .write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "50000\n")
        .write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
        .write("sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "123456789\n")
        .write("sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n")
        .write("sys/fs/cgroup/memory/memory.usage_in_bytes", "134217728\n");
    let cgroup = Cgroup::discover(&root.paths());

    let cpu = cgroup.cpu().expect("a CPU quota");
    assert_eq!((cpu.cores, cpu.usage_ns), (0.5, 123_456_789));
    assert_eq!(
        cgroup.memory(),
        Some(MemReading {
            limit: 512 << 20,
            usage: 128 << 20
        })
    );
}

#[test]
fn v1_without_mountinfo_uses_the_usual_controller_dirs() {
    let root = FakeRoot::new();
    root.write(
        "proc/self/cgroup",
        "4:memory:/job\n3:cpuacct:/job\n2:cpu:/job\n",
    )
    .write("sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "200000")
    .write("sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000")
    .write("sys/fs/cgroup/cpuacct/job/cpuacct.usage", "7")
    .write("sys/fs/cgroup/memory/job/memory.limit_in_bytes", "1000")
    .write("sys/fs/cgroup/memory/job/memory.usage_in_bytes", "250");
    let cgroup = Cgroup::discover(&root.paths());
    assert_eq!(cgroup.cpu().map(|c| (c.cores, c.usage_ns)), Some((2.0, 7)));
    assert_eq!(
        cgroup.memory(),
        Some(MemReading {
            limit: 1000,
            usage: 250
        })
    );
}

#[test]
fn the_tightest_limit_among_ancestors_wins() {
    let root = FakeRoot::new();
    root.write("proc/self/cgroup", "0::/pod/app\n")
        .write("proc/self/mountinfo", V2_MOUNTINFO)
        .write("sys/fs/cgroup/pod/cpu.max", "100000 100000")
        .write("sys/fs/cgroup/pod/cpu.stat", "usage_usec 9")
        .write("sys/fs/cgroup/pod/memory.max", "max")
        .write("sys/fs/cgroup/pod/memory.current", "900")
        .write("sys/fs/cgroup/pod/app/cpu.max", "max 100000")
        .write("sys/fs/cgroup/pod/app/cpu.stat", "usage_usec 5")
        .write("sys/fs/cgroup/pod/app/memory.max", "2000")
        .write("sys/fs/cgroup/pod/app/memory.current", "500")
        .write("sys/fs/cgroup/memory.max", "1000")
        .write("sys/fs/cgroup/memory.current", "800");
    let cgroup = Cgroup::discover(&root.paths());
    assert_eq!(
        cgroup.cpu().map(|c| (c.cores, c.usage_ns)),
        Some((1.0, 9000))
    );
    assert_eq!(
        cgroup.memory(),
        Some(MemReading {
            limit: 1000,
            usage: 800
        })
    );
}

#[test]
fn no_limits_read_as_none() {
    let root = FakeRoot::new();
    root.write("proc/self/cgroup", V1_CGROUP)
        .write("proc/self/mountinfo", V1_MOUNTINFO)
        .write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
        .write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
        .write("sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "123\n")
        .write(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        )
        .write("sys/fs/cgroup/memory/memory.usage_in_bytes", "134217728\n");
    let cgroup = Cgroup::discover(&root.paths());
    assert_eq!((cgroup.cpu(), cgroup.memory()), (None, None));
}

#[test]
fn malformed_or_missing_files_read_as_none() {
    let root = FakeRoot::new();
    root.write("proc/self/cgroup", "0::/app\n")
        .write("proc/self/mountinfo", "this is not mountinfo\n")
        .write("sys/fs/cgroup/app/cpu.max", "50000 100000")
        .write("sys/fs/cgroup/app/cpu.stat", "usage_usec \u{fffd}\n")
        .write("sys/fs/cgroup/app/memory.max", "\u{0}\u{1}")
        .write("sys/fs/cgroup/app/memory.current", "12");
    let cgroup = Cgroup::discover(&root.paths());
    assert_eq!((cgroup.cpu(), cgroup.memory()), (None, None));

    let empty = FakeRoot::new();
    assert_eq!(Cgroup::discover(&empty.paths()), Cgroup::default());
    empty.write("proc/self/cgroup", "\u{fffd}garbage without colons\n::\n");
    assert_eq!(Cgroup::discover(&empty.paths()), Cgroup::default());
}

#[test]
fn a_path_that_climbs_out_of_the_mount_stays_at_the_mount_point() {
    let root = FakeRoot::new();
    root.write("proc/self/cgroup", "0::/../../elsewhere\n")
        .write("proc/self/mountinfo", V2_MOUNTINFO)
        .write("sys/fs/cgroup/memory.max", "100")
        .write("sys/fs/cgroup/memory.current", "10");
    let cgroup = Cgroup::discover(&root.paths());
    assert_eq!(
        cgroup.memory(),
        Some(MemReading {
            limit: 100,
            usage: 10
        })
    );
    assert_eq!(cgroup.memory.len(), 1);
}
