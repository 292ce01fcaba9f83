//! The local-mode web page in headless Chromium: the numbers it renders are the stamps' and the
//! router's; its live stream sends the same view; and `up` still stops promptly on SIGTERM while a
//! browser holds the stream open.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Up, simulate, stdout_of_success};
use iotstamp_local::dps::https_client;
use iotstamp_local::stamp_api::stamp_apis;
use iotstamp_local::state::StateDir;
use iotstamp_local::web::FleetView;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The text of `<... id="{id}">TEXT<` in `dom`.
fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page"))
        + marker.len();
    &dom[start..start + dom[start..].find('<').unwrap()]
}

/// The text of the `data-field="{field}"` cell in the row of `stamp`.
fn cell<'a>(dom: &'a str, stamp: &str, field: &str) -> &'a str {
    let row_start = dom
        .find(&format!("data-stamp=\"{stamp}\""))
        .unwrap_or_else(|| panic!("no row for {stamp} in the page"));
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
    // The cell's other attributes (a class) may follow: the text starts after the tag's `>`.
    let attr = row
        .find(&format!("data-field=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} for {stamp} in {row}"));
    let start = attr + row[attr..].find('>').unwrap() + 1;
    &row[start..start + row[start..].find('<').unwrap()]
}

fn headless_dom(url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"
    );
    stdout_of_success(Command::new(CHROMIUM).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_what_the_apis_say_and_streams_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut up = Up::start(
        &state,
        &[
            "--address",
            "127.0.67.10",
            "--stamps",
            "2",
            "--quota",
            "10",
            "--web-port",
            "8080",
        ],
    );
    let page = up.wait_for("web page", Duration::from_secs(1));
    assert!(page.contains("http://127.0.67.10:8080/"), "{page}");
    let sim = ["--devices", "6", "--rate", "12", "--duration", "1s"];
    let (summary, status) = tokio::task::block_in_place(|| simulate(&state, &sim));
    assert!(status.success() && summary.provisioned == 6, "{summary:#?}");

    // The router reports counts every 2 s and the page samples every second.
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(15);
    let view: FleetView = loop {
        let v: FleetView = http
            .get("http://127.0.67.10:8080/api/fleet")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v.assigned == 6 {
            break v;
        }
        assert!(Instant::now() < until, "the page never counted 6 devices: {v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!((view.total_quota, view.utilization_percent), (20, 30));

    let dom = tokio::task::block_in_place(|| headless_dom("http://127.0.67.10:8080/?live=0"));
    assert_eq!(by_id(&dom, "stamp-count"), "2");
    assert_eq!(by_id(&dom, "assigned"), "6");
    assert_eq!(by_id(&dom, "total-quota"), "20");
    assert_eq!(by_id(&dom, "utilization"), "30");
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let ca = std::fs::read_to_string(state.join("ca.crt")).unwrap();
    let mut on_page = 0;
    for s in stamp_apis(&fleet, &https_client(&ca).unwrap()) {
        let stats = s.api.stats().await.unwrap();
        let quota = stats
            .device_quota
            .expect("a stamp of this version reports its quota");
        assert_eq!(cell(&dom, &s.name, "hub"), s.hub);
        assert_eq!(cell(&dom, &s.name, "quota"), quota.to_string());
        assert_eq!(cell(&dom, &s.name, "registered"), stats.registered.to_string());
        assert_eq!(cell(&dom, &s.name, "assigned"), stats.registered.to_string());
        let pct = 100 * stats.registered / quota;
        assert!(cell(&dom, &s.name, "utilization").starts_with(&format!("{pct}%")));
        on_page += cell(&dom, &s.name, "registered").parse::<u64>().unwrap();
    }
    assert_eq!(on_page, 6);

    // The live stream sends the same view; `up` stops promptly while it is open.
    let mut stream = http
        .get("http://127.0.67.10:8080/api/events")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let live: FleetView = serde_json::from_str(data).unwrap();
    assert_eq!((live.assigned, live.stamps.len()), (6, 2), "{text}");

    let started = Instant::now();
    let (status, lines) = tokio::task::block_in_place(|| up.terminate());
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(stream);
}
