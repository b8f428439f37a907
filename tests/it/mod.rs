mod util;

mod cache;
mod reliability;
mod run;
