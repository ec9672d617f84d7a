//! `paas-it`: real servers for tests, as processes on 127.0.0.1.
//!
//! Every fixture starts the real server binary on free ports with its own temp dir,
//! waits until the server answers its own protocol (not merely until a port is open),
//! and stops it and removes the dir when dropped — also when the test panics. Servers
//! get a parent-death signal, so even a SIGKILLed test process leaves no server behind
//! (only its temp dir). A missing binary is an error carrying the install command; no
//! fixture skips silently.
//!
//! | fixture            | binary                      | address helpers              |
//! |--------------------|-----------------------------|------------------------------|
//! | [`EtcdServer`]     | `etcd`                      | `endpoint()`                 |
//! | [`S3Server`]       | `moto_server`               | `endpoint()`, `create_bucket`|
//!
//! Building blocks: [`free_port`], [`ServerProcess`] (the process guard),
//! [`require_binary`], [`OsUser`]. Errors: [`FixtureError`].
//!
//! Usage, from any crate's tests (`paas-it` as a dev-dependency):
//!
//! ```no_run
//! let etcd = paas_it::EtcdServer::start().expect("etcd");
//! let endpoint = etcd.endpoint(); // http://127.0.0.1:PORT
//! # drop(endpoint);
//! ```

mod error;
mod etcd;
mod http;
mod port;
mod process;
mod s3;

pub use error::{FixtureError, Result};
pub use etcd::EtcdServer;
pub use port::free_port;
pub use process::{require_binary, OsUser, ServerProcess, STOP_GRACE};
pub use s3::S3Server;
