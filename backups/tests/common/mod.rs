//! Shared pieces of the backup tests: a real PostgreSQL with one provisioned app
//! database, its provider as a backup target, and row snapshots; [`maria`] the same for
//! MariaDB.

#![allow(dead_code)]

pub mod maria;

use std::sync::Arc;

use paas_backups::Target;
use paas_postgres::provision::{PostgresProvider, ProviderConfig, ResourceData};

/// A PostgreSQL server and the provider over it.
pub struct Pg {
    pub server: paas_it::PostgresServer,
    pub provider: Arc<PostgresProvider>,
}

impl Pg {
    pub fn start() -> Pg {
        let server = paas_it::PostgresServer::start().expect("postgres");
        let provider = Arc::new(PostgresProvider::new(ProviderConfig {
            host: "127.0.0.1".into(),
            port: server.port(),
            superuser_password: "unused-with-trust".into(),
            tls: None,
        }));
        Pg { server, provider }
    }

    /// Provisions a database for (`app`, `id`) and returns it as a backup target.
    pub async fn target(&self, app: &str, id: &str) -> Target {
        let (_, data) = self
            .provider
            .provision_database(app, id)
            .await
            .expect("provision");
        Target {
            app: app.into(),
            resource: id.into(),
            kind: "postgres".into(),
            data: serde_json::to_value(data).unwrap(),
            provider: self.provider.clone(),
        }
    }

    /// A connection as the target's own role, to its database.
    pub async fn connect(&self, target: &Target) -> tokio_postgres::Client {
        let data: ResourceData = serde_json::from_value(target.data.clone()).unwrap();
        let conninfo = format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.server.port(),
            data.role,
            data.database
        );
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

/// Fills `orders` with `rows` rows of ~100 bytes of poorly compressible text.
pub async fn fill(client: &tokio_postgres::Client, rows: u32) {
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL);
             INSERT INTO orders SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text)
               FROM generate_series(1, {rows}) i;"
        ))
        .await
        .expect("fill");
}

/// The count and an order-independent digest of `orders`, or `None` without the table.
pub async fn snapshot(client: &tokio_postgres::Client) -> Option<(i64, String)> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(id::text || ':' || note, ',' ORDER BY id)), '')
             FROM orders",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}
