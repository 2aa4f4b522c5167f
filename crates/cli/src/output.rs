//! Command output on standard output. A reader that went away (`vessel ls |
//! head -1`) ends the command the way it ends `ls` or `docker`: by
//! SIGPIPE, quietly, instead of a panic ("failed printing to stdout").
//! Use [`outln!`](crate::outln) and [`out!`](crate::out) where `println!`
//! and `print!` would go.

use std::io::Write;

/// Write `args` (and a newline when `newline`) to standard output.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = r {
        drop(o);
        failed(&e);
    }
}

/// Standard output cannot be written: a closed pipe ends the process by
/// SIGPIPE (exit status 141 in a shell), anything else (a full disk behind
/// a redirection) is an error naming the cause, exit 1.
fn failed(e: &std::io::Error) -> ! {
    crate::terminal::restore();
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // SAFETY: signal and raise have no memory-safety preconditions;
        // the default action of SIGPIPE ends the process.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(141);
    }
    eprintln!("vessel: error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// `println!` for command output (see [the module](crate::output)).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` for command output (see [the module](crate::output)).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), false)
    };
}
