//! Lines to stdout and stderr that never fail.
//!
//! `println!` and `eprintln!` panic when the write fails. A run that lasts
//! hours outlives its audience: `bulkget fetch ... 2>&1 | head -1` closes
//! the pipe after one line (`EPIPE`), and a closed terminal makes every
//! write fail (`EIO`). Neither may stop a run or cost its checkpoint, and
//! there is nowhere left to report such an error, so these writers drop it,
//! as ripgrep does with a broken pipe.
//!
//! [`outln!`] and [`errln!`] replace `println!` and `eprintln!` in the
//! coordinator, the workers and the `bulkget` binary (clippy refuses the
//! std macros there, see `clippy.toml` in those crates); [`Stderr`] is the
//! writer behind the `tracing` logs, which [`log`] sets up: the one channel
//! for messages on stderr during a fetch.

use std::fmt;
use std::io::{self, Write};

pub mod log;
pub use log::{json_logs, MESSAGES};

/// Like `println!`, but a failed write is ignored.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::line_to(&mut ::std::io::stdout().lock(), ::std::format_args!($($arg)*))
    };
}

/// Like `eprintln!`, but a failed write is ignored.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::line_to(&mut ::std::io::stderr().lock(), ::std::format_args!($($arg)*))
    };
}

/// Writes `args` and a newline to `w` and flushes, ignoring any error.
pub fn line_to(w: &mut dyn Write, args: fmt::Arguments<'_>) {
    let _ = writeln!(w, "{args}").and_then(|()| w.flush());
}

/// Standard error as a writer whose writes always succeed (the bytes are
/// dropped if stderr is gone). For `tracing_subscriber`'s `with_writer`,
/// whose own fallback on a failed write is an `eprintln!`, which panics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stderr;

/// [`Stderr`], as a `MakeWriter` function.
pub fn stderr() -> Stderr {
    Stderr
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails as a closed pipe does.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_failed_write_is_ignored() {
        line_to(&mut Broken, format_args!("bulkget: {}", 42));
        let mut buf = Vec::new();
        line_to(&mut buf, format_args!("bulkget: {}", 42));
        assert_eq!(buf, b"bulkget: 42\n");
    }

    #[test]
    fn stderr_always_reports_success() {
        let mut w = stderr();
        assert_eq!(w.write(b"").unwrap(), 0);
        assert!(w.flush().is_ok());
    }
}
