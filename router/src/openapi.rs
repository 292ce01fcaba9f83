//! The router's OpenAPI document, served at `/openapi.json`: its own operations (DPS over HTTPS,
//! `/v1/stamps`, `/v1/devices/{id}`, health) from `openapi.json` beside this file, and the device
//! operations it passes through to stamps taken from the stamp API's document
//! ([`iotstamp_core::openapi`]), with what the router itself may answer instead added to each:
//! 400 `badDeviceId`, its own 401, 404 `deviceNotFound` (not assigned), 502 (the stamp is unknown or
//! does not answer) and 503 (the assignment store does not answer).

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

const ROUTER_API: &str = include_str!("openapi.json");

/// What the router answers on a passed-through call before (or instead of) the stamp.
const ROUTER_ANSWERS: [(&str, &str); 4] = [
    ("400", "badDeviceId (the router)"),
    ("404", "deviceNotFound: not assigned to any stamp (the router)"),
    (
        "502",
        "stampUnknown or stampUnavailable: the device's stamp is not in the directory or does not answer (the router)",
    ),
    (
        "503",
        "storeUnavailable: the assignment store does not answer (the router)",
    ),
];

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        // Both are files of this repository, parsed by a test: they cannot fail here.
        let router: Value = serde_json::from_str(ROUTER_API).unwrap_or_default();
        let stamp: Value = serde_json::from_str(iotstamp_core::openapi::STAMP_API).unwrap_or_default();
        merge(router, &stamp)
    })
}

fn merge(mut doc: Value, stamp: &Value) -> Value {
    for path in iotstamp_core::openapi::DEVICE_PATHS {
        let mut item = stamp["paths"][path].clone();
        if let Some(item) = item.as_object_mut() {
            for op in item.values_mut().filter_map(|op| op.get_mut("responses")) {
                add_router_answers(op, stamp);
            }
        }
        doc["paths"][path] = item;
    }
    add_iot_hub_paths(&mut doc, stamp);
    // The stamp's schemas and shared responses that the copied operations refer to; the router's
    // own win where both have one (its `Unauthorized` is about its own token).
    for kind in ["schemas", "responses"] {
        let Some(theirs) = stamp["components"][kind].as_object() else {
            continue;
        };
        let ours = doc["components"][kind]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut merged: Map<String, Value> = theirs.clone();
        merged.extend(ours);
        doc["components"][kind] = Value::Object(merged);
    }
    doc
}

/// IoT Hub's REST paths ([`crate::iothub_rest`]), described from the stamp operations they map to:
/// `/twins/{id}` is the stamp's twin, `/twins/{id}/methods` its method call with IoT Hub's body,
/// `/devices/{id}` its registry entry in IoT Hub's shape.
/// Both take `api-version` and a service token as well as the bearer token.
fn add_iot_hub_paths(doc: &mut Value, stamp: &Value) {
    let api_version = json!({"name": "api-version", "in": "query", "required": false,
        "description": "IoT Hub's API version; accepted and not used (the shapes are 2021-04-12's)",
        "schema": {"type": "string"}});
    let security = json!([{"bearer": []}, {"serviceSas": []}]);
    let mut twin = stamp["paths"]["/v1/devices/{id}/twin"].clone();
    if let Some(item) = twin.as_object_mut() {
        for (_, op) in item.iter_mut().filter(|(k, _)| *k != "parameters") {
            add_router_answers(&mut op["responses"], stamp);
            op["security"] = security.clone();
        }
        if let Some(params) = item.get_mut("parameters").and_then(Value::as_array_mut) {
            params.push(api_version.clone());
        }
    }
    doc["paths"]["/twins/{id}"] = twin;

    let mut method = stamp["paths"]["/v1/devices/{id}/methods/{name}"]["post"].clone();
    method["summary"] =
        json!("Invoke a direct method (IoT Hub's request body) and wait for the device's answer");
    method["parameters"] = json!([api_version]);
    method["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
    "type": "object", "required": ["methodName"],
    "properties": {
        "methodName": {"type": "string", "minLength": 1},
        "payload": {"description": "the method's payload, any JSON"},
        "responseTimeoutInSeconds": {"type": "integer", "minimum": 5, "maximum": 300, "default": 30},
        "connectTimeoutInSeconds": {"type": "integer", "minimum": 0, "maximum": 300, "default": 0}
    }}}}});
    add_router_answers(&mut method["responses"], stamp);
    let bad = method["responses"]["400"]["description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    method["responses"]["400"]["description"] = json!(format!(
        "badMethodRequest: not IoT Hub's method request (the router); or {bad}"
    ));
    method["security"] = security;
    let id_parameter = stamp["paths"]["/v1/devices/{id}/twin"]["parameters"][0].clone();
    doc["paths"]["/twins/{id}/methods"] = json!({
        "parameters": [id_parameter.clone()],
        "post": method,
    });

    let mut device = stamp["paths"]["/v1/registry/devices/{id}"]["get"].clone();
    device["summary"] = json!("The device's registry entry in IoT Hub's shape");
    device["parameters"] = json!([api_version]);
    device["responses"]["200"] = json!({"description": "the device", "content": {"application/json": {"schema": {
    "type": "object", "required": ["deviceId", "status", "authentication"],
    "properties": {
        "deviceId": {"type": "string"},
        "status": {"type": "string", "enum": ["enabled", "disabled"]},
        "authentication": {"type": "object", "properties": {
            "type": {"type": "string", "enum": ["sas"]},
            "symmetricKey": {"type": "object", "properties": {
                "primaryKey": {"type": "string"}, "secondaryKey": {"type": "string", "nullable": true}}}}},
        "capabilities": {"type": "object", "properties": {"iotEdge": {"type": "boolean"}}}
    }}}}});
    add_router_answers(&mut device["responses"], stamp);
    device["security"] = json!([{"bearer": []}, {"serviceSas": []}]);
    doc["paths"]["/devices/{id}"] = json!({"parameters": [id_parameter], "get": device.clone()});

    // Fleet-wide calls, answered from every stamp at once.
    let every_stamp = json!({"description": "stampUnavailable: a stamp did not answer (the router)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let fleet_call = |summary: &str, parameters: Value, body: Value| {
        json!({"get": {
            "summary": summary,
            "parameters": parameters,
            "security": [{"bearer": []}, {"serviceSas": []}],
            "responses": {
                "200": {"description": "the answer", "content": {"application/json": {"schema": body}}},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "503": every_stamp,
            }
        }})
    };
    let top = json!({"name": "top", "in": "query", "required": false,
        "description": "at most this many devices; outside 1 to 1000 means 1000",
        "schema": {"type": "integer"}});
    let mut devices = fleet_call(
        "The fleet's first devices in id order, in IoT Hub's shape (RegistryRead)",
        json!([top, api_version]),
        json!({"type": "array", "items": device["responses"]["200"]["content"]["application/json"]["schema"]}),
    );
    devices["get"]["responses"]["400"] = json!({"description": "badRequest: `top` is not an integer",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    doc["paths"]["/devices"] = devices;
    let count = json!({"type": "integer", "minimum": 0});
    doc["paths"]["/statistics/devices"] = fleet_call(
        "How many devices the fleet's registries hold (RegistryRead)",
        json!([api_version]),
        json!({"type": "object", "required": ["totalDeviceCount", "enabledDeviceCount", "disabledDeviceCount"],
            "properties": {"totalDeviceCount": count, "enabledDeviceCount": count, "disabledDeviceCount": count}}),
    );
    doc["paths"]["/statistics/service"] = fleet_call(
        "How many devices are connected across the fleet (ServiceConnect)",
        json!([api_version]),
        json!({"type": "object", "required": ["connectedDeviceCount"],
            "properties": {"connectedDeviceCount": count}}),
    );
    iot_hub_error_shapes(doc, stamp);
}

/// IoT Hub's paths answer errors in IoT Hub's shape (`crate::iothub_errors`): every error response
/// of theirs keeps its description and gets that body and the `iothub-errorcode` header.
fn iot_hub_error_shapes(doc: &mut Value, stamp: &Value) {
    doc["components"]["schemas"]["IotHubError"] = json!({"type": "object", "required": ["Message"],
        "properties": {"Message": {"type": "string", "description": "ErrorCode:<IoT Hub's code>;<what went wrong>"},
                       "ExceptionMessage": {"type": "string"}}});
    let header =
        json!({"iothub-errorcode": {"description": "IoT Hub's error code", "schema": {"type": "string"}}});
    let router = doc.clone();
    for path in IOT_HUB_PATHS {
        let Some(item) = doc["paths"][path].as_object_mut() else {
            continue;
        };
        for (_, op) in item.iter_mut().filter(|(k, _)| *k != "parameters") {
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            for (status, response) in responses.iter_mut().filter(|(s, _)| !s.starts_with('2')) {
                let description = resolve(response, stamp)
                    .or_else(|| resolve(response, &router))
                    .and_then(|r| r["description"].as_str())
                    .unwrap_or(status)
                    .to_string();
                *response = json!({"description": description, "headers": header,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IotHubError"}}}});
            }
        }
    }
}

/// IoT Hub's own REST paths, served by `crate::iothub_rest`.
const IOT_HUB_PATHS: [&str; 6] = [
    "/twins/{id}",
    "/twins/{id}/methods",
    "/devices/{id}",
    "/devices",
    "/statistics/devices",
    "/statistics/service",
];

/// Adds the router's own answers to one passed-through operation's responses: where the stamp
/// documents the same status, one response whose description names both.
fn add_router_answers(responses: &mut Value, stamp: &Value) {
    for (status, router_says) in ROUTER_ANSWERS {
        let combined = match resolve(&responses[status], stamp) {
            Some(stamps) => {
                let mut r = stamps.clone();
                let theirs = r["description"].as_str().unwrap_or_default().to_string();
                r["description"] = json!(format!("{theirs}; or {router_says}"));
                r
            }
            None => json!({
                "description": router_says,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }),
        };
        responses[status] = combined;
    }
    // The router checks its own token; the stamp's token is the router's business.
    responses["401"] = json!({"$ref": "#/components/responses/Unauthorized"});
}

/// A response, with a local `$ref` into the stamp's document followed.
fn resolve<'a>(response: &'a Value, stamp: &'a Value) -> Option<&'a Value> {
    match response.get("$ref").and_then(Value::as_str) {
        Some(r) => stamp.pointer(r.strip_prefix('#')?),
        None => response.as_object().map(|_| response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn assert_references_resolve(doc: &Value, name: &str) {
        let mut found = Vec::new();
        refs(doc, &mut found);
        assert!(!found.is_empty(), "{name} has no references");
        for r in found {
            assert!(doc.pointer(&r[1..]).is_some(), "{name}: {r} does not resolve");
        }
    }

    #[test]
    fn both_files_parse_and_every_reference_resolves_in_the_stamps_and_the_merged_document() {
        serde_json::from_str::<Value>(ROUTER_API).expect("router/src/openapi.json is JSON");
        let stamp: Value =
            serde_json::from_str(iotstamp_core::openapi::STAMP_API).expect("stamp-api.json is JSON");
        assert_references_resolve(&stamp, "the stamp's document");
        assert_references_resolve(document(), "the router's document");
    }

    #[test]
    fn a_passed_through_operation_lists_the_stamps_answers_and_the_routers() {
        let method = &document()["paths"]["/v1/devices/{id}/methods/{name}"]["post"]["responses"];
        let described = |s: &str| method[s]["description"].as_str().unwrap_or_default().to_string();
        assert!(
            described("404").contains("deviceNotConnected"),
            "{}",
            described("404")
        );
        assert!(described("404").contains("not assigned"), "{}", described("404"));
        assert!(described("504").contains("timeout"));
        assert!(
            described("502").contains("deviceDisconnected") && described("502").contains("stampUnavailable")
        );
        assert_eq!(method["401"]["$ref"], "#/components/responses/Unauthorized");
        let telemetry = &document()["paths"]["/v1/devices/{id}/telemetry"]["get"];
        assert_eq!(telemetry["parameters"][0]["name"], "from");
        assert!(
            telemetry["responses"]["404"]["description"]
                .as_str()
                .unwrap()
                .contains("not assigned")
        );
    }

    #[test]
    fn the_iot_hub_paths_are_described_with_the_stamps_answers_and_the_routers() {
        let twin = &document()["paths"]["/twins/{id}"];
        for op in ["get", "patch", "put"] {
            let described = twin[op]["responses"]["404"]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(described.contains("not assigned"), "{op}: {described}");
            assert_eq!(twin[op]["security"][1], json!({"serviceSas": []}));
        }
        assert_eq!(twin["parameters"][1]["name"], "api-version");
        let method = &document()["paths"]["/twins/{id}/methods"]["post"];
        assert_eq!(
            method["requestBody"]["content"]["application/json"]["schema"]["required"],
            json!(["methodName"])
        );
        assert!(
            method["responses"]["400"]["description"]
                .as_str()
                .unwrap()
                .contains("badMethodRequest")
        );
        assert!(
            method["responses"]["504"]["description"]
                .as_str()
                .unwrap()
                .contains("timeout")
        );
        assert_references_resolve(document(), "the router's document");
    }
}
