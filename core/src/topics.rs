//! The IoT Hub MQTT topic dialect, and the per-device access rule over it.
//!
//! A device speaks only these topics (see docs/protocols/azure-iot.md):
//! - telemetry: publish `devices/{id}/messages/events/{property bag}`;
//! - cloud-to-device: subscribe `devices/{id}/messages/devicebound/#`, delivered on
//!   `devices/{id}/messages/devicebound/{property bag}`;
//! - direct methods: subscribe `$iothub/methods/POST/#`, requests on `$iothub/methods/POST/{name}/?$rid=R`,
//!   answered by publishing `$iothub/methods/res/{status}/?$rid=R`;
//! - twin: subscribe `$iothub/twin/res/#` (and desired-property patches), publish `$iothub/twin/GET/?$rid=R`
//!   or `$iothub/twin/PATCH/properties/reported/?$rid=R`; desired changes are pushed on
//!   `$iothub/twin/PATCH/properties/desired/?$version=N`. A device has no topic to write desired
//!   properties: publishing to that one is refused like any topic not listed.
//!
//! The `$iothub/...` topics carry no device id: they are scoped by the connection, so the hub must never
//! route one device's `$iothub` traffic to another. Everything not listed is refused, `#` included: the
//! access decision is a whitelist, not a blacklist. Device ids in topics compare case-insensitively,
//! like [`crate::ids::DeviceId::key`].

use percent_encoding::percent_decode_str;

use crate::sas::url_encode;

/// An ordered property bag (`k=v&k=v`), keys and values url-decoded. Order is kept because the SDKs
/// read it back in order and some keys (`$.mid`) are expected first by humans reading logs.
pub type Properties = Vec<(String, String)>;

/// What a device's PUBLISH means, once the topic was found to be its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePublish {
    Telemetry { properties: Properties },
    MethodResponse { status: u16, rid: String },
    TwinGet { rid: String },
    TwinPatchReported { rid: String },
}

/// Which of its own topics a device's SUBSCRIBE filter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSubscription {
    CloudToDevice,
    Methods,
    TwinResponses,
    TwinDesired,
}

/// Why a topic was refused: the hub counts refusals by this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic `{0}` is not one this device may use")]
    NotAllowed(String),
    #[error("topic `{topic}` is malformed: {reason}")]
    Malformed { topic: String, reason: &'static str },
}

/// Decides a device's PUBLISH: its own telemetry and its `$iothub` answers, nothing else.
pub fn classify_publish(device_id: &str, topic: &str) -> Result<DevicePublish, TopicError> {
    if topic.contains(['+', '#', '\0']) {
        return Err(malformed(topic, "wildcards are not allowed in a published topic"));
    }
    if let Some(rest) = own_device_prefix(device_id, topic) {
        return match rest.strip_prefix("messages/events") {
            Some("") => Ok(DevicePublish::Telemetry {
                properties: Vec::new(),
            }),
            Some(bag) => match bag.strip_prefix('/') {
                Some(bag) => Ok(DevicePublish::Telemetry {
                    properties: parse_property_bag(bag),
                }),
                None => Err(not_allowed(topic)),
            },
            None => Err(not_allowed(topic)),
        };
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
        let (status, query) = rest
            .split_once("/?")
            .ok_or_else(|| malformed(topic, "no `/?$rid=`"))?;
        let status = status
            .parse()
            .map_err(|_| malformed(topic, "status is not a number"))?;
        return Ok(DevicePublish::MethodResponse {
            status,
            rid: required_rid(topic, query)?,
        });
    }
    if let Some(query) = topic.strip_prefix("$iothub/twin/GET/?") {
        return Ok(DevicePublish::TwinGet {
            rid: required_rid(topic, query)?,
        });
    }
    if let Some(query) = topic.strip_prefix("$iothub/twin/PATCH/properties/reported/?") {
        return Ok(DevicePublish::TwinPatchReported {
            rid: required_rid(topic, query)?,
        });
    }
    Err(not_allowed(topic))
}

/// Decides a device's SUBSCRIBE filter. Only the exact filters the SDKs use are granted; a narrower
/// or wider filter (`devices/x/#`, `#`, `$iothub/#`) is refused rather than interpreted.
pub fn classify_subscribe(device_id: &str, filter: &str) -> Result<DeviceSubscription, TopicError> {
    match filter {
        "$iothub/methods/POST/#" => return Ok(DeviceSubscription::Methods),
        "$iothub/twin/res/#" => return Ok(DeviceSubscription::TwinResponses),
        "$iothub/twin/PATCH/properties/desired/#" => return Ok(DeviceSubscription::TwinDesired),
        _ => {}
    }
    match own_device_prefix(device_id, filter) {
        Some("messages/devicebound/#") => Ok(DeviceSubscription::CloudToDevice),
        _ => Err(not_allowed(filter)),
    }
}

/// `devices/{id}/messages/events/{bag}`: what a device publishes (used by load generators and tests).
pub fn telemetry_topic(device_id: &str, properties: &[(String, String)]) -> String {
    format!(
        "devices/{device_id}/messages/events/{}",
        format_property_bag(properties)
    )
}

/// `devices/{id}/messages/devicebound/{bag}`: where a cloud-to-device message is delivered.
pub fn c2d_topic(device_id: &str, properties: &[(String, String)]) -> String {
    format!(
        "devices/{device_id}/messages/devicebound/{}",
        format_property_bag(properties)
    )
}

/// `$iothub/methods/POST/{name}/?$rid={rid}`: a direct-method request to the device.
pub fn method_request_topic(method: &str, rid: &str) -> String {
    format!(
        "$iothub/methods/POST/{}/?$rid={}",
        url_encode(method),
        url_encode(rid)
    )
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version=N]`: the hub's answer to a twin request.
pub fn twin_response_topic(status: u16, rid: &str, version: Option<u64>) -> String {
    let mut topic = format!("$iothub/twin/res/{status}/?$rid={}", url_encode(rid));
    if let Some(v) = version {
        topic.push_str(&format!("&$version={v}"));
    }
    topic
}

/// `$iothub/twin/PATCH/properties/desired/?$version=N`: a desired-properties change pushed to the device.
pub fn desired_patch_topic(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// Parses `k=v&k2=v2`: keys and values are url-decoded (`%24.mid` → `$.mid`), empty segments skipped,
/// a key without `=` gets an empty value. Undecodable percent sequences are kept as sent.
pub fn parse_property_bag(bag: &str) -> Properties {
    bag.split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (k, v) = segment.split_once('=').unwrap_or((segment, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Formats a property bag with keys and values url-encoded the way the SDKs encode them.
pub fn format_property_bag(properties: &[(String, String)]) -> String {
    properties
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The rest of `topic` after `devices/{device_id}/`, when the id is the device's own.
fn own_device_prefix<'t>(device_id: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix("devices/")?;
    let (id, rest) = rest.split_once('/')?;
    id.eq_ignore_ascii_case(device_id).then_some(rest)
}

fn required_rid(topic: &str, query: &str) -> Result<String, TopicError> {
    parse_property_bag(query)
        .into_iter()
        .find(|(k, _)| k == "$rid")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| malformed(topic, "`$rid` is missing"))
}

fn decode(s: &str) -> String {
    percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .unwrap_or_else(|_| s.to_string())
}

fn not_allowed(topic: &str) -> TopicError {
    TopicError::NotAllowed(topic.to_string())
}

fn malformed(topic: &str, reason: &'static str) -> TopicError {
    TopicError::Malformed {
        topic: topic.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn telemetry_with_sdk_property_bag_is_decoded() {
        let got = classify_publish(
            "dev1",
            "devices/dev1/messages/events/%24.mid=m%201&%24.ct=application%2Fjson&temp=hot",
        )
        .unwrap();
        assert_eq!(
            got,
            DevicePublish::Telemetry {
                properties: props(&[("$.mid", "m 1"), ("$.ct", "application/json"), ("temp", "hot")])
            }
        );
        assert_eq!(
            classify_publish("dev1", "devices/dev1/messages/events/").unwrap(),
            DevicePublish::Telemetry { properties: vec![] }
        );
        assert_eq!(
            classify_publish("Dev1", "devices/dev1/messages/events").unwrap(),
            DevicePublish::Telemetry { properties: vec![] }
        );
    }

    #[test]
    fn property_bags_round_trip() {
        let bag = props(&[("$.mid", "a&b=c"), ("k y", "v/1")]);
        let topic = telemetry_topic("d", &bag);
        assert_eq!(topic, "devices/d/messages/events/%24.mid=a%26b%3Dc&k%20y=v%2F1");
        assert_eq!(
            classify_publish("d", &topic).unwrap(),
            DevicePublish::Telemetry {
                properties: bag.clone()
            }
        );
        assert_eq!(parse_property_bag("a&&b=1&"), props(&[("a", ""), ("b", "1")]));
        assert_eq!(parse_property_bag("bad=%ZZ%FF"), props(&[("bad", "%ZZ%FF")]));
        assert_eq!(c2d_topic("d", &[]), "devices/d/messages/devicebound/");
    }

    #[test]
    fn another_devices_topics_and_wildcards_are_refused() {
        for topic in [
            "devices/dev2/messages/events/",
            "devices/dev1/messages/devicebound/x",
            "devices/dev1/messages/eventsX",
            "devices/dev1",
            "#",
            "devices/dev1/messages/events/#",
            "$iothub/methods/POST/reboot/?$rid=1",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "anything/else",
        ] {
            assert!(
                classify_publish("dev1", topic).is_err(),
                "{topic} must be refused"
            );
        }
        for filter in [
            "#",
            "+/#",
            "devices/#",
            "devices/+/messages/devicebound/#",
            "devices/dev2/messages/devicebound/#",
            "devices/dev1/messages/events/#",
            "devices/dev1/#",
            "$iothub/#",
            "$iothub/methods/#",
        ] {
            assert_eq!(
                classify_subscribe("dev1", filter),
                Err(TopicError::NotAllowed(filter.to_string())),
                "{filter} must be refused"
            );
        }
    }

    #[test]
    fn own_subscriptions_are_granted() {
        use DeviceSubscription::*;
        assert_eq!(
            classify_subscribe("dev1", "devices/DEV1/messages/devicebound/#"),
            Ok(CloudToDevice)
        );
        assert_eq!(classify_subscribe("dev1", "$iothub/methods/POST/#"), Ok(Methods));
        assert_eq!(
            classify_subscribe("dev1", "$iothub/twin/res/#"),
            Ok(TwinResponses)
        );
        assert_eq!(
            classify_subscribe("dev1", "$iothub/twin/PATCH/properties/desired/#"),
            Ok(TwinDesired)
        );
    }

    #[test]
    fn method_and_twin_topics() {
        assert_eq!(
            method_request_topic("reboot", "7"),
            "$iothub/methods/POST/reboot/?$rid=7"
        );
        assert_eq!(
            classify_publish("d", "$iothub/methods/res/200/?$rid=7").unwrap(),
            DevicePublish::MethodResponse {
                status: 200,
                rid: "7".into()
            }
        );
        assert!(matches!(
            classify_publish("d", "$iothub/methods/res/ok/?$rid=7"),
            Err(TopicError::Malformed { .. })
        ));
        assert!(matches!(
            classify_publish("d", "$iothub/methods/res/200/?x=1"),
            Err(TopicError::Malformed { .. })
        ));
        assert_eq!(
            classify_publish("d", "$iothub/twin/GET/?$rid=3").unwrap(),
            DevicePublish::TwinGet { rid: "3".into() }
        );
        assert_eq!(
            classify_publish("d", "$iothub/twin/PATCH/properties/reported/?$rid=4").unwrap(),
            DevicePublish::TwinPatchReported { rid: "4".into() }
        );
        assert_eq!(
            twin_response_topic(204, "4", Some(6)),
            "$iothub/twin/res/204/?$rid=4&$version=6"
        );
    }
}
