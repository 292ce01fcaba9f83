//! What a person sees when the operator cannot realise a stamp: a missing TLS Secret, a missing
//! permission. Both must show on the stamp, touch nothing else, and recover by themselves.

use std::time::Duration;

use iotstamp_api::IoTStamp;
use iotstamp_e2e::cluster::{Cluster, OPERATOR_SA, SYSTEM_NAMESPACE};
use iotstamp_e2e::operator::Operator;
use iotstamp_e2e::stamps::{ready_condition, stamp, wait_ready};
use iotstamp_e2e::volumes::VolumeBinder;
use iotstamp_e2e::wait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

#[tokio::test]
async fn a_missing_tls_secret_blocks_the_stamp_until_it_appears() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("tls").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let operator = Operator::start(&cluster, &ns.name, OPERATOR_SA)?;
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &stamp(
            "t1",
            json!({"deviceQuota": 10, "hub": {"tls": {"secretName": "my-cert"}}}),
        ),
    )
    .await?;
    let (_, reason, _) = wait::until("Ready=False with a reason", Duration::from_secs(30), || async {
        Ok(ready_condition(&api, "t1")
            .await?
            .filter(|(s, _, _)| s == "False"))
    })
    .await
    .map_err(|e| e.context(operator.log_text()))?;
    assert_eq!(reason, "TLSSecretMissing");
    let events = cluster.run("kubectl", &["get", "events", "-n", &ns.name, "-o", "json"])?;
    assert!(
        events.contains("TLSSecretMissing") && events.contains("my-cert"),
        "no event names the Secret"
    );
    // Nothing else was touched.
    let sts: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        sts.list(&Default::default()).await?.items.is_empty(),
        "children were created for a blocked stamp"
    );

    let ca = self_signed_pair();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "my-cert"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": ca.0, "tls.key": ca.1}
    }))?;
    Api::<Secret>::namespaced(cluster.client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    wait_ready(&api, "t1").await?;
    let hub = sts.get("t1-hub").await?;
    let volumes = hub.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    let secret_of = |volume: &str| {
        volumes
            .iter()
            .find(|v| v.name == volume)
            .and_then(|v| v.secret.as_ref()?.secret_name.clone())
    };
    // Devices get the user's certificate; the stamp API keeps the operator's, whose CA the router
    // and the stats poller trust.
    assert_eq!(secret_of("tls").as_deref(), Some("my-cert"));
    assert_eq!(secret_of("api-tls").as_deref(), Some("t1-hub-tls"));
    let issued = Api::<Secret>::namespaced(cluster.client.clone(), &ns.name)
        .get("t1-hub-tls")
        .await?;
    let data = issued.data.unwrap_or_default();
    assert!(
        ["tls.crt", "tls.key", "ca.crt"]
            .iter()
            .all(|k| data.contains_key(*k)),
        "{:?}",
        data.keys()
    );
    drop(operator);
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    Ok(())
}

/// A self-signed pair is enough: the operator checks that the Secret holds a certificate and key.
fn self_signed_pair() -> (String, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=t1-hub",
            "-keyout",
            "/dev/stdout",
            "-out",
            "/dev/stdout",
        ])
        .output()
        .expect("openssl is needed (run .ci/setup-deps)");
    let pem = String::from_utf8(out.stdout).unwrap();
    let key_end = pem.find("-----END PRIVATE KEY-----").unwrap() + "-----END PRIVATE KEY-----".len();
    (pem[key_end..].trim().to_string(), pem[..key_end].to_string())
}

#[tokio::test]
async fn a_missing_permission_shows_on_the_stamp() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("rbac").await?;
    // The chart's ClusterRole without the right to write NetworkPolicies.
    let role: serde_json::Value = serde_json::from_str(&cluster.run(
        "kubectl",
        &[
            "get",
            "clusterrole",
            "-l",
            "app.kubernetes.io/name=iotstamp",
            "-o",
            "json",
        ],
    )?)?;
    let role = role["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|r| r["rules"].to_string().contains("iotstamps"))
        })
        .cloned()
        .expect("the chart installs a ClusterRole for the operator");
    let mut rules = role["rules"].clone();
    for rule in rules.as_array_mut().unwrap() {
        if rule["resources"].to_string().contains("networkpolicies") {
            rule["verbs"] = json!(["get", "list", "watch"]);
        }
    }
    let sa = "iotstamp-restricted";
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": SYSTEM_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": sa}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": sa},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": SYSTEM_NAMESPACE}]},
    ]});
    let file = std::env::temp_dir().join(format!("{sa}-{}.json", ns.name));
    std::fs::write(&file, manifest.to_string())?;
    cluster.run("kubectl", &["apply", "-f", file.to_str().unwrap()])?;
    // The CA Secret lives in the system namespace; the restricted role reads it like the real one.
    let operator = Operator::start(&cluster, &ns.name, sa)?;
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &stamp("r1", json!({"deviceQuota": 10})))
        .await?;
    let (_, reason, s) = wait::until(
        "Ready=False for lack of permission",
        Duration::from_secs(30),
        || async {
            Ok(ready_condition(&api, "r1")
                .await?
                .filter(|(st, r, _)| st == "False" && r == "Forbidden"))
        },
    )
    .await
    .map_err(|e| e.context(operator.log_text()))?;
    assert_eq!(reason, "Forbidden");
    let message = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("networkpolicies"),
        "the condition does not name what is missing: {message}"
    );
    drop(operator);
    Ok(())
}
