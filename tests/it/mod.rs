mod util;

mod functions;
mod openai_batch;
mod reliability;
mod run;
