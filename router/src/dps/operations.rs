//! The DPS conversation shared by both transports: a register request starts an assignment and
//! waits for it a little; if it is done the device hears 200 "assigned" at once, otherwise 202
//! "assigning" with an operation id to poll. Polls are answered from the operation while this
//! process knows it, else from the store (so polls survive a router restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use iotstamp_core::dps::{
    ErrorBody, ErrorKind, OperationStatus, RegistrationOperation, RegistrationState, SymmetricKeyAttestation,
};
use iotstamp_core::ids::DeviceId;
use serde_json::Value;

use crate::adapters::store::AssignmentState;
use crate::assignment::{Assigned, ProvisionError, Provisioner};
use crate::enrollment::Group;

/// How long a finished operation stays pollable.
const KEEP: Duration = Duration::from_secs(300);

type Slot = Arc<OnceLock<Result<Assigned, ProvisionError>>>;

struct Entry {
    key: String,
    slot: Slot,
    born: Instant,
}

/// What to tell the device.
#[derive(Debug, Clone)]
pub enum Answer {
    Assigned {
        operation_id: String,
        assigned: Assigned,
    },
    Assigning {
        operation_id: String,
    },
    Error(ProvisionError),
}

pub struct Dps {
    pub provisioner: Arc<Provisioner>,
    pub assign_wait: Duration,
    pub retry_after_secs: u32,
    ops: Mutex<HashMap<String, Entry>>,
}

fn new_operation_id() -> String {
    format!("4.{}", uuid::Uuid::new_v4().simple())
}

impl Dps {
    pub fn new(provisioner: Arc<Provisioner>, assign_wait: Duration, retry_after_secs: u32) -> Self {
        Self {
            provisioner,
            assign_wait,
            retry_after_secs,
            ops: Mutex::new(HashMap::new()),
        }
    }

    /// Handles a register request from an authenticated device.
    pub async fn register(&self, group: Arc<Group>, device: DeviceId, payload: Option<Value>) -> Answer {
        let slot: Slot = Arc::new(OnceLock::new());
        let key = device.key();
        let (p, s) = (self.provisioner.clone(), slot.clone());
        // Its own task: the assignment finishes even if the device hangs up, so a half-done
        // reservation never waits for a device that may not come back.
        let task = tokio::spawn(async move {
            let result = p.provision(&group, &device, payload.as_ref()).await;
            let _ = s.set(result.clone());
            result
        });
        let operation_id = new_operation_id();
        match tokio::time::timeout(self.assign_wait, task).await {
            Ok(Ok(Ok(assigned))) => Answer::Assigned {
                operation_id,
                assigned,
            },
            Ok(Ok(Err(e))) => Answer::Error(e),
            Ok(Err(join)) => Answer::Error(ProvisionError::new(ErrorKind::Internal, join.to_string())),
            Err(_) => {
                let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
                ops.retain(|_, e| e.born.elapsed() < KEEP);
                ops.insert(
                    operation_id.clone(),
                    Entry {
                        key,
                        slot,
                        born: Instant::now(),
                    },
                );
                Answer::Assigning { operation_id }
            }
        }
    }

    /// Handles a status poll from an authenticated device.
    pub async fn poll(&self, device: &DeviceId, operation_id: &str) -> Answer {
        let key = device.key();
        let known = {
            let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            ops.get(operation_id)
                .filter(|e| e.key == key)
                .map(|e| e.slot.clone())
        };
        if let Some(slot) = known {
            return match slot.get() {
                Some(Ok(assigned)) => Answer::Assigned {
                    operation_id: operation_id.to_string(),
                    assigned: assigned.clone(),
                },
                Some(Err(e)) => Answer::Error(e.clone()),
                None => Answer::Assigning {
                    operation_id: operation_id.to_string(),
                },
            };
        }
        let p = &self.provisioner;
        match p.store.get(&key).await {
            Ok(Some(a)) if a.state == AssignmentState::Assigned => {
                match crate::adapters::directory::find(&p.directory.snapshot(), &a.stamp) {
                    Some(s) => Answer::Assigned {
                        operation_id: operation_id.to_string(),
                        assigned: Assigned {
                            hub: s.hub.clone(),
                            assignment: a,
                        },
                    },
                    None => Answer::Error(ProvisionError::new(
                        ErrorKind::Unavailable,
                        "assigned stamp is unknown",
                    )),
                }
            }
            Ok(Some(_)) => Answer::Assigning {
                operation_id: operation_id.to_string(),
            },
            Ok(None) => Answer::Error(ProvisionError::new(
                ErrorKind::NotFound,
                format!("operation `{operation_id}` is unknown"),
            )),
            Err(e) => Answer::Error(e.into()),
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON body for a successful answer.
pub fn operation_body(answer: &Answer) -> Option<RegistrationOperation<Value>> {
    match answer {
        Answer::Assigned {
            operation_id,
            assigned,
        } => {
            let a = &assigned.assignment;
            Some(RegistrationOperation {
                operation_id: operation_id.clone(),
                status: OperationStatus::Assigned,
                registration_state: Some(RegistrationState {
                    registration_id: a.device_id.clone(),
                    created_date_time_utc: Some(rfc3339(a.created_ms)),
                    assigned_hub: Some(assigned.hub.clone()),
                    device_id: Some(a.device_id.clone()),
                    status: OperationStatus::Assigned,
                    substatus: Some(a.substatus),
                    error_code: None,
                    error_message: None,
                    last_updated_date_time_utc: Some(rfc3339(a.updated_ms)),
                    etag: Some(format!("\"{}\"", a.generation)),
                    payload: None,
                    symmetric_key: Some(SymmetricKeyAttestation {
                        enrollment_group_id: Some(a.group.clone()),
                    }),
                }),
            })
        }
        Answer::Assigning { operation_id } => Some(RegistrationOperation {
            operation_id: operation_id.clone(),
            status: OperationStatus::Assigning,
            registration_state: None,
        }),
        Answer::Error(_) => None,
    }
}

/// The DPS error body, with a fresh tracking id for the logs.
pub fn error_body(kind: ErrorKind, message: &str) -> ErrorBody {
    let tracking_id = uuid::Uuid::new_v4().to_string();
    tracing::info!(%tracking_id, code = kind.error_code(), message, "provisioning refused");
    ErrorBody {
        error_code: kind.error_code(),
        tracking_id,
        message: message.to_string(),
        timestamp_utc: rfc3339(iotstamp_core::clock::unix_millis()),
    }
}

/// Status code, body and retry-after for an answer, shared by HTTPS and MQTT.
pub fn render(answer: &Answer, retry_after_secs: u32) -> (u16, Vec<u8>, Option<u32>) {
    match answer {
        Answer::Assigned { .. } | Answer::Assigning { .. } => {
            let body = operation_body(answer).map(|b| serde_json::to_vec(&b).unwrap_or_default());
            let (status, retry) = match answer {
                Answer::Assigning { .. } => (202, Some(retry_after_secs)),
                _ => (200, None),
            };
            (status, body.unwrap_or_default(), retry)
        }
        Answer::Error(e) => {
            let body = serde_json::to_vec(&error_body(e.kind, &e.message)).unwrap_or_default();
            (
                e.kind.status(),
                body,
                e.kind.retryable().then_some(retry_after_secs),
            )
        }
    }
}
