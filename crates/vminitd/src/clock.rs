//! The guest's wall clock, as the host sets it.
//!
//! The VM has no RTC, so the kernel boots at 1970; the host measures the
//! offset (see the agent protocol's "The guest's clock") and vminitd only
//! reads and corrects `CLOCK_REALTIME` here.

use agent_protocol::AdjustMode;
use nix::errno::Errno;

const NANOS: i64 = 1_000_000_000;

/// `CLOCK_REALTIME` in nanoseconds since the epoch.
pub fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec.saturating_mul(NANOS).saturating_add(ts.tv_nsec)
}

/// A `timeval` for `ADJ_SETOFFSET | ADJ_NANO`: whole seconds (possibly
/// negative) and a nanosecond part in `0..1e9`, as the kernel requires.
pub fn split_offset(offset_ns: i64) -> (i64, i64) {
    (offset_ns.div_euclid(NANOS), offset_ns.rem_euclid(NANOS))
}

fn adjtime(tx: &mut libc::timex) -> Result<(), String> {
    // SAFETY: `tx` is a valid, initialised timex the kernel reads and fills.
    if unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, tx) } < 0 {
        return Err(Errno::last().desc().to_string());
    }
    Ok(())
}

fn zeroed_timex() -> libc::timex {
    // SAFETY: timex is a plain C struct for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// Apply the host's correction, then mark the clock synchronized with
/// `max_error_ns` as its error bound (what `adjtimex` and `ntp_gettime`
/// report to programs).
pub fn adjust(offset_ns: i64, mode: AdjustMode, max_error_ns: u64) -> Result<(), String> {
    let mut tx = zeroed_timex();
    match mode {
        AdjustMode::Step => {
            let (sec, nsec) = split_offset(offset_ns);
            tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
            tx.time.tv_sec = sec;
            tx.time.tv_usec = nsec;
            adjtime(&mut tx).map_err(|e| format!("stepping the clock by {offset_ns} ns: {e}"))?;
        }
        AdjustMode::Slew => {
            // adjtime(3)'s single-shot slew takes microseconds.
            tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
            tx.offset = offset_ns / 1000;
            if tx.offset != 0 {
                adjtime(&mut tx)
                    .map_err(|e| format!("slewing the clock by {offset_ns} ns: {e}"))?;
            }
        }
    }
    let mut tx = zeroed_timex();
    // ADJ_MICRO: programs that read `adjtimex` (busybox, say) expect
    // microseconds in `time.tv_usec` unless they check STA_NANO.
    tx.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR | libc::ADJ_MICRO;
    tx.status = 0; // clears STA_UNSYNC
    let err_us = (max_error_ns / 1000).max(1).min(i64::MAX as u64) as i64;
    tx.maxerror = err_us;
    tx.esterror = err_us;
    adjtime(&mut tx).map_err(|e| format!("marking the clock synchronized: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_split_as_the_kernel_wants() {
        assert_eq!(split_offset(0), (0, 0));
        assert_eq!(split_offset(1_500_000_000), (1, 500_000_000));
        assert_eq!(split_offset(-1), (-1, 999_999_999));
        assert_eq!(split_offset(-1_500_000_000), (-2, 500_000_000));
        let (s, n) = split_offset(i64::MIN);
        assert!((0..NANOS).contains(&n));
        assert_eq!(s as i128 * NANOS as i128 + n as i128, i64::MIN as i128);
    }

    #[test]
    fn reads_a_plausible_time() {
        // After 2020-01-01 on any machine that runs these tests.
        assert!(realtime_ns() > 1_577_836_800 * NANOS);
    }
}
