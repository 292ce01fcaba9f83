//! kill -9 of a router process in the middle of a provisioning burst, then a restart: every device
//! that heard "assigned" keeps its stamp, no assignment is lost, none is duplicated, no quota is
//! exceeded. Embedded store and PostgreSQL.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::process::{Child, Command};

const DEVICES: usize = 400;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_files(dir: &Path, pki: &Pki, stamps: &[FakeStamp]) {
    std::fs::write(dir.join("ca.pem"), &pki.ca.cert_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &pki.server.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &pki.server.key_pem).unwrap();
    let stamps: Vec<Value> = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::to_value(s.config(&format!("hub-{i}"), &pki.ca.cert_pem)).unwrap())
        .collect();
    let file = serde_json::json!({
        "groups": [{"name": "fleet", "idScope": SCOPE, "symmetricKey": GROUP_KEY}],
        "stamps": stamps,
    });
    std::fs::write(dir.join("router.json"), serde_json::to_vec_pretty(&file).unwrap()).unwrap();
}

fn spawn_router(dir: &Path, port: u16, store: &[String]) -> Child {
    router_command(dir, port, store)
        .spawn()
        .expect("start iotstamp-router-dev")
}

fn router_command(dir: &Path, port: u16, store: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotstamp-router-dev"));
    command
        .arg("router")
        .arg("--config")
        .arg(dir.join("router.json"))
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .args([
            "--https-addr",
            &format!("127.0.0.1:{port}"),
            "--no-mqtt",
            "--api-token",
            APP_TOKEN,
        ])
        .args(["--retry-after-secs", "1"])
        .args(store)
        .kill_on_drop(true);
    command
}

async fn wait_ready(dps: &Dps) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = dps.http.get(format!("{}/readyz", dps.base)).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "router did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn crash_mid_burst(store: Vec<String>) {
    let pki = Pki::new(&["127.0.0.1"]);
    let stamps = vec![
        FakeStamp::start("stamp-0", "127.0.0.1", 250, &pki).await,
        FakeStamp::start("stamp-1", "127.0.0.1", 250, &pki).await,
    ];
    // A little latency at the stamps widens the window between reservation and commit.
    for s in &stamps {
        *s.delay.lock().unwrap() = Duration::from_millis(3);
    }
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &pki, &stamps);
    let port = free_port();
    let mut store_args = store.clone();
    store_args.extend([
        "--data-dir".to_string(),
        dir.path().join("data").display().to_string(),
    ]);
    let mut router = spawn_router(dir.path(), port, &store_args);
    let dps = Arc::new(Dps::new(&pki, format!("127.0.0.1:{port}").parse().unwrap()));
    wait_ready(&dps).await;

    let heard = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..DEVICES)
        .map(|i| {
            let (dps, heard) = (dps.clone(), heard.clone());
            tokio::spawn(async move {
                let reg = format!("crash-{i:04}");
                let token = python_token(&reg, &device_key(&reg), now() + 600);
                let url = format!(
                    "{}/{SCOPE}/registrations/{reg}/register?api-version=2019-03-31",
                    dps.base
                );
                let body = serde_json::json!({"registrationId": reg});
                let resp = dps
                    .http
                    .put(url)
                    .header("authorization", token)
                    .json(&body)
                    .send()
                    .await;
                let hub = match resp {
                    Ok(r) if r.status() == 200 => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|b| b["registrationState"]["assignedHub"].as_str().map(String::from)),
                    _ => None,
                };
                if hub.is_some() {
                    heard.fetch_add(1, Ordering::SeqCst);
                }
                (reg, hub)
            })
        })
        .collect();
    // Kill once a good part of the burst has been answered, with the rest in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while heard.load(Ordering::SeqCst) < DEVICES / 4 {
        assert!(Instant::now() < deadline, "burst made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    router.start_kill().unwrap(); // SIGKILL
    router.wait().await.unwrap();
    let mut told: HashMap<String, String> = HashMap::new();
    for t in tasks {
        if let (reg, Some(hub)) = t.await.unwrap() {
            told.insert(reg, hub);
        }
    }
    assert!(
        told.len() >= DEVICES / 4 && told.len() < DEVICES,
        "kill landed mid-burst: {}",
        told.len()
    );

    let mut router = spawn_router(dir.path(), port, &store_args);
    wait_ready(&dps).await;
    // Every device that heard "assigned" keeps its stamp, by DPS and by the service API.
    for (reg, hub) in &told {
        let again = dps.provision(reg).await;
        assert_eq!(again.status, 200, "{reg}: {again:?}");
        assert_eq!(
            again.body["registrationState"]["assignedHub"],
            hub.as_str(),
            "{reg} moved"
        );
        let (_, info) = dps.service_get(&format!("/v1/devices/{reg}")).await;
        assert_eq!(info["hub"], hub.as_str());
    }
    // Everyone else provisions now; capacity (500) covers all.
    for i in 0..DEVICES {
        let reg = format!("crash-{i:04}");
        if !told.contains_key(&reg) {
            let r = dps.provision(&reg).await;
            assert_eq!(r.status, 200, "{reg}: {r:?}");
        }
    }
    // No device registered twice, none missing, no stamp over quota, store agrees with stamps.
    let mut total = 0;
    for i in 0..DEVICES {
        let reg = format!("crash-{i:04}");
        let holders = stamps.iter().filter(|s| s.holds(&reg).is_some()).count();
        assert_eq!(holders, 1, "{reg} held by {holders} stamps");
    }
    let (_, listed) = dps.service_get("/v1/stamps").await;
    for (i, s) in stamps.iter().enumerate() {
        assert!(s.len() <= s.quota);
        total += s.len();
        assert_eq!(
            listed["stamps"][i]["assigned"],
            s.len() as u64,
            "store and stamp-{i} disagree: {listed}"
        );
    }
    assert_eq!(total, DEVICES);
    router.start_kill().unwrap();
    router.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_nothing_embedded() {
    crash_mid_burst(vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_nothing_postgres() {
    let pg = pg::Postgres::start();
    crash_mid_burst(vec![
        "--store".into(),
        "postgres".into(),
        "--postgres-url".into(),
        pg.url(),
    ])
    .await;
}

/// A router pointed at a PostgreSQL that is not there exits at once with an error that says what
/// to fix, the refused connection, rather than the pool's "error connecting to server" alone.
#[tokio::test]
async fn an_unreachable_postgres_is_named_at_startup() {
    let pki = Pki::new(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &pki, &[]);
    let closed = free_port();
    let url = format!("host=127.0.0.1 port={closed} user=iotstamp dbname=iotstamp");
    let router = router_command(
        dir.path(),
        free_port(),
        &["--store".into(), "postgres".into(), "--postgres-url".into(), url],
    )
    .stderr(std::process::Stdio::piped())
    .output();
    let out = tokio::time::timeout(Duration::from_secs(30), router)
        .await
        .expect("the router gave up within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("assignment store") && stderr.contains("Connection refused"),
        "{stderr}"
    );
}
