//! The `vfgate` binary: parse the command line and hand it to [`vfgate::cmd`]. Owns nothing
//! else; uses only `cmd`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vfgate::cmd::run(vfgate::cmd::args::Cli::parse())
}
