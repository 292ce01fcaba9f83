//! Condition types and reasons that appear in `status.conditions`. Shared so the router can read
//! `Ready` without guessing at strings the operator writes.

/// The stamp can take devices: every role is ready and it is neither paused nor failing.
pub const READY: &str = "Ready";
pub const HUB_READY: &str = "HubReady";
pub const INGEST_READY: &str = "IngestReady";
pub const STORAGE_READY: &str = "StorageReady";
/// `spec.paused` is set: the operator changes nothing under this stamp.
pub const PAUSED: &str = "Paused";
/// `spec.draining` is set: the router assigns no new devices here.
pub const DRAINING: &str = "Draining";
/// More devices are assigned than `spec.deviceQuota` (it was lowered): the stamp keeps them and
/// takes no new ones.
pub const OVER_QUOTA: &str = "OverQuota";

/// Every condition the operator maintains, in the order `kubectl describe` shows them.
pub const ALL: [&str; 7] = [
    READY,
    HUB_READY,
    INGEST_READY,
    STORAGE_READY,
    PAUSED,
    DRAINING,
    OVER_QUOTA,
];

pub mod reasons {
    pub const ALL_READY: &str = "AllRolesReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const WAITING_FOR_PODS: &str = "WaitingForPods";
    pub const PODS_READY: &str = "PodsReady";
    /// A pod's image cannot be pulled (the kubelet's ErrImagePull, ImagePullBackOff, ...).
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// A container keeps exiting (CrashLoopBackOff); the message says how its last run ended.
    pub const CONTAINER_CRASHING: &str = "ContainerCrashing";
    /// The kubelet cannot create or start a container (CreateContainerConfigError, ...).
    pub const CONTAINER_CANNOT_START: &str = "ContainerCannotStart";
    /// The scheduler finds no node for a pod (resources, an unbound volume claim, taints).
    pub const POD_UNSCHEDULABLE: &str = "PodUnschedulable";
    pub const TLS_SECRET_MISSING: &str = "TLSSecretMissing";
    pub const TLS_SECRET_INVALID: &str = "TLSSecretInvalid";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PAUSED: &str = "PausedBySpec";
    pub const NOT_PAUSED: &str = "NotPaused";
    pub const DRAINING: &str = "DrainingBySpec";
    pub const NOT_DRAINING: &str = "NotDraining";
    pub const ASSIGNED_ABOVE_QUOTA: &str = "AssignedAboveQuota";
    pub const WITHIN_QUOTA: &str = "WithinQuota";
    pub const STAMP_PAUSED: &str = "StampPaused";
}
