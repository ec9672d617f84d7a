//! A MariaDB server set up like a cluster member and its provider as a backup target,
//! with a schema of accounts, a ledger, a view and a procedure, and table snapshots.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use paas_backups::Target;
use paas_mysql::provision::{MysqlProvider, ProviderConfig, ResourceData};

const SUPERUSER_PASSWORD: &str = "test-superuser";

/// A MariaDB server set up like a cluster member (binary log on, the superuser account)
/// and the provider over it.
pub struct Maria {
    pub server: paas_it::MariaDbServer,
    pub provider: Arc<MysqlProvider>,
}

impl Maria {
    pub async fn start() -> Maria {
        let server = paas_it::MariaDbServer::start_with(&[
            "--log-bin=binlog",
            "--server-id=1",
            "--binlog-format=ROW",
        ])
        .expect("mariadb");
        let mut root = Conn::new(
            OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(server.port())
                .user(Some("root"))
                .prefer_socket(false),
        )
        .await
        .expect("root");
        root.query_drop(format!(
            "CREATE USER 'paas'@'%' IDENTIFIED BY '{SUPERUSER_PASSWORD}';
             GRANT ALL PRIVILEGES ON *.* TO 'paas'@'%' WITH GRANT OPTION;"
        ))
        .await
        .expect("superuser");
        let provider = Arc::new(MysqlProvider::new(ProviderConfig {
            host: "127.0.0.1".into(),
            port: server.port(),
            superuser_password: SUPERUSER_PASSWORD.into(),
        }));
        Maria { server, provider }
    }

    pub async fn target(&self, app: &str, id: &str) -> Target {
        let (_, data) = self
            .provider
            .provision_database(app, id)
            .await
            .expect("provision");
        Target {
            app: app.into(),
            resource: id.into(),
            kind: "mysql".into(),
            data: serde_json::to_value(data).unwrap(),
            provider: self.provider.clone(),
        }
    }

    /// A connection as the target's own user, to its database.
    pub async fn connect(&self, target: &Target) -> Conn {
        let data: ResourceData = serde_json::from_value(target.data.clone()).unwrap();
        Conn::new(
            OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(self.server.port())
                .user(Some(data.user))
                .pass(data.password)
                .db_name(Some(data.database))
                .prefer_socket(false),
        )
        .await
        .expect("connect as the app")
    }

    pub async fn databases(&self) -> Vec<String> {
        let mut root = Conn::new(
            OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(self.server.port())
                .user(Some("root"))
                .prefer_socket(false),
        )
        .await
        .unwrap();
        root.query("SHOW DATABASES").await.unwrap()
    }
}

/// Accounts, a ledger, a view over them and a procedure (triggers and functions need
/// SUPER with the binary log on, so apps have none), plus `rows` rows of poorly
/// compressible filler.
pub async fn fill(c: &mut Conn, rows: u32) {
    c.query_drop(
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, amount BIGINT NOT NULL,
                              note VARCHAR(64) NOT NULL DEFAULT '') ENGINE=InnoDB;
         CREATE TABLE meta (k VARCHAR(16) PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO meta VALUES ('transfers', 0);
         CREATE TABLE filler (id INT PRIMARY KEY, note TEXT NOT NULL) ENGINE=InnoDB;
         CREATE VIEW total AS SELECT SUM(balance) AS s, COUNT(*) AS n FROM accounts;
         CREATE PROCEDURE transfer(a INT, b INT, x BIGINT)
           BEGIN
             UPDATE accounts SET balance = balance - x WHERE id = a;
             UPDATE accounts SET balance = balance + x WHERE id = b;
             INSERT INTO ledger (amount, note) VALUES (x, CONCAT('moved ', x));
             UPDATE meta SET v = v + 1 WHERE k = 'transfers';
           END;",
    )
    .await
    .expect("schema");
    c.query_drop("INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_100")
        .await
        .expect("accounts");
    c.query_drop(format!(
        "INSERT INTO filler SELECT seq, CONCAT(MD5(seq), MD5(seq * 7), MD5(seq * 13)) FROM seq_1_to_{rows}"
    ))
    .await
    .expect("filler");
}

/// Row counts and an order-independent digest of every table, and the view's answer.
pub async fn snapshot(c: &mut Conn) -> Vec<String> {
    c.query_drop("SET SESSION group_concat_max_len = 1073741824")
        .await
        .unwrap();
    let mut out = Vec::new();
    for (table, cols) in [
        ("accounts", "id, balance"),
        ("ledger", "id, amount, note"),
        ("meta", "k, v"),
        ("filler", "id, note"),
    ] {
        let row: Option<(i64, Option<String>)> = c
            .query_first(format!(
                "SELECT COUNT(*), MD5(GROUP_CONCAT(CONCAT_WS(':', {cols}) ORDER BY 1 SEPARATOR ',')) FROM {table}"
            ))
            .await
            .unwrap_or(None);
        out.push(format!("{table}: {row:?}"));
    }
    let total: Option<(Option<String>, i64)> = c
        .query_first("SELECT CAST(s AS CHAR), n FROM total")
        .await
        .unwrap_or(None);
    out.push(format!("total: {total:?}"));
    out
}
