//! The `trestle` binary: a thin shell over the `trestle` library's command line.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    trestle::run(trestle::Cli::parse())
}
