//! `paas-it`: real servers for tests, as processes on 127.0.0.1.
//!
//! Every fixture starts the real server binary on free ports with its own temp dir,
//! waits until the server answers its own protocol (not merely until a port is open),
//! and stops it and removes the dir when dropped — also when the test panics. Servers
//! get a parent-death signal, so even a SIGKILLed test process leaves no server behind
//! (only its temp dir). A missing binary is an error carrying the install command; no
//! fixture skips silently. The one that may skip, [`MongoServer`] (no registry here
//! ships mongod), prints `SKIPPED: mongod not on PATH` and returns
//! [`MongoStart::Skipped`]; its readiness is mongod's "Waiting for connections" log line
//! plus an open port, untested here for lack of a mongod.
//!
//! | fixture            | binary                      | address helpers              |
//! |--------------------|-----------------------------|------------------------------|
//! | [`EtcdServer`]     | `etcd`                      | `endpoint()`                 |
//! | [`S3Server`]       | `moto_server`               | `endpoint()`, `create_bucket`, `tls()`|
//! | [`PostgresServer`] | `initdb`, `postgres` (15)   | `url()`, `socket_dir()`      |
//! | [`RedisServer`]    | `redis-server`              | `url()`                      |
//! | [`MariaDbServer`]  | `mariadb-install-db`, `mariadbd` | `url()`, `socket()`     |
//! | [`MongoServer`]    | `mongod` (may be absent: [`MongoStart::Skipped`]) | `url()` |
//!
//! PostgreSQL and MariaDB refuse to run as root: when the tests run as root, their
//! temp dirs are chowned to `postgres` / `mysql` and the processes run under those
//! uids (set directly, like `runuser -u`, but without runuser's extra parent process,
//! which would keep the parent-death signal from reaching the server).
//!
//! Building blocks: [`free_port`], [`ServerProcess`] (the process guard),
//! [`require_binary`], [`OsUser`], [`Crashable`] (a runtime that dies like kill -9),
//! [`wait_for`] (poll until a condition holds), [`CutProxy`] (a TCP proxy that cuts a
//! server off after N bytes, e.g. an S3 store in the middle of an upload), [`TlsFront`]
//! (`https://localhost` with a throwaway CA in front of a plain server, which can
//! refuse for a while: [`S3Server::start_tls`]). Errors: [`FixtureError`].
//!
//! Usage, from any crate's tests (`paas-it` as a dev-dependency):
//!
//! ```no_run
//! let etcd = paas_it::EtcdServer::start().expect("etcd");
//! let endpoint = etcd.endpoint(); // http://127.0.0.1:PORT
//! # drop(endpoint);
//! ```

mod crashable;
mod cut_proxy;
mod error;
mod etcd;
mod http;
mod mariadb;
mod mongo;
pub mod phase;
mod port;
mod postgres;
mod process;
mod procs;
mod redis;
mod s3;
mod tls_front;
mod wait;

pub use crashable::Crashable;
pub use cut_proxy::CutProxy;
pub use error::{FixtureError, Result};
pub use etcd::EtcdServer;
pub use mariadb::MariaDbServer;
pub use mongo::{MongoServer, MongoStart};
pub use port::free_port;
pub use postgres::{PostgresServer, PG_BIN};
pub use process::{require_binary, OsUser, ServerProcess, STOP_GRACE};
pub use procs::processes;
pub use redis::RedisServer;
pub use s3::S3Server;
pub use tls_front::TlsFront;
pub use wait::{patiently, wait_for};
