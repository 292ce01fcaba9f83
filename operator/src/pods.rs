//! Why a stamp's pods do not become ready, read from the pods themselves. A StatefulSet or
//! Deployment only says "0 of 1 ready"; the kubelet's reason (an image that cannot be pulled, a
//! container that keeps crashing, a pod no node can take) is on the pod, and that is what a user
//! needs in `kubectl describe iotstamp`. Pure: the controller feeds pods in through a cache
//! ([`trim`] keeps only what [`trouble`] reads) and the conditions module words the result.

use std::hash::{DefaultHasher, Hash, Hasher};

use iotstamp_api::conditions::reasons;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod, PodStatus};

/// The first thing that keeps one pod from running, as the condition will say it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodTrouble {
    /// One of our condition reasons ([`reasons::IMAGE_PULL_FAILED`], ...): stable for automation,
    /// while the kubelet's own word goes into the message.
    pub reason: &'static str,
    pub pod: String,
    /// The container the kubelet reported on; empty for a pod that was never scheduled.
    pub container: String,
    /// What the kubelet said, with its reason first (`ImagePullBackOff: Back-off pulling ...`).
    pub detail: String,
}

impl PodTrouble {
    /// The condition message: which pod and container, and the kubelet's words.
    pub fn message(&self) -> String {
        if self.container.is_empty() {
            format!("pod {}: {}", self.pod, self.detail)
        } else {
            format!("pod {}, container {}: {}", self.pod, self.container, self.detail)
        }
    }
}

/// The kubelet's waiting reasons that will not clear by waiting, with the condition reason each
/// becomes. `ContainerCreating` and `PodInitializing` are normal progress and are not listed.
fn waiting_reason(kubelet: &str) -> Option<&'static str> {
    Some(match kubelet {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            reasons::IMAGE_PULL_FAILED
        }
        "CrashLoopBackOff" => reasons::CONTAINER_CRASHING,
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
            reasons::CONTAINER_CANNOT_START
        }
        _ => return None,
    })
}

/// What keeps `pod` from running, if anything the kubelet or scheduler reported: a container
/// waiting for a reason that will not clear by itself (init containers first, as they run
/// first), else a pod the scheduler cannot place.
pub fn trouble(pod: &Pod) -> Option<PodTrouble> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        if let Some(t) = container_trouble(&name, c) {
            return Some(t);
        }
    }
    unschedulable(&name, status)
}

fn container_trouble(pod: &str, c: &ContainerStatus) -> Option<PodTrouble> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let kubelet = waiting.reason.as_deref()?;
    let reason = waiting_reason(kubelet)?;
    let mut detail = match waiting.message.as_deref() {
        Some(m) if !m.is_empty() => format!("{kubelet}: {m}"),
        _ => kubelet.to_string(),
    };
    // A crash loop's waiting message only says "back-off restarting"; why it crashed is in the
    // last run's termination.
    if let Some(last) = last_exit(c.last_state.as_ref()) {
        detail.push_str(&format!("; last run {last}"));
    }
    Some(PodTrouble {
        reason,
        pod: pod.to_string(),
        container: c.name.clone(),
        detail,
    })
}

fn last_exit(state: Option<&ContainerState>) -> Option<String> {
    let t = state?.terminated.as_ref()?;
    let mut s = format!("exited with code {}", t.exit_code);
    if let Some(r) = t.reason.as_deref() {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = t.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        // The container's termination message (its last log lines with FallbackToLogsOnError):
        // one line of it is enough for a condition.
        let line = m.lines().last().unwrap_or(m);
        s.push_str(&format!(": {}", truncate(line, 300)));
    }
    Some(s)
}

fn unschedulable(pod: &str, status: &PodStatus) -> Option<PodTrouble> {
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")?;
    if scheduled.status != "False" || scheduled.reason.as_deref() != Some("Unschedulable") {
        return None;
    }
    Some(PodTrouble {
        reason: reasons::POD_UNSCHEDULABLE,
        pod: pod.to_string(),
        container: String::new(),
        detail: format!(
            "Unschedulable: {}",
            scheduled.message.as_deref().unwrap_or("no node can take it")
        ),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What the pod cache keeps: the labels that name the stamp and role, and the statuses
/// [`trouble`] reads. Specs, images and timestamps go, so thousands of pods stay small.
pub fn trim(pod: &mut Pod) {
    let labels = pod.metadata.labels.take();
    pod.metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: pod.metadata.name.take(),
        namespace: pod.metadata.namespace.take(),
        labels,
        ..Default::default()
    };
    pod.spec = None;
    if let Some(st) = pod.status.as_mut() {
        *st = PodStatus {
            conditions: st.conditions.take().map(|cs| {
                cs.into_iter()
                    .filter(|c| c.type_ == "PodScheduled")
                    .map(|mut c| {
                        c.last_probe_time = None;
                        c.last_transition_time = None;
                        c
                    })
                    .collect()
            }),
            container_statuses: st.container_statuses.take().map(trim_containers),
            init_container_statuses: st.init_container_statuses.take().map(trim_containers),
            ..Default::default()
        };
    }
}

fn trim_containers(cs: Vec<ContainerStatus>) -> Vec<ContainerStatus> {
    cs.into_iter()
        .map(|c| ContainerStatus {
            name: c.name,
            state: c.state.map(|s| ContainerState {
                waiting: s.waiting,
                ..Default::default()
            }),
            last_state: c.last_state.map(|s| ContainerState {
                terminated: s.terminated.map(|mut t| {
                    t.started_at = None;
                    t.finished_at = None;
                    t.container_id = None;
                    t
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// A pod event matters to its stamp only when [`trouble`] changes: the hash the controller's
/// watch filters on, so probe flaps and restarts counted elsewhere reconcile nothing.
pub fn trouble_hash(pod: &Pod) -> Option<u64> {
    let mut h = DefaultHasher::new();
    trouble(pod).hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "s-hub-0", "namespace": "ns"},
            "status": status,
        }))
        .unwrap()
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        json!({"containerStatuses": [{
            "name": "hub", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]})
    }

    #[test]
    fn kubelet_reasons_that_do_not_clear_by_waiting_become_conditions() {
        let cases = [
            ("ErrImagePull", Some(reasons::IMAGE_PULL_FAILED)),
            ("ImagePullBackOff", Some(reasons::IMAGE_PULL_FAILED)),
            ("InvalidImageName", Some(reasons::IMAGE_PULL_FAILED)),
            ("CrashLoopBackOff", Some(reasons::CONTAINER_CRASHING)),
            (
                "CreateContainerConfigError",
                Some(reasons::CONTAINER_CANNOT_START),
            ),
            ("RunContainerError", Some(reasons::CONTAINER_CANNOT_START)),
            ("ContainerCreating", None),
            ("PodInitializing", None),
        ];
        for (kubelet, want) in cases {
            let got = trouble(&pod(waiting(kubelet, "the kubelet's words")));
            assert_eq!(got.as_ref().map(|t| t.reason), want, "{kubelet}");
            if let Some(t) = got {
                assert_eq!(
                    t.message(),
                    format!("pod s-hub-0, container hub: {kubelet}: the kubelet's words")
                );
            }
        }
    }

    #[test]
    fn a_crash_loop_says_how_the_last_run_ended() {
        let p = pod(json!({"containerStatuses": [{
            "name": "hub", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                "message": "starting\nerror: config /etc/iotstamp/stamp.json: missing field `quota`\n"}},
        }]}));
        let t = trouble(&p).unwrap();
        assert_eq!(t.reason, reasons::CONTAINER_CRASHING);
        assert_eq!(
            t.detail,
            "CrashLoopBackOff: back-off 40s restarting failed container; last run exited with code 2 \
             (Error): error: config /etc/iotstamp/stamp.json: missing field `quota`"
        );
    }

    #[test]
    fn init_containers_are_read_first_and_an_unplaceable_pod_is_named() {
        let mut s = waiting("CrashLoopBackOff", "");
        s["initContainerStatuses"] = waiting("ErrImagePull", "not found")["containerStatuses"].clone();
        assert_eq!(trouble(&pod(s)).unwrap().reason, reasons::IMAGE_PULL_FAILED);

        let pending = pod(json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims"}]}));
        assert_eq!(
            trouble(&pending).unwrap().message(),
            "pod s-hub-0: Unschedulable: 0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims"
        );
        let running = pod(json!({"conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "hub", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]}));
        assert_eq!(trouble(&running), None);
    }

    #[test]
    fn trimming_keeps_what_trouble_reads_and_the_hash_follows_only_trouble() {
        let mut p = pod(waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"127.0.0.1:1/x:y\"",
        ));
        p.metadata.labels = Some([("iotstamp.dev/stamp".to_string(), "s".to_string())].into());
        p.metadata.resource_version = Some("7".into());
        let before = trouble(&p);
        let hash = trouble_hash(&p);
        trim(&mut p);
        assert_eq!(trouble(&p), before);
        assert_eq!(p.metadata.resource_version, None);
        assert!(p.metadata.labels.unwrap().contains_key("iotstamp.dev/stamp"));

        let mut restarted = pod(waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"127.0.0.1:1/x:y\"",
        ));
        restarted
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .restart_count = 9;
        assert_eq!(
            trouble_hash(&restarted),
            hash,
            "a restart count alone is not news"
        );
        assert_ne!(trouble_hash(&pod(waiting("ErrImagePull", "x"))), hash);
    }
}
