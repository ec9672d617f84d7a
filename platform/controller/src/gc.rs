//! Collecting what no app needs any more: release records beyond the last N of each app
//! and the uploaded artifacts (`<sha256>.tar.gz`) no remaining release references.
//!
//! Every app keeps its last [`GcConfig::keep_releases`] releases and its current one (a
//! rollback may point further back), so `paas rollback` within that window always finds
//! its code. An artifact no kept release references is deleted once it is older than
//! [`GcConfig::grace`]: an upload waits for its release for that long (`paas release
//! add` uploads first, then creates the release). [`plan`] decides, without I/O;
//! [`collect`] reads etcd and the artifacts directory and carries the plan out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use paas_model::{App, Release};

use crate::error::ApiError;
use crate::AppState;

/// How much history is kept, and how often it is collected.
#[derive(Debug, Clone, Copy)]
pub struct GcConfig {
    /// Releases kept per app, besides the current one.
    pub keep_releases: usize,
    /// How old an unreferenced artifact must be before it is deleted.
    pub grace: Duration,
    /// Time between collections.
    pub every: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            keep_releases: 10,
            grace: Duration::from_secs(3600),
            every: Duration::from_secs(300),
        }
    }
}

/// One app's releases as the plan sees them: version -> artifact digest.
pub struct AppReleases {
    /// The app's name.
    pub app: String,
    /// Its current release.
    pub current: u64,
    /// Every release it has.
    pub releases: BTreeMap<u64, Option<String>>,
}

/// What a collection deletes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Release records: (app, version).
    pub releases: Vec<(String, u64)>,
    /// Artifact digests.
    pub artifacts: Vec<String>,
}

/// Decides what to delete: the releases beyond each app's last `keep` (never its
/// current one), and the artifacts (digest, last modified) no kept release references
/// that are older than `grace` at `now`.
pub fn plan(
    apps: &[AppReleases],
    artifacts: &[(String, SystemTime)],
    keep: usize,
    grace: Duration,
    now: SystemTime,
) -> Plan {
    let mut out = Plan::default();
    let mut referenced = BTreeSet::new();
    for app in apps {
        let newest: BTreeSet<u64> = app.releases.keys().rev().take(keep).copied().collect();
        for (version, artifact) in &app.releases {
            if newest.contains(version) || *version == app.current {
                referenced.extend(artifact.clone());
            } else {
                out.releases.push((app.app.clone(), *version));
            }
        }
    }
    for (digest, modified) in artifacts {
        let old = now.duration_since(*modified).is_ok_and(|age| age >= grace);
        if old && !referenced.contains(digest) {
            out.artifacts.push(digest.clone());
        }
    }
    out
}

/// The uploaded artifacts in `dir`: digest and last modification.
fn artifact_files(dir: &Path) -> std::io::Result<Vec<(String, SystemTime)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digest) = name.strip_suffix(".tar.gz") else {
            continue;
        };
        if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push((digest.to_string(), entry.metadata()?.modified()?));
        }
    }
    Ok(out)
}

/// Runs one collection; returns what it deleted.
pub async fn collect(state: &AppState, config: &GcConfig) -> Result<Plan, ApiError> {
    let store = &state.store;
    let mut apps = Vec::new();
    for App { name, release, .. } in store.list_apps().await? {
        let releases: BTreeMap<u64, Option<String>> = store
            .list_releases(&name)
            .await?
            .into_iter()
            .map(|r: Release| (r.version, r.artifact.map(|a| a.sha256)))
            .collect();
        apps.push(AppReleases {
            app: name,
            current: release,
            releases,
        });
    }
    let dir = state.artifacts_dir.clone();
    let files = tokio::task::spawn_blocking(move || artifact_files(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("listing artifacts: {e}")))?;
    let plan = plan(
        &apps,
        &files,
        config.keep_releases,
        config.grace,
        SystemTime::now(),
    );
    for (app, version) in &plan.releases {
        store.delete_release(app, *version).await?;
    }
    for digest in &plan.artifacts {
        let path = crate::api::artifact_path(&state.artifacts_dir, digest);
        // An artifact re-uploaded since the listing is fresh again: keep it.
        let fresh = tokio::fs::metadata(&path)
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age < config.grace);
        if fresh {
            continue;
        }
        if let Err(e) = tokio::fs::remove_file(&path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "deleting an artifact failed");
            }
        }
    }
    if !plan.releases.is_empty() || !plan.artifacts.is_empty() {
        tracing::info!(
            releases = plan.releases.len(),
            artifacts = plan.artifacts.len(),
            "collected old releases and unreferenced artifacts"
        );
    }
    Ok(plan)
}

/// Collects every `config.every` until the task is dropped; failures are logged and
/// tried again next time.
pub async fn run(state: AppState, config: GcConfig) {
    let mut interval = tokio::time::interval(config.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = collect(&state, &config).await {
            tracing::warn!(error = %e, "collecting old releases and artifacts failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, current: u64, versions: &[(u64, Option<&str>)]) -> AppReleases {
        AppReleases {
            app: name.into(),
            current,
            releases: versions
                .iter()
                .map(|(v, a)| (*v, a.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn keeps_the_last_releases_and_the_current_one_and_their_artifacts() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(7200);
        let shop = app(
            "shop",
            2,
            &[
                (1, Some("a1")),
                (2, Some("a2")),
                (3, None),
                (4, Some("a4")),
                (5, Some("a4")),
            ],
        );
        let files = vec![
            ("a1".to_string(), old),
            ("a2".to_string(), old),
            ("a4".to_string(), old),
            ("orphan".to_string(), old),
            ("fresh".to_string(), now),
        ];
        let p = plan(&[shop], &files, 2, Duration::from_secs(3600), now);
        // v4 and v5 are the newest two, v2 is current (rolled back to).
        assert_eq!(p.releases, vec![("shop".into(), 1), ("shop".into(), 3)]);
        assert_eq!(p.artifacts, vec!["a1".to_string(), "orphan".to_string()]);
    }

    #[test]
    fn an_artifact_shared_by_two_apps_stays_while_either_keeps_it() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(7200);
        let a = app("a", 2, &[(1, Some("x")), (2, Some("y"))]);
        let b = app("b", 1, &[(1, Some("x"))]);
        let p = plan(&[a, b], &[("x".into(), old)], 1, Duration::ZERO, now);
        assert_eq!(p.releases, vec![("a".into(), 1)]);
        assert!(p.artifacts.is_empty());
    }
}
