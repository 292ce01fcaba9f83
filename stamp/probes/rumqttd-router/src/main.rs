// Probe (kept out of the workspace build): rumqttd 0.20 as the C2D/method router for N devices vs the
// stamp's approach (one bounded channel per connected device in a HashMap).
use std::collections::HashMap;
use std::time::Instant;
use rumqttd::{Broker, Config, Notification};

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb / 1024.0
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let which = std::env::args().nth(2).unwrap_or_else(|| "rumqttd".into());
    let base = rss_mib();
    if which == "rumqttd" {
        let router = rumqttd::RouterConfig {
            max_connections: n + 10,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let config = Config { id: 0, router, v4: None, v5: None, ws: None, cluster: None, console: None, bridge: None, prometheus: None, metrics: None };
        let broker = Broker::new(config);
        let t = Instant::now();
        let mut links = Vec::new();
        for i in 0..n {
            let (mut tx, rx) = broker.link(&format!("dev-{i}")).unwrap();
            tx.subscribe(format!("devices/dev-{i}/messages/devicebound/#")).unwrap();
            links.push((tx, rx));
        }
        let setup = t.elapsed();
        let (mut api, _api_rx) = broker.link("api").unwrap();
        let t = Instant::now();
        for i in 0..n {
            api.publish(format!("devices/dev-{i}/messages/devicebound/"), vec![b'x'; 100]).unwrap();
        }
        let mut got = 0;
        for (_, rx) in links.iter_mut() {
            loop {
                match rx.recv().unwrap() {
                    Some(Notification::Forward(_)) => { got += 1; break; }
                    _ => continue,
                }
            }
        }
        let deliver = t.elapsed();
        println!("rumqttd: {n} device links+filters in {:.2}s; {got} C2D delivered in {:.3}s ({:.0}/s); RSS +{:.0} MiB",
            setup.as_secs_f64(), deliver.as_secs_f64(), got as f64 / deliver.as_secs_f64(), rss_mib() - base);
        // Disconnect every device and reconnect: are per-filter logs freed?
        let before = rss_mib();
        drop(links);
        std::thread::sleep(std::time::Duration::from_secs(2));
        println!("rumqttd: after dropping all {n} links RSS {:.0} MiB (was {:.0})", rss_mib() - base, before - base);
    } else {
        let t = Instant::now();
        let mut table = HashMap::new();
        let mut rxs = Vec::new();
        for i in 0..n {
            let (tx, rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(64);
            table.insert(format!("dev-{i}"), tx);
            rxs.push(rx);
        }
        let setup = t.elapsed();
        let t = Instant::now();
        for i in 0..n {
            let id = format!("dev-{i}");
            table[&id].try_send((format!("devices/{id}/messages/devicebound/"), vec![b'x'; 100])).unwrap();
        }
        let got = rxs.iter_mut().map(|rx| rx.try_recv().is_ok() as usize).sum::<usize>();
        let deliver = t.elapsed();
        println!("session table: {n} entries in {:.3}s; {got} C2D delivered in {:.3}s ({:.0}/s); RSS +{:.0} MiB",
            setup.as_secs_f64(), deliver.as_secs_f64(), got as f64 / deliver.as_secs_f64(), rss_mib() - base);
    }
}
