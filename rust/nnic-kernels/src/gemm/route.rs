//! Which of the two ways a GEMM's parallel run goes, torch's OpenMP team or nnic's own helpers, decided per call
//! from what each way has cost the same shape class lately (see `super::par`, which times the runs), when
//! `super::par::set_routing` has turned it on (off by default: a one-run probe is measured in the wake of the other
//! way, see there and `docs/performance/low-bit.md`).
//!
//! Why measured cost and not the avoidance window alone: the window (`super::par`'s module docs) sends every run of
//! the next 0.5-8 s to the helpers after one late team thread. Beside a neighbour that only now and then keeps a team
//! thread off its core, that is the wrong way round: `bench/gemm.py --contention` at 512 × 768 × 768 (run M of
//! 2026-12-01) had 7 of 15 contended calls sent to the helpers by one late run, 1.76 ms each there against 0.975 ms
//! on the team (the helpers share the cores with torch's still-spinning OpenMP thread and the neighbour), and the
//! row fell to 0.79× its quiet ratio. Against a neighbour that makes every team run wait for a scheduler slice
//! (9-17 ms against a 1 ms product under load 5-7), the helpers are the cheaper way by far. Which way is cheaper
//! depends on the shape, the neighbour and what torch ran before, so it is measured, per shape class.
//!
//! Per class (a key the caller derives from the shape, and the work of one run in units the caller picks, so that
//! shapes of one class compare per unit), each way keeps its last [`SAMPLES`] costs per unit; its estimate is their
//! mean without the largest one (a single late run, the event that opened the old window, does not move it;
//! repeated ones do). Runs go the way the class chose. The other way is tried (a probe) [`FIRST_PROBE`] runs after
//! a class starts or switches, again every [`FIRST_PROBE`] runs until it has [`TRUSTED`] costs, and then as often
//! as [`PROBE_SHARE`] of the class's time pays for: a way that costs
//! `r` times the chosen one is tried once every `(r - 1) / PROBE_SHARE` runs (80 runs at r = 1.8, 900 at r = 10,
//! bounded by [`MAX_GAP`]), so probing costs about 1 % whatever the gap between the ways, and a near tie is looked
//! at often (where looking is cheap). Why not a fixed interval: under load 7 (other sessions' builds), a team run
//! beside a late OpenMP thread measured ~20 ms against ~2 ms on the helpers at 512 × 768 × 768; one such probe
//! every 64 runs is 15 % of the time. The class switches when the other way's estimate is below [`SWITCH`] times
//! its own (after a run of its own way, or a probe); a probe cheaper than the chosen way's estimate that does not
//! switch yet is followed by another at the next run, so a way that became cheaper (the neighbour left) wins within
//! a few runs of its next probe.
//!
//! Everything here is plain arithmetic on injected costs ([`Router::choose`] / [`Router::record`]): the tests
//! drive it with made-up costs, no clock.

/// The two ways a parallel run can go.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// torch's OpenMP team (`GOMP_parallel`).
    Team,
    /// nnic's own helper threads (`crate::team`).
    Helpers,
}

impl Way {
    fn other(self) -> Way {
        match self {
            Way::Team => Way::Helpers,
            Way::Helpers => Way::Team,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Costs kept per way and class.
pub(crate) const SAMPLES: usize = 4;
/// Runs of a new class (or after a switch) before the other way is first tried.
pub(crate) const FIRST_PROBE: u32 = 2;
/// The share of a class's time that probing the dearer way may cost.
pub(crate) const PROBE_SHARE: f64 = 0.01;
/// Costs of a way before its probes are spaced by [`gap`]: until then, every [`FIRST_PROBE`] runs. Why: one cost can
/// be an outlier (a probe that met the neighbour's burst, 50 ms against 1.6 ms, under load 8), and from one cost the
/// gap would keep the class off that way for dozens of runs; from three, the estimate drops the largest.
pub(crate) const TRUSTED: usize = 3;
/// The longest gap between probes, in runs of the class.
pub(crate) const MAX_GAP: u32 = 1024;
/// The other way's estimate must be below this fraction of the chosen way's for the class to switch: ties and
/// noise keep the class where it is.
pub(crate) const SWITCH: f64 = 0.95;
/// Classes remembered at once (a direct-mapped table; a class that lands on a taken slot starts it afresh).
const SLOTS: usize = 64;

/// The last [`SAMPLES`] costs of one way (a ring).
#[derive(Copy, Clone, Debug, Default)]
struct Costs {
    ring: [f64; SAMPLES],
    len: usize,
    next: usize,
}

impl Costs {
    fn add(&mut self, cost: f64) {
        self.ring[self.next] = cost;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// The mean of the kept costs without the largest (the only one when one is kept); `None` when none is.
    fn estimate(&self) -> Option<f64> {
        let kept = &self.ring[..self.len];
        match kept.len() {
            0 => None,
            1 => Some(kept[0]),
            n => {
                let max = kept.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Some((kept.iter().sum::<f64>() - max) / (n - 1) as f64)
            }
        }
    }
}

/// One class's state: its key, each way's costs, the way chosen, and the probe schedule.
#[derive(Copy, Clone, Debug)]
struct Class {
    key: u64,
    costs: [Costs; 2],
    way: Way,
    /// Runs of the chosen way left before the next probe.
    until_probe: u32,
}

impl Class {
    fn new(key: u64) -> Class {
        Class {
            key,
            costs: [Costs::default(); 2],
            way: Way::Team,
            until_probe: FIRST_PROBE,
        }
    }

    fn estimate(&self, way: Way) -> Option<f64> {
        self.costs[way.index()].estimate()
    }

    /// Whether the other way's estimate is clearly below the chosen way's.
    fn other_is_cheaper(&self) -> bool {
        match (self.estimate(self.way), self.estimate(self.way.other())) {
            (Some(mine), Some(other)) => other < SWITCH * mine,
            _ => false,
        }
    }

    fn switch(&mut self) {
        self.way = self.way.other();
        self.until_probe = FIRST_PROBE;
    }
}

/// Runs of the chosen way until the next probe, after a probe that found the other way dearer: `(r - 1) /`
/// [`PROBE_SHARE`] for a way `r` times as dear, at least [`FIRST_PROBE`], at most [`MAX_GAP`].
fn gap(chosen: Option<f64>, other: Option<f64>) -> u32 {
    match (chosen, other) {
        (Some(mine), Some(theirs)) if mine > 0.0 => {
            // (less a hair, so that the estimates' rounding does not add a run to an exact quotient)
            ((theirs / mine - 1.0) / PROBE_SHARE - 1e-6).ceil().clamp(FIRST_PROBE as f64, MAX_GAP as f64) as u32
        }
        _ => FIRST_PROBE,
    }
}

/// The classes' states (see the module docs).
pub(crate) struct Router {
    slots: [Option<Class>; SLOTS],
}

impl Router {
    /// No class seen yet.
    pub(crate) const fn new() -> Router {
        Router { slots: [None; SLOTS] }
    }

    fn class(&mut self, key: u64) -> &mut Class {
        // Fibonacci hashing: the keys' high bits pick the slot.
        let slot = &mut self.slots[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SLOTS];
        match slot {
            Some(c) if c.key == key => {}
            _ => *slot = Some(Class::new(key)),
        }
        slot.as_mut().expect("set above")
    }

    /// The way the next run of class `key` goes, and whether that is a probe: the chosen way, or the other one
    /// when a probe is due.
    pub(crate) fn choose(&mut self, key: u64) -> (Way, bool) {
        let c = self.class(key);
        if c.until_probe == 0 {
            (c.way.other(), true)
        } else {
            (c.way, false)
        }
    }

    /// A run of class `key` went `way` and cost `cost` per unit of work: keeps the cost, and switches the class or
    /// reschedules its probe (see the module docs). Returns whether the class switched ways.
    pub(crate) fn record(&mut self, key: u64, way: Way, cost: f64) -> bool {
        let c = self.class(key);
        let chosen = c.estimate(c.way);
        c.costs[way.index()].add(cost);
        if way == c.way {
            c.until_probe = c.until_probe.saturating_sub(1);
        }
        if c.other_is_cheaper() {
            c.switch();
            return true;
        }
        if way == c.way {
            return false;
        }
        // A probe that did not switch.
        if chosen.is_some_and(|mine| cost < SWITCH * mine) {
            c.until_probe = 0; // cheaper than the chosen way for once: look again at the next run
        } else if c.costs[way.index()].len < TRUSTED {
            c.until_probe = FIRST_PROBE; // too few costs to trust the gap they give
        } else {
            c.until_probe = gap(chosen, c.estimate(way));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Runs `calls` runs of class `key` with `cost(way, call)` and returns the ways they went.
    fn drive(r: &mut Router, key: u64, calls: usize, mut cost: impl FnMut(Way, usize) -> f64) -> Vec<Way> {
        (0..calls)
            .map(|i| {
                let (way, probe) = r.choose(key);
                assert_eq!(probe, way != r.class(key).way);
                r.record(key, way, cost(way, i));
                way
            })
            .collect()
    }

    fn count(ways: &[Way], way: Way) -> usize {
        ways.iter().filter(|&&w| w == way).count()
    }

    /// Whether the runs that went `way` were single probes: never two in a row.
    fn only_probes(ways: &[Way], way: Way) -> bool {
        ways.windows(2).all(|p| p != [way, way])
    }

    /// The estimate drops the largest kept cost, so one outlier among several does not move it.
    #[test]
    fn the_estimate_is_the_mean_without_the_largest_cost() {
        let mut c = Costs::default();
        assert_eq!(c.estimate(), None);
        c.add(3.0);
        assert_eq!(c.estimate(), Some(3.0));
        c.add(1.0);
        assert_eq!(c.estimate(), Some(1.0));
        c.add(20.0);
        assert_eq!(c.estimate(), Some(2.0));
        c.add(2.0);
        assert_eq!(c.estimate(), Some(2.0));
        // the ring keeps the last four: 1, 20, 2, 4
        c.add(4.0);
        assert_eq!(c.estimate(), Some(7.0 / 3.0));
    }

    /// A new class runs on the team and tries the helpers after [`FIRST_PROBE`] runs, and so on until it has
    /// [`TRUSTED`] costs of theirs; when they are dearer it tries them again as often as [`PROBE_SHARE`] of its time
    /// pays for: 1.8 times as dear, every 80 runs.
    #[test]
    fn the_dearer_way_is_probed_as_often_as_its_share_of_the_time_allows() {
        let mut r = Router::new();
        let ways = drive(&mut r, 7, 1000, |w, _| if w == Way::Team { 1.0 } else { 1.8 });
        let probes: Vec<usize> = (0..ways.len()).filter(|&i| ways[i] == Way::Helpers).collect();
        assert_eq!(probes[0], FIRST_PROBE as usize, "the first probe follows FIRST_PROBE runs on the team");
        let gaps: Vec<usize> = probes.windows(2).map(|p| p[1] - p[0] - 1).collect();
        let f = FIRST_PROBE as usize;
        assert_eq!(gaps[..TRUSTED - 1], [f; TRUSTED - 1], "the first costs come FIRST_PROBE runs apart");
        assert!(gaps[TRUSTED - 1..].iter().all(|&g| g == 80), "{gaps:?}");
        // once the spacing holds (the first TRUSTED probes come on top of the share)
        let later = &ways[probes[TRUSTED - 1] + 1..];
        let time: f64 = later.iter().map(|&w| if w == Way::Team { 1.0 } else { 1.8 }).sum();
        let extra = 0.8 * count(later, Way::Helpers) as f64;
        assert!(extra / time <= PROBE_SHARE, "probing cost {:.4} of the time", extra / time);
        // ten times as dear: one probe in 900 runs; the gap is bounded
        assert_eq!(gap(Some(1.0), Some(10.0)), 900);
        assert_eq!(gap(Some(1.0), Some(1000.0)), MAX_GAP);
        assert_eq!(gap(Some(1.0), Some(1.01)), FIRST_PROBE);
        assert_eq!(gap(None, Some(1.0)), FIRST_PROBE);
    }

    /// The case of run M: the team is the cheaper way, and a late team run (ten times the usual cost) now and then
    /// does not send the class to the helpers: one in four of the team's runs late, the helpers see only their
    /// scheduled probes.
    #[test]
    fn a_late_team_run_now_and_then_does_not_send_runs_to_the_helpers() {
        let mut r = Router::new();
        drive(&mut r, 1, 100, |w, _| if w == Way::Team { 1.0 } else { 1.8 });
        let team_runs = Cell::new(0usize);
        let ways = drive(&mut r, 1, 300, |w, _| match w {
            Way::Team => {
                team_runs.set(team_runs.get() + 1);
                if team_runs.get() % 4 == 0 { 10.0 } else { 1.0 }
            }
            Way::Helpers => 1.8,
        });
        assert!(only_probes(&ways, Way::Helpers), "{ways:?}");
        assert!(count(&ways, Way::Helpers) <= 300 / 80 + 1, "{ways:?}");
    }

    /// Under load 8 a single probe of the helpers once cost 50 ms against 1.6 ms on them usually, and the class
    /// stayed on a team that cost 24 ms a run: a first cost that is an outlier does not space the next probes, so the
    /// class still moves to the cheaper way within a few probes.
    #[test]
    fn an_outlier_first_probe_does_not_keep_the_class_off_the_cheaper_way() {
        let mut r = Router::new();
        let helpers_runs = Cell::new(0usize);
        let ways = drive(&mut r, 9, 40, |w, _| match w {
            Way::Team => 24.0,
            Way::Helpers => {
                helpers_runs.set(helpers_runs.get() + 1);
                if helpers_runs.get() == 1 { 50.0 } else { 1.6 }
            }
        });
        let moved = ways.windows(3).position(|p| p == [Way::Helpers; 3]).unwrap();
        assert!(moved <= 3 * (FIRST_PROBE as usize + 1), "{ways:?}");
        assert!(only_probes(&ways[moved..], Way::Team), "{ways:?}");
    }

    /// A neighbour that makes every team run stall: the class goes to the helpers after two such runs, tries the
    /// team only in probes (about 1 % of the time), and comes back to it within one probe gap and a few runs once
    /// the stalls stop.
    #[test]
    fn a_team_that_stalls_every_run_loses_the_class_until_it_is_cheap_again() {
        let mut r = Router::new();
        drive(&mut r, 3, 40, |w, _| if w == Way::Team { 1.0 } else { 1.5 });
        let stalled = drive(&mut r, 3, 300, |w, _| if w == Way::Team { 12.0 } else { 1.5 });
        let moved = stalled.iter().position(|&w| w == Way::Helpers).unwrap();
        assert_eq!(moved, 2, "two stalled runs of four kept move the estimate: {stalled:?}");
        assert!(only_probes(&stalled[moved..], Way::Team), "{stalled:?}");
        // the first probe FIRST_PROBE runs after the switch, the next ones ~460 and ~700 runs apart
        assert!(count(&stalled[moved..], Way::Team) <= 2, "{stalled:?}");
        let calm = drive(&mut r, 3, 1000, |w, _| if w == Way::Team { 1.0 } else { 1.5 });
        let back = calm.windows(4).position(|p| p == [Way::Team; 4]).unwrap();
        let longest = gap(Some(1.5), Some(12.0)) as usize;
        assert!(back <= longest + 3, "back on the team after {back} runs: {calm:?}");
        assert!(only_probes(&calm[back..], Way::Helpers), "{calm:?}");
    }

    /// Where the helpers are the cheaper way from the start, the class moves at its first probe and stays (the team
    /// gets single probes); a difference within [`SWITCH`] keeps the class where it is, with the other way probed
    /// often (a probe costs little there) but never twice in a row.
    #[test]
    fn a_clearly_cheaper_way_takes_the_class_and_a_near_tie_does_not() {
        let mut r = Router::new();
        let ways = drive(&mut r, 5, 200, |w, _| if w == Way::Team { 2.0 } else { 1.0 });
        let f = FIRST_PROBE as usize;
        assert!(ways[..f].iter().all(|&w| w == Way::Team) && ways[f] == Way::Helpers);
        assert!(only_probes(&ways[f..], Way::Team), "{ways:?}");
        let near = drive(&mut Router::new(), 6, 200, |w, _| if w == Way::Team { 1.0 } else { 0.97 });
        assert!(only_probes(&near, Way::Helpers) && count(&near, Way::Helpers) > 10, "{near:?}");
    }

    /// Classes are kept apart: one whose team stalls does not move another; a class that lands on a slot taken by
    /// another starts afresh (on the team).
    #[test]
    fn classes_keep_their_own_costs() {
        let mut r = Router::new();
        drive(&mut r, 11, 50, |w, _| if w == Way::Team { 10.0 } else { 1.0 });
        assert_eq!(r.choose(11).0, Way::Helpers);
        assert_eq!(r.choose(12).0, Way::Team);
        let ways = drive(&mut r, 12, 50, |w, _| if w == Way::Team { 1.0 } else { 2.0 });
        assert!(only_probes(&ways, Way::Helpers) && ways[0] == Way::Team);
        assert_eq!(r.choose(11).0, Way::Helpers);
        let slot = |k: u64| (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SLOTS;
        let rival = (12..).find(|&k| slot(k) == slot(11)).unwrap();
        assert_eq!(r.choose(rival).0, Way::Team);
        assert_eq!(r.choose(11).0, Way::Team, "the slot held the rival's fresh state, so 11 starts afresh too");
    }
}
