//! `iotstamp up` and `iotstamp simulate` as separate processes on loopback: the fleet fills, the
//! pool adds stamps, telemetry is readable through the stamp API, SIGTERM exits cleanly, and a
//! restart keeps stamps and assignments.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Up, binary, simulate, stdout_of_success};
use iotstamp_local::dps::https_client;
use iotstamp_local::stamp_api::StampApi;
use iotstamp_local::state::{FleetFile, StateDir};

fn fleet(state: &Path) -> FleetFile {
    StateDir::new(state)
        .load_fleet()
        .unwrap()
        .expect("up wrote fleet.json")
}

fn stamp_apis(state: &Path) -> Vec<StampApi> {
    let http = https_client(&std::fs::read_to_string(state.join("ca.crt")).unwrap()).unwrap();
    iotstamp_local::stamp_api::stamp_apis(&fleet(state), &http)
}

/// Registered devices per stamp, each checked against its quota.
async fn registered_within_quota(state: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for StampApi { name, api, .. } in stamp_apis(state) {
        let stats = api.stats().await.unwrap();
        let quota = stats
            .device_quota
            .expect("a stamp of this version reports its quota");
        assert!(
            stats.registered <= quota,
            "{name} holds {} devices over its quota {quota}",
            stats.registered,
        );
        out.insert(name, stats.registered);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_fills_grows_keeps_its_telemetry_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up_args = [
        "--stamps",
        "2",
        "--quota",
        "5",
        "--max-stamps",
        "4",
        "--cooldown",
        "1s",
        "--address",
        "127.0.61.10",
    ];
    let mut up = Up::start(&state, &up_args);
    assert_eq!(fleet(&state).stamps.len(), 2);

    let sim = ["--devices", "12", "--rate", "24", "--duration", "3s"];
    let (summary, status) = tokio::task::block_in_place(|| simulate(&state, &sim));
    assert!(status.success(), "{summary:#?}");
    assert_eq!((summary.provisioned, summary.connected), (12, 12), "{summary:#?}");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(summary.acked > 0 && summary.acked == summary.sent, "{summary:#?}");
    assert!(summary.puback_ms.is_some());
    assert!(
        summary.hubs.values().all(|h| h.devices <= 5),
        "{:?}",
        summary.hubs
    );

    // 12 devices do not fit in 2 x 5: the pool added stamp-3 while they provisioned.
    let added = up.wait_for("pool: added stamp-3", Duration::from_secs(10));
    assert!(added.contains("127.0.61.13"), "{added}");
    assert!(summary.hubs.contains_key("127.0.61.13"), "{:?}", summary.hubs);

    let per_stamp = registered_within_quota(&state).await;
    assert_eq!(per_stamp.values().sum::<u64>(), 12, "{per_stamp:?}");
    let apis = stamp_apis(&state);
    for (device, hub) in &summary.assignments {
        let stamp = apis.iter().find(|s| &s.hub == hub).expect("a stamp of the fleet");
        let stored = stamp.api.stored_messages(device).await.unwrap();
        assert_eq!(stored, summary.acked_by_device[device], "{device} on {hub}");
    }

    // 12 of 15 is 80%: the pool goes on to its maximum of 4 and stops there.
    up.wait_for("pool: added stamp-4", Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet(&state).stamps.len(), 4, "{:#?}", up.drain());
    let before = fleet(&state);

    let (status, lines) = up.terminate();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("stopped")), "{lines:#?}");

    let mut up = Up::start(&state, &up_args);
    assert!(up.drain().iter().any(|l| l.contains("using the fleet in")));
    assert_eq!(fleet(&state).stamps, before.stamps, "the restart kept the stamps");
    assert_eq!(
        registered_within_quota(&state).await.values().sum::<u64>(),
        12,
        "stamp data survived"
    );
    let short = ["--devices", "12", "--rate", "24", "--duration", "1s"];
    let (again, status) = tokio::task::block_in_place(|| simulate(&state, &short));
    assert!(status.success(), "{again:#?}");
    assert_eq!(
        again.assignments, summary.assignments,
        "every device kept its stamp"
    );
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}

/// The Azure Python SDK line `up` prints provisions (over DPS/MQTT) as pasted; Ctrl-C then stops
/// `up` with exit code 0 and the state stays.
#[test]
fn the_printed_python_line_provisions_and_ctrl_c_exits_zero() {
    let python = common::venv_python();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let mut up = Up::start(
        &state,
        &["--address", "127.0.62.10", "--stamps", "1", "--max-stamps", "1"],
    );
    let line = up.wait_for("python3 -c", Duration::from_secs(1));
    let script = line.trim().strip_prefix("python3 -c ").unwrap();
    let text = stdout_of_success(Command::new("sh").arg("-c").arg(format!("{python} -c {script}")));
    assert!(text.contains("py-1") && text.contains("127.0.62.11"), "{text}");

    let started = Instant::now();
    let (status, lines) = up.signal(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    for kept in ["ca.crt", "fleet.json", "router/tls.crt", "stamps/stamp-1/tls.crt"] {
        assert!(state.join(kept).exists(), "{kept} missing after exit");
    }

    // Restarted with the default --stamps (2): the folder's one stamp stays one, as its devices
    // (one of quota 100) do not call for more.
    let up = Up::start(&state, &["--max-stamps", "4"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fleet(&state).stamps.len(), 1);
    assert_eq!(
        fleet(&state).stamps[0].ip.to_string(),
        "127.0.62.11",
        "the address is the folder's"
    );
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_demo_fills_a_fleet_adds_a_stamp_and_reads_telemetry_back() {
    let demo = [
        "up",
        "--demo",
        "--address",
        "127.0.63.10",
        "--demo-duration",
        "3s",
    ];
    let text = stdout_of_success(Command::new(binary()).args(demo));
    for want in [
        "pool: added stamp-3",
        "[ok] every device assigned and connected: 12 of 12",
        "[ok] telemetry stored",
        "the demo passed",
    ] {
        assert!(text.contains(want), "`{want}` missing:\n{text}");
    }
    assert!(!text.contains("FAILED"), "{text}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(binary()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let empty = dir.path().join("none");
    let err = run(&["simulate", "--state", empty.to_str().unwrap()]);
    assert!(err.contains("run `iotstamp up` first"), "{err}");
    // A fleet folder whose `up` is not running: the router address is named at once.
    let stale = dir.path().join("stale");
    std::fs::create_dir_all(&stale).unwrap();
    let fleet = iotstamp_local::layout::new_fleet(iotstamp_local::layout::FleetSeed {
        router_ip: "127.0.69.10".parse().unwrap(),
        stamps: 1,
        quota: 1,
        id_scope: "0NE00000001".into(),
        group_key: "a2V5".into(),
        app_token: "a".into(),
        stamp_token: "s".into(),
    })
    .unwrap();
    let state = StateDir::new(&stale);
    state.save_fleet(&fleet).unwrap();
    state.ensure_ca(iotstamp_core::clock::unix_secs() as i64).unwrap();
    let started = Instant::now();
    let err = run(&["simulate", "--state", stale.to_str().unwrap()]);
    assert!(
        err.contains("cannot reach the router at https://127.0.69.10:8443"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = run(&[
        "up",
        "--state",
        empty.to_str().unwrap(),
        "--stamps",
        "3",
        "--max-stamps",
        "2",
    ]);
    assert!(err.contains("--max-stamps (2) is below --stamps (3)"), "{err}");
    let err = run(&["up", "--state", empty.to_str().unwrap(), "--address", "10.0.0.1"]);
    assert!(err.contains("not a loopback address"), "{err}");
    let err = run(&[
        "simulate",
        "--state",
        empty.to_str().unwrap(),
        "--duration",
        "soon",
    ]);
    assert!(err.contains("not a duration"), "{err}");
}

/// The router answers DPS over HTTPS (and the service API) on port 443 beside 8443, as Azure
/// serves them: the SDKs fixed at 443 (the Node device SDK's DPS over HTTPS, the service SDKs)
/// need it. The banner names both; devices provisioned through 443 connect and send.
#[test]
fn the_router_serves_port_443_beside_8443() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let mut up = Up::start(
        &state,
        &["--address", "127.0.63.10", "--stamps", "1", "--max-stamps", "1"],
    );
    up.wait_for(
        "https://127.0.63.10:8443 and https://127.0.63.10:443",
        Duration::from_secs(1),
    );
    let sim = [
        "--router",
        "https://127.0.63.10:443",
        "--devices",
        "3",
        "--rate",
        "6",
        "--duration",
        "1s",
    ];
    let (summary, status) = simulate(&state, &sim);
    assert!(status.success(), "{summary:#?}");
    assert_eq!((summary.provisioned, summary.connected), (3, 3), "{summary:#?}");
    assert!(summary.acked > 0 && summary.acked == summary.sent, "{summary:#?}");
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}
