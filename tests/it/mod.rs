mod util;

mod bench;
mod reliability;
mod run;
