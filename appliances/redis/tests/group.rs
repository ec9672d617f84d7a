//! A group of two real supervisors with real redis-servers: it bootstraps, replicates,
//! refuses the app's password for admin commands and keeps data across a restart.

mod common;

use std::time::Duration;

use common::{admin_password, connect, password, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_bootstraps_replicates_and_locks_the_app_out_of_admin_commands() {
    let h = Harness::start(2).await;
    let state = h.wait_healthy(Duration::from_secs(30), None).await;
    assert_eq!(state.generation, 1);

    let mut conn = connect(&h.url())
        .await
        .expect("connect through the endpoint");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica acknowledges the write");

    // The app's user cannot reconfigure, demote or stop its group.
    for cmd in [
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg("0")
            .clone(),
        redis::cmd("REPLICAOF").arg("NO").arg("ONE").clone(),
        redis::cmd("SHUTDOWN").arg("NOSAVE").clone(),
        redis::cmd("DEBUG").arg("SLEEP").arg("0").clone(),
    ] {
        let err = cmd
            .query_async::<redis::Value>(&mut conn)
            .await
            .unwrap_err();
        // DEBUG is also disabled for everyone (`enable-debug-command no`, the default).
        let text = err.to_string();
        assert!(
            text.contains("NOPERM") || text.contains("DEBUG command not allowed"),
            "{text}"
        );
    }

    // A wrong password is refused; the replica serves reads but refuses writes.
    let replica = h
        .group
        .members()
        .iter()
        .find(|m| m.name != state.primary)
        .unwrap();
    let wrong = format!("redis://default:{}@{}/", admin_password(), replica.addr());
    assert!(
        connect(&wrong).await.is_none(),
        "the admin password is not the app's"
    );
    let direct = format!("redis://default:{}@{}/", password(), replica.addr());
    let mut replica_conn = connect(&direct).await.expect("connect to the replica");
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut replica_conn)
        .await
        .unwrap();
    assert_eq!(v, "v");
    let err = redis::cmd("SET")
        .arg("k")
        .arg("w")
        .query_async::<()>(&mut replica_conn)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err}");
}
