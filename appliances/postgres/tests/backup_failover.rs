//! A backup while the primary fails over: pg_dump's connection to the old primary ends,
//! so the dump fails rather than mixing two servers' data; if it did complete, its
//! contents are one consistent snapshot. After the failover a backup through the same
//! endpoint succeeds and restores.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{connect, postmaster_pid, Harness, PASSWORD};
use paas_appliance::provider::Provider;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};
use tokio::io::AsyncReadExt;

/// Rows in `a` and `b` (always inserted together, in one transaction).
async fn pair_counts(client: &tokio_postgres::Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)",
            &[],
        )
        .await
        .expect("count pairs");
    (row.get(0), row.get(1))
}

/// Restores `dump` into a fresh database and returns its pair counts.
async fn restored_pairs(provider: &PostgresProvider, id: &str, dump: &[u8]) -> (i64, i64) {
    let (env, data) = provider.provision_database("check", id).await.unwrap();
    let data = serde_json::to_value(data).unwrap();
    let mut source = dump;
    provider
        .restore("check", id, &data, &mut source)
        .await
        .expect("restore a complete dump");
    pair_counts(&connect(&env["DATABASE_URL"]).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_across_a_failover_fails_or_is_consistent() {
    let h = Harness::start(3).await;
    let addr = h.endpoint_addr();
    let provider = PostgresProvider::new(ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    });
    let (env, data) = provider.provision_database("shop", "r1").await.unwrap();
    let data = serde_json::to_value(data).unwrap();
    let url = env["DATABASE_URL"].clone();
    let app = connect(&url).await.unwrap();
    app.batch_execute(
        "CREATE TABLE a (id bigint PRIMARY KEY); CREATE TABLE b (id bigint PRIMARY KEY);
         CREATE TABLE filler AS SELECT i, md5(i::text) || md5((i * 7)::text) AS t
           FROM generate_series(1, 300000) i;",
    )
    .await
    .unwrap();

    // A writer adds pairs until the end, reconnecting through the endpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (stop, url) = (stop.clone(), url.clone());
        async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(client) = connect(&url).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sql = format!(
                        "BEGIN; INSERT INTO a VALUES ({n}); INSERT INTO b VALUES ({n}); COMMIT"
                    );
                    if client.batch_execute(&sql).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    // The dump is read slowly (~4 MB/s), so the failover lands in its middle.
    let state = h.wait_healthy(Duration::from_secs(60), None).await;
    let (mut sink, mut reader) = tokio::io::duplex(64 * 1024);
    let slow_reader = tokio::spawn(async move {
        let mut dump = Vec::new();
        let mut buf = vec![0u8; 40 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return dump,
                Ok(n) => dump.extend_from_slice(&buf[..n]),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let killer = tokio::spawn({
        let pid = postmaster_pid(&h.cluster.members()[h.index(&state.primary)].dir)
            .expect("postmaster.pid");
        async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            // SAFETY: kill(2) on the primary postmaster of this test's cluster.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let result = provider.backup("shop", "r1", &data, &mut sink).await;
    drop(sink);
    let dump = slow_reader.await.unwrap();
    killer.await.unwrap();
    match &result {
        Err(e) => {
            eprintln!("backup across the failover failed, as it should: {e}");
            assert!(e.to_string().contains("pg_dump"), "{e}");
        }
        Ok(_) => {
            let (a, b) = restored_pairs(&provider, "r2", &dump).await;
            assert_eq!(a, b, "a completed dump is one snapshot");
        }
    }

    // After the failover, a backup succeeds and holds whole pairs.
    h.wait_healthy(Duration::from_secs(90), Some(&state.primary))
        .await;
    let mut dump = Vec::new();
    provider
        .backup("shop", "r1", &data, &mut dump)
        .await
        .expect("backup after the failover");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (a, b) = restored_pairs(&provider, "r3", &dump).await;
    assert_eq!(a, b);
    assert!(a > 0, "the writer's pairs are in the dump");
}
