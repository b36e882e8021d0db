//! The binary's writes to standard output and standard error. `println!` and `eprintln!` panic
//! when a write fails (a full disk: `> /dev/full`; a pipe whose reader has gone, SIGPIPE being
//! ignored); these return the failure as an error instead, which the command turns into exit 2
//! with one `error:` line (on stderr, when stderr can still be written). Every result and
//! diagnostic of the commands goes through [`outln!`](crate::outln) / [`errln!`](crate::errln);
//! the server's log lines go through [`logln!`](crate::logln), which never fails: a closed or
//! full stderr must not stop a server that is answering requests.

use std::io::Write;

use anyhow::{Context, Result};

/// Writes `s` to standard output and flushes it (so that the failure is seen here, not lost at
/// exit). Errors: the write failed; the message names standard output.
pub fn out(s: &str) -> Result<()> {
    let mut h = std::io::stdout().lock();
    h.write_all(s.as_bytes())
        .and_then(|()| h.flush())
        .context("cannot write to standard output")
}

/// Writes `s` to standard error. Errors: the write failed; the message names standard error.
pub fn err(s: &str) -> Result<()> {
    std::io::stderr()
        .lock()
        .write_all(s.as_bytes())
        .context("cannot write to standard error")
}

/// Writes `s` to standard error if it can; a failure is dropped (the server's log lines).
pub fn log(s: &str) {
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// `println!` that returns an error instead of panicking ([`out`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that returns an error instead of panicking ([`err`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::err(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that drops a failed write ([`log`]): the server's log lines.
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => {
        $crate::output::log(&format!("{}\n", format_args!($($arg)*)))
    };
}
