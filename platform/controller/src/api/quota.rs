//! What an app-scoped token may make its app consume: jobs in the formation, releases
//! per hour, one-off runs at once. An app's token is handed to its developers and CI;
//! without these limits it could fill every host with jobs, churn releases, or hold
//! hundreds of `paas run` sessions. Admin tokens are not limited (the per-type
//! [`super::runtime::MAX_SCALE`] still applies to everyone).
//!
//! The checks are pure functions over what the store returned; the one piece of state
//! is [`RunCounter`], the one-off runs this controller is attached to.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use crate::error::ApiError;

/// The limits for app-scoped tokens; `paas up --quota-jobs/--quota-releases/--quota-runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Jobs in an app's formation, all process types together.
    pub jobs: u32,
    /// Releases an app may make in any hour.
    pub releases_per_hour: u32,
    /// One-off runs of an app attached at once.
    pub runs: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            jobs: 20,
            // At most the releases GC keeps by default (10): see `check_releases`.
            releases_per_hour: 10,
            runs: 3,
        }
    }
}

/// Refuses a formation of more than `quota.jobs` jobs in all.
pub fn check_jobs(processes: &BTreeMap<String, u32>, quota: &Quotas) -> Result<(), ApiError> {
    let total: u64 = processes.values().map(|&n| u64::from(n)).sum();
    if total > u64::from(quota.jobs) {
        return Err(ApiError::Forbidden(format!(
            "quota: this formation has {total} jobs, an app token may have at most {} (ask an admin)",
            quota.jobs
        )));
    }
    Ok(())
}

/// Refuses a new release if `quota.releases_per_hour` were made in the hour before `now`.
pub fn check_releases(
    made: impl IntoIterator<Item = DateTime<Utc>>,
    now: DateTime<Utc>,
    quota: &Quotas,
) -> Result<(), ApiError> {
    let since = now - Duration::hours(1);
    let recent = made.into_iter().filter(|t| *t > since).count();
    if recent >= quota.releases_per_hour as usize {
        return Err(ApiError::Forbidden(format!(
            "quota: {recent} releases in the last hour, an app token may make at most {} (ask an admin)",
            quota.releases_per_hour
        )));
    }
    Ok(())
}

/// One-off runs attached through this controller, per app.
#[derive(Debug, Default, Clone)]
pub struct RunCounter {
    running: Arc<Mutex<HashMap<String, u32>>>,
}

/// A one-off run counted against its app until dropped.
#[derive(Debug)]
pub struct RunSlot {
    counter: RunCounter,
    app: String,
}

impl RunCounter {
    /// Counts a run of `app`, unless `limit` are running already.
    pub fn start(&self, app: &str, limit: Option<u32>) -> Result<RunSlot, ApiError> {
        let mut running = self.running.lock().expect("run counter");
        let n = running.entry(app.to_string()).or_default();
        if let Some(limit) = limit {
            if *n >= limit {
                return Err(ApiError::Forbidden(format!(
                    "quota: {n} one-off runs of {app} are attached, an app token may have at most {limit} (ask an admin)"
                )));
            }
        }
        *n += 1;
        Ok(RunSlot {
            counter: self.clone(),
            app: app.to_string(),
        })
    }

    /// Runs of `app` attached now.
    pub fn count(&self, app: &str) -> u32 {
        self.running
            .lock()
            .expect("run counter")
            .get(app)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let mut running = self.counter.running.lock().expect("run counter");
        if let Some(n) = running.get_mut(&self.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.app);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Quotas {
        Quotas {
            jobs: 5,
            releases_per_hour: 2,
            runs: 1,
        }
    }

    #[test]
    fn jobs_count_across_types() {
        let mut p = BTreeMap::from([("web".to_string(), 3), ("worker".to_string(), 2)]);
        assert!(check_jobs(&p, &q()).is_ok());
        p.insert("clock".into(), 1);
        let err = check_jobs(&p, &q()).unwrap_err().to_string();
        assert!(err.contains("6 jobs") && err.contains("at most 5"), "{err}");
    }

    #[test]
    fn releases_count_only_the_last_hour() {
        let now = Utc::now();
        let old = now - Duration::minutes(61);
        let fresh = now - Duration::minutes(5);
        assert!(check_releases([old, old, old, fresh], now, &q()).is_ok());
        assert!(check_releases([fresh, fresh], now, &q()).is_err());
    }

    #[test]
    fn runs_free_their_slot_when_dropped() {
        let c = RunCounter::default();
        let slot = c.start("shop", Some(1)).unwrap();
        assert!(c.start("shop", Some(1)).is_err());
        assert!(c.start("other", Some(1)).is_ok(), "quotas are per app");
        assert!(c.start("shop", None).is_ok(), "admins are not limited");
        drop(slot);
        assert_eq!(c.count("shop"), 0);
        assert!(c.start("shop", Some(1)).is_ok());
    }
}
