//! What the commands print for people goes through `outln!`: a write to
//! stdout that fails (the reader of a pipe went away, as in `pgwebhooks
//! status | head -1`) returns `Closed` instead of panicking as `println!`
//! does, and `main` ends such a command quietly.

use std::io::Write;

/// Stdout could not be written; `main` exits quietly when it is a broken pipe.
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub struct Closed(#[from] pub std::io::Error);

impl Closed {
    /// The reader went away: not worth a word, nor a failure.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// One line on stdout.
pub fn line(args: std::fmt::Arguments<'_>) -> Result<(), Closed> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// `println!` that returns `out::Closed` from the enclosing function (`?`)
/// instead of panicking when stdout is closed.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;
