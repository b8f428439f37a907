//! What the commands print on stdout (`aiq sql`'s table, `--explain`,
//! `--dry-run`, `--json`, `aiq bench`'s report) goes through [`print`]. A
//! reader that stops reading early (`aiq sql … | head -1`) closes the pipe:
//! the write then fails with a broken pipe, which ends the command quietly
//! with exit 0 ([`Error::StdoutClosed`]), as Unix tools do. `print!` would
//! panic there: Rust ignores SIGPIPE, so the write returns the error.

use std::io::{ErrorKind, Write};

use crate::error::{Error, Result};

/// Write `text` to stdout and flush it.
pub fn print(text: impl std::fmt::Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => Error::StdoutClosed,
            _ => Error::io("stdout", e),
        })
}

/// [`print`] with a newline.
pub fn println(text: impl std::fmt::Display) -> Result<()> {
    print(format_args!("{text}\n"))
}
