mod util;

mod reliability;
mod run;
