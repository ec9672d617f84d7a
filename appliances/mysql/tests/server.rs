//! The server driver against a real mariadbd, without etcd: what the configuration
//! promises on MariaDB 10.11.
//!
//! - A primary with no replica makes a commit wait, longer than MariaDB's default
//!   10 s fallback, instead of acknowledging it: semi-sync stays ON and the row stays
//!   invisible (AFTER_SYNC).
//! - `read_only` stops an app user provisioned by `MysqlProvider` and a user with SUPER;
//!   only `ALL ON *.*` (which includes READ ONLY ADMIN, and which only the supervisor's
//!   account has) writes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use paas_mysql::provision::{MysqlProvider, ProviderConfig};
use paas_mysql::server::{Mariadb, ServerConfig, StartAs, SUPERUSER};

const PASSWORD: &str = "driver-test-secret";

struct Fixture {
    server: Mariadb,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(how: StartAs) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("paas-mysql-driver")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let host = paas_appliance::addr::cluster_ip(&dir.path().to_string_lossy());
        let port = paas_it::free_port().unwrap();
        let mut server = Mariadb::new(ServerConfig {
            tls_dir: None,
            name: "my0".into(),
            dir: dir.path().join("my0"),
            host: host.to_string(),
            port,
            server_id: 1,
            superuser_password: PASSWORD.into(),
        });
        std::fs::create_dir_all(dir.path().join("my0")).unwrap();
        server.install().await.expect("install");
        server.start(&how).await.expect("start");
        Fixture {
            server,
            addr: SocketAddr::from((host, port)),
            _dir: dir,
        }
    }

    async fn connect(&self, user: &str, password: &str) -> Conn {
        Conn::new(
            OptsBuilder::default()
                .ip_or_hostname(self.addr.ip().to_string())
                .tcp_port(self.addr.port())
                .user(Some(user))
                .pass(Some(password))
                .prefer_socket(false),
        )
        .await
        .expect("connect")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.kill_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replica_a_commit_waits_instead_of_falling_back_to_async() {
    let mut f = Fixture::start(StartAs::Primary).await;
    f.server.open_writes(None).await.expect("open writes");
    let mut admin = f.connect(SUPERUSER, PASSWORD).await;
    // Set-up outside the binlog (nothing to acknowledge).
    admin
        .query_drop("SET SESSION sql_log_bin = 0")
        .await
        .unwrap();
    admin.query_drop("CREATE DATABASE t").await.unwrap();
    admin
        .query_drop("CREATE TABLE t.x (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();

    let mut writer = f.connect(SUPERUSER, PASSWORD).await;
    let started = Instant::now();
    let insert = tokio::spawn(async move {
        let result = writer.query_drop("INSERT INTO t.x VALUES (1)").await;
        (result.is_ok(), writer)
    });
    // Longer than MariaDB's default rpl_semi_sync_master_timeout (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        !insert.is_finished(),
        "the commit was acknowledged after {:?} with no replica",
        started.elapsed()
    );
    let runtime = f.server.runtime().await.expect("runtime");
    assert!(runtime.semi_sync_master, "{runtime:?}");
    assert!(
        runtime.semi_sync_master_on,
        "semi-sync fell back: {runtime:?}"
    );
    assert_eq!(runtime.semi_sync_clients, 0);
    let visible: Option<i64> = admin.query_first("SELECT COUNT(*) FROM t.x").await.unwrap();
    assert_eq!(visible, Some(0), "an unacknowledged row is visible");
    let waiting: Vec<(String, String)> = admin
        .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
        .await
        .unwrap();
    assert_eq!(waiting[0].1, "1", "{waiting:?}");
    insert.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_stops_app_users_and_super_but_not_the_supervisor() {
    let f = Fixture::start(StartAs::Replica { rejoin: false }).await;
    let provider = MysqlProvider::new(ProviderConfig {
        host: f.addr.ip().to_string(),
        port: f.addr.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    });
    let (env, _) = provider
        .provision_database("shop", "db")
        .await
        .expect("provision on a read-only server as the supervisor");
    let password = env["MYSQL_PASSWORD"].clone();
    let user = env["MYSQL_USER"].clone();

    let mut admin = f.connect(SUPERUSER, PASSWORD).await;
    admin
        .query_drop("CREATE TABLE shop_db.t (id INT) ENGINE=InnoDB")
        .await
        .expect("the supervisor's account (READ ONLY ADMIN) writes");
    admin
        .query_drop(format!("CREATE USER 'sup'@'%' IDENTIFIED BY '{PASSWORD}'"))
        .await
        .unwrap();
    for grant in [
        "GRANT SUPER ON *.* TO 'sup'@'%'",
        "GRANT ALL PRIVILEGES ON shop_db.* TO 'sup'@'%'",
    ] {
        admin.query_drop(grant).await.unwrap();
    }
    let grants: Vec<String> = admin
        .query(format!("SHOW GRANTS FOR '{user}'@'%'"))
        .await
        .unwrap();
    assert!(
        grants
            .iter()
            .all(|g| !g.contains("ON *.*") || g.starts_with("GRANT USAGE")),
        "app user has a global privilege: {grants:?}"
    );

    for (who, password) in [(user.as_str(), password.as_str()), ("sup", PASSWORD)] {
        let mut conn = f.connect(who, password).await;
        let err = conn
            .query_drop("INSERT INTO shop_db.t VALUES (1)")
            .await
            .expect_err("read_only must refuse the write");
        match err {
            mysql_async::Error::Server(e) => assert_eq!(e.code, 1290, "{who}: {e}"),
            other => panic!("{who}: {other}"),
        }
    }
    let rows: Option<i64> = admin
        .query_first("SELECT COUNT(*) FROM shop_db.t")
        .await
        .unwrap();
    assert_eq!(rows, Some(0));
}
