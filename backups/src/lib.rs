//! `paas-backups`: backups of app resources, taken and restored through the engines' own
//! backup hooks (`paas_appliance::provider::Provider::backup` / `restore`), kept in an
//! object store.
//!
//! Map, in the order a backup travels:
//! - [`location`]: where backups live (a directory, by default under the data dir, or
//!   `s3://bucket/prefix`) and the `object_store` client for it;
//! - [`store`]: the object layout (`<app>/<id>/dump`, `<app>/<id>/manifest.json`),
//!   manifests, listing;
//! - [`upload`]: a byte stream to a multipart upload, hashed and counted on the way,
//!   aborted (with retries) when anything fails;
//! - [`verify`]: the checksum pass and the verified stream a restore reads;
//! - [`backups`]: the operations (create, list, get, download, restore, delete) on a
//!   [`backups::Target`] resource;
//! - [`journal`]: the lines a backup writes to the app's log (`--type backup`);
//!   [`progress`]: the periodic progress line (bytes, rate, ETA against the exact size
//!   of a restore or the previous backup's size as an estimate), pure;
//! - [`manifest`]: what a backup is (engine, version, size, SHA-256, times);
//! - [`archive`]: the whole-cluster backup file (`paas cluster backup`): a tar of the
//!   etcd snapshot, artifacts and one backup per resource, its manifest last; written
//!   as a stream, checked whole before a restore writes anything;
//! - [`schedule`] (cron, what is due) and [`retention`] (what to delete): pure;
//!   [`schedules`]: schedules and their last runs in etcd; [`runner`]: the elected
//!   runner that takes due backups and applies retention.
//!
//! Invariants:
//! - A listed backup is complete: its manifest is written last, after the dump object
//!   was completed and its size confirmed by the store; listing shows only objects with
//!   a manifest. A failed backup's upload is aborted, so no partial object stays.
//! - A restore reads the whole object and checks size and SHA-256 against the manifest
//!   before the engine sees a byte, then streams it again pinned to the same object
//!   version (ETag) and withholds the last chunk until the second pass checks out too;
//!   a truncated or corrupted object is refused and the resource is left unchanged.
//! - Nothing is copied to local disk on the way (uploads stream part by part; restores
//!   stream from the store to the engine's tool).
//! - [`schedule::due`], [`retention::expired`], [`progress::line`] and
//!   [`archive::verdict`] do no I/O.

pub mod archive;
pub mod backups;
pub mod journal;
pub mod location;
pub mod manifest;
pub mod progress;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod schedules;
pub mod store;
pub mod upload;
pub mod verify;

pub use backups::{BackupError, Backups, Target};
pub use location::Location;
pub use manifest::{Manifest, Trigger};
