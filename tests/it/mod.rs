mod util;

mod cache;
mod reliability;
mod run;
#[cfg(feature = "sql")]
mod sql;
