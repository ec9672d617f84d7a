//! The scheduling decision: desired formations + what runs where -> placements to add
//! and remove. Pure: no I/O, no clock, no randomness; the loop in `lib.rs` reads the
//! [`View`] from etcd and applies the [`Action`]s.
//!
//! Rules, per app and process type (`n` = formation count, or 0 when the type has no
//! command in the current release or the app/formation is gone):
//! - A placement on a host that is no longer registered is removed ([`StopReason::HostLost`])
//!   and no longer counts.
//! - Jobs of the current release: missing ones are placed, extra ones stopped (those not
//!   `Up` first, then the newest).
//! - Jobs of older releases (rollover): they are stopped only as jobs of the current
//!   release come `Up`: at most `n - up_current` old jobs stay, never more than there are.
//!   Old jobs not `Up` go first. A job placed under other limits than the formation's
//!   (`paas scale --memory`) is old in the same way: the change rolls over.
//! - A new job goes to the live host with the fewest jobs of its app, then the fewest jobs
//!   overall, then the smallest host id (so one app spreads across hosts).
//! - Without any live host nothing is placed.

use std::collections::BTreeMap;
use std::fmt;

use paas_model::{Formation, Host, Job, JobState, JobStatus, Limits, Release};

/// Everything the scheduler knows at one instant.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// App -> its current release.
    pub releases: BTreeMap<String, Release>,
    /// App -> desired process counts.
    pub formations: BTreeMap<String, Formation>,
    /// Live (registered) hosts by id.
    pub hosts: BTreeMap<String, Host>,
    /// Every placement, including those on hosts that vanished.
    pub placements: Vec<Job>,
    /// Job id -> what its host reports.
    pub statuses: BTreeMap<String, JobStatus>,
}

/// A job the scheduler wants to exist; the loop gives it an id and a creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The app.
    pub app: String,
    /// Release version to run.
    pub release: u64,
    /// Process type.
    pub process_type: String,
    /// Memory and CPU limits (the formation's for the type).
    pub limits: Limits,
}

/// One change to placements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write a new placement of `job` on `host`.
    Place {
        /// What to run.
        job: NewJob,
        /// Where.
        host: String,
        /// Why.
        reason: PlaceReason,
    },
    /// Delete the placement of `job` (its host stops it).
    Stop {
        /// The placement to remove.
        job: Job,
        /// Why.
        reason: StopReason,
    },
}

/// Why a job is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceReason {
    /// Fewer jobs of the current release than the formation asks for.
    Scale {
        /// Formation count.
        wanted: u32,
        /// Jobs of the current release on live hosts before this action.
        have: u32,
    },
    /// Replaces a job whose host vanished.
    HostLost {
        /// The vanished host.
        host: String,
    },
    /// Starts a job of a new release while jobs of older releases still run.
    Rollover {
        /// The release being replaced.
        from: u64,
    },
    /// Starts a job under the formation's new limits while jobs under the old ones run.
    Resize {
        /// The new limits.
        limits: Limits,
    },
}

/// Why a placement is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Its host is no longer registered.
    HostLost,
    /// More jobs of the current release than the formation asks for.
    ScaleDown {
        /// Formation count.
        wanted: u32,
    },
    /// The current release has no command for this process type.
    NoCommand,
    /// An old-release job whose replacement of the current release is up.
    Replaced {
        /// The current release.
        release: u64,
        /// Current-release jobs of this type that are up.
        up: u32,
    },
    /// The app no longer exists.
    AppGone,
}

impl fmt::Display for PlaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceReason::Scale { wanted, have } => {
                write!(f, "formation wants {wanted}, {have} placed")
            }
            PlaceReason::HostLost { host } => write!(f, "replaces a job of vanished host {host}"),
            PlaceReason::Rollover { from } => write!(f, "rollover from release {from}"),
            PlaceReason::Resize { limits } => write!(f, "new limits: {limits}"),
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::HostLost => write!(f, "its host vanished"),
            StopReason::ScaleDown { wanted } => write!(f, "formation wants {wanted}"),
            StopReason::NoCommand => write!(f, "the current release has no command for its type"),
            StopReason::Replaced { release, up } => {
                write!(f, "replaced: {up} jobs of release {release} are up")
            }
            StopReason::AppGone => write!(f, "the app is gone"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Place { job, host, reason } => write!(
                f,
                "place {}/{} release {} on {host}: {reason}",
                job.app, job.process_type, job.release
            ),
            Action::Stop { job, reason } => write!(
                f,
                "stop {} ({}/{} release {} on {}): {reason}",
                job.id, job.app, job.process_type, job.release, job.host
            ),
        }
    }
}

/// Jobs per host, kept current while actions are decided, for spreading.
struct Load {
    /// host -> (app -> jobs, total jobs).
    hosts: BTreeMap<String, (BTreeMap<String, u32>, u32)>,
}

impl Load {
    fn new(view: &View) -> Load {
        let mut hosts: BTreeMap<String, (BTreeMap<String, u32>, u32)> = view
            .hosts
            .keys()
            .map(|h| (h.clone(), (BTreeMap::new(), 0)))
            .collect();
        for job in &view.placements {
            if let Some((apps, total)) = hosts.get_mut(&job.host) {
                *apps.entry(job.app.clone()).or_default() += 1;
                *total += 1;
            }
        }
        Load { hosts }
    }

    fn add(&mut self, host: &str, app: &str, delta: i64) {
        if let Some((apps, total)) = self.hosts.get_mut(host) {
            let n = apps.entry(app.to_string()).or_default();
            *n = (i64::from(*n) + delta).max(0) as u32;
            *total = (i64::from(*total) + delta).max(0) as u32;
        }
    }

    /// The host with the fewest jobs of `app`, then the fewest overall, then smallest id.
    fn pick(&self, app: &str) -> Option<String> {
        self.hosts
            .iter()
            .min_by_key(|(host, (apps, total))| {
                (apps.get(app).copied().unwrap_or(0), *total, *host)
            })
            .map(|(host, _)| host.clone())
    }
}

fn is_up(view: &View, job: &Job) -> bool {
    view.statuses
        .get(&job.id)
        .is_some_and(|s| s.state == JobState::Up && s.release == job.release)
}

/// Orders jobs so the best ones to stop come first: not up, then newest, then id.
fn stop_order(view: &View, jobs: &mut [&Job]) {
    jobs.sort_by(|a, b| {
        (is_up(view, a), std::cmp::Reverse(a.created_at), &a.id).cmp(&(
            is_up(view, b),
            std::cmp::Reverse(b.created_at),
            &b.id,
        ))
    });
}

/// Decides the placements to add and remove so that running jobs converge on `view`'s
/// formations. Deterministic: the same view gives the same actions in the same order.
pub fn reconcile(view: &View) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut load = Load::new(view);

    // Group placements by (app, type).
    let mut groups: BTreeMap<(String, String), Vec<&Job>> = BTreeMap::new();
    for job in &view.placements {
        groups
            .entry((job.app.clone(), job.process_type.clone()))
            .or_default()
            .push(job);
    }
    for (app, formation) in &view.formations {
        if view.releases.contains_key(app) {
            for ptype in formation.processes.keys() {
                groups.entry((app.clone(), ptype.clone())).or_default();
            }
        }
    }

    for ((app, ptype), jobs) in groups {
        let Some(release) = view.releases.get(&app) else {
            for job in jobs {
                load.add(&job.host, &job.app, -1);
                actions.push(Action::Stop {
                    job: job.clone(),
                    reason: StopReason::AppGone,
                });
            }
            continue;
        };
        let has_command = release.processes.contains_key(&ptype);
        let wanted = if has_command {
            view.formations
                .get(&app)
                .and_then(|f| f.processes.get(&ptype).copied())
                .unwrap_or(0)
        } else {
            0
        };

        let (live, lost): (Vec<&Job>, Vec<&Job>) = jobs
            .into_iter()
            .partition(|j| view.hosts.contains_key(&j.host));
        let mut lost_hosts = Vec::new();
        for job in lost {
            if job.release == release.version {
                lost_hosts.push(job.host.clone());
            }
            actions.push(Action::Stop {
                job: job.clone(),
                reason: StopReason::HostLost,
            });
        }
        let limits = view
            .formations
            .get(&app)
            .map(|f| f.limits_of(&ptype))
            .unwrap_or_default();
        let (mut current, mut old): (Vec<&Job>, Vec<&Job>) = live
            .into_iter()
            .partition(|j| j.release == release.version && j.limits == limits);

        let have = current.len() as u32;
        if have < wanted {
            let oldest_old = old
                .iter()
                .filter(|j| j.release != release.version)
                .map(|j| j.release)
                .min();
            let resized = old.iter().any(|j| j.release == release.version);
            for i in 0..(wanted - have) {
                let reason = match (lost_hosts.get(i as usize), oldest_old) {
                    (Some(host), _) => PlaceReason::HostLost { host: host.clone() },
                    (None, Some(from)) => PlaceReason::Rollover { from },
                    (None, None) if resized => PlaceReason::Resize { limits },
                    (None, None) => PlaceReason::Scale { wanted, have },
                };
                let Some(host) = load.pick(&app) else {
                    break;
                };
                load.add(&host, &app, 1);
                actions.push(Action::Place {
                    job: NewJob {
                        app: app.clone(),
                        release: release.version,
                        process_type: ptype.clone(),
                        limits,
                    },
                    host,
                    reason,
                });
            }
        } else if have > wanted {
            stop_order(view, &mut current);
            for job in current.iter().take((have - wanted) as usize) {
                load.add(&job.host, &job.app, -1);
                actions.push(Action::Stop {
                    job: (*job).clone(),
                    reason: if has_command {
                        StopReason::ScaleDown { wanted }
                    } else {
                        StopReason::NoCommand
                    },
                });
            }
        }

        let up = current.iter().filter(|j| is_up(view, j)).count() as u32;
        let keep = (wanted.saturating_sub(up) as usize).min(old.len());
        stop_order(view, &mut old);
        for job in old.iter().take(old.len() - keep) {
            load.add(&job.host, &job.app, -1);
            let reason = if !has_command {
                StopReason::NoCommand
            } else if wanted == 0 {
                StopReason::ScaleDown { wanted }
            } else {
                StopReason::Replaced {
                    release: release.version,
                    up,
                }
            };
            actions.push(Action::Stop {
                job: (*job).clone(),
                reason,
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    /// A view built with short helpers; `hosts` are live.
    struct Fixture {
        view: View,
    }

    impl Fixture {
        fn new(hosts: &[&str]) -> Fixture {
            let mut view = View::default();
            for h in hosts {
                view.hosts.insert(
                    h.to_string(),
                    Host {
                        id: h.to_string(),
                        api_addr: "127.0.0.1:1".into(),
                        job_ip: "127.0.0.1".into(),
                        started_at: at(0),
                    },
                );
            }
            Fixture { view }
        }

        /// App at `version` whose release has commands for `types`.
        fn app(
            mut self,
            app: &str,
            version: u64,
            types: &[&str],
            formation: &[(&str, u32)],
        ) -> Self {
            self.view.releases.insert(
                app.into(),
                Release {
                    app: app.into(),
                    version,
                    env: BTreeMap::new(),
                    processes: types
                        .iter()
                        .map(|t| (t.to_string(), "true".to_string()))
                        .collect(),
                    artifact: None,
                    description: String::new(),
                    created_at: at(0),
                },
            );
            self.view.formations.insert(
                app.into(),
                Formation {
                    app: app.into(),
                    processes: formation.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
                    limits: Default::default(),
                },
            );
            self
        }

        /// Placement `id` of `what` (`app/type`) with an optional reported state.
        fn job(
            mut self,
            id: &str,
            what: &str,
            release: u64,
            host: &str,
            created: i64,
            state: Option<JobState>,
        ) -> Self {
            let (app, ptype) = what.split_once('/').unwrap();
            self.view.placements.push(Job {
                id: id.into(),
                app: app.into(),
                release,
                process_type: ptype.into(),
                host: host.into(),
                created_at: at(created),
                limits: Default::default(),
            });
            if let Some(state) = state {
                self.view.statuses.insert(
                    id.into(),
                    JobStatus {
                        id: id.into(),
                        app: app.into(),
                        release,
                        process_type: ptype.into(),
                        host: host.into(),
                        state,
                        pid: None,
                        port: None,
                        restarts: 0,
                        started_at: None,
                        message: String::new(),
                    },
                );
            }
            self
        }
    }

    /// Renders actions as one line each and compares with `expected`.
    fn check(f: Fixture, expected: &[&str]) {
        let got: Vec<String> = reconcile(&f.view).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, expected, "\n got: {got:#?}");
    }

    const UP: Option<JobState> = Some(JobState::Up);
    const STARTING: Option<JobState> = Some(JobState::Starting);

    #[test]
    fn nothing_to_do_when_converged() {
        check(
            Fixture::new(&["h1"])
                .app("shop", 1, &["web"], &[("web", 1)])
                .job("j1", "shop/web", 1, "h1", 0, UP),
            &[],
        );
    }

    #[test]
    fn scale_up_spreads_across_hosts() {
        check(
            Fixture::new(&["h1", "h2"]).app("shop", 1, &["web"], &[("web", 3)]),
            &[
                "place shop/web release 1 on h1: formation wants 3, 0 placed",
                "place shop/web release 1 on h2: formation wants 3, 0 placed",
                "place shop/web release 1 on h1: formation wants 3, 0 placed",
            ],
        );
    }

    #[test]
    fn spread_prefers_fewest_of_app_then_fewest_overall() {
        // h1 has one shop job; h2 has two jobs of another app; h3 has one of another app.
        check(
            Fixture::new(&["h1", "h2", "h3"])
                .app("shop", 1, &["web"], &[("web", 3)])
                .app("blog", 1, &["web"], &[("web", 3)])
                .job("s1", "shop/web", 1, "h1", 0, UP)
                .job("b1", "blog/web", 1, "h2", 0, UP)
                .job("b2", "blog/web", 1, "h2", 0, UP)
                .job("b3", "blog/web", 1, "h3", 0, UP),
            &[
                "place shop/web release 1 on h3: formation wants 3, 1 placed",
                "place shop/web release 1 on h2: formation wants 3, 1 placed",
            ],
        );
    }

    #[test]
    fn scale_down_stops_not_up_then_newest() {
        check(
            Fixture::new(&["h1"])
                .app("shop", 1, &["web"], &[("web", 1)])
                .job("old-up", "shop/web", 1, "h1", 0, UP)
                .job("new-up", "shop/web", 1, "h1", 5, UP)
                .job("starting", "shop/web", 1, "h1", 1, STARTING),
            &[
                "stop starting (shop/web release 1 on h1): formation wants 1",
                "stop new-up (shop/web release 1 on h1): formation wants 1",
            ],
        );
    }

    #[test]
    fn vanished_host_jobs_are_replaced_on_live_hosts() {
        check(
            Fixture::new(&["h1"])
                .app("shop", 1, &["web"], &[("web", 2)])
                .job("a", "shop/web", 1, "h1", 0, UP)
                .job("b", "shop/web", 1, "dead", 0, UP),
            &[
                "stop b (shop/web release 1 on dead): its host vanished",
                "place shop/web release 1 on h1: replaces a job of vanished host dead",
            ],
        );
    }

    #[test]
    fn no_live_hosts_places_nothing() {
        check(
            Fixture::new(&[])
                .app("shop", 1, &["web"], &[("web", 2)])
                .job("b", "shop/web", 1, "dead", 0, UP),
            &["stop b (shop/web release 1 on dead): its host vanished"],
        );
    }

    #[test]
    fn rollover_starts_new_jobs_and_keeps_old_ones() {
        check(
            Fixture::new(&["h1", "h2"])
                .app("shop", 2, &["web"], &[("web", 2)])
                .job("o1", "shop/web", 1, "h1", 0, UP)
                .job("o2", "shop/web", 1, "h2", 0, UP),
            &[
                "place shop/web release 2 on h1: rollover from release 1",
                "place shop/web release 2 on h2: rollover from release 1",
            ],
        );
    }

    #[test]
    fn rollover_stops_one_old_job_per_new_job_up() {
        check(
            Fixture::new(&["h1", "h2"])
                .app("shop", 2, &["web"], &[("web", 2)])
                .job("o1", "shop/web", 1, "h1", 0, UP)
                .job("o2", "shop/web", 1, "h2", 1, UP)
                .job("n1", "shop/web", 2, "h1", 5, UP)
                .job("n2", "shop/web", 2, "h2", 5, STARTING),
            &["stop o2 (shop/web release 1 on h2): replaced: 1 jobs of release 2 are up"],
        );
    }

    #[test]
    fn rollover_finishes_when_all_new_jobs_are_up() {
        check(
            Fixture::new(&["h1"])
                .app("shop", 2, &["web"], &[("web", 1)])
                .job("o1", "shop/web", 1, "h1", 0, STARTING)
                .job("n1", "shop/web", 2, "h1", 5, UP),
            &["stop o1 (shop/web release 1 on h1): replaced: 1 jobs of release 2 are up"],
        );
    }

    /// Sets `memory` as the formation's limit of `app`'s `ptype`.
    fn with_memory(mut f: Fixture, app: &str, ptype: &str, memory: u64) -> Fixture {
        f.view.formations.get_mut(app).unwrap().limits.insert(
            ptype.into(),
            Limits {
                memory: Some(memory),
                cpu_millis: None,
            },
        );
        f
    }

    #[test]
    fn new_limits_roll_over_like_a_release() {
        let f = Fixture::new(&["h1", "h2"])
            .app("shop", 2, &["web", "worker"], &[("web", 2), ("worker", 1)])
            .job("o1", "shop/web", 2, "h1", 0, UP)
            .job("o2", "shop/web", 2, "h2", 0, UP)
            .job("w1", "shop/worker", 2, "h1", 0, UP);
        let f = with_memory(f, "shop", "web", 64 << 20);
        let actions = reconcile(&f.view);
        let text: Vec<String> = actions.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "place shop/web release 2 on h2: new limits: memory 64 MiB",
                "place shop/web release 2 on h1: new limits: memory 64 MiB",
            ]
        );
        for a in &actions {
            let Action::Place { job, .. } = a else {
                panic!("{a}")
            };
            assert_eq!(job.limits.memory, Some(64 << 20));
        }
    }

    #[test]
    fn jobs_under_old_limits_stop_as_resized_ones_come_up() {
        let mut f = Fixture::new(&["h1"])
            .app("shop", 2, &["web"], &[("web", 1)])
            .job("o1", "shop/web", 2, "h1", 0, UP)
            .job("n1", "shop/web", 2, "h1", 5, STARTING);
        f = with_memory(f, "shop", "web", 64 << 20);
        f.view.placements[1].limits.memory = Some(64 << 20);
        check(
            Fixture {
                view: f.view.clone(),
            },
            &[],
        );
        f.view.statuses.get_mut("n1").unwrap().state = JobState::Up;
        check(
            f,
            &["stop o1 (shop/web release 2 on h1): replaced: 1 jobs of release 2 are up"],
        );
    }

    #[test]
    fn a_status_of_another_release_does_not_count_as_up() {
        let mut f = Fixture::new(&["h1"])
            .app("shop", 2, &["web"], &[("web", 1)])
            .job("o1", "shop/web", 1, "h1", 0, UP)
            .job("n1", "shop/web", 2, "h1", 5, UP);
        f.view.statuses.get_mut("n1").unwrap().release = 1;
        check(f, &[]);
    }

    #[test]
    fn scale_to_zero_stops_everything_of_the_type() {
        check(
            Fixture::new(&["h1"])
                .app("shop", 2, &["web", "worker"], &[("web", 0), ("worker", 1)])
                .job("o1", "shop/web", 1, "h1", 0, UP)
                .job("n1", "shop/web", 2, "h1", 5, UP)
                .job("w1", "shop/worker", 2, "h1", 5, UP),
            &[
                "stop n1 (shop/web release 2 on h1): formation wants 0",
                "stop o1 (shop/web release 1 on h1): formation wants 0",
            ],
        );
    }

    #[test]
    fn type_without_command_is_not_run() {
        check(
            Fixture::new(&["h1"])
                .app("shop", 2, &["web"], &[("web", 1), ("worker", 2)])
                .job("n1", "shop/web", 2, "h1", 5, UP)
                .job("w1", "shop/worker", 1, "h1", 0, UP),
            &["stop w1 (shop/worker release 1 on h1): the current release has no command for its type"],
        );
    }

    #[test]
    fn deleted_app_jobs_are_stopped() {
        check(
            Fixture::new(&["h1"]).job("j1", "gone/web", 3, "h1", 0, UP),
            &["stop j1 (gone/web release 3 on h1): the app is gone"],
        );
    }
}
