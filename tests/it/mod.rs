mod util;

mod functions;
mod reliability;
mod run;
