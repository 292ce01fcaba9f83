//! The Azure Device Provisioning Service wire dialect: request and response bodies, error bodies,
//! and the `$dps/registrations/…` MQTT topics. Pure: the router's HTTPS and MQTT front ends both
//! speak through these types, so the two transports cannot drift apart.
//!
//! Device payloads are arbitrary JSON. Core does not depend on a JSON library, so the bodies are
//! generic over the payload type `P`; the router instantiates them with its JSON value type.

use percent_encoding::percent_decode_str;

/// The api-version the SDKs we target send, and the one we advertise.
pub const API_VERSION: &str = "2019-03-31";
/// What a device subscribes to for every answer.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/?";
const STATUS_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/?";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// The body of a register request. Python sends `{"payload": null, "registrationId": ".."}`, Node
/// sends the id and an optional payload; both fields are optional on the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRequest<P> {
    #[serde(default)]
    pub registration_id: Option<String>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
}

fn none<P>() -> Option<P> {
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationStatus {
    Unassigned,
    Assigning,
    Assigned,
    Failed,
    Disabled,
}

/// Why a device landed where it did, as DPS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Substatus {
    InitialAssignment,
    DeviceDataMigrated,
    DeviceDataReset,
    ReprovisionedToInitialAssignment,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// `registrationState` of an answered operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState<P> {
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub status: OperationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<Substatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

/// The answer to a register request or a status poll.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperation<P> {
    pub operation_id: String,
    pub status: OperationStatus,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<RegistrationState<P>>,
}

/// The error body DPS sends with every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: u32,
    pub tracking_id: String,
    pub message: String,
    pub timestamp_utc: String,
}

/// The refusals a device can get. Each has its HTTP (and MQTT topic) status and the six-digit code
/// DPS puts in `errorCode`; the SDKs retry >= 429 and give up on the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    NotFound,
    Throttled,
    Internal,
    Unavailable,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::Throttled => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    pub fn error_code(self) -> u32 {
        match self {
            Self::BadRequest => 400_004,
            Self::Unauthorized => 401_002,
            Self::NotFound => 404_201,
            Self::Throttled => 429_001,
            Self::Internal => 500_000,
            Self::Unavailable => 503_000,
        }
    }

    /// Whether the device should come back later rather than give up.
    pub fn retryable(self) -> bool {
        self.status() >= 429
    }
}

/// `{idScope}/registrations/{registrationId}`: the resource a device's SAS token must grant.
pub fn registration_resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// Whether a token's (decoded) resource grants this registration: the scope must match exactly,
/// the registration id case-insensitively, since DPS treats registration ids that way.
pub fn resource_grants(resource: &str, id_scope: &str, registration_id: &str) -> bool {
    let Some((scope, rest)) = resource.split_once('/') else {
        return false;
    };
    let Some(reg) = rest.strip_prefix("registrations/") else {
        return false;
    };
    scope == id_scope && reg.eq_ignore_ascii_case(registration_id)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("`{0}` is not a DPS request topic")]
    NotDps(String),
    #[error("topic `{topic}` lacks `{field}`")]
    Missing { topic: String, field: &'static str },
    #[error("`{0}` is not a DPS MQTT user name ({{idScope}}/registrations/{{regId}}/api-version=…)")]
    BadUsername(String),
}

/// A request a device published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpsRequest {
    Register { rid: String },
    OperationStatus { rid: String, operation_id: String },
}

/// Parses `$dps/registrations/PUT/iotdps-register/?$rid=..` and
/// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=..&operationId=..`.
pub fn parse_request_topic(topic: &str) -> Result<DpsRequest, TopicError> {
    let missing = |field| TopicError::Missing {
        topic: topic.to_string(),
        field,
    };
    if let Some(query) = topic.strip_prefix(REGISTER_PREFIX) {
        let rid = query_param(query, "$rid").ok_or_else(|| missing("$rid"))?;
        return Ok(DpsRequest::Register { rid });
    }
    if let Some(query) = topic.strip_prefix(STATUS_PREFIX) {
        let rid = query_param(query, "$rid").ok_or_else(|| missing("$rid"))?;
        let operation_id = query_param(query, "operationId").ok_or_else(|| missing("operationId"))?;
        return Ok(DpsRequest::OperationStatus { rid, operation_id });
    }
    Err(TopicError::NotDps(topic.to_string()))
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`. `$rid` comes first: the Python
/// SDK reads it positionally.
pub fn response_topic(status: u16, rid: &str, retry_after_secs: Option<u32>) -> String {
    let rid = crate::sas::url_encode(rid);
    match retry_after_secs {
        Some(s) => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}&retry-after={s}"),
        None => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}"),
    }
}

/// A response topic taken apart, as a device (or a test) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseTopic {
    pub status: u16,
    pub rid: String,
    pub retry_after_secs: Option<u32>,
}

pub fn parse_response_topic(topic: &str) -> Result<ResponseTopic, TopicError> {
    let not_dps = || TopicError::NotDps(topic.to_string());
    let rest = topic.strip_prefix(RESPONSE_PREFIX).ok_or_else(not_dps)?;
    let (status, query) = rest.split_once("/?").ok_or_else(not_dps)?;
    let status = status.parse().map_err(|_| not_dps())?;
    let rid = query_param(query, "$rid").ok_or(TopicError::Missing {
        topic: topic.to_string(),
        field: "$rid",
    })?;
    let retry_after_secs = query_param(query, "retry-after").and_then(|s| s.parse().ok());
    Ok(ResponseTopic {
        status,
        rid,
        retry_after_secs,
    })
}

/// The MQTT user name a device connects with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsUsername {
    pub id_scope: String,
    pub registration_id: String,
    pub api_version: Option<String>,
}

/// Parses `{idScope}/registrations/{regId}/api-version=2019-03-31&ClientVersion=…`.
pub fn parse_username(username: &str) -> Result<DpsUsername, TopicError> {
    let bad = || TopicError::BadUsername(username.to_string());
    let (id_scope, rest) = username.split_once('/').ok_or_else(bad)?;
    let rest = rest.strip_prefix("registrations/").ok_or_else(bad)?;
    let (registration_id, query) = rest.split_once('/').unwrap_or((rest, ""));
    if id_scope.is_empty() || registration_id.is_empty() {
        return Err(bad());
    }
    Ok(DpsUsername {
        id_scope: id_scope.to_string(),
        registration_id: registration_id.to_string(),
        api_version: query_param(query, "api-version"),
    })
}

/// The url-decoded value of `name` in a `k=v&k=v` query, if present.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_parse_for_both_operations() {
        assert_eq!(
            parse_request_topic("$dps/registrations/PUT/iotdps-register/?$rid=7f3a").unwrap(),
            DpsRequest::Register { rid: "7f3a".into() }
        );
        assert_eq!(
            parse_request_topic(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.abc%2Bd"
            )
            .unwrap(),
            DpsRequest::OperationStatus {
                rid: "2".into(),
                operation_id: "4.abc+d".into()
            }
        );
        assert!(matches!(
            parse_request_topic("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2"),
            Err(TopicError::Missing {
                field: "operationId",
                ..
            })
        ));
        assert!(matches!(
            parse_request_topic("devices/x/messages/events/"),
            Err(TopicError::NotDps(_))
        ));
    }

    #[test]
    fn response_topics_put_rid_first_and_round_trip() {
        let t = response_topic(202, "a b", Some(3));
        assert_eq!(t, "$dps/registrations/res/202/?$rid=a%20b&retry-after=3");
        assert_eq!(
            parse_response_topic(&t).unwrap(),
            ResponseTopic {
                status: 202,
                rid: "a b".into(),
                retry_after_secs: Some(3)
            }
        );
        assert_eq!(
            response_topic(200, "1", None),
            "$dps/registrations/res/200/?$rid=1"
        );
    }

    #[test]
    fn usernames_from_the_sdks_parse() {
        let u = parse_username(
            "0ne00111111/registrations/Dev-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-devicesdk%2F2",
        )
        .unwrap();
        assert_eq!(u.id_scope, "0ne00111111");
        assert_eq!(u.registration_id, "Dev-1");
        assert_eq!(u.api_version.as_deref(), Some("2019-03-31"));
        assert!(parse_username("0ne/devices/x").is_err());
        assert!(parse_username("/registrations/x").is_err());
    }

    #[test]
    fn resource_check_is_case_insensitive_on_the_registration_only() {
        assert!(resource_grants("0ne1/registrations/Dev-1", "0ne1", "dev-1"));
        assert!(!resource_grants("0NE1/registrations/dev-1", "0ne1", "dev-1"));
        assert!(!resource_grants("0ne1/registrations/dev-2", "0ne1", "dev-1"));
        assert!(!resource_grants("0ne1/devices/dev-1", "0ne1", "dev-1"));
    }

    #[test]
    fn bodies_use_the_dps_field_names() {
        let req: RegistrationRequest<u8> =
            serde_json::from_str(r#"{"payload": null, "registrationId": "d1"}"#).unwrap();
        assert_eq!(req.registration_id.as_deref(), Some("d1"));
        assert_eq!(req.payload, None);

        let op: RegistrationOperation<u8> = RegistrationOperation {
            operation_id: "op".into(),
            status: OperationStatus::Assigned,
            registration_state: Some(RegistrationState {
                registration_id: "d1".into(),
                created_date_time_utc: Some("2026-01-01T00:00:00Z".into()),
                assigned_hub: Some("127.0.0.5".into()),
                device_id: Some("d1".into()),
                status: OperationStatus::Assigned,
                substatus: Some(Substatus::InitialAssignment),
                error_code: None,
                error_message: None,
                last_updated_date_time_utc: None,
                etag: Some("\"1\"".into()),
                payload: None,
                symmetric_key: None,
            }),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(
            json,
            r#"{"operationId":"op","status":"assigned","registrationState":{"registrationId":"d1","createdDateTimeUtc":"2026-01-01T00:00:00Z","assignedHub":"127.0.0.5","deviceId":"d1","status":"assigned","substatus":"initialAssignment","etag":"\"1\""}}"#
        );
        let err = ErrorBody {
            error_code: ErrorKind::Unauthorized.error_code(),
            tracking_id: "t".into(),
            message: "m".into(),
            timestamp_utc: "ts".into(),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"errorCode":401002,"trackingId":"t","message":"m","timestampUtc":"ts"}"#
        );
        assert!(ErrorKind::Throttled.retryable() && !ErrorKind::Unauthorized.retryable());
    }
}
