//! `paas-router`: how traffic reaches the platform's services.
//!
//! For now one piece: [`tcp`], the leader-following TCP endpoint. It listens on a stable
//! address and forwards every new connection to the current leader of a discovery
//! service (a leased leader key in etcd), and closes connections that still go to an
//! instance that lost leadership. Appliances put its address into `DATABASE_URL`, so one
//! URL keeps working across a failover. The HTTP router comes later, next to it.

pub mod tcp;
