//! Whole DPS conversations over HTTPS against a running router with fake stamps.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use iotstamp_core::allocation::ReprovisionPolicy;
use iotstamp_router::config::StoreConfig;
use std::sync::Arc;

use iotstamp_router::adapters::directory::{StampDirectory, StaticDirectory};
use iotstamp_router::adapters::stamp_client::HttpStampClient;
use serde_json::{Value, json};

struct Setup {
    _pki: Pki,
    stamps: Vec<FakeStamp>,
    router: iotstamp_router::RunningRouter,
    directory: Arc<StaticDirectory>,
    dps: Dps,
    _dir: tempfile::TempDir,
}

async fn setup(quotas: &[usize], tweak: impl FnOnce(&mut iotstamp_router::config::RouterConfig)) -> Setup {
    let pki = Pki::new(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let mut stamps = Vec::new();
    for (i, q) in quotas.iter().enumerate() {
        stamps.push(FakeStamp::start(&format!("stamp-{i}"), "127.0.0.1", *q, &pki).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let configs = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| s.config(&format!("hub-{i}.local"), &pki.ca.cert_pem))
        .collect();
    let mut config = router_config(
        &pki,
        "127.0.0.1",
        configs,
        StoreConfig::Embedded {
            dir: dir.path().to_path_buf(),
        },
    );
    tweak(&mut config);
    let directory = Arc::new(StaticDirectory::from_config(&config.stamps).unwrap());
    let router = iotstamp_router::start_with(config, directory.clone(), Arc::new(HttpStampClient::new()))
        .await
        .unwrap();
    let dps = Dps::new(&pki, router.https_addr);
    Setup {
        _pki: pki,
        stamps,
        router,
        directory,
        dps,
        _dir: dir,
    }
}

#[tokio::test]
async fn device_is_assigned_registered_with_its_derived_key_and_sticky() {
    let s = setup(&[10, 10], |_| {}).await;
    let reg = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
    let reply = s.dps.provision(reg).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["status"], "assigned");
    let state = &reply.body["registrationState"];
    assert_eq!(state["registrationId"], reg);
    assert_eq!(state["deviceId"], reg);
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["substatus"], "initialAssignment");
    for field in ["createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"] {
        assert!(state[field].is_string(), "{field} missing: {state}");
    }
    let hub = state["assignedHub"].as_str().unwrap().to_string();
    let idx: usize = hub
        .trim_start_matches("hub-")
        .trim_end_matches(".local")
        .parse()
        .unwrap();
    // The stamp holds the device with the documented derived key, and no other stamp does.
    let rec = s.stamps[idx].holds(reg).expect("device registered at its stamp");
    assert_eq!(rec.primary_key, "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
    assert_eq!(rec.enrollment_group.as_deref(), Some("fleet"));
    assert!(s.stamps[1 - idx].holds(reg).is_none());

    // Again, in another spelling: same stamp, nothing new written.
    let puts = s.stamps[idx].puts.load(std::sync::atomic::Ordering::Relaxed);
    let again = s.dps.provision(&reg.to_ascii_uppercase()).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["registrationState"]["assignedHub"], hub.as_str());
    assert_eq!(again.body["registrationState"]["etag"], state["etag"]);
    assert_eq!(
        s.stamps[idx].puts.load(std::sync::atomic::Ordering::Relaxed),
        puts
    );
    s.router.shutdown().await;
}

/// After the group key is rotated, a device that provisions again with its new derived key gets
/// that key at its stamp (else its hub would refuse it), and a device disabled at its stamp stays
/// disabled.
#[tokio::test]
async fn a_rotated_group_key_reaches_the_stamp_when_devices_provision_again() {
    use iotstamp_core::registry::DeviceStatus;
    const NEW_KEY: &str = "cm90YXRlZC1ncm91cC1rZXktZm9yLXRoZS13aG9sZS1mbGVldA==";
    let s = setup(&[10], |_| {}).await;
    for reg in ["rekeyed", "switched-off"] {
        assert_eq!(s.dps.provision(reg).await.status, 200);
    }
    s.stamps[0]
        .registry
        .lock()
        .unwrap()
        .get_mut("switched-off")
        .unwrap()
        .status = DeviceStatus::Disabled;
    let mut rotated = group("fleet", ReprovisionPolicy::Migrate);
    rotated.symmetric_key = Some(NEW_KEY.into());
    let errors = s.router.state.dps.provisioner.enrollments.replace(&[rotated]);
    assert!(errors.is_empty(), "{errors:?}");

    let new_key = |reg: &str| iotstamp_core::sas::derive_device_key(NEW_KEY, reg).unwrap();
    for reg in ["rekeyed", "switched-off"] {
        let token = python_token(reg, &new_key(reg), now() + 600);
        let reply = s.dps.register_with(reg, &token, Value::Null).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["registrationState"]["assignedHub"], "hub-0.local");
        assert_eq!(reply.body["registrationState"]["substatus"], "initialAssignment");
    }
    let held = s.stamps[0].holds("rekeyed").unwrap();
    assert_eq!(held.primary_key, new_key("rekeyed"));
    assert_eq!(held.status, DeviceStatus::Enabled);
    let held = s.stamps[0].holds("switched-off").unwrap();
    assert_eq!(held.primary_key, new_key("switched-off"));
    assert_eq!(
        held.status,
        DeviceStatus::Disabled,
        "provisioning must not re-enable a device"
    );

    // Current already: provisioning again writes nothing.
    let puts = s.stamps[0].puts.load(std::sync::atomic::Ordering::Relaxed);
    let token = python_token("rekeyed", &new_key("rekeyed"), now() + 600);
    assert_eq!(
        s.dps.register_with("rekeyed", &token, Value::Null).await.status,
        200
    );
    assert_eq!(s.stamps[0].puts.load(std::sync::atomic::Ordering::Relaxed), puts);
    // The old key is refused now.
    assert_eq!(s.dps.register("rekeyed").await.status, 401);
    s.router.shutdown().await;
}

#[tokio::test]
async fn slow_stamp_gives_202_then_poll_gives_200() {
    let s = setup(&[5], |c| c.assign_wait = Duration::from_millis(50)).await;
    *s.stamps[0].delay.lock().unwrap() = Duration::from_millis(600);
    let first = s.dps.register("slow-1").await;
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(first.body["status"], "assigning");
    assert_eq!(first.retry_after, Some(1));
    let op = first.body["operationId"].as_str().unwrap().to_string();
    let polled = s.dps.poll("slow-1", &op).await;
    assert_eq!(
        polled.status, 202,
        "still assigning while the stamp is slow: {polled:?}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let done = s.dps.poll("slow-1", &op).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["operationId"], op.as_str());
    assert_eq!(done.body["registrationState"]["assignedHub"], "hub-0.local");
    assert!(s.stamps[0].holds("slow-1").is_some());
    // Someone else's operation id is not this device's.
    let other = s.dps.poll("slow-2", &op).await;
    assert_dps_error(&other, 404, 404201);
    s.router.shutdown().await;
}

#[tokio::test]
async fn both_sdk_token_shapes_are_accepted() {
    let s = setup(&[10], |_| {}).await;
    let key = device_key("node-dev");
    let node = s
        .dps
        .register_with(
            "node-dev",
            &node_token("node-dev", &key, now() + 600),
            Value::Null,
        )
        .await;
    assert_eq!(node.status, 200, "{node:?}");
    let key = device_key("py-dev");
    let py = s
        .dps
        .register_with("py-dev", &python_token("py-dev", &key, now() + 600), Value::Null)
        .await;
    assert_eq!(py.status, 200, "{py:?}");
    s.router.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_in_the_dps_error_shape_and_change_nothing() {
    let s = setup(&[10], |_| {}).await;
    let key = device_key("dev-x");
    let expired = python_token("dev-x", &key, now() - 1);
    assert_dps_error(
        &s.dps.register_with("dev-x", &expired, Value::Null).await,
        401,
        401002,
    );
    let forged = python_token("dev-x", GROUP_KEY, now() + 600);
    assert_dps_error(
        &s.dps.register_with("dev-x", &forged, Value::Null).await,
        401,
        401002,
    );
    let other_device = python_token("dev-y", &device_key("dev-y"), now() + 600);
    assert_dps_error(
        &s.dps.register_with("dev-x", &other_device, Value::Null).await,
        401,
        401002,
    );
    assert_dps_error(
        &s.dps.register_with("dev-x", "Bearer nope", Value::Null).await,
        401,
        401002,
    );
    let bad_id = python_token("dev x", &device_key("dev x"), now() + 600);
    assert_dps_error(
        &s.dps.register_with("dev%20x", &bad_id, Value::Null).await,
        400,
        400004,
    );
    assert_eq!(s.stamps[0].len(), 0);
    s.router.shutdown().await;
}

#[tokio::test]
async fn no_capacity_is_429_with_retry_after_and_shows_in_metrics() {
    let s = setup(&[1], |_| {}).await;
    assert_eq!(s.dps.provision("first").await.status, 200);
    let full = s.dps.register("second").await;
    assert_dps_error(&full, 429, 429001);
    assert_eq!(full.retry_after, Some(1));
    let metrics = s.dps.metrics().await;
    assert!(
        metrics.contains("iotstamp_router_capacity_shortage_total{group=\"fleet\"} 1"),
        "{metrics}"
    );
    s.router.shutdown().await;
}

#[tokio::test]
async fn a_stamp_whose_registry_is_full_is_skipped() {
    let s = setup(&[1, 5], |_| {}).await;
    // stamp-0 is full in its own registry though the router has never used it.
    s.stamps[0].registry.lock().unwrap().insert(
        "squatter".into(),
        iotstamp_core::registry::DeviceRecord {
            device_id: iotstamp_core::ids::DeviceId::parse("squatter").unwrap(),
            primary_key: "AA==".into(),
            status: Default::default(),
            enrollment_group: None,
        },
    );
    for i in 0..4 {
        let r = s.dps.provision(&format!("d{i}")).await;
        assert_eq!(r.body["registrationState"]["assignedHub"], "hub-1.local", "{r:?}");
    }
    s.router.shutdown().await;
}

#[tokio::test]
async fn draining_stamp_moves_devices_under_migrate_with_their_twins_and_keeps_them_under_never() {
    let s = setup(&[10, 10], |c| {
        let mut never = group("keepers", ReprovisionPolicy::Never);
        never.id_scope = "0ne00OTHER".into();
        c.groups.push(never);
        c.stamps[1].ready = false;
    })
    .await;
    let first = s.dps.provision("mover").await;
    assert_eq!(first.body["registrationState"]["assignedHub"], "hub-0.local");
    let twin = json!({"version": 7, "tags": {"site": "a"}});
    drain_stamp_0_holding(&s, "mover", &twin);

    // Sticky unless the stamp is unusable: now it drains, so a migrate-policy device moves.
    let moved = s.dps.provision("mover").await;
    assert_eq!(moved.status, 200, "{moved:?}");
    let state = &moved.body["registrationState"];
    assert_eq!(state["assignedHub"], "hub-1.local");
    assert_eq!(state["substatus"], "deviceDataMigrated");
    assert!(s.stamps[1].holds("mover").is_some());
    // Its twin came along before it heard where to go.
    assert_eq!(s.stamps[1].twins.lock().unwrap().get("mover"), Some(&twin));
    // The old stamp forgets it (in the background).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.stamps[0].holds("mover").is_none());

    // A never-policy device stays on the draining stamp.
    let mut stamps = (*s.directory.snapshot()).clone();
    stamps[0].draining = false;
    stamps[1].ready = false;
    s.directory.set(stamps.clone());
    let dps_other = |reg: &str| {
        let key = sas_key_other(reg);
        (key, reg.to_string())
    };
    let (key, reg) = dps_other("keeper");
    let token = other_scope_token(&reg, &key);
    let first = s
        .dps
        .register_in("0ne00OTHER", &reg, &token, Value::Null)
        .await
        .body;
    assert_eq!(
        first["registrationState"]["assignedHub"], "hub-0.local",
        "{first}"
    );
    stamps[0].draining = true;
    stamps[1].ready = true;
    s.directory.set(stamps);
    let again = s
        .dps
        .register_in("0ne00OTHER", &reg, &token, Value::Null)
        .await
        .body;
    assert_eq!(
        again["registrationState"]["assignedHub"], "hub-0.local",
        "{again}"
    );
    s.router.shutdown().await;
}

#[tokio::test]
async fn a_twin_that_cannot_be_read_yet_holds_the_move_until_it_is_copied() {
    let s = setup(&[10, 10], |c| c.stamps[1].ready = false).await;
    assert_eq!(s.dps.provision("mover").await.status, 200);
    let twin = json!({"version": 3, "tags": {"floor": 2}});
    drain_stamp_0_holding(&s, "mover", &twin);

    // The draining stamp's twin store is away: the device is told to retry, and stays where its
    // twin is rather than moving without it.
    s.stamps[0].twin_outage.store(true, Ordering::Relaxed);
    let refused = s.dps.register("mover").await;
    assert_dps_error(&refused, 503, 503_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.stamps[0].holds("mover").is_some(),
        "forgotten before its twin was copied"
    );
    assert!(s.stamps[1].twins.lock().unwrap().get("mover").is_none());

    // The store is back: the next attempt finishes the move, twin and all.
    s.stamps[0].twin_outage.store(false, Ordering::Relaxed);
    moves_to_stamp_1_with(&s, "mover", &twin).await;

    let metrics = s.dps.metrics().await;
    for outcome in ["retry", "copied"] {
        let line = format!("iotstamp_router_twin_migrations_total{{outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains("outcome=\"lost\""), "{metrics}");
    s.router.shutdown().await;
}

#[tokio::test]
async fn a_stamp_that_refuses_a_moving_device_leaves_it_with_its_twin() {
    let s = setup(&[10, 1], |c| c.stamps[1].ready = false).await;
    assert_eq!(s.dps.provision("mover").await.status, 200);
    let twin = json!({"version": 2, "properties": {"reported": {"site": "north"}}});
    drain_stamp_0_holding(&s, "mover", &twin);
    // Stamp 1's registry is full although the router's count says it has room (a device
    // registered there out of band): it refuses the device.
    let squatter = s.stamps[0].holds("mover").unwrap();
    s.stamps[1]
        .registry
        .lock()
        .unwrap()
        .insert("squatter".into(), squatter);

    let refused = s.dps.register("mover").await;
    assert_dps_error(&refused, 429, 429_001);
    // Still assigned where its twin is, not left without a record (which would provision it
    // afresh elsewhere, twinless, and leave it registered at stamp 0 for ever).
    let (status, info) = s.dps.service_get("/v1/devices/mover").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (info["stamp"].as_str(), info["state"].as_str()),
        (Some("stamp-0"), Some("assigned"))
    );
    assert!(s.stamps[0].holds("mover").is_some());

    // Room at stamp 1: the next attempt moves the device and its twin.
    s.stamps[1].registry.lock().unwrap().remove("squatter");
    moves_to_stamp_1_with(&s, "mover", &twin).await;
    s.router.shutdown().await;
}

#[tokio::test]
async fn service_api_needs_a_token_and_routes_to_the_device_stamp() {
    let s = setup(&[10], |_| {}).await;
    assert_eq!(s.dps.provision("routed-1").await.status, 200);
    let url = format!("{}/v1/devices/routed-1", s.dps.base);
    let anon = s.dps.http.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let (_, info) = s.dps.service_get("/v1/devices/routed-1").await;
    assert_eq!(info["stamp"], "stamp-0");
    assert_eq!(info["hub"], "hub-0.local");
    assert_eq!(info["state"], "assigned");
    let (_, passed) = s
        .dps
        .service_get("/v1/devices/routed-1/telemetry?from=1&limit=5")
        .await;
    assert_eq!(passed, json!({"deviceId": "routed-1", "query": "from=1&limit=5"}));
    assert_eq!(s.dps.service_get("/v1/devices/nobody").await.0, 404);
    let openapi: Value = s
        .dps
        .http
        .get(format!("{}/openapi.json", s.dps.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/devices/{id}"].is_object());
    assert_eq!(
        s.dps
            .http
            .get(format!("{}/readyz", s.dps.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.router.shutdown().await;
}

/// `device` provisions again and moves from stamp 0 to stamp 1 with its `twin`; stamp 0 forgets it.
async fn moves_to_stamp_1_with(s: &Setup, device: &str, twin: &Value) {
    let moved = s.dps.provision(device).await;
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(moved.body["registrationState"]["assignedHub"], "hub-1.local");
    assert_eq!(moved.body["registrationState"]["substatus"], "deviceDataMigrated");
    assert_eq!(s.stamps[1].twins.lock().unwrap().get(device), Some(twin));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.stamps[0].holds(device).is_none());
}

/// Stamp 0 holds `twin` for `device` and starts draining; stamp 1 becomes ready to take it.
fn drain_stamp_0_holding(s: &Setup, device: &str, twin: &Value) {
    s.stamps[0]
        .twins
        .lock()
        .unwrap()
        .insert(device.into(), twin.clone());
    let mut stamps = (*s.directory.snapshot()).clone();
    stamps[0].draining = true;
    stamps[1].ready = true;
    s.directory.set(stamps);
}

fn sas_key_other(reg: &str) -> String {
    device_key(reg)
}

fn other_scope_token(reg: &str, key: &str) -> String {
    iotstamp_core::sas::sign(&format!("0ne00OTHER/registrations/{reg}"), key, now() + 600, None).unwrap()
}

#[tokio::test]
async fn custom_allocation_asks_the_webhook_in_the_azure_shape() {
    use axum::routing::post;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let record = seen.clone();
    let hook = axum::Router::new().route(
        "/allocate",
        post(move |axum::Json(req): axum::Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(req);
                axum::Json(json!({"iotHubHostName": "hub-1.local", "initialTwin": null}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/allocate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await });
    let s = setup(&[10, 10], |c| {
        c.groups[0].allocation = iotstamp_core::allocation::AllocationPolicy::Custom { url };
    })
    .await;
    let reply = s
        .dps
        .register_with(
            "hooked-1",
            &python_token("hooked-1", &device_key("hooked-1"), now() + 600),
            json!({"model": "x"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["registrationState"]["assignedHub"], "hub-1.local");
    assert!(s.stamps[1].holds("hooked-1").is_some());
    let req = seen.lock().unwrap()[0].clone();
    assert_eq!(req["enrollmentGroup"]["enrollmentGroupId"], "fleet");
    assert_eq!(req["deviceRuntimeContext"]["registrationId"], "hooked-1");
    assert_eq!(req["deviceRuntimeContext"]["payload"], json!({"model": "x"}));
    let mut hubs: Vec<String> = serde_json::from_value(req["linkedHubs"].clone()).unwrap();
    hubs.sort();
    assert_eq!(hubs, vec!["hub-0.local", "hub-1.local"]);
    s.router.shutdown().await;
}
