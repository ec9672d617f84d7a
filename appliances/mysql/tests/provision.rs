//! `resource add mysql` / `resource remove` against a real 3-member cluster through the
//! leader-following endpoint: each app gets its own database and user, cannot see the
//! other's, cannot write on a replica, and removal ends its sessions and drops both.

mod common;

use mysql_async::prelude::Queryable;
use paas_mysql::provision::ResourceData;

use common::{connect, opts, url_opts, Harness};

fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_get_isolated_databases_that_removal_drops() {
    let h = Harness::start(3).await;
    let provider = h.provider();
    let (shop, shop_data) = provider.provision_database("shop", "db").await.unwrap();
    let (blog, _) = provider.provision_database("blog", "db").await.unwrap();
    assert_eq!(shop["DATABASE_URL"], shop["MYSQL_URL"]);
    assert!(shop["DATABASE_URL"].starts_with(&format!(
        "mysql://shop_db:{}@{}/shop_db",
        shop["MYSQL_PASSWORD"],
        h.endpoint_addr()
    )));
    assert_eq!(shop["MYSQL_PASSWORD"].len(), 48, "192 random bits, hex");
    assert_ne!(shop["MYSQL_PASSWORD"], blog["MYSQL_PASSWORD"]);

    // Each app works in its own database through the endpoint.
    let mut s = connect(url_opts(&shop["DATABASE_URL"])).await.unwrap();
    s.query_drop("CREATE TABLE orders (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .unwrap();
    s.query_drop("INSERT INTO orders VALUES (1), (2)")
        .await
        .unwrap();
    let mut b = connect(url_opts(&blog["DATABASE_URL"])).await.unwrap();
    b.query_drop("CREATE TABLE posts (id INT) ENGINE=InnoDB")
        .await
        .unwrap();

    // ... and cannot reach the other's, nor list it.
    let err = b
        .query_drop("SELECT * FROM shop_db.orders")
        .await
        .expect_err("blog reads shop's table");
    assert!(
        matches!(server_code(&err), Some(1142) | Some(1044)),
        "{err}"
    );
    let dbs: Vec<String> = b.query("SHOW DATABASES").await.unwrap();
    assert!(!dbs.iter().any(|d| d == "shop_db"), "{dbs:?}");
    let blog_url_on_shop = blog["DATABASE_URL"].replace("/blog_db", "/shop_db");
    let err = connect(url_opts(&blog_url_on_shop))
        .await
        .expect_err("blog connects to shop's database");
    assert!(err.contains("1044") || err.contains("denied"), "{err}");

    // On a replica the app's writes are refused, whatever it tries.
    let state = h
        .wait_healthy(std::time::Duration::from_secs(60), None)
        .await;
    let replica = h
        .cluster
        .members()
        .iter()
        .position(|m| m.name != state.primary)
        .unwrap();
    // The replica applies the user and the table asynchronously: give it a moment.
    let started = std::time::Instant::now();
    let mut direct = loop {
        let conn = connect(opts(
            h.member_addr(replica),
            &shop["MYSQL_USER"],
            &shop["MYSQL_PASSWORD"],
            Some("shop_db"),
        ))
        .await;
        let last = match conn {
            Ok(mut c) => match c.query_drop("SELECT * FROM orders").await {
                Ok(()) => break c,
                Err(err) => err.to_string(),
            },
            Err(err) => err,
        };
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the app's user and table never reached the replica: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let err = direct
        .query_drop("INSERT INTO orders VALUES (3)")
        .await
        .expect_err("a replica took an app's write");
    assert_eq!(server_code(&err), Some(1290), "{err}");
    let err = direct
        .query_drop("SET GLOBAL read_only = 0")
        .await
        .expect_err("the app switched read_only off");
    assert!(matches!(server_code(&err), Some(1227)), "{err}");

    // Provisioning again changes the password and keeps the data.
    let (again, _) = provider.provision_database("shop", "db").await.unwrap();
    assert_ne!(again["MYSQL_PASSWORD"], shop["MYSQL_PASSWORD"]);
    let mut s2 = connect(url_opts(&again["DATABASE_URL"])).await.unwrap();
    let n: Option<i64> = s2.query_first("SELECT COUNT(*) FROM orders").await.unwrap();
    assert_eq!(n, Some(2));

    // Removal ends the app's open sessions and drops database and user.
    provider.deprovision_database(&shop_data).await.unwrap();
    assert!(
        s2.query_drop("SELECT 1").await.is_err(),
        "a session of the removed app survived"
    );
    assert!(connect(url_opts(&again["DATABASE_URL"])).await.is_err());
    let mut admin = connect(opts(h.endpoint_addr(), "paas", common::PASSWORD, None))
        .await
        .unwrap();
    let left: Vec<String> = admin
        .query("SELECT user FROM mysql.user WHERE user = 'shop_db' UNION SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'shop_db'")
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // Removing twice is fine; the other app is untouched.
    provider.deprovision_database(&shop_data).await.unwrap();
    provider
        .deprovision_database(&ResourceData {
            user: "never_db".into(),
            database: "never_db".into(),
            password: None,
        })
        .await
        .unwrap();
    b.query_drop("INSERT INTO posts VALUES (1)").await.unwrap();
}
