//! The exit codes of `vessel`, Docker's (the table is in `docs/CLI.md`).
//!
//! Commands that return a container's own exit code (`run`, `start -a`)
//! report vessel's own failures (a bad flag, a missing image or network,
//! the apiserver, a VM that did not boot) as 125, so a script can tell
//! them from the container's codes; 126 and 127 are the container's
//! command that could not be executed or was not found. `create` fails
//! with 125 like `run`, and `exec` like `run` too (its code is the exec'd
//! command's). The other commands exit 1 on an error, and every
//! command exits 125 on a usage error (an unknown flag, a bad or missing
//! argument); `--help` and `--version` exit 0.

use crate::cli::Command;

/// A command's error, for commands that do not run a container's process.
pub const FAILURE: i32 = 1;
/// vessel's own error where the exit code is otherwise the container's,
/// and every usage error.
pub const VESSEL_ERROR: i32 = 125;
/// The container's command was found but could not be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// The container's command was not found.
pub const COMMAND_NOT_FOUND: i32 = 127;

/// The exit code of a command line clap refused: 0 for `--help` and
/// `--version` (printed to stdout), 125 for usage errors.
pub fn usage(e: &clap::Error) -> i32 {
    if e.use_stderr() {
        VESSEL_ERROR
    } else {
        0
    }
}

/// The exit code of `command` when it fails with an error of vessel's own.
pub fn failure(command: &Command) -> i32 {
    match command {
        Command::Run(_) | Command::Create(_) | Command::Exec(_) => VESSEL_ERROR,
        Command::Start(a) if a.attach || a.interactive => VESSEL_ERROR,
        _ => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn code_of(args: &[&str]) -> i32 {
        let argv = std::iter::once("vessel").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => failure(&cli.command),
            Err(e) => usage(&e),
        }
    }

    #[test]
    fn usage_errors_are_125_and_help_is_0() {
        // Unknown flag, bad value, missing argument, unknown command.
        assert_eq!(code_of(&["run", "--no-such-flag", "img"]), 125);
        assert_eq!(code_of(&["create", "--pull", "sometimes", "img"]), 125);
        assert_eq!(code_of(&["run"]), 125);
        assert_eq!(code_of(&["create"]), 125);
        assert_eq!(code_of(&["stop", "--time", "soon", "c"]), 125);
        assert_eq!(code_of(&["logs"]), 125);
        assert_eq!(code_of(&["frobnicate"]), 125);
        for bad in ["on-failure:-1", "sometimes", "always:3", "on-failure:x"] {
            assert_eq!(code_of(&["run", "--restart", bad, "img"]), 125, "{bad}");
            assert_eq!(code_of(&["create", "--restart", bad, "img"]), 125, "{bad}");
            assert_eq!(code_of(&["update", "--restart", bad, "c"]), 125, "{bad}");
        }
        assert_eq!(code_of(&["update", "c"]), 125, "--restart is required");
        assert_eq!(code_of(&["--help"]), 0);
        assert_eq!(code_of(&["run", "--help"]), 0);
        assert_eq!(code_of(&["--version"]), 0);
    }

    #[test]
    fn failures_are_125_where_the_code_is_otherwise_the_container_s() {
        assert_eq!(code_of(&["run", "img"]), 125);
        assert_eq!(code_of(&["create", "img"]), 125);
        assert_eq!(code_of(&["start", "-a", "c"]), 125);
        assert_eq!(code_of(&["exec", "c", "true"]), 125);
        assert_eq!(code_of(&["exec"]), 125, "no command: a usage error");
        for other in [
            &["start", "c"][..],
            &["stop", "c"],
            &["kill", "c"],
            &["rm", "c"],
            &["logs", "c"],
            &["inspect", "c"],
            &["wait", "c"],
            &["ls"],
            &["image", "ls"],
            &["pull", "x"],
            &["network", "rm", "n"],
            &["system", "status"],
            &["attach", "c"],
            &["cp", "c:/x", "."],
            &["stats", "--no-stream"],
            &["pause", "c"],
            &["restart", "c"],
        ] {
            assert_eq!(code_of(other), 1, "{other:?}");
        }
    }
}
