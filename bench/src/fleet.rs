//! `iotstamp bench provisioning`: the router's benchmark (static baseline, durable registrations
//! against an in-memory stamp stub, memory and restart while holding many assignments), plus one
//! phase through a whole local fleet: the same router registering each device at real stamps,
//! whose registries commit to disk too. That phase is what a device sees end to end.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use iotstamp_local::fleet::{Fleet, FleetOptions};
use iotstamp_local::layout;
use iotstamp_local::state::StateDir;

use crate::provisioning::{self as bench, BenchArgs, Phase, Target};

#[derive(clap::Args, Debug, Clone)]
pub struct ProvisioningArgs {
    #[command(flatten)]
    pub router: BenchArgs,
    /// Skip the phase through a local fleet of real stamps.
    #[arg(long)]
    pub no_fleet: bool,
    /// The fleet phase's router address (its stamps take the next addresses); it uses the
    /// standard ports, so pick one that no running `iotstamp up` holds.
    #[arg(long, default_value = "127.0.0.200")]
    pub fleet_address: Ipv4Addr,
    /// Stamps in the fleet phase.
    #[arg(long, default_value_t = 2)]
    pub fleet_stamps: u32,
}

/// Runs every phase and returns the table.
pub async fn run(args: ProvisioningArgs) -> anyhow::Result<String> {
    let report = bench::provisioning(args.router.clone()).await?;
    let mut extra = Vec::new();
    if !args.no_fleet {
        extra.push(through_fleet(&args).await?);
    }
    Ok(bench::render(&report, &extra))
}

async fn through_fleet(args: &ProvisioningArgs) -> anyhow::Result<Phase> {
    let dir = std::env::temp_dir().join(format!("iotstamp-bench-fleet-{}", uuid::Uuid::new_v4().simple()));
    let opts = FleetOptions {
        router_ip: args.fleet_address,
        stamps: args.fleet_stamps,
        // Every registration is a new device: leave room for all of them.
        quota: 10_000_000,
    };
    let fleet = Fleet::start(StateDir::new(&dir), &opts)
        .await
        .with_context(|| format!("starting a local fleet on {}", args.fleet_address))?;
    let target = Target {
        addr: layout::https_addr(fleet.file.router_ip),
        id_scope: fleet.file.id_scope.clone(),
        group_key: fleet.file.group_key.clone(),
    };
    let tls = bench::client_config(fleet.ca_pem())?;
    let phase = bench::load(
        "DPS register, durable, real stamps (fleet)",
        &target,
        &tls,
        args.router.connections,
        Duration::from_secs(args.router.seconds),
    )
    .await;
    fleet.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    phase
}
