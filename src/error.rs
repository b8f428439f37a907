//! The error type callers match on, and the exit code each kind maps to.
//!
//! Kinds are split by who must act: the user's input or configuration
//! (exit 2, found before anything is spent) or the job itself (exit 1: the
//! endpoint refused us, a row failed under `--fail-on-error`, a budget or
//! interrupt stopped it). Messages say what, where (file, column, row,
//! endpoint) and what to do; they never contain a secret.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or job file settings.
    #[error("{0}")]
    Config(String),

    /// An input file that is missing, unreadable or malformed.
    #[error("input {}: {message}", path.display())]
    Input { path: PathBuf, message: String },

    /// A template that does not parse, or names a column the input lacks.
    #[error("{0}")]
    Template(String),

    /// Credentials that are missing or malformed (found before sending).
    #[error("credentials: {0}")]
    Credentials(String),

    /// The output location cannot be written, or a journal beside it does
    /// not belong to this job.
    #[error("output {}: {message}", path.display())]
    Output { path: PathBuf, message: String },

    /// An I/O failure while the job runs, with the file it concerned.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The endpoint refused the job as a whole (bad credentials, no such
    /// endpoint, a run of failures): going on would only waste requests.
    #[error("{0}")]
    Aborted(String),

    /// A row failed and the job runs with `--fail-on-error`.
    #[error(
        "row {row} failed: {message} (run without --fail-on-error to record row errors and go on)"
    )]
    RowFailed { row: u64, message: String },

    /// Stopped early (Ctrl-C, a budget); the journal allows resuming.
    #[error("{0}")]
    Stopped(String),

    /// Whoever reads stdout closed it (`aiq sql ... | head -1`): not a
    /// failure, the reader has what it wanted. The command stops quietly.
    #[error("stdout was closed by its reader")]
    StdoutClosed,
}

impl Error {
    /// 2 for problems with usage, configuration or input (nothing was spent),
    /// 1 for a job that started and failed, 0 for a closed stdout.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::StdoutClosed => 0,
            Error::Config(_)
            | Error::Input { .. }
            | Error::Template(_)
            | Error::Credentials(_)
            | Error::Output { .. } => 2,
            Error::Io { .. } | Error::Aborted(_) | Error::RowFailed { .. } | Error::Stopped(_) => 1,
        }
    }

    pub fn input(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Error {
        Error::Input {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn output(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Error {
        Error::Output {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
