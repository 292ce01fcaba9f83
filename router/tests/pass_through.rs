//! Long calls passed through the router to a stamp, over real HTTPS sockets on loopback: a live
//! stream stays open past the router's call timeout as long as both ends stay, a direct method waits
//! for its own timeout, and only the headers of other calls are bound by the call timeout. The
//! router runs with a 1 s call timeout so that "past it" takes seconds, not minutes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use common::{APP_TOKEN, FakeStamp, Pki, router_config};
use futures::StreamExt;
use iotstamp_router::adapters::directory::StaticDirectory;
use iotstamp_router::adapters::stamp_client::HttpStampClient;
use iotstamp_router::config::StoreConfig;
use serde_json::{Value, json};

const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the stand-in device takes to answer a method: well past the call timeout.
const DEVICE_ANSWERS_AFTER: Duration = Duration::from_millis(2500);

/// The stamp API calls under test: an endless live stream (one event every 200 ms), a method whose
/// device answers after [`DEVICE_ANSWERS_AFTER`], and a C2D send that never answers.
fn stamp_routes() -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/devices/{id}/stream",
            get(|| async {
                let ticks = futures::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(n.to_string())),
                        n + 1,
                    ))
                });
                Sse::new(ticks).keep_alive(KeepAlive::default())
            }),
        )
        .route(
            "/v1/devices/{id}/methods/{name}",
            post(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    tokio::time::sleep(DEVICE_ANSWERS_AFTER).await;
                    axum::Json(json!({"status": 200, "payload": {"asked": q}}))
                },
            ),
        )
        .route(
            "/v1/devices/{id}/messages",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_and_slow_methods_outlive_the_call_timeout_and_other_calls_do_not() {
    let pki = Pki::new(&["127.0.0.1"]);
    let stamp = FakeStamp::start_with_routes("s1", "127.0.0.1", 10, &pki, stamp_routes()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = router_config(
        &pki,
        "127.0.0.1",
        vec![stamp.config("hub-0.local", &pki.ca.cert_pem)],
        StoreConfig::Embedded {
            dir: dir.path().to_path_buf(),
        },
    );
    let directory = Arc::new(StaticDirectory::from_config(&config.stamps).unwrap());
    let router = iotstamp_router::start_with(
        config,
        directory,
        Arc::new(HttpStampClient::with_call_timeout(CALL_TIMEOUT)),
    )
    .await
    .unwrap();
    let dps = common::Dps::new(&pki, router.https_addr);
    assert_eq!(dps.provision("dev1").await.status, 200);
    let url = |path: &str| format!("https://{}{path}", router.https_addr);

    // The live stream: events keep coming through the router for 3 x the call timeout.
    let started = Instant::now();
    let resp = dps
        .http
        .get(url("/v1/devices/dev1/stream"))
        .bearer_auth(APP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut events = 0;
    while started.elapsed() < 3 * CALL_TIMEOUT {
        match tokio::time::timeout(Duration::from_secs(2), body.next()).await {
            Ok(Some(Ok(chunk))) => events += chunk.windows(5).filter(|w| w == b"data:").count(),
            other => panic!(
                "the stream ended after {:?} and {events} events: {other:?}",
                started.elapsed()
            ),
        }
    }
    eprintln!(
        "live stream through the router: {events} events in {:?}, still open",
        started.elapsed()
    );
    assert!(events >= 12, "events kept coming: {events}");
    drop(body);

    // The method: the device answers after 2.5 s, past the call timeout; the method's own timeout
    // (10 s) is what the router waits for.
    let started = Instant::now();
    let resp = dps
        .http
        .post(url("/v1/devices/dev1/methods/reboot?timeout=10"))
        .bearer_auth(APP_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.unwrap();
    eprintln!("method answered after {took:?} through the router: {status} {answer}");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["payload"]["asked"]["timeout"], "10");
    assert!(took >= DEVICE_ANSWERS_AFTER, "{took:?}");

    // Anything else still gets the call timeout for its headers: 502, not a hung caller.
    let started = Instant::now();
    let resp = dps
        .http
        .post(url("/v1/devices/dev1/messages"))
        .bearer_auth(APP_TOKEN)
        .body("hello")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 502);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["error"], "stampUnavailable", "{problem}");
    assert!(took < Duration::from_secs(5), "cut at the call timeout: {took:?}");
}
