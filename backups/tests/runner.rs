//! The schedule runner against real etcd and PostgreSQL: a run missed while nobody ran
//! is taken once, retention then keeps what the schedule says, a handled time is not run
//! again, and a failing run is recorded as failed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::Pg;
use object_store::local::LocalFileSystem;
use paas_backups::retention::Retention;
use paas_backups::runner::{tick, Resources};
use paas_backups::schedule::{Cron, RunOutcome, Schedule};
use paas_backups::schedules::Schedules;
use paas_backups::{Backups, Target, Trigger};
use tokio::sync::watch;

struct Fixed(Vec<Target>);

#[async_trait::async_trait]
impl Resources for Fixed {
    async fn targets(&self, app: &str, resource: Option<&str>) -> Result<Vec<Target>, String> {
        let found: Vec<Target> = self
            .0
            .iter()
            .filter(|t| t.app == app && resource.is_none_or(|r| r == t.resource))
            .cloned()
            .collect();
        if found.is_empty() {
            Err(format!("app {app:?} has no such resource"))
        } else {
            Ok(found)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_runs_once_then_retention() {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let coord = paas_coord::Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .unwrap();
    let leadership = coord
        .campaign("backups", &"h1", Duration::from_secs(5))
        .await
        .unwrap();
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let backups = Backups::new(Arc::new(
        LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
    ));
    let target = pg.target("shop", "r1").await;
    common::fill(&pg.connect(&target).await, 1000).await;
    let resources = Fixed(vec![target.clone()]);
    let schedules = Schedules::new(coord.clone());

    // Two older scheduled backups and a manual one.
    let (progress, _) = watch::channel(0);
    let mut old = Vec::new();
    for trigger in [Trigger::Schedule, Trigger::Schedule, Trigger::Manual] {
        old.push(backups.create(&target, trigger, &progress).await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    // Set three days ago, daily at 03:00: several times were missed.
    schedules
        .put(&Schedule {
            app: "shop".into(),
            resource: None,
            cron: "0 3 * * *".into(),
            retention: Retention {
                keep_last: Some(1),
                keep_days: None,
            },
            created: Utc::now() - chrono::Duration::days(3),
        })
        .await
        .unwrap();
    tick(&schedules, &backups, &resources, &leadership)
        .await
        .unwrap();
    let run = schedules.run("shop").await.unwrap();
    let Some(RunOutcome::Ok { backups: made, .. }) = &run.last else {
        panic!("the missed run ran and succeeded: {run:?}");
    };
    assert_eq!(made.len(), 1, "one run for all the missed times");
    let ids: Vec<String> = backups
        .list("shop")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        vec![old[2].id.clone(), made[0].clone()],
        "keep-last 1 removed the older scheduled backups, not the manual one"
    );

    // Handled: nothing is due until the next 03:00, which the runner sleeps until.
    let next = tick(&schedules, &backups, &resources, &leadership)
        .await
        .unwrap();
    let handled = run.handled.expect("the run's start is recorded");
    let expected = Cron::parse("0 3 * * *").unwrap().next_after(handled);
    assert!(
        next == expected && next.is_some_and(|at| at > Utc::now()),
        "next {next:?}, expected {expected:?}"
    );
    assert_eq!(schedules.run("shop").await.unwrap(), run);
    assert_eq!(backups.list("shop").await.unwrap().len(), 2);

    // A schedule whose resource is gone records a failed run.
    schedules
        .put(&Schedule {
            app: "blog".into(),
            resource: Some("gone".into()),
            cron: "* * * * *".into(),
            retention: Retention::default(),
            created: Utc::now() - chrono::Duration::minutes(5),
        })
        .await
        .unwrap();
    tick(&schedules, &backups, &resources, &leadership)
        .await
        .unwrap();
    let failed = schedules.run("blog").await.unwrap();
    assert!(
        matches!(&failed.last, Some(RunOutcome::Failed { error, .. }) if error.contains("no such resource")),
        "{failed:?}"
    );
}
