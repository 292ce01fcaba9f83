use super::*;

fn round_trip(p: Packet) {
    let mut buf = BytesMut::new();
    encode(&p, &mut buf);
    encode(&Packet::PingReq, &mut buf);
    assert_eq!(decode(&mut buf, 1 << 20).unwrap(), Some(p));
    assert_eq!(decode(&mut buf, 1 << 20).unwrap(), Some(Packet::PingReq));
    assert_eq!(decode(&mut buf, 1 << 20).unwrap(), None);
}

#[test]
fn every_packet_round_trips() {
    round_trip(Packet::Connect(Connect {
        client_id: "dev1".into(),
        clean_session: false,
        keep_alive: 60,
        username: Some("h/dev1/?api-version=2019-10-01".into()),
        password: Some(Bytes::from_static(b"SharedAccessSignature sr=x")),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: 1,
            retain: true,
        }),
        properties: None,
    }));
    round_trip(Packet::ConnAck {
        session_present: true,
        code: connack::NOT_AUTHORIZED,
        properties: Properties::default(),
    });
    round_trip(Packet::Publish(Publish {
        topic: "devices/d/messages/events/".into(),
        qos: 1,
        retain: false,
        dup: true,
        pkid: 9,
        payload: Bytes::from(vec![7u8; 300]),
        properties: Properties::default(),
    }));
    round_trip(Packet::Subscribe {
        pkid: 3,
        filters: vec![("a/#".into(), 1), ("b".into(), 2)],
    });
    round_trip(Packet::SubAck {
        pkid: 3,
        codes: vec![1, SUBACK_FAILURE],
    });
    round_trip(Packet::Unsubscribe {
        pkid: 4,
        filters: vec!["a/#".into()],
    });
    for p in [
        Packet::PubAck(1),
        Packet::PubRec(2),
        Packet::PubRel(3),
        Packet::PubComp(4),
        Packet::UnsubAck {
            pkid: 5,
            codes: vec![],
        },
        Packet::PingResp,
        Packet::Disconnect { reason: 0 },
    ] {
        round_trip(p);
    }
}

#[test]
fn partial_input_waits_and_oversize_is_refused_from_the_header() {
    let mut full = BytesMut::new();
    encode(&Packet::PubAck(7), &mut full);
    let mut buf = BytesMut::from(&full[..2]);
    assert_eq!(decode(&mut buf, 100).unwrap(), None);
    buf.extend_from_slice(&full[2..]);
    assert_eq!(decode(&mut buf, 100).unwrap(), Some(Packet::PubAck(7)));

    // Only the fixed header of a 1 MB publish has arrived: refused now, not after 1 MB.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
    assert_eq!(
        decode(&mut buf, 1000),
        Err(DecodeError::TooLarge {
            size: 1_048_580,
            max: 1000
        })
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let cases: &[&[u8]] = &[
        &[0x30, 0x01, 0x00],                   // topic length cut short
        &[0x36, 0x03, 0x00, 0x00, 0x00],       // QoS 3
        &[0x32, 0x04, 0x00, 0x00, 0x00, 0x00], // QoS 1 with packet id 0
        &[0xf0, 0x00],                         // reserved type
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], // five-byte length
        &[0x82, 0x02, 0x00, 0x01],             // SUBSCRIBE without filters
        &[0x30, 0x04, 0x00, 0x02, 0xff, 0xfe], // topic not UTF-8
        &[0x10, 0x02, 0x00, 0x00],             // CONNECT with empty protocol name
    ];
    for case in cases {
        let mut buf = BytesMut::from(*case);
        assert!(decode(&mut buf, 1 << 20).is_err(), "{case:02x?}");
    }
}

#[test]
fn an_unknown_protocol_level_is_recognised_for_a_proper_connack() {
    let mut buf = BytesMut::from(&[0x10u8, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6][..]);
    assert_eq!(decode(&mut buf, 100), Err(DecodeError::UnsupportedProtocol(6)));
}

fn round_trip_v5(p: Packet) {
    let mut buf = BytesMut::new();
    encode_as(&p, Version::V5, &mut buf);
    assert_eq!(decode_as(&mut buf, 1 << 20, Version::V5).unwrap(), Some(p));
    assert!(buf.is_empty());
}

#[test]
fn mqtt5_packets_carry_properties_and_reason_codes() {
    use properties::{Value, id};
    let connect_props = Properties::default()
        .with(id::SESSION_EXPIRY, Value::U32(3600))
        .with(id::RECEIVE_MAXIMUM, Value::U16(20))
        .with(id::MAXIMUM_PACKET_SIZE, Value::U32(4096))
        .with(id::USER_PROPERTY, Value::Pair("a".into(), "1".into()));
    let connect = Connect {
        client_id: "dev1".into(),
        keep_alive: 30,
        password: Some(Bytes::from_static(b"pw")),
        properties: Some(connect_props),
        ..Default::default()
    };
    assert_eq!(connect.version(), Version::V5);
    // A CONNECT names its own version: the 3.1.1 decoder reads a 5 CONNECT too.
    let mut buf = BytesMut::new();
    encode(&Packet::Connect(connect.clone()), &mut buf);
    assert_eq!(buf[8], 5, "protocol level");
    assert_eq!(decode(&mut buf, 1 << 20).unwrap(), Some(Packet::Connect(connect)));

    round_trip_v5(Packet::Publish(Publish {
        topic: "devices/d/messages/events/".into(),
        qos: 1,
        retain: false,
        dup: false,
        pkid: 7,
        payload: Bytes::from_static(b"{}"),
        properties: Properties::default()
            .with(id::CONTENT_TYPE, Value::Str("application/json".into()))
            .with(id::USER_PROPERTY, Value::Pair("k".into(), "v".into()))
            .with(id::CORRELATION_DATA, Value::Bin(Bytes::from_static(b"\x01\x02"))),
    }));
    round_trip_v5(Packet::SubAck {
        pkid: 2,
        codes: vec![1, reason::NOT_AUTHORIZED],
    });
    round_trip_v5(Packet::UnsubAck {
        pkid: 3,
        codes: vec![0, 0],
    });
    round_trip_v5(Packet::Disconnect {
        reason: reason::SESSION_TAKEN_OVER,
    });

    // Exact bytes: CONNACK "not authorized" advertising a maximum packet size of 1024.
    let mut out = BytesMut::new();
    let props = Properties::default().with(id::MAXIMUM_PACKET_SIZE, Value::U32(1024));
    encode_as(
        &Packet::ConnAck {
            session_present: false,
            code: reason::NOT_AUTHORIZED,
            properties: props,
        },
        Version::V5,
        &mut out,
    );
    assert_eq!(
        &out[..],
        &[0x20, 0x08, 0x00, 0x87, 0x05, 0x27, 0x00, 0x00, 0x04, 0x00]
    );
    // The same DISCONNECT is two bytes in 3.1.1 (no reason) and four in 5.
    let mut out = BytesMut::new();
    let taken_over = Packet::Disconnect {
        reason: reason::SESSION_TAKEN_OVER,
    };
    encode(&taken_over, &mut out);
    encode_as(&taken_over, Version::V5, &mut out);
    assert_eq!(&out[..], &[0xe0, 0x00, 0xe0, 0x02, 0x8e, 0x00]);
    assert_eq!(encoded_len(&taken_over, Version::V5), 4);
}

#[test]
fn mqtt5_subscription_options_and_properties_are_checked() {
    // SUBSCRIBE id 1, no properties, "a" with QoS 1 + no-local + retain-as-published.
    let mut buf = BytesMut::from(&[0x82u8, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x0d][..]);
    assert_eq!(
        decode_as(&mut buf, 100, Version::V5).unwrap(),
        Some(Packet::Subscribe {
            pkid: 1,
            filters: vec![("a".into(), 1)]
        })
    );
    let bad: &[&[u8]] = &[
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xc1], // reserved option bits
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x31], // retain handling 3
        &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x7f, 0x00],       // unknown property 0x7f
        &[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x01],             // properties past the end
    ];
    for case in bad {
        let mut buf = BytesMut::from(*case);
        assert!(decode_as(&mut buf, 100, Version::V5).is_err(), "{case:02x?}");
    }
}
