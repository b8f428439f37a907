//! The shells over the core. [`cli`] parses the command line and maps
//! errors to exit codes and calls the core's run
//! ([`crate::pipeline::run`]) for `aiq run`; [`sql`] is `aiq sql` on
//! DataFusion; [`bench`] is `aiq bench`; [`dry_run`] and [`explain`] show
//! what a job would send, sending nothing; [`stdout`] is where every command
//! prints its results.
//! A front end reaches into the core, never into another front end.

pub mod bench;
pub mod cli;
pub mod dry_run;
pub mod explain;
#[cfg(feature = "sql")]
pub mod sql;
pub mod stdout;
