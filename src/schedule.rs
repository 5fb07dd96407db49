//! When to poll: the full sock_diag dump period and the hot-set size, kept within a CPU budget.
//!
//! A full dump costs about 1 µs of kernel time per socket before depmap reads a byte of it
//! (benches/poll.rs): at 20,000 sockets a dump each second is 2 % of a core in the kernel
//! alone. `collect.cpu_budget` caps the share of one core depmap uses. The schedule measures
//! each poll's CPU time (the polling thread's own clock, kernel time included) and the whole
//! process's (destroy reader, records, sink: the work polls do not control), plans for
//! [`PLAN`] of the budget, and, when the full dumps would exceed their share of what the rest
//! leaves, dumps every `k × socket_poll` instead, with `k` a divisor of
//! `window / socket_poll` so that every window still ends on a full dump (bytes and
//! `LinksLive` stay exact per window). The hot polls (exact lookups of active sockets, for
//! response times) get what the dumps leave.
//!
//! What a longer period costs is in README "CPU budget": closed connections are still counted
//! exactly (destroy notifications do not depend on polls), but a short-lived outbound
//! connection that no dump saw has no process, and idle-snapshot response-time samples are
//! fewer. Small hosts keep a dump a second: a warm poll of 1,001 sockets costs 1.1 ms, one of
//! 5,001 sockets 6.3 ms — the edge of the dumps' 6.3 ms/s share of a 1 % budget
//! (benches/poll.rs, BENCHMARKS.md).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::CollectConfig;
use crate::track::window::next_tick;

/// What ended a wait for the next tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Woke<T> {
    /// The tick at this time is due.
    Tick(SystemTime),
    /// A control message came first.
    Message(T),
    /// The deadline passed before the next tick.
    Deadline,
    /// The control channel's sender is gone.
    Disconnected,
}

/// The ticker of `run` and `once`: waits for the next tick — a multiple of `len` since the
/// epoch — unless a control message comes first or `deadline` is sooner.
pub fn wait_tick<T>(len: Duration, control: &Receiver<T>, deadline: Option<Instant>) -> Woke<T> {
    let now = SystemTime::now();
    let tick = next_tick(now, len);
    let wait = tick.duration_since(now).unwrap_or_default();
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let (wait, ends) = match left {
        Some(left) if left <= wait => (left, Woke::Deadline),
        _ => (wait, Woke::Tick(tick)),
    };
    match control.recv_timeout(wait) {
        Ok(message) => Woke::Message(message),
        Err(RecvTimeoutError::Timeout) => ends,
        Err(RecvTimeoutError::Disconnected) => Woke::Disconnected,
    }
}

/// Share of the budget planned for: the rest is headroom for what cannot be foreseen (a burst
/// of closes, a /proc walk after many new processes).
const PLAN: f64 = 0.9;
/// Share of what is left for polls that the full dumps may use; the rest is for hot polls.
const FULL_SHARE: f64 = 0.7;
/// Weight of a new measurement in the moving averages.
const ALPHA: f64 = 0.2;
/// A shorter period is taken only if it would still fit with this much more cost (hysteresis).
const SHRINK_MARGIN: f64 = 1.25;
/// Cost of one exact lookup assumed before one is measured (benches/poll.rs: 3.3–4 µs).
const INITIAL_LOOKUP_COST: f64 = 4e-6;

/// CPU time the calling thread has used (user + system).
pub fn thread_cpu() -> Duration {
    cpu_clock(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process has used (user + system, every thread).
pub fn process_cpu() -> Duration {
    cpu_clock(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: nix::time::ClockId) -> Duration {
    match nix::time::clock_gettime(clock) {
        Ok(ts) => Duration::new(
            ts.tv_sec().max(0) as u64,
            ts.tv_nsec().clamp(0, 999_999_999) as u32,
        ),
        Err(_) => Duration::ZERO,
    }
}

#[derive(Debug, Clone)]
pub struct PollSchedule {
    socket_poll: Duration,
    hot_poll: Duration,
    /// The loop's tick (`CollectConfig::tick`).
    tick: Duration,
    hot_sockets: usize,
    /// Fraction of one core (0: no limit).
    budget: f64,
    /// `window / socket_poll`: the period multipliers allowed are its divisors.
    polls_per_window: u64,
    /// Full dumps happen every `stride × socket_poll`.
    stride: u64,
    /// The shortest stride allowed (1; with the kernel event source, one dump per window).
    min_stride: u64,
    /// Moving averages: CPU seconds per full poll and per hot lookup.
    full_cost: Option<f64>,
    lookup_cost: f64,
    /// Full polls measured so far (the first, cold one is not a steady-state cost).
    full_polls: u64,
    /// CPU time of the polls since the last [`PollSchedule::process_usage`].
    polls_cpu: Duration,
    /// The last process reading: when, and the process's CPU time then.
    last_usage: Option<(Instant, Duration)>,
    /// Moving average of the share of a core the rest of the process uses.
    other: f64,
}

impl PollSchedule {
    pub fn new(c: &CollectConfig) -> PollSchedule {
        let sp = c.socket_poll.as_nanos().max(1);
        PollSchedule {
            socket_poll: c.socket_poll,
            hot_poll: c.hot_poll,
            tick: c.tick(),
            hot_sockets: c.hot_sockets,
            budget: c.cpu_budget.fraction(),
            polls_per_window: (c.window.as_nanos() / sp).max(1) as u64,
            stride: 1,
            min_stride: 1,
            full_cost: None,
            lookup_cost: INITIAL_LOOKUP_COST,
            full_polls: 0,
            polls_cpu: Duration::ZERO,
            last_usage: None,
            other: 0.0,
        }
    }

    /// The schedule with the kernel event source: events name the owners of new sockets and
    /// finals are applied at every tick, so a full dump is needed only where a window ends
    /// (byte counters and `LinksLive` of live sockets, the sockets no event named); with
    /// `timing`, events measure every exchange and the hot polls (tcp_info re-reads for the
    /// estimators) stop.
    pub fn with_events(mut self, timing: bool) -> PollSchedule {
        self.min_stride = self.polls_per_window;
        self.stride = self.min_stride;
        if timing {
            self.hot_sockets = 0;
            self.tick = self.socket_poll;
        }
        self
    }

    /// The loop's tick: hot polls, or full and light polls, happen on its multiples.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// What the polls may use, as a share of one core: the planned part of the budget less
    /// what the rest of the process uses (never less than a tenth of the budget).
    fn for_polls(&self) -> f64 {
        (self.budget * PLAN - self.other).max(self.budget * 0.1)
    }

    /// The period of full dumps now.
    pub fn full_period(&self) -> Duration {
        self.socket_poll * self.stride as u32
    }

    /// Whether the loop tick at `t` is a full dump: a multiple of the full period since the
    /// epoch (rounded to the loop tick the caller aimed at).
    pub fn is_full_poll(&self, t: SystemTime) -> bool {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let tick = self.tick.as_millis().max(1);
        let aimed = (ms + tick / 2) / tick * tick;
        aimed.is_multiple_of(self.full_period().as_millis().max(1))
    }

    /// How many sockets the next hot polls may re-read.
    pub fn hot_limit(&self) -> usize {
        if self.hot_sockets == 0 {
            return 0;
        }
        if self.budget <= 0.0 || self.hot_poll >= self.socket_poll {
            return self.hot_sockets;
        }
        let full = self.full_cost.unwrap_or(0.0) / self.full_period().as_secs_f64();
        let left = (self.for_polls() - full).max(0.0);
        let per_poll = left * self.hot_poll.as_secs_f64() / self.lookup_cost;
        (per_poll as usize).min(self.hot_sockets)
    }

    /// Records the CPU time of a full poll; returns the new period when it changed.
    pub fn full_poll_done(&mut self, cpu: Duration) -> Option<Duration> {
        self.polls_cpu += cpu;
        self.full_polls += 1;
        if self.full_polls == 1 {
            return None;
        }
        let cost = cpu.as_secs_f64();
        let avg = match self.full_cost {
            Some(a) => a + ALPHA * (cost - a),
            None => cost,
        };
        self.full_cost = Some(avg);
        if self.budget <= 0.0 {
            return None;
        }
        let wanted = self.stride_for(avg);
        let change = if wanted > self.stride {
            wanted
        } else {
            let relaxed = self.stride_for(avg * SHRINK_MARGIN);
            if relaxed < self.stride {
                relaxed
            } else {
                return None;
            }
        };
        self.stride = change;
        Some(self.full_period())
    }

    /// Records the CPU time of a hot poll of `lookups` sockets.
    pub fn hot_poll_done(&mut self, lookups: usize, cpu: Duration) {
        self.polls_cpu += cpu;
        if lookups > 0 {
            let each = cpu.as_secs_f64() / lookups as f64;
            self.lookup_cost += ALPHA * (each - self.lookup_cost);
            self.lookup_cost = self.lookup_cost.max(1e-7);
        }
    }

    /// Records the process's CPU time at `at`: what it used beyond the polls since the last
    /// reading is the share the polls must leave to the rest.
    pub fn process_usage(&mut self, process: Duration, at: Instant) {
        if let Some((then, before)) = self.last_usage {
            let wall = at.saturating_duration_since(then).as_secs_f64();
            if wall > 0.0 {
                let rest = process
                    .saturating_sub(before)
                    .saturating_sub(self.polls_cpu);
                self.other += ALPHA * (rest.as_secs_f64() / wall - self.other);
            }
        }
        self.last_usage = Some((at, process));
        self.polls_cpu = Duration::ZERO;
    }

    /// Average CPU time of a full poll, once measured.
    pub fn full_poll_cost(&self) -> Option<Duration> {
        self.full_cost.map(Duration::from_secs_f64)
    }

    /// The share of one core the full dumps may use now.
    pub fn full_share(&self) -> f64 {
        self.for_polls() * FULL_SHARE
    }

    /// The smallest stride (a divisor of the polls per window) whose dumps fit their share;
    /// one dump per window when none does.
    fn stride_for(&self, cost: f64) -> u64 {
        let share = self.full_share();
        let sp = self.socket_poll.as_secs_f64();
        (self.min_stride..=self.polls_per_window)
            .filter(|k| self.polls_per_window.is_multiple_of(*k))
            .find(|k| cost / (*k as f64 * sp) <= share)
            .unwrap_or(self.polls_per_window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_wakes_for_ticks_messages_and_the_deadline() {
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        let len = Duration::from_millis(20);
        let Woke::Tick(at) = wait_tick(len, &rx, None) else {
            panic!("a tick")
        };
        let ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms % 20, 0, "aligned to the epoch");
        assert!(SystemTime::now() >= at);
        tx.send(7).unwrap();
        assert_eq!(
            wait_tick(Duration::from_secs(3600), &rx, None),
            Woke::Message(7)
        );
        let soon = Instant::now() + Duration::from_millis(5);
        assert_eq!(
            wait_tick(Duration::from_secs(3600), &rx, Some(soon)),
            Woke::Deadline
        );
        drop(tx);
        assert_eq!(wait_tick(len, &rx, None), Woke::Disconnected);
    }
    use crate::config::{CollectConfig, CpuBudget};

    fn schedule(budget_percent: f64) -> PollSchedule {
        let c = CollectConfig {
            cpu_budget: CpuBudget(budget_percent),
            ..CollectConfig::default()
        };
        PollSchedule::new(&c)
    }

    fn feed(s: &mut PollSchedule, ms: u64, times: usize) {
        for _ in 0..times {
            s.full_poll_done(Duration::from_millis(ms));
        }
    }

    #[test]
    fn hot_ticks_between_full_polls() {
        let s = schedule(1.0);
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert!(s.is_full_poll(at(2_000)));
        assert!(s.is_full_poll(at(2_003)));
        assert!(!s.is_full_poll(at(2_250)));
        assert!(!s.is_full_poll(at(2_750)));
        let off = CollectConfig {
            hot_sockets: 0,
            ..CollectConfig::default()
        };
        assert_eq!(off.tick(), Duration::from_secs(1));
        assert!(PollSchedule::new(&off).is_full_poll(at(3_000)));
    }

    #[test]
    fn a_stretched_period_keeps_full_dumps_on_window_ends() {
        let mut s = schedule(1.0);
        feed(&mut s, 26, 30);
        assert_eq!(s.full_period(), Duration::from_secs(5));
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert!(s.is_full_poll(at(60_000)));
        assert!(s.is_full_poll(at(65_000)));
        assert!(!s.is_full_poll(at(61_000)));
        assert!(!s.is_full_poll(at(64_000)));
    }

    #[test]
    fn cheap_dumps_keep_the_configured_period() {
        let mut s = schedule(1.0);
        feed(&mut s, 3, 20);
        assert_eq!(s.full_period(), Duration::from_secs(1));
        // The hot polls get the rest of the plan: (9 − 3) ms/s × 0.25 s ÷ 4 µs = 375.
        assert!((370..=380).contains(&s.hot_limit()), "{}", s.hot_limit());
    }

    #[test]
    fn dear_dumps_stretch_to_a_divisor_of_the_window_and_come_back() {
        let mut s = schedule(1.0);
        s.full_poll_done(Duration::from_millis(500)); // the cold first poll is ignored
        assert_eq!(s.full_period(), Duration::from_secs(1));
        // 26 ms a dump; 1 % × 0.9 × 0.7 = 6.3 ms allowed a second → 4.1 s → 5 s (a divisor
        // of 60).
        feed(&mut s, 26, 30);
        assert_eq!(s.full_period(), Duration::from_secs(5));
        // 50 ms: 7.9 s → 10 s (7, 8 and 9 do not divide 60).
        feed(&mut s, 50, 40);
        assert_eq!(s.full_period(), Duration::from_secs(10));
        // Beyond one a window, one a window.
        feed(&mut s, 2_000, 40);
        assert_eq!(s.full_period(), Duration::from_secs(60));
        // Cheap again: back to every second.
        feed(&mut s, 2, 60);
        assert_eq!(s.full_period(), Duration::from_secs(1));
    }

    #[test]
    fn a_cost_at_the_edge_does_not_flap() {
        let mut s = schedule(1.0);
        feed(&mut s, 1, 1);
        // 15 ms: 2 s does not fit (7.5 ms/s > 6.3), 3 s does. Then slightly cheaper: 12 ms
        // would fit 2 s (6 ms/s), but not with the margin: the period stays.
        feed(&mut s, 15, 30);
        assert_eq!(s.full_period(), Duration::from_secs(3));
        feed(&mut s, 12, 30);
        assert_eq!(s.full_period(), Duration::from_secs(3));
    }

    #[test]
    fn hot_polls_get_what_the_dumps_leave() {
        let mut s = schedule(1.0);
        feed(&mut s, 26, 30); // 5.2 ms/s of dumps at 5 s
        for _ in 0..30 {
            s.hot_poll_done(100, Duration::from_micros(400)); // 4 µs a lookup
        }
        // (9 − 5.2) ms/s × 0.25 s ÷ 4 µs ≈ 237 lookups per hot poll.
        let limit = s.hot_limit();
        assert!((225..=245).contains(&limit), "{limit}");
    }

    #[test]
    fn work_outside_the_polls_leaves_them_less() {
        let mut s = schedule(1.0);
        feed(&mut s, 3, 5);
        let t0 = Instant::now();
        let mut process = Duration::from_secs(1);
        s.process_usage(process, t0);
        // Each second: a 3 ms dump, and 4 ms of other work (a busy destroy reader).
        for i in 1..=60u64 {
            s.full_poll_done(Duration::from_millis(3));
            process += Duration::from_millis(7);
            s.process_usage(process, t0 + Duration::from_secs(i));
        }
        // Polls may use 9 − 4 = 5 ms/s: dumps 3, hot polls 2 ms/s × 0.25 s ÷ 4 µs = 125.
        let limit = s.hot_limit();
        assert!((115..=135).contains(&limit), "{limit}");
        assert_eq!(s.full_period(), Duration::from_secs(1));
    }

    #[test]
    fn no_budget_means_the_configured_schedule() {
        let mut s = schedule(0.0);
        feed(&mut s, 500, 30);
        assert_eq!(s.full_period(), Duration::from_secs(1));
        assert_eq!(s.hot_limit(), 512);
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let before = thread_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > before);
    }
}
