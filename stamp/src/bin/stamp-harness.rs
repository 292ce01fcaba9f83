//! A stamp as its own process, exactly as `iotstamp stamp` runs it. The crash-safety test needs a real
//! process it can SIGKILL; this binary keeps that test independent of the workspace's main binary.

use std::process::ExitCode;

use clap::Parser;
use iotstamp_stamp::cli::{StampArgs, run};

#[derive(Parser, Debug)]
#[command(about = "Run one iotstamp stamp (test harness; production uses `iotstamp stamp`)")]
struct Cli {
    #[command(flatten)]
    args: StampArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stamp-harness: {}", iotstamp_core::causes::Causes(&e));
            ExitCode::FAILURE
        }
    }
}
