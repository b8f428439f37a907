mod util;

mod reliability;
mod run;
mod spend;
