//! Samples CPU and memory into [`LoadReport`]s: host-wide from `sysinfo`, or
//! for the cgroup's CPU quota and memory limit where there are ones.
//!
//! A [`Sampler`] is stepped every [`INTERVAL`] by the background task that
//! [`Monitor::start`] spawns; CPU is averaged over the samples of the last
//! [`WINDOW`], and the newest report is published behind an `ArcSwap`, so
//! answering `GET /load` computes nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tokio::time::{Instant, MissedTickBehavior};

use crate::cgroup::Cgroup;
pub use crate::cgroup::CgroupPaths;
use crate::LoadReport;

/// How often a sample is taken: often enough that a report is never much
/// older than this, and above `sysinfo`'s minimum of 200 ms between CPU
/// refreshes.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// How far back CPU use is averaged: smooths one busy 250 ms tick without
/// hiding a change for more than a second.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Takes samples of the host's and the cgroup's CPU and memory and turns
/// them into reports. Holds the counters that CPU use is a difference of.
pub struct Sampler {
    system: System,
    cgroup: Cgroup,
    /// When `sysinfo` last refreshed CPU times: its usage figure covers the
    /// time since then.
    host_refreshed: Option<Instant>,
    /// Cumulative busy-fraction × seconds of the host's CPUs, so that the
    /// host and cgroup cases share the same [`Window`] arithmetic.
    host_busy: f64,
    host_cpu: Window,
    /// The cgroup CPU usage counter (in seconds) and the file it was read
    /// from; reset when the governing cgroup changes.
    cgroup_cpu: Option<(std::path::PathBuf, Window)>,
}

/// `sysinfo` could not read the host's figures.
#[derive(Debug, thiserror::Error)]
#[error("cannot read system statistics: {0}")]
pub struct SampleError(#[from] sysinfo::Error);

impl Sampler {
    /// Finds the cgroup through `paths` and takes the baseline CPU reading;
    /// the first [`Sampler::sample`] should follow it by at least
    /// [`INTERVAL`].
    pub fn new(paths: &CgroupPaths) -> Result<Self, SampleError> {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let mut sampler = Self {
            system: System::new_with_specifics(refresh)?,
            cgroup: Cgroup::discover(paths),
            host_refreshed: None,
            host_busy: 0.0,
            host_cpu: Window::new(WINDOW),
            cgroup_cpu: None,
        };
        sampler.sample(Instant::now());
        Ok(sampler)
    }

    /// Takes one sample at `now` and returns the report it makes.
    pub fn sample(&mut self, now: Instant) -> LoadReport {
        let host_cores = u32::try_from(self.system.cpus().len())
            .unwrap_or(u32::MAX)
            .max(1);

        // sysinfo ignores refreshes closer than 200 ms; keep our clock in
        // step with its figure by doing the same.
        let due = self
            .host_refreshed
            .map_or(true, |t| now - t >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        if due {
            self.system.refresh_cpu_usage();
            if let Some(previous) = self.host_refreshed {
                let busy = fraction(f64::from(self.system.global_cpu_usage()), 100.0);
                self.host_busy += busy * (now - previous).as_secs_f64();
            }
            self.host_refreshed = Some(now);
            self.host_cpu.push(now, self.host_busy);
        }
        let mut cpu = self.host_cpu.fraction(1.0).unwrap_or(0.0);
        let mut cores = host_cores;
        let mut cpus = f64::from(host_cores);

        match self
            .cgroup
            .cpu()
            .filter(|c| c.cores < f64::from(host_cores))
        {
            Some(reading) => {
                if self
                    .cgroup_cpu
                    .as_ref()
                    .map_or(true, |(source, _)| *source != reading.source)
                {
                    self.cgroup_cpu = Some((reading.source.clone(), Window::new(WINDOW)));
                }
                if let Some((_, window)) = &mut self.cgroup_cpu {
                    window.push(now, reading.usage_ns as f64 / 1e9);
                    // Until a second reading exists, the host figure stands in.
                    cpu = window.fraction(reading.cores).unwrap_or(cpu);
                }
                cores = reading.cores.ceil() as u32;
                cpus = reading.cores;
            }
            None => self.cgroup_cpu = None,
        }

        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let (mut mem_total, mut mem_used) = (self.system.total_memory(), self.system.used_memory());
        if let Some(m) = self
            .cgroup
            .memory()
            .filter(|m| mem_total == 0 || m.limit < mem_total)
        {
            (mem_total, mem_used) = (m.limit, m.usage);
        }

        LoadReport {
            cpu,
            memory: fraction(mem_used as f64, mem_total as f64),
            cores,
            cpus,
            load1: System::load_average()
                .map_or(0.0, |l| if l.one.is_finite() { l.one } else { 0.0 }),
            mem_total_bytes: mem_total,
            mem_used_bytes: mem_used,
        }
    }
}

/// `part / whole`, clamped to 0..=1; 0 when undefined (NaN, zero whole).
/// This host's name, if the system tells it.
pub fn hostname() -> Option<String> {
    sysinfo::System::host_name().ok().filter(|n| !n.is_empty())
}

fn fraction(part: f64, whole: f64) -> f64 {
    let f = part / whole;
    if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The fraction of `cores` CPUs kept busy by `busy` CPU-seconds over `wall`.
fn cpu_fraction(busy: f64, wall: Duration, cores: f64) -> f64 {
    fraction(busy, wall.as_secs_f64() * cores)
}

/// Timestamped readings of a cumulative counter, spanning at most `span`:
/// the rate between the oldest and the newest is the average over the span.
#[derive(Debug)]
struct Window {
    span: Duration,
    points: VecDeque<(Instant, f64)>,
}

impl Window {
    fn new(span: Duration) -> Self {
        Self {
            span,
            points: VecDeque::new(),
        }
    }

    /// Adds a reading; a counter that went backwards (a reset) restarts the
    /// window rather than yielding a negative rate.
    fn push(&mut self, at: Instant, value: f64) {
        if self
            .points
            .back()
            .is_some_and(|&(t, v)| value < v || at < t)
        {
            self.points.clear();
        }
        self.points.push_back((at, value));
        // Keep the oldest within the span, unless that leaves one reading.
        while self.points.len() > 2
            && self
                .points
                .front()
                .is_some_and(|&(t, _)| at - t > self.span)
        {
            self.points.pop_front();
        }
    }

    /// The counter's growth over the window as a fraction of `cores` CPUs;
    /// `None` before two readings.
    fn fraction(&self, cores: f64) -> Option<f64> {
        let (&(t0, v0), &(t1, v1)) = (self.points.front()?, self.points.back()?);
        (t1 > t0).then(|| cpu_fraction(v1 - v0, t1 - t0, cores))
    }
}

/// The latest report, refreshed in the background. Cheap to clone; reading
/// it takes no lock. The sampling task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Monitor {
    latest: Arc<ArcSwap<LoadReport>>,
}

impl Monitor {
    /// Waits one `interval` for a first meaningful sample, publishes it, and
    /// spawns the task that samples every `interval` from then on.
    pub async fn start(mut sampler: Sampler, interval: Duration) -> Self {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await;
        let latest = Arc::new(ArcSwap::from_pointee(sampler.sample(Instant::now())));
        let weak: Weak<ArcSwap<LoadReport>> = Arc::downgrade(&latest);
        tokio::spawn(async move {
            loop {
                ticks.tick().await;
                let Some(latest) = weak.upgrade() else { break };
                latest.store(Arc::new(sampler.sample(Instant::now())));
            }
        });
        Self { latest }
    }

    /// A monitor that reports `report` until [`Monitor::set`] changes it,
    /// sampling nothing: for tests of what reads reports (the balancer's),
    /// with loads they choose.
    pub fn fixed(report: LoadReport) -> Self {
        Self {
            latest: Arc::new(ArcSwap::from_pointee(report)),
        }
    }

    /// Replaces the latest report (a sampling monitor overwrites it at its
    /// next sample).
    pub fn set(&self, report: LoadReport) {
        self.latest.store(Arc::new(report));
    }

    /// The most recent report.
    pub fn latest(&self) -> LoadReport {
        **self.latest.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fraction_arithmetic() {
        let s = Duration::from_secs;
        for (busy, wall, cores, want) in [
            (0.5, s(1), 1.0, 0.5),
            (1.0, s(1), 2.0, 0.5),
            (0.25, Duration::from_millis(500), 0.5, 1.0),
            (0.1, s(1), 0.5, 0.2),
            (3.0, s(1), 2.0, 1.0),
            (-1.0, s(1), 1.0, 0.0),
            (1.0, Duration::ZERO, 1.0, 0.0),
            (0.0, Duration::ZERO, 1.0, 0.0),
            (1.0, s(1), 0.0, 0.0),
            (f64::NAN, s(1), 1.0, 0.0),
        ] {
            assert_eq!(
                cpu_fraction(busy, wall, cores),
                want,
                "{busy} over {wall:?} of {cores}"
            );
        }
    }

    #[test]
    fn window_averages_over_its_span_only() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Window::new(Duration::from_secs(1));
        assert_eq!(w.fraction(1.0), None);
        w.push(ms(0), 0.0);
        assert_eq!(w.fraction(1.0), None);
        // Fully busy for a second, then idle: the window forgets the busy part.
        w.push(ms(500), 0.5);
        w.push(ms(1000), 1.0);
        assert_eq!(w.fraction(1.0), Some(1.0));
        w.push(ms(1500), 1.0);
        w.push(ms(2000), 1.0);
        assert_eq!(w.points.len(), 3);
        assert_eq!(w.fraction(1.0), Some(0.0));
        // A counter reset starts over instead of going negative.
        w.push(ms(2250), 0.1);
        assert_eq!(w.fraction(1.0), None);
        // A long gap still gives a rate, over the last two readings.
        w.push(ms(5250), 0.4);
        assert_eq!(w.fraction(1.0).map(|f| (f * 1000.0).round()), Some(100.0));
    }

    #[test]
    fn cgroup_cpu_is_measured_against_its_quota() {
        let root = crate::cgroup::tests::FakeRoot::new();
        root.write("proc/self/cgroup", "0::/app\n")
            .write("sys/fs/cgroup/app/cpu.max", "50000 100000\n")
            .write("sys/fs/cgroup/app/cpu.stat", "usage_usec 1000000\n")
            .write("sys/fs/cgroup/app/memory.max", "1000\n")
            .write("sys/fs/cgroup/app/memory.current", "250\n");
        let mut sampler = Sampler::new(&root.paths()).expect("sampler");
        let t0 = Instant::now();
        sampler.sample(t0);
        // 0.25 CPU-seconds in one second against a quota of half a CPU.
        root.write("sys/fs/cgroup/app/cpu.stat", "usage_usec 1250000\n");
        let report = sampler.sample(t0 + Duration::from_secs(1));
        assert_eq!(report.cpu, 0.5);
        assert_eq!(report.cores, 1);
        assert_eq!(
            (report.memory, report.mem_total_bytes, report.mem_used_bytes),
            (0.25, 1000, 250)
        );
        assert!(LoadReport::parse(&serde_json::to_vec(&report).expect("json")).is_ok());
    }

    #[test]
    fn without_limits_the_host_is_measured() {
        let root = crate::cgroup::tests::FakeRoot::new();
        root.write("proc/self/cgroup", "0::/\n")
            .write("sys/fs/cgroup/memory.max", "max\n")
            .write("sys/fs/cgroup/memory.current", "250\n")
            .write("sys/fs/cgroup/cpu.max", "max 100000\n")
            .write("sys/fs/cgroup/cpu.stat", "usage_usec 1000000\n");
        let mut sampler = Sampler::new(&root.paths()).expect("sampler");
        let report = sampler.sample(Instant::now());
        assert!(report.cores >= 1);
        assert!(report.mem_total_bytes > 1000 && report.mem_used_bytes <= report.mem_total_bytes);
        assert!((0.0..=1.0).contains(&report.cpu) && (0.0..=1.0).contains(&report.memory));
    }
}
