mod util;

mod cache;
mod bench;
mod reliability;
mod run;
mod spend;
