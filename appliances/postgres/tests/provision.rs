//! Provisioning against a real 3-member cluster, through the leader-following endpoint.

mod common;

use common::{connect, Harness, PASSWORD};
use paas_postgres::provision::{PostgresProvider, ProviderConfig, ProvisionError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_and_remove_an_app_database() {
    let h = Harness::start(3).await;
    let addr = h.endpoint_addr();
    let provider = PostgresProvider::new(ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    });

    let (env, data) = provider
        .provision_database("shop", "r1")
        .await
        .expect("provision");
    for key in [
        "DATABASE_URL",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
    ] {
        assert!(env.contains_key(key), "{key} missing from {env:?}");
    }
    assert_eq!(env["PGPORT"], addr.port().to_string());
    assert_eq!(env["PGPASSWORD"].len(), 48, "24 random bytes, hex");
    assert_eq!(
        (data.role.as_str(), data.database.as_str()),
        ("shop_r1", "shop_r1")
    );

    // The app connects with exactly what it was given and owns its database.
    let app = connect(&env["DATABASE_URL"])
        .await
        .expect("app connects with DATABASE_URL");
    app.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("app writes");

    // Another app's role cannot connect to it.
    let (other_env, other_data) = provider
        .provision_database("other", "r1")
        .await
        .expect("provision other");
    let intruder = format!(
        "host={} port={} user={} password={} dbname=shop_r1",
        addr.ip(),
        addr.port(),
        other_env["PGUSER"],
        other_env["PGPASSWORD"]
    );
    let refused = connect(&intruder)
        .await
        .expect_err("other app must not connect");
    let message = refused
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("permission denied"), "{refused:?}");
    // Nor to the maintenance databases.
    for maintenance in ["postgres", "template1"] {
        let url = format!(
            "host={} port={} user={} password={} dbname={maintenance}",
            addr.ip(),
            addr.port(),
            env["PGUSER"],
            env["PGPASSWORD"]
        );
        let refused = connect(&url)
            .await
            .expect_err("an app role must not connect to a maintenance database");
        let message = refused
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("permission denied"),
            "{maintenance}: {refused:?}"
        );
    }
    // A wrong password is refused too.
    let wrong = env["DATABASE_URL"].replace(&env["PGPASSWORD"], "00");
    assert!(connect(&wrong).await.is_err());

    // Remove: the open session is ended, database and role are gone; removing again is fine.
    provider
        .deprovision_database(&data)
        .await
        .expect("deprovision");
    assert!(
        app.simple_query("SELECT 1").await.is_err(),
        "session survived removal"
    );
    let admin = connect(&format!(
        "host={} port={} user=postgres password={PASSWORD} dbname=postgres",
        addr.ip(),
        addr.port()
    ))
    .await
    .unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = 'shop_r1') + (SELECT count(*) FROM pg_roles WHERE rolname = 'shop_r1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    provider
        .deprovision_database(&data)
        .await
        .expect("removing twice succeeds");
    provider
        .deprovision_database(&other_data)
        .await
        .expect("deprovision other");

    // Names that reduce to nothing are refused with a clear error, and the provider keeps working.
    let err = provider.provision_database("--", "r1").await.unwrap_err();
    assert!(matches!(err, ProvisionError::BadName { .. }), "{err}");
    // Through the controller's interface, as `paas resource add|remove` calls it.
    let dynamic: &dyn paas_appliance::provider::Provider = &provider;
    let provisioned = dynamic
        .provision("shop", "r3", &Default::default())
        .await
        .expect("provision via trait");
    assert!(provisioned.env["DATABASE_URL"].ends_with("/shop_r3"));
    connect(&provisioned.env["DATABASE_URL"])
        .await
        .expect("connects");
    dynamic
        .deprovision("shop", "r3", &provisioned.data)
        .await
        .expect("remove via trait");
    let bad = dynamic
        .deprovision("shop", "r3", &serde_json::json!({"nope": 1}))
        .await;
    assert!(bad.is_err(), "unrecognised data is refused with an error");
    provider
        .provision_database("shop", "r2")
        .await
        .expect("still provisions after bad input");

    // Another session creates the role while provisioning runs (as an earlier attempt
    // of the same operation does, still in flight on a connection a retry gave up on):
    // provisioning's CREATE ROLE waits for it, then sets the role's password instead of
    // failing on the catalog's unique index.
    let superuser = format!(
        "host={} port={} user=postgres password={PASSWORD} dbname=postgres",
        addr.ip(),
        addr.port()
    );
    let other = connect(&superuser).await.expect("other session");
    let observer = connect(&superuser).await.expect("observer session");
    other
        .batch_execute("BEGIN; CREATE ROLE shop_r4 LOGIN")
        .await
        .expect("role created, not committed");
    let commit_once_blocked = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE query LIKE 'CREATE ROLE \"shop_r4\"%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "provisioning never waited on the other session's role"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        other.batch_execute("COMMIT").await.expect("commit");
    };
    let (raced, ()) = tokio::join!(
        provider.provision_database("shop", "r4"),
        commit_once_blocked
    );
    let (env4, _) = raced.expect("provisioning while another session creates the role");
    connect(&env4["DATABASE_URL"])
        .await
        .expect("the role has the password handed out");
}
