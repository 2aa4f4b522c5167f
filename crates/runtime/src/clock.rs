//! Keeping the guest's wall clock in step with the host's.
//!
//! The guest kernel boots with the time of the microVM's RTC, to the second,
//! and its clock then runs on the TSC, whose frequency the host only estimates. So the runtime
//! sets the guest's `CLOCK_REALTIME` before the container's process starts
//! and keeps it in step while it runs, over the agent connection:
//!
//! 1. A *round* is [`ROUND_SAMPLES`] probes, one after the other: the host
//!    notes its time `t1`, sends `ReadClock`, the guest answers with its
//!    time `g`, the host notes `t4` on receipt. As in NTP, the guest is
//!    ahead by `g - (t1 + t4) / 2`, give or take half the round trip; the
//!    sample with the least round trip wins ([`Sample::best`]).
//! 2. [`correction`] turns the winner into an `AdjustClock`: a step before
//!    the process starts or when the offset is large (a paused VM, a host
//!    that stepped its clock or resumed from suspend), a slew otherwise, so
//!    a running program never sees time jump for a small drift.
//! 3. While the container runs, a round starts [`FIRST_RECHECK`] after the
//!    start, then every [`SYNC_INTERVAL`], and at once when the host's own
//!    clock jumps ([`HostClockWatch`]).
//!
//! [`ClockSync`] is the state of rounds, driven by the lifecycle (replies)
//! and a timer thread (starts); its decisions are pure functions.

use agent_protocol::{AdjustMode, HostMessage};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Probes per round.
pub const ROUND_SAMPLES: usize = 3;
/// Time between rounds while the container runs.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// The first round after the one before the start comes sooner: under
/// emulation the guest kernel switches from its early TSC clocksource to
/// the refined one a second or so into the boot, and a clocksource switch
/// resets the kernel's synchronization status (the time stays right).
pub const FIRST_RECHECK: Duration = Duration::from_secs(3);
/// A round whose probe got no answer for this long is abandoned (a paused
/// or stalled guest); the next one starts on schedule.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Offsets at least this large are stepped even while the process runs:
/// slewing them at 0.5 ms/s would take minutes.
pub const STEP_THRESHOLD_NS: i64 = 100_000_000;
/// A host clock that moved against its monotonic clock by more than this
/// between two checks has jumped (stepped, or the host was suspended).
pub const HOST_JUMP_NS: i64 = 10_000_000;

/// The host's `CLOCK_REALTIME` in nanoseconds since the epoch.
pub fn host_realtime_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// One probe's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How far the guest's clock is ahead of the host's (negative: behind).
    pub offset_ns: i64,
    /// The probe's round trip; the offset is good to half of it.
    pub rtt_ns: i64,
}

impl Sample {
    /// The sample of a probe sent at host time `t1` and answered with guest
    /// time `guest`, received at host time `t4`.
    pub fn new(t1: i64, guest: i64, t4: i64) -> Self {
        let mid = (t1 as i128 + t4 as i128) / 2;
        let offset = (guest as i128 - mid).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        Self {
            offset_ns: offset,
            rtt_ns: t4.saturating_sub(t1).max(0),
        }
    }

    /// The sample to trust: the least round trip.
    pub fn best(samples: &[Sample]) -> Option<Sample> {
        samples.iter().copied().min_by_key(|s| s.rtt_ns)
    }
}

/// What to send the guest for `best`, the winner of a round. `started`:
/// the container's process runs (then small offsets are slewed).
pub fn correction(best: Sample, started: bool) -> HostMessage {
    let offset_ns = best.offset_ns.saturating_neg();
    let mode = if !started || best.offset_ns.saturating_abs() >= STEP_THRESHOLD_NS {
        AdjustMode::Step
    } else {
        AdjustMode::Slew
    };
    // Within the measurement's own error there is nothing to correct; the
    // message still refreshes the guest kernel's error estimate.
    let within_error = best.offset_ns.saturating_abs() <= best.rtt_ns / 2;
    HostMessage::AdjustClock {
        offset_ns: if within_error && started {
            0
        } else {
            offset_ns
        },
        mode,
        max_error_ns: (best.rtt_ns / 2).max(0) as u64,
    }
}

/// What the lifecycle does with a guest's `Clock` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Not the probe we wait for (late, or of an abandoned round): ignore.
    Ignore,
    /// Send this probe (the round goes on).
    Probe(HostMessage),
    /// The round is over: send this correction.
    Adjust { adjust: HostMessage, best: Sample },
}

/// The rounds of one container's clock.
#[derive(Debug, Default)]
pub struct ClockSync {
    next_id: u64,
    /// The probe in flight: its id, host send time, and when it was sent.
    pending: Option<(u64, i64, Instant)>,
    samples: Vec<Sample>,
    /// When the next round is due; `None`: now.
    next_round: Option<Instant>,
    rounds: u64,
}

impl ClockSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Is a round going on?
    pub fn in_round(&self) -> bool {
        self.pending.is_some()
    }

    /// Start a round (unless one is going on): the first probe to send.
    pub fn begin_round(&mut self) -> Option<HostMessage> {
        if self.pending.is_some() {
            return None;
        }
        self.samples.clear();
        Some(self.probe())
    }

    fn probe(&mut self) -> HostMessage {
        self.next_id += 1;
        let id = self.next_id;
        self.pending = Some((id, host_realtime_ns(), Instant::now()));
        HostMessage::ReadClock { id }
    }

    /// The guest answered probe `id` with `guest_ns`, received at host time
    /// `t4`.
    pub fn on_reply(&mut self, id: u64, guest_ns: i64, t4: i64, started: bool) -> Next {
        let Some((pending, t1, _)) = self.pending else {
            return Next::Ignore;
        };
        if pending != id {
            return Next::Ignore;
        }
        self.samples.push(Sample::new(t1, guest_ns, t4));
        if self.samples.len() < ROUND_SAMPLES {
            return Next::Probe(self.probe());
        }
        self.pending = None;
        self.rounds += 1;
        let wait = if self.rounds == 1 {
            FIRST_RECHECK
        } else {
            SYNC_INTERVAL
        };
        self.next_round = Some(Instant::now() + wait);
        match Sample::best(&self.samples) {
            Some(best) => Next::Adjust {
                adjust: correction(best, started),
                best,
            },
            None => Next::Ignore,
        }
    }

    /// Should the timer start a round now? Abandons a probe that got no
    /// answer within [`PROBE_TIMEOUT`] (the round restarts at once).
    pub fn due(&mut self, now: Instant, forced: bool) -> bool {
        if let Some((_, _, sent)) = self.pending {
            if now.duration_since(sent) < PROBE_TIMEOUT {
                return false;
            }
            self.pending = None;
            return true;
        }
        forced || self.next_round.is_none_or(|t| now >= t)
    }
}

/// Notices the host's wall clock jumping: stepped by an administrator or
/// NTP, or a resume from suspend (the boot-time clock moves while the
/// monotonic one stood still).
#[derive(Debug)]
pub struct HostClockWatch {
    last: Option<(i64, i64)>,
}

fn clock_ns(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

impl Default for HostClockWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl HostClockWatch {
    pub fn new() -> Self {
        Self { last: None }
    }

    /// The wall and boot clocks' distances from the monotonic one now.
    fn read() -> (i64, i64) {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        (
            clock_ns(libc::CLOCK_REALTIME) - mono,
            clock_ns(libc::CLOCK_BOOTTIME) - mono,
        )
    }

    /// Has the host's clock jumped since the last call?
    pub fn jumped(&mut self) -> bool {
        self.jumped_with(Self::read())
    }

    fn jumped_with(&mut self, now: (i64, i64)) -> bool {
        let jumped = self.last.is_some_and(|(wall, boot)| {
            (now.0 - wall).abs() > HOST_JUMP_NS || (now.1 - boot).abs() > HOST_JUMP_NS
        });
        self.last = Some(now);
        jumped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_the_guest_against_the_midpoint() {
        // Guest 2 ms ahead, 1 ms each way.
        let s = Sample::new(1_000_000, 3_000_000 + 1_000_000, 3_000_000);
        assert_eq!(s.offset_ns, 2_000_000);
        assert_eq!(s.rtt_ns, 2_000_000);
        // A guest that booted at 1970, probed in 2026.
        let host = 1_796_165_703_000_000_000;
        let s = Sample::new(host, 700_000_000, host + 400_000);
        assert_eq!(s.offset_ns, 700_000_000 - (host + 200_000));
        // Extremes saturate instead of overflowing.
        let s = Sample::new(i64::MAX, i64::MIN, i64::MAX);
        assert_eq!(s.offset_ns, i64::MIN);
        let s = Sample::new(10, 0, 5);
        assert_eq!(s.rtt_ns, 0);
    }

    #[test]
    fn the_least_round_trip_wins() {
        let a = Sample {
            offset_ns: 9,
            rtt_ns: 300,
        };
        let b = Sample {
            offset_ns: 1,
            rtt_ns: 100,
        };
        assert_eq!(Sample::best(&[a, b, a]), Some(b));
        assert_eq!(Sample::best(&[]), None);
    }

    #[test]
    fn steps_before_start_and_for_large_offsets_slews_small_ones() {
        let s = |offset_ns, rtt_ns| Sample { offset_ns, rtt_ns };
        let adjust = |m: HostMessage| match m {
            HostMessage::AdjustClock {
                offset_ns,
                mode,
                max_error_ns,
            } => (offset_ns, mode, max_error_ns),
            other => panic!("{other:?}"),
        };
        // Before the start everything is stepped, even within the error.
        assert_eq!(
            adjust(correction(
                s(-56 * 365 * 86_400 * 1_000_000_000, 800_000),
                false
            )),
            (56 * 365 * 86_400 * 1_000_000_000, AdjustMode::Step, 400_000)
        );
        assert_eq!(
            adjust(correction(s(100, 800_000), false)),
            (-100, AdjustMode::Step, 400_000)
        );
        // Running: a paused VM's lag is stepped, a drift slewed.
        assert_eq!(
            adjust(correction(s(-2_000_000_000, 1_000_000), true)),
            (2_000_000_000, AdjustMode::Step, 500_000)
        );
        assert_eq!(
            adjust(correction(s(3_000_000, 1_000_000), true)),
            (-3_000_000, AdjustMode::Slew, 500_000)
        );
        // Within the measurement's error: only the error bound is refreshed.
        assert_eq!(
            adjust(correction(s(400_000, 1_000_000), true)),
            (0, AdjustMode::Slew, 500_000)
        );
    }

    #[test]
    fn a_round_is_three_sequential_probes() {
        let mut c = ClockSync::new();
        let Some(HostMessage::ReadClock { id: first }) = c.begin_round() else {
            panic!("no probe");
        };
        assert!(c.in_round());
        assert!(c.begin_round().is_none(), "one round at a time");
        assert_eq!(c.on_reply(first + 7, 0, 0, false), Next::Ignore);
        let now = host_realtime_ns();
        let Next::Probe(HostMessage::ReadClock { id: second }) =
            c.on_reply(first, 5_000_000_000, now, false)
        else {
            panic!("no second probe");
        };
        assert_eq!(
            c.on_reply(first, 0, now, false),
            Next::Ignore,
            "answered twice"
        );
        let Next::Probe(HostMessage::ReadClock { id: third }) =
            c.on_reply(second, 5_000_000_000, host_realtime_ns(), false)
        else {
            panic!("no third probe");
        };
        match c.on_reply(third, 5_000_000_000, host_realtime_ns(), false) {
            Next::Adjust {
                adjust:
                    HostMessage::AdjustClock {
                        offset_ns, mode, ..
                    },
                best,
            } => {
                assert_eq!(mode, AdjustMode::Step);
                assert_eq!(offset_ns, -best.offset_ns);
                assert!(offset_ns > 1_700_000_000 * 1_000_000_000, "{offset_ns}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!c.in_round());
    }

    /// Complete a round of `c` (three answers of a guest in step).
    fn finish_round(c: &mut ClockSync) {
        let mut probe = c.begin_round();
        while let Some(HostMessage::ReadClock { id }) = probe {
            probe = match c.on_reply(id, host_realtime_ns(), host_realtime_ns(), true) {
                Next::Probe(p) => Some(p),
                _ => None,
            };
        }
        assert!(!c.in_round());
    }

    #[test]
    fn rounds_come_due_on_schedule_on_a_jump_or_after_a_lost_probe() {
        let mut c = ClockSync::new();
        let t0 = Instant::now();
        assert!(c.due(t0, false), "never synced");
        finish_round(&mut c);
        let t0 = Instant::now();
        assert!(!c.due(t0, false));
        assert!(
            c.due(t0 + FIRST_RECHECK, false),
            "the first recheck is soon"
        );
        finish_round(&mut c);
        let t0 = Instant::now();
        assert!(!c.due(t0 + FIRST_RECHECK, false));
        assert!(c.due(t0 + Duration::from_secs(1), true), "forced");
        assert!(c.due(t0 + SYNC_INTERVAL, false));
        assert!(c.begin_round().is_some());
        let sent = c.pending.map(|p| p.2).unwrap_or(t0);
        assert!(!c.due(sent + Duration::from_secs(1), true), "in a round");
        assert!(c.due(sent + PROBE_TIMEOUT, false), "lost probe");
        assert!(!c.in_round(), "the lost round is abandoned");
    }

    #[test]
    fn host_jumps_are_noticed() {
        let mut w = HostClockWatch::new();
        assert!(!w.jumped_with((100, 50)));
        assert!(!w.jumped_with((100 + HOST_JUMP_NS, 50)));
        assert!(w.jumped_with((100 + 3 * HOST_JUMP_NS, 50)), "stepped");
        assert!(
            w.jumped_with((100 + 3 * HOST_JUMP_NS, 50 + 60_000_000_000)),
            "suspend"
        );
        let mut real = HostClockWatch::new();
        assert!(!real.jumped(), "first reading");
    }
}
