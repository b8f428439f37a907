//! What a job asks for. [`settings`] is the one struct behind both the
//! command-line flags and the TOML job file; [`plan`] checks it into a
//! [`plan::Plan`] before any request is sent; [`spend`] holds budgets and
//! prices; [`shard`] splits a job into disjoint runs; [`table`] checks
//! the Delta Lake settings; [`location`] parses where the data is (a path
//! or an object-store URL) once.

pub mod location;
pub mod plan;
pub mod ranges;
pub mod settings;
pub mod shard;
pub mod spend;
pub mod table;
