//! How long one `reconcile` takes on a large cluster view; prints figures.
//!
//! Run: `cargo bench -p paas-scheduler --bench reconcile`.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use paas_model::{Formation, Host, Job, JobState, JobStatus, Release};
use paas_scheduler::reconcile::{reconcile, Action, View};

/// `apps` apps with `web` and `worker` at `per_type` jobs each over `hosts` hosts; when
/// `placed`, every job is already placed and up (a converged cluster), else none is.
fn view(apps: usize, hosts: usize, per_type: u32, placed: bool) -> View {
    let mut v = View::default();
    for h in 0..hosts {
        let id = format!("h{h}");
        v.hosts.insert(
            id.clone(),
            Host {
                id,
                api_addr: "127.0.0.1:1".into(),
                job_ip: "127.0.0.1".into(),
                started_at: Utc::now(),
            },
        );
    }
    let mut n = 0usize;
    for a in 0..apps {
        let app = format!("app{a}");
        let processes: BTreeMap<String, String> = ["web", "worker"]
            .iter()
            .map(|t| (t.to_string(), "run".to_string()))
            .collect();
        v.releases.insert(
            app.clone(),
            Release {
                app: app.clone(),
                version: 1,
                env: BTreeMap::new(),
                processes: processes.clone(),
                artifact: None,
                description: String::new(),
                created_at: Utc::now(),
            },
        );
        v.formations.insert(
            app.clone(),
            Formation {
                app: app.clone(),
                processes: processes.keys().map(|t| (t.clone(), per_type)).collect(),
                limits: Default::default(),
            },
        );
        if !placed {
            continue;
        }
        for t in processes.keys() {
            for _ in 0..per_type {
                let id = format!("j{n}");
                let host = format!("h{}", n % hosts);
                n += 1;
                v.placements.push(Job {
                    id: id.clone(),
                    app: app.clone(),
                    release: 1,
                    process_type: t.clone(),
                    host: host.clone(),
                    created_at: Utc::now(),
                    limits: Default::default(),
                });
                v.statuses.insert(
                    id.clone(),
                    JobStatus {
                        id,
                        app: app.clone(),
                        release: 1,
                        process_type: t.clone(),
                        host,
                        state: JobState::Up,
                        pid: None,
                        port: None,
                        restarts: 0,
                        started_at: None,
                        message: String::new(),
                    },
                );
            }
        }
    }
    v
}

fn measure(name: &str, v: &View) {
    let runs = 5;
    let mut actions: Vec<Action> = Vec::new();
    let start = Instant::now();
    for _ in 0..runs {
        actions = reconcile(v);
    }
    let each = start.elapsed() / runs;
    println!(
        "{name}: {} hosts, {} apps, {} placements -> {} actions in {each:?} per reconcile",
        v.hosts.len(),
        v.releases.len(),
        v.placements.len(),
        actions.len()
    );
}

fn main() {
    measure("converged", &view(1000, 20, 3, true));
    measure(
        "empty cluster, everything to place",
        &view(1000, 20, 3, false),
    );
    let mut lost = view(1000, 20, 3, true);
    lost.hosts.remove("h0");
    measure("one of 20 hosts lost", &lost);
}
