//! `iotstamp up` and `iotstamp simulate`: arguments, and turning them into the fleet, pool and
//! simulation settings.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use iotstamp_core::scaling::PoolPolicy;

use crate::dps::{Enrollment, https_client};
use crate::fleet::FleetOptions;
use crate::simulate::Plan;
use crate::state::StateDir;

/// Seconds as `30`, `30s`, `2m` or `1m30s`.
fn duration(text: &str) -> Result<Duration, String> {
    let secs = text
        .parse::<u64>()
        .ok()
        .or_else(|| iotstamp_core::duration::parse_secs(text));
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 30, 30s, 2m, 1m30s)"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct StateArg {
    /// State folder: CA, certificates, tokens, which stamps exist, the router's assignments and each
    /// stamp's data. A restart with the same folder comes back with all of it.
    #[arg(long = "state", env = "IOTSTAMP_STATE", default_value = ".iotstamp")]
    pub dir: PathBuf,
}

/// Run a router and a pool of stamps in this process, on loopback, until Ctrl-C.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// Stamps to start with (a fresh state folder only; afterwards the folder says which exist).
    #[arg(long, default_value_t = 2)]
    pub stamps: u32,
    /// Device quota of each stamp (a fresh state folder only) [default: 100, with --demo 5].
    #[arg(long)]
    pub quota: Option<u64>,
    /// The pool never grows beyond this many stamps.
    #[arg(long, default_value_t = 4)]
    pub max_stamps: u32,
    /// Add a stamp when assigned devices reach this percentage of the quota.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub scale_up_percent: u32,
    /// Wait at least this long between two added stamps [default: 5s, with --demo 1s].
    #[arg(long, value_parser = duration)]
    pub cooldown: Option<Duration>,
    /// The router's loopback address; stamp n listens on this address plus n (a fresh state
    /// folder only). Every piece uses the standard ports, 8883 (MQTT) and 8443 (HTTPS).
    #[arg(long, default_value = "127.0.0.10")]
    pub address: Ipv4Addr,
    /// Port of the web page (stamps, utilization, live telemetry), on the router's address; 0 = none.
    #[arg(long, default_value_t = 8080)]
    pub web_port: u16,
    /// Run a simulation against a new fleet, check what landed through the APIs, print a
    /// summary, and stop. Uses a new temporary state folder (removed afterwards), not --state.
    #[arg(long)]
    pub demo: bool,
    /// With --demo: devices to simulate.
    #[arg(long, default_value_t = 12)]
    pub demo_devices: u32,
    /// With --demo: seconds of telemetry.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub demo_duration: Duration,
}

impl UpArgs {
    pub fn fleet_options(&self) -> FleetOptions {
        FleetOptions {
            router_ip: self.address,
            stamps: self.stamps,
            quota: self.quota.unwrap_or(if self.demo { 5 } else { 100 }),
        }
    }

    pub fn policy(&self) -> anyhow::Result<PoolPolicy> {
        anyhow::ensure!(
            self.max_stamps >= self.stamps,
            "--max-stamps ({}) is below --stamps ({})",
            self.max_stamps,
            self.stamps
        );
        Ok(PoolPolicy {
            min_stamps: self.stamps,
            max_stamps: self.max_stamps,
            scale_up_percent: self.scale_up_percent,
            cooldown_secs: self
                .cooldown
                .unwrap_or(Duration::from_secs(if self.demo { 1 } else { 5 }))
                .as_secs(),
        })
    }
}

/// Simulate devices: provision through the router, connect to the assigned stamps, send telemetry.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Where `iotstamp up` keeps its state: the router address, CA, ID scope and group key are
    /// read from it unless given below.
    #[command(flatten)]
    pub state: StateArg,
    #[arg(long, default_value_t = 10)]
    pub devices: u32,
    /// Telemetry messages per second, over all devices.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long devices send telemetry.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// The router's DPS endpoint, e.g. https://127.0.0.10:8443.
    #[arg(long)]
    pub router: Option<String>,
    /// CA certificate (PEM) the router and the hubs chain to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    #[arg(long)]
    pub id_scope: Option<String>,
    /// The enrollment group's symmetric key (base64); device keys are derived from it.
    #[arg(long)]
    pub group_key: Option<String>,
    /// Device ids are PREFIX-0001, PREFIX-0002, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// How long a device keeps retrying its registration (the pool may be adding a stamp).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub provision_timeout: Duration,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl SimulateArgs {
    pub fn plan(&self) -> Plan {
        Plan {
            devices: self.devices,
            rate: self.rate,
            duration: self.duration,
            prefix: self.prefix.clone(),
            concurrency: self.concurrency,
            provision_timeout: self.provision_timeout,
        }
    }

    /// The router, CA and group: from the flags, else from the state folder.
    pub fn target(&self) -> anyhow::Result<(Enrollment, String, BTreeMap<String, String>)> {
        let state = StateDir::new(&self.state.dir);
        let fleet = state.load_fleet()?;
        let from_state = |what: &str| {
            anyhow::anyhow!(
                "no {what}: give --{what} or run `iotstamp up` first (no fleet in {})",
                state.root().display()
            )
        };
        let router = match (&self.router, &fleet) {
            (Some(r), _) => r.trim_end_matches('/').to_string(),
            (None, Some(f)) => format!("https://{}", crate::layout::https_addr(f.router_ip)),
            (None, None) => return Err(from_state("router")),
        };
        let id_scope = match (&self.id_scope, &fleet) {
            (Some(s), _) => s.clone(),
            (None, Some(f)) => f.id_scope.clone(),
            (None, None) => return Err(from_state("id-scope")),
        };
        let group_key = match (&self.group_key, &fleet) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => f.group_key.clone(),
            (None, None) => return Err(from_state("group-key")),
        };
        let ca_path = self.ca.clone().unwrap_or_else(|| state.ca_cert());
        let ca_pem = std::fs::read_to_string(&ca_path)
            .with_context(|| format!("reading the CA certificate {}", ca_path.display()))?;
        let names = fleet
            .map(|f| f.stamps.into_iter().map(|s| (s.ip.to_string(), s.name)).collect())
            .unwrap_or_default();
        let enrollment = Enrollment {
            http: https_client(&ca_pem)?,
            router,
            id_scope,
            group_key,
        };
        Ok((enrollment, ca_pem, names))
    }
}

pub async fn run_simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let (enrollment, ca_pem, names) = args.target()?;
    let summary = crate::simulate::run(&args.plan(), &enrollment, &ca_pem, &names).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    anyhow::ensure!(
        summary.errors.is_empty(),
        "some devices failed (see errors above)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_plain_seconds_and_units() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(duration("soon").unwrap_err().contains("not a duration"));
    }
}
