//! 1,000 devices provisioning at once against tight quotas: no stamp goes over quota, and every
//! device is either assigned exactly once or told to retry. Embedded store and PostgreSQL.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use iotstamp_router::config::StoreConfig;

async fn burst(store: StoreConfig) {
    let pki = Pki::new(&["127.0.0.1"]);
    let quotas = [150usize, 100, 50];
    let mut stamps = Vec::new();
    for (i, q) in quotas.iter().enumerate() {
        stamps.push(FakeStamp::start(&format!("stamp-{i}"), "127.0.0.1", *q, &pki).await);
    }
    let configs = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| s.config(&format!("hub-{i}"), &pki.ca.cert_pem))
        .collect();
    let router = iotstamp_router::start(router_config(&pki, "127.0.0.1", configs, store))
        .await
        .unwrap();
    let dps = Arc::new(Dps::new(&pki, router.https_addr));

    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let dps = dps.clone();
            tokio::spawn(async move {
                let reg = format!("burst-{i:04}");
                let reply = dps.provision(&reg).await;
                (reg, reply)
            })
        })
        .collect();
    let mut assigned: HashMap<String, String> = HashMap::new();
    let mut told_to_retry = Vec::new();
    for t in tasks {
        let (reg, reply) = t.await.unwrap();
        match reply.status {
            200 => {
                let hub = reply.body["registrationState"]["assignedHub"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(assigned.insert(reg, hub).is_none());
            }
            429 => {
                assert!(reply.retry_after.is_some(), "{reply:?}");
                told_to_retry.push(reg);
            }
            _ => panic!("unexpected answer for {reg}: {reply:?}"),
        }
    }
    // Retrying fills whatever the races left free, and no more.
    for reg in &told_to_retry {
        let reply = dps.provision(reg).await;
        if reply.status == 200 {
            assigned.insert(
                reg.clone(),
                reply.body["registrationState"]["assignedHub"]
                    .as_str()
                    .unwrap()
                    .into(),
            );
        } else {
            assert_eq!(reply.status, 429, "{reply:?}");
        }
    }
    assert_eq!(assigned.len(), 300, "total capacity is 300");
    for (i, s) in stamps.iter().enumerate() {
        assert!(
            s.len() <= s.quota,
            "stamp-{i} holds {} > quota {}",
            s.len(),
            s.quota
        );
        assert_eq!(s.len(), s.quota, "stamp-{i} should be full");
    }
    // Each assigned device is registered at exactly the stamp it was told, and nowhere else.
    for (reg, hub) in &assigned {
        let holders: Vec<usize> = (0..stamps.len())
            .filter(|i| stamps[*i].holds(reg).is_some())
            .collect();
        assert_eq!(holders.len(), 1, "{reg} is held by {holders:?}");
        assert_eq!(hub, &format!("hub-{}", holders[0]));
    }
    let counts = router.state.dps.provisioner.store.counts().await.unwrap();
    for (i, q) in quotas.iter().enumerate() {
        assert_eq!(counts.get(&format!("stamp-{i}")).copied().unwrap_or(0), *q as u64);
    }
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_devices_at_once_embedded() {
    let dir = tempfile::tempdir().unwrap();
    burst(StoreConfig::Embedded {
        dir: dir.path().to_path_buf(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_devices_at_once_postgres() {
    let pg = pg::Postgres::start();
    burst(StoreConfig::Postgres {
        url: pg.url(),
        pool_size: 16,
    })
    .await;
}
