//! Exit statuses as containerd expects them from runc: the process's exit
//! code, or 128 + the signal that killed it.

/// The status containerd records for a process that ended with
/// `exit_code` (already 128+n when vminitd saw a signal) or `signal`.
pub fn exit_status(exit_code: i32, signal: Option<i32>) -> u32 {
    match signal {
        Some(n) if n > 0 => 128 + n as u32,
        _ => u32::try_from(exit_code).map_or(255, |c| c.min(255)),
    }
}

/// A task whose VM or runtime went away without reporting its process's
/// end (runc's shim reports a lost process as killed).
pub const LOST: u32 = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_signals() {
        assert_eq!(exit_status(0, None), 0);
        assert_eq!(exit_status(7, None), 7);
        assert_eq!(exit_status(137, None), 137);
        assert_eq!(exit_status(137, Some(9)), 137);
        assert_eq!(exit_status(0, Some(15)), 143);
        assert_eq!(exit_status(-1, None), 255);
        assert_eq!(exit_status(300, None), 255);
    }
}
