//! How much CPU other processes take on the CPUs this process may run on: the cheap probe that ends the GEMM's
//! avoidance of the OpenMP team (`super::par`) once a neighbour has left.
//!
//! Why: after a team thread arrives late (a neighbour holds a core), the GEMMs of the next window (up to 8 s
//! after repeated late retries) run on nnic's own helpers. Once the neighbour has gone, those helpers share the
//! cores with torch's still-spinning OpenMP thread and lose ~40 % at ~1 ms shapes, for the rest of the window.
//! Retrying the team to find out costs a scheduler slice whenever the neighbour is still there; reading
//! `/proc/stat` costs ~13 µs of CPU and says the same without the stall: the busy time of our CPUs minus this
//! process's own CPU time is what the others took.
//!
//! A [`Sample`] holds the busy time of the allowed CPUs (everything but idle and iowait, steal included: a
//! hypervisor's other guests keep a thread off its core as a neighbour does) and this process's CPU time; two
//! samples give [`Sample::others_cores`]. `/proc/stat` counts in clock ticks (10 ms), so an interval of 100 ms
//! reads a neighbour's core to about ±0.1 core per CPU. Linux only: elsewhere [`sample`] is `None` and the window
//! simply runs out.
use std::time::Instant;

/// The busy time of the allowed CPUs and this process's CPU time at one moment.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Sample {
    pub at: Instant,
    /// Nanoseconds the allowed CPUs were busy (all processes), since boot.
    pub busy_ns: u64,
    /// Nanoseconds of CPU this process used (all its threads), since it started.
    pub self_ns: u64,
    /// Allowed CPUs.
    pub cpus: usize,
}

impl Sample {
    /// Cores that other processes kept busy on the allowed CPUs between `self` and `later`, on average (0 when
    /// the interval is empty; never negative: tick rounding can make our own time exceed the busy time).
    pub fn others_cores(&self, later: &Sample) -> f64 {
        let wall = later.at.saturating_duration_since(self.at).as_nanos() as f64;
        if wall <= 0.0 {
            return 0.0;
        }
        let busy = later.busy_ns.saturating_sub(self.busy_ns) as f64;
        let own = later.self_ns.saturating_sub(self.self_ns) as f64;
        ((busy - own) / wall).max(0.0)
    }
}

/// Busy clock ticks of the CPUs that `allowed` admits, summed, from the text of `/proc/stat` (fields of a
/// `cpuN` line: user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in
/// user) and how many such CPUs there were. `None` when no line parses.
pub(crate) fn busy_ticks(stat: &str, allowed: impl Fn(usize) -> bool) -> Option<(u64, usize)> {
    let (mut ticks, mut cpus) = (0u64, 0usize);
    for line in stat.lines() {
        // "cpuN ..." lines; the aggregate line ("cpu  ...") has no number after "cpu"
        let Some(rest) = line.strip_prefix("cpu").filter(|r| r.starts_with(|c: char| c.is_ascii_digit())) else {
            continue;
        };
        let mut fields = rest.split_ascii_whitespace();
        let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else { continue };
        if !allowed(cpu) {
            continue;
        }
        let v: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
        if v.len() < 7 {
            continue;
        }
        let (idle, iowait) = (v[3], v[4]);
        ticks += v.iter().sum::<u64>() - idle - iowait;
        cpus += 1;
    }
    (cpus > 0).then_some((ticks, cpus))
}

/// Now's [`Sample`] (Linux: `/proc/stat`, the affinity mask, `CLOCK_PROCESS_CPUTIME_ID`); `None` elsewhere or
/// when any of them cannot be read.
pub(crate) fn sample() -> Option<Sample> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        linux::sample()
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        None
    }
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod linux {
    use super::{busy_ticks, Sample};
    use crate::gemm::affinity;
    use std::time::Instant;

    extern "C" {
        fn sysconf(name: i32) -> i64;
    }

    const SC_CLK_TCK: i32 = 2;

    pub(super) fn sample() -> Option<Sample> {
        let mask = affinity::mask()?;
        // SAFETY: no arguments beyond the constant name.
        let hz = unsafe { sysconf(SC_CLK_TCK) };
        if hz <= 0 {
            return None;
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let self_ns = crate::clock::process_cpu_ns()?;
        let allowed = |cpu: usize| affinity::holds(&mask, cpu);
        let (ticks, cpus) = busy_ticks(&stat, allowed)?;
        Some(Sample {
            at: Instant::now(),
            busy_ns: ticks.saturating_mul(1_000_000_000 / hz as u64),
            self_ns,
            cpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STAT: &str = "cpu  300 1 30 900 9 0 2 5 0 0\n\
                        cpu0 100 1 10 400 4 0 1 2 0 0\n\
                        cpu1 200 0 20 500 5 0 1 3 7 0\n\
                        intr 12345 0 0\nctxt 99\nprocs_running 3\n";

    /// Busy ticks are every field but idle and iowait (steal counted, guest not twice), per allowed CPU line;
    /// the aggregate line and other lines are not CPUs.
    #[test]
    fn busy_ticks_sum_the_allowed_cpus_without_idle_and_iowait() {
        assert_eq!(busy_ticks(STAT, |_| true), Some((100 + 1 + 10 + 1 + 2 + 200 + 20 + 1 + 3, 2)));
        assert_eq!(busy_ticks(STAT, |c| c == 1), Some((224, 1)));
        assert_eq!(busy_ticks(STAT, |_| false), None);
        assert_eq!(busy_ticks("intr 1 2\n", |_| true), None);
    }

    /// Others' cores are the busy time not spent by this process, per wall time.
    #[test]
    fn others_cores_are_busy_time_less_our_own_per_wall_time() {
        let t0 = Instant::now();
        let a = Sample { at: t0, busy_ns: 1_000, self_ns: 500, cpus: 2 };
        let later =
            |busy: u64, own: u64| Sample { at: t0 + Duration::from_millis(100), busy_ns: busy, self_ns: own, cpus: 2 };
        // 150 ms busy, 50 ms ours over 100 ms: another process held one core
        assert!((a.others_cores(&later(1_000 + 150_000_000, 500 + 50_000_000)) - 1.0).abs() < 1e-9);
        // our own time above the busy time (tick rounding) reads as no neighbour, not a negative one
        assert_eq!(a.others_cores(&later(1_000 + 10_000_000, 500 + 20_000_000)), 0.0);
        assert_eq!(a.others_cores(&a), 0.0);
    }

    /// On Linux a sample reads this machine: at least one allowed CPU, and busy time and our own CPU time never
    /// go backwards between two samples.
    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn samples_of_this_machine_move_forward() {
        let a = sample().expect("/proc/stat and the affinity mask are readable");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample().unwrap();
        assert!(a.cpus >= 1 && a.cpus == b.cpus);
        assert!(b.busy_ns >= a.busy_ns && b.self_ns > a.self_ns, "{a:?} {b:?}");
        assert!(a.others_cores(&b) >= 0.0);
    }
}
