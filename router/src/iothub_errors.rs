//! IoT Hub's error answers on IoT Hub's own REST paths ([`crate::iothub_rest`]): the body
//! `{"Message": "ErrorCode:<Code>;<text>", "ExceptionMessage": "..."}` and the `iothub-errorcode`
//! header, as the service SDKs and IoT Hub's own tools expect, instead of the `{"error",
//! "message"}` of our `/v1` APIs. The status stays what the router or the stamp answered; only the
//! shape changes. [`error_code`] is the one table from our codes to IoT Hub's (pure).

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use iotstamp_core::api_bodies::ErrorBody;

/// The header IoT Hub names its error code in.
pub const ERROR_CODE_HEADER: HeaderName = HeaderName::from_static("iothub-errorcode");
/// Our error bodies are small; a larger one is not ours and is summarised by its status.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// IoT Hub's error code for one of ours (`code`, from a response of `status`).
pub fn error_code(code: &str, status: StatusCode) -> &'static str {
    match code {
        "unauthorized" => "IotHubUnauthorizedAccess",
        "deviceNotFound" => "DeviceNotFound",
        "deviceNotConnected" | "deviceNotSubscribed" => "DeviceNotOnline",
        "preconditionFailed" => "PreconditionFailed",
        "twinTooLarge" | "payloadTooLarge" => "RequestEntityTooLarge",
        "timeout" => "GatewayTimeout",
        "quotaExceeded" => "IotHubQuotaExceeded",
        "badDeviceId" | "badRequest" | "badMethodRequest" | "badTimeout" | "badTwinPatch" | "twinTooDeep"
        | "badIfMatch" | "badQuery" | "badPath" => "ArgumentInvalid",
        _ if status.is_server_error() => "ServiceUnavailable",
        _ => "ArgumentInvalid",
    }
}

/// The body IoT Hub answers an error with.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "Message": format!("ErrorCode:{code};{message}"),
        "ExceptionMessage": format!("ErrorCode:{code}"),
    })
}

/// Rewrites an error answer into IoT Hub's shape; a success passes unchanged.
pub async fn as_iot_hub_error(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let ours = axum::body::to_bytes(body, ERROR_BODY_LIMIT)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice::<ErrorBody>(&bytes).ok());
    let (code, message) = match &ours {
        Some(e) => (error_code(&e.error, status), e.message.as_str()),
        None => (
            error_code("", status),
            status.canonical_reason().unwrap_or("error"),
        ),
    };
    let mut answer = (status, axum::Json(error_body(code, message))).into_response();
    answer
        .headers_mut()
        .insert(ERROR_CODE_HEADER, HeaderValue::from_static(code));
    // What else the answer said about itself (a `WWW-Authenticate`, say) stays.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().entry(name).or_insert_with(|| value.clone());
        }
    }
    answer.map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn our_errors_become_iot_hubs_and_successes_pass() {
        let ours = (
            StatusCode::NOT_FOUND,
            axum::Json(ErrorBody::new("deviceNotFound", "no such device in this stamp")),
        )
            .into_response();
        let theirs = as_iot_hub_error(ours).await;
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
        assert_eq!(theirs.headers()[ERROR_CODE_HEADER], "DeviceNotFound");
        let body = axum::body::to_bytes(theirs.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["Message"],
            "ErrorCode:DeviceNotFound;no such device in this stamp"
        );

        let plain = (StatusCode::BAD_GATEWAY, "not json").into_response();
        let theirs = as_iot_hub_error(plain).await;
        assert_eq!(theirs.headers()[ERROR_CODE_HEADER], "ServiceUnavailable");

        let ok = (StatusCode::OK, "fine").into_response();
        let passed = as_iot_hub_error(ok).await;
        assert!(passed.headers().get(ERROR_CODE_HEADER).is_none());
        assert_eq!(
            error_code("preconditionFailed", StatusCode::PRECONDITION_FAILED),
            "PreconditionFailed"
        );
        assert_eq!(
            error_code("somethingNew", StatusCode::BAD_REQUEST),
            "ArgumentInvalid"
        );
    }
}
