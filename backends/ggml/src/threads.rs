//! Thread counts that follow the cores other processes leave free.
//!
//! ggml's CPU threads wait for each other at a barrier after every graph node, spinning
//! (OpenMP's active wait, or ggml's own spin barrier). When another process keeps a core busy,
//! the kernel deschedules one of those threads for a whole time slice while its partners spin at
//! the barrier: a decode step then takes 3-10x longer instead of at most 2x. Running only as
//! many threads as there are free cores avoids that.
//!
//! [`ThreadGovernor`] samples, at most every [`WINDOW`], how much CPU time the cores this
//! process may run on spent on work of other processes (`/proc/stat` minus `/proc/self/stat`),
//! and sets the thread count to the cores left free, between 1 and the requested maximum.
//! The thread count never changes results: ggml splits every op by output rows or tiles, each
//! computed whole by one thread (checked by runtime/tests/sessions.rs).
//!
//! Only Linux (and Android) expose these counters; elsewhere, or where `/proc/stat` is not
//! readable (Android restricts it for apps), the requested count is used as is.

use std::cell::OnceCell;
use std::time::{Duration, Instant};

/// The shortest interval over which the load of other processes is measured (the kernel counts
/// CPU time in ticks of 10 ms: 200 ms on 2 cores is 40 ticks).
pub const WINDOW: Duration = Duration::from_millis(200);

/// A sample older than this describes the past (the process was idle, say between two chat
/// messages): it is replaced without a decision.
const STALE: Duration = Duration::from_secs(2);

/// CPU time counters at one instant, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSample {
    /// All time of the allowed cores (busy and idle).
    pub total: u64,
    /// Time the allowed cores were not idle (user, system, irq, steal, ...).
    pub busy: u64,
    /// CPU time of this process (all its threads).
    pub own: u64,
}

/// How many threads to run, given the load other processes put on `cores` cores between two
/// samples: the cores they left free, rounded to nearest, between 1 and `max`.
pub fn threads_for(before: CpuSample, after: CpuSample, cores: usize, max: usize) -> usize {
    let total = after.total.saturating_sub(before.total);
    if total == 0 || cores == 0 {
        return max.max(1);
    }
    let busy = after.busy.saturating_sub(before.busy);
    let own = after.own.saturating_sub(before.own);
    // Cores' worth of time that other processes used.
    let others = busy.saturating_sub(own) as f64 / total as f64 * cores as f64;
    let free = (cores as f64 - others).round().max(1.0) as usize;
    free.clamp(1, max.max(1))
}

/// Chooses the thread count before each graph computation (see the module docs).
#[derive(Debug)]
pub struct ThreadGovernor {
    max: usize,
    current: usize,
    adaptive: bool,
    /// Made on the first adaptive decision (so single-threaded backends never read `/proc`);
    /// `None` inside when the counters cannot be read.
    probe: OnceCell<Option<Probe>>,
    last: Option<(Instant, CpuSample)>,
}

impl ThreadGovernor {
    /// A governor for at most `max` threads. Adaptive unless `GRAFT_ADAPTIVE_THREADS=0`.
    pub fn new(max: usize) -> Self {
        let adaptive = std::env::var("GRAFT_ADAPTIVE_THREADS").map_or(true, |v| v != "0");
        Self {
            max: max.max(1),
            current: max.max(1),
            adaptive,
            probe: OnceCell::new(),
            last: None,
        }
    }

    /// Sets the maximum (and, until the next decision, the current) thread count.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        self.current = self.max;
        self.last = None;
    }

    /// Turns adaptation on or off; off runs the maximum always.
    pub fn set_adaptive(&mut self, on: bool) {
        self.adaptive = on;
        self.current = self.max;
        self.last = None;
    }

    /// The thread count in use.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Called before a graph runs: the new thread count if it should change.
    pub fn update(&mut self) -> Option<usize> {
        if !self.adaptive || self.max == 1 {
            return None;
        }
        let probe = self.probe.get_or_init(Probe::new).as_ref()?;
        let now = Instant::now();
        if let Some((at, _)) = self.last {
            if now.duration_since(at) < WINDOW {
                return None;
            }
        }
        let Some(sample) = probe.read() else {
            // The counters went away (a sandbox changed?): stop trying.
            self.probe = OnceCell::from(None);
            return (self.current != self.max).then(|| {
                self.current = self.max;
                self.max
            });
        };
        let previous = self.last.replace((now, sample));
        let (at, before) = previous?;
        if now.duration_since(at) > STALE {
            return None;
        }
        let n = threads_for(before, sample, probe.cores.len(), self.max);
        (n != self.current).then(|| {
            self.current = n;
            n
        })
    }
}

/// Reads the CPU time counters of the cores this process may run on.
#[derive(Debug)]
struct Probe {
    /// Indices of the allowed cores (`Cpus_allowed_list`).
    cores: Vec<usize>,
}

impl Probe {
    fn new() -> Option<Self> {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return None;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
        let cores = parse_cpu_list(list.trim())?;
        let probe = Self { cores };
        probe.read()?;
        Some(probe)
    }

    fn read(&self) -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (total, busy) = cores_time(&stat, &self.cores)?;
        Some(CpuSample {
            total,
            busy,
            own: process_time(&own)?,
        })
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().ok()?),
        }
    }
    (!cores.is_empty()).then_some(cores)
}

/// Sums the `cpuN` lines of `/proc/stat` for `cores`: (all time, non-idle time). Idle is the
/// `idle` and `iowait` columns; `guest` time is already inside `user`, so it is left out.
pub fn cores_time(stat: &str, cores: &[usize]) -> Option<(u64, u64)> {
    let (mut total, mut busy, mut found) = (0u64, 0u64, 0usize);
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let mut fields = rest.split_ascii_whitespace();
        let Some(Ok(idx)) = fields.next().map(str::parse::<usize>) else {
            continue; // the aggregate "cpu" line
        };
        if !cores.contains(&idx) {
            continue;
        }
        let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        if v.len() < 5 {
            return None;
        }
        let all: u64 = v.iter().sum();
        let idle = v[3] + v[4];
        total += all;
        busy += all - idle;
        found += 1;
    }
    (found > 0).then_some((total, busy))
}

/// `utime + stime` of `/proc/self/stat` (fields 14 and 15; the command name, field 2, may hold
/// spaces and parentheses, so counting starts after its last `)`).
pub fn process_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(total: u64, busy: u64, own: u64) -> CpuSample {
        CpuSample { total, busy, own }
    }

    #[test]
    fn thread_count_follows_the_free_cores() {
        let t0 = s(0, 0, 0);
        // Idle machine, we used both cores: keep 2.
        assert_eq!(threads_for(t0, s(40, 40, 40), 2, 2), 2);
        // A busy process took 2/3 of a core while we ran 2 threads: 1 core is free.
        assert_eq!(threads_for(t0, s(40, 40, 27), 2, 2), 1);
        // With us on 1 thread it holds a whole core: stay at 1.
        assert_eq!(threads_for(t0, s(40, 40, 20), 2, 2), 1);
        // It stopped: both cores free again.
        assert_eq!(threads_for(t0, s(40, 20, 20), 2, 2), 2);
        // Light background work (a quarter of a core) does not cost a thread.
        assert_eq!(threads_for(t0, s(40, 25, 20), 2, 2), 2);
        // Never above the maximum, never below 1.
        assert_eq!(threads_for(t0, s(80, 10, 10), 8, 4), 4);
        assert_eq!(threads_for(t0, s(80, 80, 0), 8, 4), 1);
        // No time passed: the maximum.
        assert_eq!(threads_for(t0, t0, 2, 2), 2);
    }

    #[test]
    fn kernel_counters_parse() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        let stat = "cpu  10 0 10 80 0 0 0 0 0 0\n\
                    cpu0 5 0 5 30 10 0 0 0 0 0\n\
                    cpu1 5 0 5 50 0 0 0 2 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(cores_time(stat, &[0, 1]), Some((112, 22)));
        assert_eq!(cores_time(stat, &[1]), Some((62, 12)));
        assert_eq!(cores_time(stat, &[7]), None);
        let own = "1234 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 17 4 0 0 20 0 3";
        assert_eq!(process_time(own), Some(21));
    }

    #[test]
    fn this_machine_counters_are_readable_on_linux() {
        if cfg!(target_os = "linux") {
            let p = Probe::new().expect("/proc counters");
            let a = p.read().unwrap();
            assert!(a.total >= a.busy && a.busy > 0);
        }
    }
}
