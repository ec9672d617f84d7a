//! The agent loop: register this host on a `paas-coord` lease, then read the placements
//! under this host's id whenever a watch on them reports a change (and every poll
//! interval, as a resync) and make the running job tasks match them. The read is a fresh
//! lenient list: a placement that does not decode is logged and skipped.
//!
//! Each job task ([`run_job`]) prepares the job (release, command, port, working dir),
//! runs [`supervisor::supervise`], and in parallel mirrors the supervisor's [`Report`] to
//! `job-status/<job>` and, while the job is `Up` and exposed, to
//! `services/<app>-<type>/<job>` — both through the agent's one [`StatusWriter`], which
//! batches every job's writes on the current host lease. When the lease is lost (`Lease::lost`: expired, or unrenewed up to the
//! safe deadline) the agent takes a new one, registers again and every job task rewrites
//! its keys on it; jobs keep running throughout.
//!
//! [`plan_jobs`] is the pure part: placements vs. running tasks -> which to start and
//! which to stop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paas_coord::{Batch, CoordError, DocWatch, Lease};
use paas_model::{keys, Host, Job, JobState, JobStatus, Release, ServiceEntry};
use serde::de::IgnoredAny;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::capture::LineOrigin;
use crate::health::{self, Exposure};
use crate::status_writer::StatusWriter;
use crate::supervisor::{self, backoff, JobSpec, Report};
use crate::{HostError, Shared};

/// Time between checks of an `Up` job.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What to change so running tasks match placements.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JobPlan {
    /// Placed jobs without a task: start them.
    pub start: Vec<String>,
    /// Tasks whose placement is gone: stop them.
    pub stop: Vec<String>,
}

/// Compares placed job ids with running (not already stopping) task ids.
pub fn plan_jobs(placed: &BTreeSet<String>, running: &BTreeSet<String>) -> JobPlan {
    JobPlan {
        start: placed.difference(running).cloned().collect(),
        stop: running.difference(placed).cloned().collect(),
    }
}

/// A job task and how to stop it.
struct Running {
    stop: CancellationToken,
    stopping: bool,
}

/// Registers the host and runs the placement loop until `shutdown`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    api_addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), HostError> {
    let cfg = &shared.cfg;
    let host = Host {
        id: cfg.id.clone(),
        api_addr: api_addr.to_string(),
        job_ip: cfg.job_ip.to_string(),
        started_at: Utc::now(),
    };
    let mut lease = register(&shared, &host).await?;
    *shared.lease.write().expect("lease lock") = Some(Arc::clone(&lease));
    let placements_watch: DocWatch<IgnoredAny> = shared
        .coord
        .watch_prefix(&keys::placements_of(&cfg.id))
        .await?;
    let mut placements_changed = placements_watch.subscribe();
    let (lease_tx, lease_rx) = watch::channel(Arc::clone(&lease));
    let writer = StatusWriter::start(Arc::clone(&shared));
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut failed_registrations = 0u32;
    tracing::info!(host = %cfg.id, api = %api_addr, job_ip = %cfg.job_ip, "host agent registered");
    loop {
        let current = Arc::clone(&lease);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            reason = current.lost() => {
                if failed_registrations == 0 {
                    tracing::warn!(host = %cfg.id, %reason, "host lease lost; registering again");
                }
                match register(&shared, &host).await {
                    Ok(new) => {
                        tracing::info!(host = %cfg.id, failed_attempts = failed_registrations, "host registered again");
                        failed_registrations = 0;
                        lease = new;
                        // The status writer commits on `shared.lease`: it must hold the
                        // new lease before the job tasks hear of it and queue their keys
                        // again, or those keys could land on the lost lease and vanish
                        // with it.
                        *shared.lease.write().expect("lease lock") = Some(Arc::clone(&lease));
                        lease_tx.send_replace(Arc::clone(&lease));
                    }
                    Err(e) => {
                        // One warning per outage; the retries every poll interval go to debug.
                        if failed_registrations == 0 {
                            tracing::warn!(error = %e, "registering again failed; retrying every poll interval");
                        } else {
                            tracing::debug!(error = %e, "registering again failed");
                        }
                        failed_registrations += 1;
                        tokio::time::sleep(cfg.poll_interval).await;
                    }
                }
                continue;
            }
            _ = tokio::time::sleep(cfg.poll_interval) => {}
            Ok(()) = placements_changed.changed() => {}
        }
        while let Some(done) = tasks.try_join_next() {
            match done {
                Ok(id) => {
                    running.remove(&id);
                }
                Err(e) => tracing::error!(error = %e, "job task failed"),
            }
        }
        let placed: Vec<(String, Job, i64)> = match shared
            .coord
            .list_decodable(&keys::placements_of(&cfg.id))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading placements failed");
                continue;
            }
        };
        let placed: BTreeMap<String, Job> = placed
            .into_iter()
            .map(|(_, j, _)| (j.id.clone(), j))
            .collect();
        let live: BTreeSet<String> = running
            .iter()
            .filter(|(_, r)| !r.stopping)
            .map(|(id, _)| id.clone())
            .collect();
        let plan = plan_jobs(&placed.keys().cloned().collect(), &live);
        for id in plan.stop {
            if let Some(r) = running.get_mut(&id) {
                tracing::info!(job = %id, "placement removed: stopping job");
                r.stopping = true;
                r.stop.cancel();
            }
        }
        for id in plan.start {
            if running.contains_key(&id) {
                continue; // still stopping from an earlier placement with this id
            }
            let job = placed[&id].clone();
            tracing::info!(job = %id, app = %job.app, process_type = %job.process_type, release = job.release, "starting placed job");
            let stop = CancellationToken::new();
            tasks.spawn(run_job(
                Arc::clone(&shared),
                job,
                stop.clone(),
                lease_rx.clone(),
                writer.clone(),
            ));
            running.insert(
                id,
                Running {
                    stop,
                    stopping: false,
                },
            );
        }
    }
    tracing::info!(host = %cfg.id, jobs = running.len(), "host agent stopping its jobs");
    for r in running.values() {
        r.stop.cancel();
    }
    while tasks.join_next().await.is_some() {}
    // Every job task (and its lease receiver) is gone: revoke now so the scheduler moves
    // nothing stale and the host key vanishes at once.
    drop((lease_tx, lease_rx));
    shared.lease.write().expect("lease lock").take();
    if let Ok(lease) = Arc::try_unwrap(lease) {
        if let Err(e) = lease.revoke().await {
            tracing::warn!(error = %e, "revoking the host lease failed; it will expire");
        }
    }
    Ok(())
}

/// Grants a lease and writes the host key on it.
async fn register(shared: &Shared, host: &Host) -> Result<Arc<Lease>, CoordError> {
    let lease = shared.coord.grant_lease(shared.cfg.lease_ttl).await?;
    let mut batch = Batch::new();
    batch.put_leased(&keys::host(&host.id), host, &lease)?;
    shared.coord.commit(batch).await?;
    Ok(Arc::new(lease))
}

/// Everything about a job that is fixed once it is prepared.
struct Prepared {
    spec: JobSpec,
}

/// Why preparing a job failed (reported in its status, retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// etcd could not be read, or the release does not decode.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// The job's release does not exist.
    #[error("release {0} not found")]
    NoRelease(u64),
    /// The release has no command for the job's process type.
    #[error("release {release} has no command for process type {process_type:?}")]
    NoCommand {
        /// The release.
        release: u64,
        /// The process type.
        process_type: String,
    },
    /// No port could be reserved on the job IP.
    #[error("reserving a port: {0}")]
    Port(std::io::Error),
    /// The working directory could not be made.
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::ArtifactError),
    /// No unprivileged user is free for the job.
    #[error("{0}")]
    User(String),
    /// The preparation task panicked or was cancelled.
    #[error("preparation task: {0}")]
    Task(String),
}

/// Reads the release, picks a port, makes the working dir.
async fn prepare(shared: &Shared, job: &Job) -> Result<Prepared, PrepareError> {
    let release = release_of(shared, &job.app, job.release).await?;
    let command = release
        .processes
        .get(&job.process_type)
        .cloned()
        .ok_or_else(|| PrepareError::NoCommand {
            release: job.release,
            process_type: job.process_type.clone(),
        })?;
    let exposure = health::plan(&job.process_type, &release.env).unwrap_or_else(|e| {
        tracing::warn!(job = %job.id, error = %e, "bad health check setting; using the default");
        health::plan(&job.process_type, &BTreeMap::new()).unwrap_or(Exposure::Internal)
    });
    let addr = reserve_port(shared.cfg.job_ip).map_err(PrepareError::Port)?;
    let user = shared
        .users
        .for_job(&job.app, &job.id)
        .map_err(PrepareError::User)?
        .map(Arc::new);
    let workdir = shared.cfg.data_dir.join("jobs").join(&job.id);
    let artifacts = shared.artifacts.clone();
    let (artifact, dir) = (release.artifact.clone(), workdir.clone());
    let owner = user.as_ref().map(|u| u.id);
    tokio::task::spawn_blocking(move || artifacts.prepare_workdir(artifact.as_ref(), &dir, owner))
        .await
        .map_err(|e| PrepareError::Task(e.to_string()))??;
    let env = supervisor::job_env(&release.env, job, addr, &workdir);
    Ok(Prepared {
        spec: JobSpec {
            job: job.clone(),
            command,
            env,
            workdir,
            addr,
            exposure,
            stop_grace: shared.cfg.stop_grace,
            check_interval: CHECK_INTERVAL,
            shim: shared.cfg.shim.clone(),
            user,
            groups: shared.groups.clone(),
            cgroups: shared.cgroups.clone(),
        },
    })
}

/// Release `version` of `app`, from the agent's cache or etcd.
async fn release_of(
    shared: &Shared,
    app: &str,
    version: u64,
) -> Result<Arc<Release>, PrepareError> {
    let key = (app.to_string(), version);
    if let Some(r) = shared.releases.lock().expect("release cache").get(&key) {
        return Ok(Arc::clone(r));
    }
    let (release, _): (Release, i64) = shared
        .coord
        .get(&keys::release(app, version))
        .await?
        .ok_or(PrepareError::NoRelease(version))?;
    let release = Arc::new(release);
    let mut cache = shared.releases.lock().expect("release cache");
    if cache.len() >= RELEASE_CACHE {
        cache.clear();
    }
    cache.insert(key, Arc::clone(&release));
    Ok(release)
}

/// Releases the agent keeps before it starts its cache afresh.
const RELEASE_CACHE: usize = 4096;

/// A free port on `ip` (bound and released; the job binds it right after).
fn reserve_port(ip: std::net::IpAddr) -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind((ip, 0))?.local_addr()
}

/// One job from placement to removal; returns its id.
async fn run_job(
    shared: Arc<Shared>,
    job: Job,
    stop: CancellationToken,
    lease: watch::Receiver<Arc<Lease>>,
    writer: StatusWriter,
) -> String {
    let (report_tx, report_rx) = watch::channel(Report {
        state: JobState::Starting,
        pid: None,
        restarts: 0,
        started_at: None,
        message: "preparing".into(),
    });
    let (exposure_tx, exposure_rx) = watch::channel(None::<(SocketAddr, Exposure)>);
    let reporter = tokio::spawn(report(writer, job.clone(), report_rx, exposure_rx, lease));
    let mut streak = 0;
    let prepared = loop {
        match prepare(&shared, &job).await {
            Ok(p) => break Some(p),
            Err(e) => {
                let next = backoff(streak, Duration::ZERO);
                streak = next.streak;
                tracing::warn!(job = %job.id, error = %e, delay = ?next.delay, "cannot prepare job");
                report_tx.send_modify(|r| {
                    r.state = JobState::Crashed;
                    r.message = format!("{e}; retrying in {:?}", next.delay);
                });
                tokio::select! {
                    _ = stop.cancelled() => break None,
                    _ = tokio::time::sleep(next.delay) => {}
                }
            }
        }
    };
    if let Some(Prepared { spec }) = prepared {
        exposure_tx.send_replace(Some((spec.addr, spec.exposure.clone())));
        let origin = LineOrigin {
            app: job.app.clone(),
            process_type: job.process_type.clone(),
            job: job.id.clone(),
            host: shared.cfg.id.clone(),
        };
        let workdir = spec.workdir.clone();
        supervisor::supervise(spec, shared.sink.clone(), origin, stop, report_tx.clone()).await;
        if let Err(e) = tokio::fs::remove_dir_all(&workdir).await {
            tracing::warn!(job = %job.id, error = %e, "removing the working dir failed");
        }
    }
    report_tx.send_modify(|r| r.state = JobState::Down);
    drop(report_tx);
    let _ = reporter.await;
    job.id
}

/// Mirrors a job's report into etcd until the job is down, then removes its keys.
async fn report(
    writer: StatusWriter,
    job: Job,
    mut reports: watch::Receiver<Report>,
    mut exposure: watch::Receiver<Option<(SocketAddr, Exposure)>>,
    mut lease: watch::Receiver<Arc<Lease>>,
) {
    let status_key = keys::job_status(&job.id);
    let service_key = keys::service_instance(&job.app, &job.process_type, &job.id);
    let mut registered = false;
    loop {
        let r = reports.borrow_and_update().clone();
        // A new lease: every key is written again, on it.
        lease.borrow_and_update();
        let exposed = exposure.borrow_and_update().clone();
        if r.state == JobState::Down {
            break;
        }
        let status = JobStatus {
            id: job.id.clone(),
            app: job.app.clone(),
            release: job.release,
            process_type: job.process_type.clone(),
            host: job.host.clone(),
            state: r.state,
            pid: r.pid,
            port: exposed.as_ref().map(|(a, _)| a.port()),
            restarts: r.restarts,
            started_at: r.started_at,
            message: r.message.clone(),
        };
        writer.put(&status_key, &status);
        let serve = match &exposed {
            Some((addr, Exposure::Service { .. })) if r.state == JobState::Up => Some(*addr),
            _ => None,
        };
        match serve {
            Some(addr) => {
                let entry = ServiceEntry {
                    addr: addr.to_string(),
                    app: job.app.clone(),
                    job: job.id.clone(),
                    process_type: job.process_type.clone(),
                };
                writer.put(&service_key, &entry);
                registered = true;
            }
            None if registered => {
                writer.remove(&service_key);
                registered = false;
            }
            None => {}
        }
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { break },
            Ok(()) = exposure.changed() => {}
            Ok(()) = lease.changed() => {}
        }
    }
    writer.remove(&service_key);
    writer.remove(&status_key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plans_starts_and_stops() {
        assert_eq!(
            plan_jobs(&set(&["a", "b"]), &set(&["b", "c"])),
            JobPlan {
                start: vec!["a".into()],
                stop: vec!["c".into()],
            }
        );
        assert_eq!(plan_jobs(&set(&[]), &set(&[])), JobPlan::default());
    }
}
