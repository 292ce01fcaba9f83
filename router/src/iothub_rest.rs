//! IoT Hub's own service REST paths, the ones the Azure service SDKs call (azure-iot-hub's
//! `IoTHubRegistryManager`, from a connection string), mapped onto the stamp API of the device's
//! stamp, so those SDKs work against the router unmodified:
//!
//! | IoT Hub | the stamp API |
//! | --- | --- |
//! | `GET`, `PATCH`, `PUT /twins/{id}` (`If-Match` with the twin's etag, or `*`) | the same on `/v1/devices/{id}/twin` |
//! | `GET /devices/{id}` (RegistryRead) | `GET /v1/registry/devices/{id}`, the record in IoT Hub's device shape (`deviceId`, `status`, `authentication.symmetricKey`) |
//! | `GET /devices?top=N` (RegistryRead) | every stamp's `GET /v1/registry/devices?limit=N`, merged in id order, the first N (1 to 1000; IoT Hub's default and cap 1000) in IoT Hub's device shape |
//! | `GET /statistics/devices` (RegistryRead) | every stamp's `GET /v1/registry/statistics`, summed: `totalDeviceCount`, `enabledDeviceCount`, `disabledDeviceCount` |
//! | `GET /statistics/service` (ServiceConnect) | every stamp's `GET /v1/stats`, summed: `connectedDeviceCount` |
//! | `POST /twins/{id}/methods` with `{"methodName", "payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}` | `POST /v1/devices/{id}/methods/{methodName}?timeout=…&connectTimeout=…` with the payload as the body; the answer `{"status", "payload"}` is IoT Hub's |
//!
//! The `api-version` query parameter the SDKs send is accepted and not used: these are the shapes
//! of api-version 2021-04-12. Twin and method calls need ServiceConnect ([`crate::access`]). Error
//! answers keep their status and come in IoT Hub's shape ([`crate::iothub_errors`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use iotstamp_core::api_bodies::{RegistryPage, RegistryStatistics, StampStats};
use iotstamp_core::policies::Permission;
use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::sas::url_encode;

use crate::service_api::{ServiceState, authorise, authorised_device, problem, to_device_stamp};

pub fn routes() -> Router<Arc<ServiceState>> {
    Router::new()
        .route("/twins/{id}", get(twin).patch(twin).put(twin))
        .route("/twins/{id}/methods", post(method))
        .route("/devices/{id}", get(device))
        .route("/devices", get(devices))
        .route("/statistics/devices", get(device_statistics))
        .route("/statistics/service", get(service_statistics))
        // Every error here in IoT Hub's shape, whether the router or the stamp gave it.
        .route_layer(axum::middleware::map_response(
            crate::iothub_errors::as_iot_hub_error,
        ))
}

/// IoT Hub's most devices in one `GET /devices` (and its default).
const DEVICES_LIMIT: usize = 1000;
/// The largest answer a stamp gives to a registry page of [`DEVICES_LIMIT`] records.
const PAGE_BYTES_LIMIT: usize = DEVICES_LIMIT * RECORD_LIMIT;

#[derive(Debug, serde::Deserialize)]
struct DevicesQuery {
    top: Option<i64>,
}

async fn devices(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    query: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(refused) = authorise(&state, &headers, Permission::RegistryRead, None) {
        return *refused;
    }
    let Ok(Query(q)) = query else {
        return problem(StatusCode::BAD_REQUEST, "badRequest", "`top` must be an integer");
    };
    // The SDK's rule: anything outside 1 to 1000 means 1000.
    let top = q
        .top
        .and_then(|t| usize::try_from(t).ok())
        .filter(|t| (1..=DEVICES_LIMIT).contains(t))
        .unwrap_or(DEVICES_LIMIT);
    let path = format!("/v1/registry/devices?limit={top}");
    let pages: Vec<RegistryPage> = match from_every_stamp(&state, &path, PAGE_BYTES_LIMIT).await {
        Ok(pages) => pages,
        Err(refused) => return *refused,
    };
    Json(first_devices(pages, top)).into_response()
}

/// The first `top` records of every stamp's first page, in key order, in IoT Hub's device shape.
/// Each stamp's page is its first `top` keys, so the merged first `top` are the fleet's.
fn first_devices(pages: Vec<RegistryPage>, top: usize) -> Vec<serde_json::Value> {
    let mut records: Vec<DeviceRecord> = pages.into_iter().flat_map(|p| p.items).collect();
    records.sort_by_key(|r| r.device_id.key());
    records.iter().take(top).map(iot_hub_device).collect()
}

async fn device_statistics(State(state): State<Arc<ServiceState>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorise(&state, &headers, Permission::RegistryRead, None) {
        return *refused;
    }
    let all: Vec<RegistryStatistics> =
        match from_every_stamp(&state, "/v1/registry/statistics", RECORD_LIMIT).await {
            Ok(all) => all,
            Err(refused) => return *refused,
        };
    let total: u64 = all.iter().map(|s| s.total).sum();
    let disabled: u64 = all.iter().map(|s| s.disabled).sum();
    Json(serde_json::json!({
        "totalDeviceCount": total,
        "enabledDeviceCount": total - disabled,
        "disabledDeviceCount": disabled,
    }))
    .into_response()
}

async fn service_statistics(State(state): State<Arc<ServiceState>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorise(&state, &headers, Permission::ServiceConnect, None) {
        return *refused;
    }
    let all: Vec<StampStats> = match from_every_stamp(&state, "/v1/stats", RECORD_LIMIT).await {
        Ok(all) => all,
        Err(refused) => return *refused,
    };
    let connected: u64 = all.iter().map(|s| s.connected).sum();
    Json(serde_json::json!({ "connectedDeviceCount": connected })).into_response()
}

/// `GET path` on every stamp the router knows, at once; every answer decoded as `T`. A stamp that
/// does not answer fails the call (a partial list or sum would be wrong without saying so).
async fn from_every_stamp<T: serde::de::DeserializeOwned>(
    state: &ServiceState,
    path: &str,
    limit: usize,
) -> Result<Vec<T>, Box<Response>> {
    let stamps = state.directory.snapshot();
    let calls = stamps.iter().map(|stamp| async move {
        let unavailable = |why: String| {
            Box::new(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "stampUnavailable",
                format!("stamp `{}`: {why}", stamp.name),
            ))
        };
        let answer = state
            .stamps
            .forward(stamp, Method::GET, path, &HeaderMap::new(), Bytes::new())
            .await
            .map_err(|e| unavailable(iotstamp_core::causes::Causes(&e).to_string()))?;
        if answer.status() != StatusCode::OK {
            return Err(unavailable(format!("answered {}", answer.status())));
        }
        let bytes = axum::body::to_bytes(answer.into_body(), limit)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        serde_json::from_slice::<T>(&bytes).map_err(|e| unavailable(format!("unreadable answer: {e}")))
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

/// The largest registry record a stamp answers with (a device id, a key, a status, a group).
const RECORD_LIMIT: usize = 16 * 1024;

async fn device(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let device = match authorised_device(&state, &headers, Permission::RegistryRead, &id) {
        Ok(d) => d,
        Err(refused) => return *refused,
    };
    let path = format!("/v1/registry/devices/{}", url_encode(device.as_str()));
    let answer = to_device_stamp(
        &state,
        &device,
        Method::GET,
        &path,
        &HeaderMap::new(),
        Bytes::new(),
    )
    .await;
    if answer.status() != StatusCode::OK {
        return answer;
    }
    let record = match axum::body::to_bytes(answer.into_body(), RECORD_LIMIT).await {
        Ok(bytes) => serde_json::from_slice::<DeviceRecord>(&bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match record {
        Ok(record) => Json(iot_hub_device(&record)).into_response(),
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            "stampUnavailable",
            format!("the stamp's registry answer is unreadable: {e}"),
        ),
    }
}

/// A registry record in IoT Hub's device shape, with only what the record knows: no etag or
/// generation (nothing here is conditional on them), no connection state.
fn iot_hub_device(record: &DeviceRecord) -> serde_json::Value {
    // The record's status serialises as IoT Hub spells it: `enabled`, `disabled`.
    serde_json::json!({
        "deviceId": record.device_id.as_str(),
        "status": record.status,
        "authentication": {
            "type": "sas",
            "symmetricKey": {"primaryKey": record.primary_key, "secondaryKey": null},
        },
        "capabilities": {"iotEdge": false},
    })
}

async fn twin(
    State(state): State<Arc<ServiceState>>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let device = match authorised_device(&state, &headers, Permission::ServiceConnect, &id) {
        Ok(d) => d,
        Err(refused) => return *refused,
    };
    let path = format!("/v1/devices/{}/twin", url_encode(device.as_str()));
    to_device_stamp(&state, &device, method, &path, &headers, body).await
}

/// IoT Hub's direct method request body.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCall {
    method_name: String,
    #[serde(default)]
    payload: serde_json::Value,
    response_timeout_in_seconds: Option<u64>,
    connect_timeout_in_seconds: Option<u64>,
}

/// The stamp API call for an IoT Hub method request: its path and query, and its body.
fn stamp_method_call(device_id: &str, body: &[u8]) -> Result<(String, Vec<u8>), String> {
    let call: MethodCall =
        serde_json::from_slice(body).map_err(|e| format!("not a direct method request: {e}"))?;
    if call.method_name.is_empty() {
        return Err("methodName is empty".into());
    }
    let mut path = format!(
        "/v1/devices/{}/methods/{}",
        url_encode(device_id),
        url_encode(&call.method_name)
    );
    let waits = [
        ("timeout", call.response_timeout_in_seconds),
        ("connectTimeout", call.connect_timeout_in_seconds),
    ];
    let mut separator = '?';
    for (name, value) in waits {
        if let Some(seconds) = value {
            path.push_str(&format!("{separator}{name}={seconds}"));
            separator = '&';
        }
    }
    let payload = serde_json::to_vec(&call.payload).map_err(|e| e.to_string())?;
    Ok((path, payload))
}

async fn method(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let device = match authorised_device(&state, &headers, Permission::ServiceConnect, &id) {
        Ok(d) => d,
        Err(refused) => return *refused,
    };
    let (path, payload) = match stamp_method_call(device.as_str(), &body) {
        Ok(call) => call,
        Err(message) => return problem(StatusCode::BAD_REQUEST, "badMethodRequest", message),
    };
    // The stamp gets the payload and nothing else of the caller's headers.
    let mut stamp_headers = HeaderMap::new();
    stamp_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    to_device_stamp(
        &state,
        &device,
        Method::POST,
        &path,
        &stamp_headers,
        payload.into(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_record_reads_as_an_iot_hub_device() {
        use iotstamp_core::ids::DeviceId;
        use iotstamp_core::registry::DeviceStatus;
        let mut record = DeviceRecord {
            device_id: DeviceId::parse("Dev-1").unwrap(),
            primary_key: "a2V5".into(),
            status: DeviceStatus::Enabled,
            enrollment_group: Some("g".into()),
        };
        let device = iot_hub_device(&record);
        assert_eq!(
            device,
            serde_json::json!({"deviceId": "Dev-1", "status": "enabled",
                "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "a2V5", "secondaryKey": null}},
                "capabilities": {"iotEdge": false}})
        );
        record.status = DeviceStatus::Disabled;
        assert_eq!(iot_hub_device(&record)["status"], "disabled");
    }

    #[test]
    fn the_fleets_first_devices_are_merged_from_every_stamps_first_page() {
        use iotstamp_core::ids::DeviceId;
        let record = |id: &str| DeviceRecord {
            device_id: DeviceId::parse(id).unwrap(),
            primary_key: "a2V5".into(),
            status: Default::default(),
            enrollment_group: None,
        };
        let page = |ids: &[&str]| RegistryPage {
            items: ids.iter().map(|id| record(id)).collect(),
            next: None,
        };
        let merged = first_devices(vec![page(&["b", "d"]), page(&["A", "c"])], 3);
        let ids: Vec<_> = merged.iter().map(|d| d["deviceId"].as_str().unwrap()).collect();
        assert_eq!(ids, ["A", "b", "c"]);
    }

    #[test]
    fn an_iot_hub_method_request_becomes_the_stamp_call_with_its_waits() {
        let body = br#"{"methodName": "re boot", "payload": {"delay": 5}, "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 10}"#;
        let (path, payload) = stamp_method_call("dev-1", body).unwrap();
        assert_eq!(
            path,
            "/v1/devices/dev-1/methods/re%20boot?timeout=30&connectTimeout=10"
        );
        assert_eq!(payload, br#"{"delay":5}"#);

        let (path, payload) = stamp_method_call("d", br#"{"methodName": "m"}"#).unwrap();
        assert_eq!(
            (path.as_str(), payload.as_slice()),
            ("/v1/devices/d/methods/m", &b"null"[..])
        );
        let (path, _) =
            stamp_method_call("d", br#"{"methodName": "m", "connectTimeoutInSeconds": 0}"#).unwrap();
        assert_eq!(path, "/v1/devices/d/methods/m?connectTimeout=0");

        for bad in [&br#"{"payload": 1}"#[..], b"not json", br#"{"methodName": ""}"#] {
            assert!(
                stamp_method_call("d", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
