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
/// A grown `spec.storage.size` is being carried out: the volume claims were expanded and their
/// volumes have not all reached the size yet. False with a reason once they have, or when growing
/// is not possible (`StorageNotExpandable`).
pub const STORAGE_RESIZING: &str = "StorageResizing";

/// Every condition the operator maintains, in the order `kubectl describe` shows them.
pub const ALL: [&str; 8] = [
    READY,
    HUB_READY,
    INGEST_READY,
    STORAGE_READY,
    PAUSED,
    DRAINING,
    OVER_QUOTA,
    STORAGE_RESIZING,
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
    /// Every storage volume claim has (at least) `spec.storage.size`.
    pub const STORAGE_AT_SIZE: &str = "StorageAtSize";
    /// The claims ask for the new size; the storage provisioner has not expanded them all yet.
    pub const EXPANDING_VOLUMES: &str = "ExpandingVolumes";
    /// Growing is refused for a claim: its StorageClass does not allow expansion, does not exist,
    /// or the claim is not bound. The message names the claim and the class; nothing is changed.
    pub const STORAGE_NOT_EXPANDABLE: &str = "StorageNotExpandable";
    /// The storage StatefulSet asks for more than `spec.storage.size` (admission refuses a smaller
    /// size; seen only where that rule was bypassed): volumes never shrink, the larger one stays.
    pub const STORAGE_CANNOT_SHRINK: &str = "StorageCannotShrink";
}
