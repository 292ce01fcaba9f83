//! Runs the stamp benchmarks until `iotstamp bench` is wired: `cargo run --release -p iotstamp-stamp
//! --example bench -- storage|hub|connections [N]` (`SPLIT=1` adds the split roles to `hub`). For `connections`, set STAMP_COMMAND to the program
//! that runs a stamp (default: the `stamp-harness` binary next to this example's target dir).

use iotstamp_stamp::bench;

#[tokio::main]
async fn main() -> Result<(), iotstamp_stamp::Error> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "storage".into());
    let n: Option<usize> = args.next().and_then(|s| s.parse().ok());
    let report = match which.as_str() {
        "storage" => {
            let mut o = bench::storage::StorageBenchOptions::default();
            if let Some(n) = n {
                o.points = n;
            }
            bench::storage::storage(o)?
        }
        "hub" => {
            let mut o = bench::hub::HubBenchOptions::default();
            if let Some(n) = n {
                o.messages_per_connection = n;
            }
            o.batch_max_messages = std::env::var("BATCH").ok().and_then(|b| b.parse().ok());
            o.split = std::env::var_os("SPLIT").is_some();
            bench::hub::hub(o).await?
        }
        "connections" => {
            let mut o = bench::connections::ConnBenchOptions::default();
            if let Some(n) = n {
                o.connections = n;
            }
            let harness = std::env::current_exe()
                .ok()
                .and_then(|p| Some(p.parent()?.parent()?.join("stamp-harness")))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stamp-harness".into());
            let cmd = std::env::var("STAMP_COMMAND").unwrap_or(harness);
            o.stamp_command = cmd.split_whitespace().map(String::from).collect();
            bench::connections::connections(o).await?
        }
        other => {
            return Err(iotstamp_stamp::Error::Bench(format!(
                "unknown benchmark `{other}`"
            )));
        }
    };
    println!("{report}");
    Ok(())
}
