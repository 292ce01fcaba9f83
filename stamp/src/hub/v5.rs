//! What MQTT 5 adds at the hub, as pure functions: the CONNACK's properties (what this server
//! supports), the client's own limits from its CONNECT, and a PUBLISH's properties folded into the
//! IoT Hub property bag that telemetry records carry.

use iotstamp_core::topics;
use iotstamp_net::mqtt::properties::{Value, id};
use iotstamp_net::mqtt::{Connect, Properties};

/// Tells an MQTT 5 client the limits it must keep: packet size, QoS 1 messages in flight, QoS 1 at
/// most, and no retain, shared subscriptions, subscription ids, topic aliases or kept sessions.
pub fn connack_properties(max_packet: usize, receive_maximum: usize) -> Properties {
    Properties::default()
        .with(id::SESSION_EXPIRY, Value::U32(0))
        .with(id::RECEIVE_MAXIMUM, Value::U16(clamp_u16(receive_maximum)))
        .with(id::MAXIMUM_QOS, Value::Byte(1))
        .with(id::RETAIN_AVAILABLE, Value::Byte(0))
        .with(
            id::MAXIMUM_PACKET_SIZE,
            Value::U32(max_packet.min(u32::MAX as usize) as u32),
        )
        .with(id::TOPIC_ALIAS_MAXIMUM, Value::U16(0))
        .with(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(0))
        .with(id::SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(0))
}

fn clamp_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The largest packet the client accepts (its CONNECT's Maximum Packet Size), if it set one.
pub fn client_max_packet(connect: &Connect) -> Option<usize> {
    let props = connect.properties.as_ref()?;
    props.number(id::MAXIMUM_PACKET_SIZE).map(|n| n as usize)
}

/// The topic's property bag plus the PUBLISH's user properties; its Content Type becomes `$.ct`
/// unless the topic already set one (IoT Hub's MQTT 5 devices send properties this way).
pub fn telemetry_properties(mut bag: topics::Properties, publish: &Properties) -> topics::Properties {
    bag.extend(
        publish
            .user_properties()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    if let Some(ct) = publish.string(id::CONTENT_TYPE)
        && !bag.iter().any(|(k, _)| k == "$.ct")
    {
        bag.push(("$.ct".into(), ct.to_string()));
    }
    bag
}

/// A client may not use topic aliases: the CONNACK said the maximum is 0.
pub fn uses_topic_alias(publish: &Properties) -> bool {
    publish.get(id::TOPIC_ALIAS).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_properties_join_the_bag_without_overriding_the_topic() {
        let props = Properties::default()
            .with(id::USER_PROPERTY, Value::Pair("temp".into(), "high".into()))
            .with(id::CONTENT_TYPE, Value::Str("application/json".into()));
        let bag = telemetry_properties(vec![("a".into(), "1".into())], &props);
        assert_eq!(
            bag,
            [("a", "1"), ("temp", "high"), ("$.ct", "application/json")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let bag = telemetry_properties(vec![("$.ct".into(), "text/plain".into())], &props);
        assert_eq!(bag.iter().filter(|(k, _)| k == "$.ct").count(), 1);
        assert_eq!(bag[0].1, "text/plain");
    }

    #[test]
    fn the_client_limit_is_read_from_connect() {
        let mut connect = Connect::default();
        assert_eq!(client_max_packet(&connect), None);
        connect.properties = Some(Properties::default().with(id::MAXIMUM_PACKET_SIZE, Value::U32(512)));
        assert_eq!(client_max_packet(&connect), Some(512));
        assert_eq!(
            connack_properties(1 << 20, 1 << 20).number(id::RECEIVE_MAXIMUM),
            Some(65535)
        );
    }
}
