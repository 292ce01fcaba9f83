//! The adapters: everything the router talks to outside its own process.
//!
//! Data model: [`store`] keeps one [`store::Assignment`] per device (key = lower-cased device id)
//! and the count of records per stamp; [`directory`] answers which stamps exist as a snapshot of
//! [`directory::StampInfo`]; [`stamp_client`] writes a [`iotstamp_core::registry::DeviceRecord`]
//! into a stamp's registry and passes service calls through; [`kubernetes`] fills the directory
//! and the enrollment groups from IoTStamp and EnrollmentGroup objects. Each is behind a trait
//! or a plain type the app chooses at start, and none of them knows about provisioning.

pub mod directory;
pub mod kubernetes;
pub mod stamp_client;
pub mod store;
