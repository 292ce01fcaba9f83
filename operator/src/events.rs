//! Kubernetes Events (events.k8s.io/v1) about the objects the operator manages.
//!
//! Why not kube's `Recorder`: it keeps every event it sent for six minutes, to turn repeats into a
//! series. Creating a thousand stamps sends three thousand distinct events (certificate issued,
//! progressing, ready), and that cache was the largest single allocation in the operator (measured
//! with heaptrack). Our events are transitions that rarely repeat, so each one is simply created.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};

/// Who reports: the controller's name, and this process (the pod name).
#[derive(Clone)]
pub struct EventPublisher {
    client: kube::Client,
    controller: String,
    instance: String,
}

impl EventPublisher {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
        }
    }

    /// Creates one Event about `regarding`, in its namespace.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let body = build(
            event,
            regarding,
            &self.controller,
            &self.instance,
            Timestamp::from_microsecond(iotstamp_core::clock::unix_micros() as i64)
                .unwrap_or(Timestamp::UNIX_EPOCH),
        );
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &body)
            .await
            .map(|_| ())
    }
}

/// The Event object: pure, so its shape is tested without an API server.
fn build(
    event: &Event,
    regarding: &ObjectReference,
    controller: &str,
    instance: &str,
    now: Timestamp,
) -> K8sEvent {
    let object = regarding.name.as_deref().unwrap_or(controller);
    K8sEvent {
        metadata: ObjectMeta {
            // Unique per object and moment; the random part separates two events in one nanosecond.
            name: Some(format!(
                "{object}.{:x}{:04x}",
                now.as_nanosecond(),
                rand::random::<u16>()
            )),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: event.secondary.clone(),
        reporting_controller: Some(controller.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_reporter_and_reason() {
        let regarding = ObjectReference {
            kind: Some("IoTStamp".into()),
            name: Some("s1".into()),
            namespace: Some("fleet".into()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "DeletionBlocked".into(),
            note: Some("still holds 3 devices".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let e = build(&event, &regarding, "iotstamp-operator", "pod-1", now);
        assert!(e.metadata.name.as_deref().unwrap().starts_with("s1."));
        assert_eq!(e.metadata.namespace.as_deref(), Some("fleet"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("DeletionBlocked"));
        assert_eq!(e.regarding, Some(regarding.clone()));
        assert_eq!(e.reporting_controller.as_deref(), Some("iotstamp-operator"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        let again = build(&event, &regarding, "iotstamp-operator", "pod-1", now);
        assert_ne!(
            e.metadata.name, again.metadata.name,
            "two events at one moment must not collide"
        );
    }
}
