//! Point-in-time restore from a pgBackRest repository in S3 (moto behind a TLS
//! terminator with a throwaway CA, as pgBackRest reaches S3 only over verified HTTPS),
//! against a real 3-member cluster: the base backup and the WAL land in the bucket
//! under the repository's prefix. Then S3 goes away (the terminator refuses every connection) while rows are
//! written and segments completed: the pushes fail, PostgreSQL keeps the segments, and
//! once S3 is back a restore to a moment inside the outage finds exactly the rows of
//! that moment.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::pitr::{first_backup_in, ids, insert, new_database, note_time, pitr_provider_from};
use common::{connect, endpoint_conninfo, Harness};
use paas_appliance::provider::Provider;
use paas_postgres::archive::{ArchiveConfig, Repo, S3Keys, S3Repo};

const BUCKET: &str = "paas-pitr";
const REPO: &str = "s3://paas-pitr/cluster-a/pgbackrest";

/// How many pushes the primary's archiver has seen fail.
async fn failed_pushes(h: &Harness) -> i64 {
    connect(&endpoint_conninfo(h))
        .await
        .unwrap()
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `member`'s published archiving status is failing (or, `failing` false,
/// fine again), and returns it.
async fn archiving_status(h: &Harness, member: &str, failing: bool) -> Option<String> {
    let started = Instant::now();
    loop {
        let status = h
            .snapshot()
            .await
            .members
            .get(member)
            .and_then(|m| m.archiving.clone());
        if status.is_some() == failing {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{member}'s archiving status is still {status:?}\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_s3_finds_the_rows_of_the_moment_also_inside_an_outage() {
    let started = Instant::now();
    let s3 = paas_it::S3Server::start_tls().expect("moto behind TLS");
    s3.create_bucket(BUCKET).unwrap();
    let front = s3.tls().unwrap();
    let ca_file = front.ca_file();
    let endpoint = front.endpoint();
    let args = {
        let (endpoint, ca_file) = (endpoint.clone(), ca_file.display().to_string());
        move |_: &std::path::Path| {
            vec![
                "--archive-repo".into(),
                REPO.into(),
                "--archive-s3-endpoint".into(),
                endpoint,
                "--archive-s3-ca-file".into(),
                ca_file,
            ]
        }
    };
    let keys = S3Keys {
        key: s3.access_key_id().into(),
        secret: s3.secret_access_key().into(),
        token: None,
    };
    // The members get the keys in their environment only; and pgBackRest's I/O timeout
    // (through its own variable) shortened from 60 s, so a push to an unreachable S3
    // fails after ~10 s rather than 2 minutes of retries.
    let env = keys
        .env()
        .into_iter()
        .chain([("PGBACKREST_IO_TIMEOUT", "5".to_string())])
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let h = Harness::start_with_env(3, args, env).await;
    let mut repo = S3Repo::new(REPO, Some(&endpoint), s3.region()).unwrap();
    repo.ca_file = Some(ca_file.clone());
    repo.keys = Some(keys);
    let archive = ArchiveConfig::new(Repo::S3(repo), "main");
    let provider = pitr_provider_from(&h, archive.clone());
    let (env, data) = provider.provision_database("shop", "db").await.unwrap();
    let url = env["DATABASE_URL"].clone();
    let data = serde_json::to_value(data).unwrap();
    connect(&url)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let into = |name| new_database(&provider, name);
    let tell = |line: &str| eprintln!("restore: {line}");

    let backed_up = first_backup_in(&h, &archive).await;
    eprintln!("first base backup in S3 after {:?}", started.elapsed());
    while SystemTime::now() < backed_up + Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The repository is in the bucket, under its prefix.
    let under = |prefix: &str| s3.keys_under(BUCKET, prefix).unwrap();
    for file in ["backup/main/backup.info", "archive/main/archive.info"] {
        let found = under(&format!("cluster-a/pgbackrest/{file}"));
        assert_eq!(found.len(), 2, "{file} and its copy: {found:?}");
    }
    let label = under("cluster-a/pgbackrest/backup/main/2")
        .first()
        .and_then(|k| k.split('/').nth(4).map(str::to_string))
        .expect("a base backup's files");
    assert!(label.ends_with('F'), "a full backup first: {label}");
    assert!(
        !under("cluster-a/pgbackrest/archive/main/15-1/").is_empty(),
        "WAL segments in the archive"
    );
    assert!(
        under("pgbackrest/").is_empty(),
        "nothing outside the prefix"
    );

    // One restore, to a moment inside the outage below, checks both that a restore
    // reads the repository in S3 and that the outage lost nothing (each takes 18-45 s).
    insert(&url, 1..=20).await;

    // S3 goes away: rows written and segments completed meanwhile; every push fails.
    front.refuse();
    let failed_before = failed_pushes(&h).await;
    insert(&url, 21..=30).await;
    let t2 = note_time().await;
    insert(&url, 31..=40).await;
    let superuser = connect(&endpoint_conninfo(&h)).await.unwrap();
    superuser
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    let outage = Instant::now();
    while failed_pushes(&h).await <= failed_before {
        assert!(
            outage.elapsed() < Duration::from_secs(120),
            "no push failed while S3 was down\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (ready, archived): (i64, Option<String>) = {
        let row = superuser
            .query_one(
                "SELECT (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
                        last_archived_wal FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(ready >= 1, "the failed segment is kept for a retry");
    eprintln!(
        "S3 down: push failed after {:?}; {ready} segment(s) waiting, last archived {archived:?}",
        outage.elapsed()
    );
    // The primary's status says so, with pgBackRest's reason.
    let primary = h.snapshot().await.state.unwrap().0.primary;
    let said = archiving_status(&h, &primary, true).await.unwrap();
    eprintln!("{primary} while S3 is down: {said}");
    assert!(said.starts_with("archiving failing since "), "{said}");
    assert!(said.contains("TLS error"), "{said}");
    front.accept();
    eprintln!("S3 back after {:?}", outage.elapsed());

    let (restored_url, restored) = into("r2").await;
    let took = Instant::now();
    let said = provider
        .restore_to_time(&data, t2, &restored, &tell)
        .await
        .unwrap_or_else(|e| panic!("restore to t2 (inside the outage): {e}\n{}", h.logs()));
    eprintln!("{said} ({:?})", took.elapsed());
    assert_eq!(ids(&restored_url).await, (1..=30).collect::<Vec<_>>());
    assert_eq!(ids(&url).await, (1..=40).collect::<Vec<_>>());
    assert_eq!(archiving_status(&h, &primary, false).await, None);
    // Nothing went to a directory of the harness's.
    assert!(!h.dir.path().join("repo").exists());
    eprintln!("whole test: {:?}", started.elapsed());
}
