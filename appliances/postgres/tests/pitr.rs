//! Point-in-time restore against a real 3-member cluster archiving with pgBackRest:
//! rows are written, the time noted, more rows written and a table dropped; the restore
//! to the noted time finds exactly the rows present then, in a new database. Then the
//! same across a failover between the noted time and the restore (the new primary
//! archives on its new timeline into the same stanza). Refusals: a time in the future,
//! a time before the first base backup, a cluster without archiving.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::pitr::{
    archive_args, cluster_config, first_backup, ids, insert, new_database, note_time, pitr_provider,
};
use common::{connect, Harness};
use paas_appliance::provider::Provider;
use paas_postgres::provision::PostgresProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_finds_exactly_the_rows_of_the_moment_also_across_a_failover() {
    let mut h = Harness::start_with(3, archive_args).await;
    let dir = h.dir.path().to_path_buf();
    let config = cluster_config(&h);
    let provider = pitr_provider(&h);
    let (env, data) = provider.provision_database("shop", "db").await.unwrap();
    let url = env["DATABASE_URL"].clone();
    let data = serde_json::to_value(data).unwrap();
    connect(&url)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE TABLE gone AS SELECT 1 AS kept",
        )
        .await
        .unwrap();

    let backed_up = first_backup(&h, &dir).await;
    // A backup serves targets from the second after it ended (pgBackRest's stop times
    // are whole seconds).
    while SystemTime::now() < backed_up + Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tell = |line: &str| eprintln!("restore: {line}");
    let into = |name| new_database(&provider, name);

    // Refusals first: they touch nothing.
    let (_, scratch_data) = into("refused").await;
    let future = SystemTime::now() + Duration::from_secs(3600);
    let err = provider
        .restore_to_time(&data, future, &scratch_data, &tell)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in the future"), "{err}");
    let err = provider
        .restore_to_time(
            &data,
            backed_up - Duration::from_secs(60),
            &scratch_data,
            &tell,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("before the first base backup"),
        "{err}"
    );
    let err = PostgresProvider::new(config.clone())
        .restore_to_time(&data, backed_up, &scratch_data, &tell)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("continuous archiving"), "{err}");

    // Without a failover.
    insert(&url, 1..=10).await;
    let t1 = note_time().await;
    insert(&url, 11..=20).await;
    connect(&url)
        .await
        .unwrap()
        .batch_execute("DROP TABLE gone")
        .await
        .unwrap();
    let (restored_url, restored) = into("r1").await;
    let started = Instant::now();
    let said = provider
        .restore_to_time(&data, t1, &restored, &tell)
        .await
        .unwrap_or_else(|e| panic!("restore to t1: {e}\n{}", h.logs()));
    eprintln!("{said} ({:?})", started.elapsed());
    assert_eq!(ids(&restored_url).await, (1..=10).collect::<Vec<_>>());
    let kept: i32 = connect(&restored_url)
        .await
        .unwrap()
        .query_one("SELECT kept FROM gone", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the table dropped after t1 is back");
    assert_eq!(
        ids(&url).await,
        (1..=20).collect::<Vec<_>>(),
        "the source is untouched"
    );
    assert!(
        std::fs::read_dir(dir.join("scratch"))
            .unwrap()
            .next()
            .is_none(),
        "the scratch instance is gone"
    );

    // Across a failover between the noted time and the restore.
    insert(&url, 21..=30).await;
    let t2 = note_time().await;
    insert(&url, 31..=40).await;
    let old = h.wait_healthy(Duration::from_secs(30), None).await.primary;
    let i = h.index(&old);
    h.cluster.signal(i, libc::SIGKILL);
    let killed = Instant::now();
    loop {
        let leader = h.snapshot().await.leader.map(|l| l.record.member);
        if leader.as_ref().is_some_and(|l| *l != old) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no failover\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.cluster.restart(i).unwrap();
    let new = h
        .wait_healthy(Duration::from_secs(90), Some(&old))
        .await
        .primary;
    assert_ne!(new, old);
    insert(&url, 41..=50).await;
    let (restored_url, restored) = into("r2").await;
    let said = provider
        .restore_to_time(&data, t2, &restored, &tell)
        .await
        .unwrap_or_else(|e| panic!("restore to t2 after the failover: {e}\n{}", h.logs()));
    eprintln!("{said}");
    assert_eq!(ids(&restored_url).await, (1..=30).collect::<Vec<_>>());
    // And a moment after the failover, on the new timeline.
    let t3 = note_time().await;
    insert(&url, 51..=60).await;
    let (restored_url, restored) = into("r3").await;
    provider
        .restore_to_time(&data, t3, &restored, &tell)
        .await
        .unwrap_or_else(|e| panic!("restore to t3 on the new timeline: {e}\n{}", h.logs()));
    assert_eq!(ids(&restored_url).await, (1..=50).collect::<Vec<_>>());
}
