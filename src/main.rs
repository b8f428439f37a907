//! The `aiq` binary: parse the command line, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    aiq::frontend::cli::main_with(aiq::frontend::cli::Cli::parse())
}
