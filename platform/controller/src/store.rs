//! All reads and writes of the platform's desired state in etcd. Every key comes from
//! [`paas_model::keys`], whose module doc is the layout table.
//!
//! Every write that spans keys is one etcd transaction whose compares are the
//! mod-revisions read just before; a lost race is retried ([`MAX_ATTEMPTS`]) and then
//! reported as a conflict.

use std::collections::BTreeMap;

use chrono::Utc;
use paas_coord::{Batch, Coord, CoordError};
use paas_model::{
    keys, validate_env_key, validate_process_type, validate_route, App, Formation, Host, Job,
    JobStatus, Release, Resource, Route, Token,
};

use crate::error::ApiError;

/// How often a read-modify-write is retried when another writer got in between.
pub const MAX_ATTEMPTS: usize = 16;

/// The controller's view of etcd.
#[derive(Clone)]
pub struct Store {
    coord: Coord,
}

/// Checks the names a release brings into the key layout and the jobs' environment.
fn check_names(release: &Release) -> Result<(), ApiError> {
    for key in release.env.keys() {
        validate_env_key(key)?;
    }
    for process_type in release.processes.keys() {
        validate_process_type(process_type)?;
    }
    Ok(())
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Conflict { .. } | CoordError::NotFound { .. } => {
                ApiError::Conflict(e.to_string())
            }
            CoordError::Decode { .. } | CoordError::Encode { .. } => {
                ApiError::Internal(e.to_string())
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl Store {
    /// Wraps a connected coordination client.
    pub fn new(coord: Coord) -> Self {
        Store { coord }
    }

    /// The coordination client, for components that share the controller's prefix.
    pub fn coord(&self) -> &Coord {
        &self.coord
    }

    /// Creates an app with release v1 ("Initial release") in one transaction.
    pub async fn create_app(&self, name: &str) -> Result<App, ApiError> {
        // Checked here, not in the handler, so in-process writers (system apps) are too.
        paas_model::validate_app_name(name)?;
        let now = Utc::now();
        let app = App {
            name: name.to_string(),
            created_at: now,
            release: 1,
        };
        let release = Release {
            app: name.to_string(),
            version: 1,
            env: BTreeMap::new(),
            processes: BTreeMap::new(),
            artifact: None,
            description: "Initial release".to_string(),
            created_at: now,
        };
        let mut batch = Batch::new();
        batch
            .create(&keys::app(name), &app)?
            .create(&keys::release(name, 1), &release)?;
        match self.coord.commit(batch).await {
            Ok(_) => Ok(app),
            Err(CoordError::Conflict { .. }) => {
                Err(ApiError::Conflict(format!("app {name:?} already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// All apps, sorted by name.
    pub async fn list_apps(&self) -> Result<Vec<App>, ApiError> {
        let mut apps: Vec<App> = self
            .coord
            .list::<App>(&keys::apps())
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(apps)
    }

    /// One app, or 404.
    pub async fn get_app(&self, name: &str) -> Result<App, ApiError> {
        Ok(self.get_app_versioned(name).await?.0)
    }

    async fn get_app_versioned(&self, name: &str) -> Result<(App, i64), ApiError> {
        match self.coord.get::<App>(&keys::app(name)).await? {
            Some(found) => Ok(found),
            None => Err(ApiError::NotFound(format!("app {name:?} not found"))),
        }
    }

    /// Deletes an app with its releases, formation, resources, routes, app-scoped tokens
    /// and drains, in one transaction guarded by the revision of every key it deletes.
    pub async fn destroy_app(&self, name: &str) -> Result<(), ApiError> {
        let (_, rev) = self.get_app_versioned(name).await?;
        let mut batch = Batch::new();
        batch.delete(&keys::app(name), rev);
        for prefix in [keys::releases_of(name), keys::resources_of(name)] {
            for (key, _, rev) in self.coord.list::<serde_json::Value>(&prefix).await? {
                batch.delete(&key, rev);
            }
        }
        if let Some((_, rev)) = self.coord.get::<Formation>(&keys::formation(name)).await? {
            batch.delete(&keys::formation(name), rev);
        }
        for (key, route, rev) in self.coord.list::<Route>(&keys::routes()).await? {
            if route.app == name {
                batch.delete(&key, rev);
                let name_key = keys::route_name_of(&route);
                if let Some((_, name_rev)) = self.coord.get::<String>(&name_key).await? {
                    batch.delete(&name_key, name_rev);
                }
            }
        }
        let scope = paas_model::Scope::App {
            app: name.to_string(),
        };
        for (key, token, rev) in self.coord.list::<Token>(&keys::tokens()).await? {
            if token.scope == scope {
                batch.delete(&key, rev);
            }
        }
        // Its drains go too: a new app of the same name must not ship its logs to the
        // old owner's sink.
        for (key, drain, rev) in self
            .coord
            .list::<paas_logshipper::drain::DrainSpec>(&keys::drains())
            .await?
        {
            if drain.app.as_deref() == Some(name) {
                batch.delete(&key, rev);
            }
        }
        self.coord.commit(batch).await.map_err(|e| match e {
            CoordError::Conflict { .. } | CoordError::NotFound { .. } => {
                ApiError::Conflict(format!("app {name:?} changed while being destroyed; retry"))
            }
            other => other.into(),
        })?;
        Ok(())
    }

    /// One release of an app, or 404.
    pub async fn release(&self, app: &str, version: u64) -> Result<Release, ApiError> {
        match self
            .coord
            .get::<Release>(&keys::release(app, version))
            .await?
        {
            Some((value, _)) => Ok(value),
            None => Err(ApiError::NotFound(format!(
                "release v{version} of app {app:?} not found"
            ))),
        }
    }

    /// All releases of an app, oldest first.
    pub async fn list_releases(&self, app: &str) -> Result<Vec<Release>, ApiError> {
        let mut releases: Vec<Release> = self
            .coord
            .list::<Release>(&keys::releases_of(app))
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect();
        releases.sort_by_key(|r| r.version);
        Ok(releases)
    }

    /// Makes release N+1 from the current release N: `change` gets release N and
    /// returns the new env and description (other fields are carried over). The new
    /// release and the app's pointer are written in one transaction guarded by the app's
    /// revision; a concurrent change makes it start over with the newer release.
    pub async fn new_release<F>(&self, app: &str, change: F) -> Result<Release, ApiError>
    where
        F: Fn(&Release) -> Result<(BTreeMap<String, String>, String), ApiError>,
    {
        self.new_release_with(app, |current| {
            let (env, description) = change(current)?;
            let mut next = current.clone();
            next.env = env;
            next.description = description;
            Ok(next)
        })
        .await
    }

    /// Like [`Store::new_release`], but `change` builds the whole next release (its
    /// version, app and creation time are set here). Its env and process type names are
    /// checked here, so in-process writers (system apps) obey the API's rules too.
    pub async fn new_release_with<F>(&self, app: &str, change: F) -> Result<Release, ApiError>
    where
        F: Fn(&Release) -> Result<Release, ApiError>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let (mut a, rev) = self.get_app_versioned(app).await?;
            let current = self.release(app, a.release).await?;
            let mut next = change(&current)?;
            check_names(&next)?;
            next.app = app.to_string();
            next.version = a.release + 1;
            next.created_at = Utc::now();
            a.release = next.version;
            let mut batch = Batch::new();
            batch
                .update(&keys::app(app), &a, rev)?
                .create(&keys::release(app, next.version), &next)?;
            match self.coord.commit(batch).await {
                Ok(_) => return Ok(next),
                Err(CoordError::Conflict { .. } | CoordError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!(
            "app {app:?} is changing too fast; retry"
        )))
    }

    /// The app's formation (empty when never scaled).
    pub async fn formation(&self, app: &str) -> Result<Formation, ApiError> {
        Ok(self
            .coord
            .get::<Formation>(&keys::formation(app))
            .await?
            .map(|(formation, _)| formation)
            .unwrap_or_else(|| Formation {
                app: app.to_string(),
                processes: BTreeMap::new(),
                limits: Default::default(),
            }))
    }

    /// Writes the app's formation (only while the app exists).
    pub async fn put_formation(&self, formation: &Formation) -> Result<(), ApiError> {
        let (_, rev) = self.get_app_versioned(&formation.app).await?;
        let mut batch = Batch::new();
        batch
            .require(&keys::app(&formation.app), rev)
            .put(&keys::formation(&formation.app), formation)?;
        self.coord.commit(batch).await?;
        Ok(())
    }

    /// Stores a resource record.
    pub async fn put_resource(&self, r: &Resource) -> Result<(), ApiError> {
        self.put(&keys::resource(&r.app, &r.id), r).await
    }

    /// One resource of an app, or 404.
    pub async fn resource(&self, app: &str, id: &str) -> Result<Resource, ApiError> {
        match self.coord.get::<Resource>(&keys::resource(app, id)).await? {
            Some((value, _)) => Ok(value),
            None => Err(ApiError::NotFound(format!(
                "resource {id:?} of app {app:?} not found"
            ))),
        }
    }

    /// An app's resources, oldest first.
    pub async fn list_resources(&self, app: &str) -> Result<Vec<Resource>, ApiError> {
        let mut list: Vec<Resource> = self
            .coord
            .list::<Resource>(&keys::resources_of(app))
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect();
        list.sort_by_key(|r| r.created_at);
        Ok(list)
    }

    /// Deletes a resource record (absent is fine).
    pub async fn delete_resource(&self, app: &str, id: &str) -> Result<(), ApiError> {
        self.remove(&keys::resource(app, id)).await
    }

    /// Stores a token under the hash of its secret.
    pub async fn put_token(&self, hash: &str, token: &Token) -> Result<(), ApiError> {
        self.put(&keys::token(hash), token).await
    }

    /// The token whose secret hashes to `hash`, if it exists (not revoked).
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, ApiError> {
        Ok(self
            .coord
            .get::<Token>(&keys::token(hash))
            .await?
            .map(|(token, _)| token))
    }

    /// All tokens (without secrets, which are not stored).
    pub async fn list_tokens(&self) -> Result<Vec<Token>, ApiError> {
        Ok(self
            .coord
            .list::<Token>(&keys::tokens())
            .await?
            .into_iter()
            .map(|(_, token, _)| token)
            .collect())
    }

    /// Revokes the token with this id, or 404.
    pub async fn delete_token(&self, id: &str) -> Result<(), ApiError> {
        let found = self
            .coord
            .list::<Token>(&keys::tokens())
            .await?
            .into_iter()
            .find(|(_, t, _)| t.id == id);
        match found {
            Some((key, _, rev)) => match self.coord.delete(&key, rev).await {
                Ok(()) | Err(CoordError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
            None => Err(ApiError::NotFound(format!("token {id:?} not found"))),
        }
    }

    /// Every job placed by the scheduler, on every host.
    pub async fn placements(&self) -> Result<Vec<Job>, ApiError> {
        Ok(self
            .coord
            .list::<Job>(&keys::placements())
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect())
    }

    /// Removes a job's placement: its host stops it.
    pub async fn delete_placement(&self, job: &Job) -> Result<(), ApiError> {
        self.remove(&keys::placement(&job.host, &job.id)).await
    }

    /// What hosts report about their jobs.
    pub async fn job_statuses(&self) -> Result<Vec<JobStatus>, ApiError> {
        Ok(self
            .coord
            .list::<JobStatus>(&keys::job_statuses())
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect())
    }

    /// Writes `key` whatever it holds now.
    async fn put<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), ApiError> {
        let mut batch = Batch::new();
        batch.put(key, value)?;
        self.coord.commit(batch).await?;
        Ok(())
    }

    /// Deletes `key` if present, retrying when it changes underneath.
    /// Deletes one release record (absent is fine): history beyond what is kept
    /// (`crate::gc`).
    pub async fn delete_release(&self, app: &str, version: u64) -> Result<(), ApiError> {
        self.remove(&keys::release(app, version)).await
    }

    async fn remove(&self, key: &str) -> Result<(), ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((_, rev)) = self.coord.get::<serde_json::Value>(key).await? else {
                return Ok(());
            };
            match self.coord.delete(key, rev).await {
                Ok(()) | Err(CoordError::NotFound { .. }) => return Ok(()),
                Err(CoordError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!(
            "{key} is changing too fast; retry"
        )))
    }

    /// Stores a drain (`drains/<id>`).
    pub async fn put_drain(
        &self,
        spec: &paas_logshipper::drain::DrainSpec,
    ) -> Result<(), ApiError> {
        self.put(&keys::drain(&spec.id), spec).await
    }

    /// Every drain.
    pub async fn list_drains(&self) -> Result<Vec<paas_logshipper::drain::DrainSpec>, ApiError> {
        Ok(self
            .coord
            .list::<paas_logshipper::drain::DrainSpec>(&keys::drains())
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect())
    }

    /// Deletes a drain (absent is fine).
    pub async fn delete_drain(&self, id: &str) -> Result<(), ApiError> {
        self.remove(&keys::drain(id)).await
    }

    /// Live host agents (their keys vanish with their leases).
    pub async fn hosts(&self) -> Result<Vec<Host>, ApiError> {
        Ok(self
            .coord
            .list::<Host>(&keys::hosts())
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .collect())
    }

    /// Stores a new route and takes its domain and path in one transaction; 409 when
    /// another route has the same domain and path. The domain and path are checked here,
    /// as app names are in [`Store::create_app`].
    pub async fn create_route(&self, route: &Route) -> Result<(), ApiError> {
        match route.tcp_port {
            Some(port) => paas_model::validate_tcp_port(port)?,
            None => validate_route(&route.domain, route.path.as_deref())?,
        }
        let mut batch = Batch::new();
        batch
            .create(&keys::route(&route.id), route)?
            .create(&keys::route_name_of(route), &route.id)?;
        match self.coord.commit(batch).await {
            Ok(_) => Ok(()),
            Err(CoordError::Conflict { .. }) => Err(ApiError::Conflict(match route.tcp_port {
                Some(port) => format!("TCP port {port} is already routed"),
                None => format!(
                    "{}{} is already routed",
                    route.domain,
                    route.path.as_deref().unwrap_or("")
                ),
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// An app's routes, by domain then path.
    pub async fn list_routes(&self, app: &str) -> Result<Vec<Route>, ApiError> {
        let mut routes: Vec<Route> = self
            .coord
            .list::<Route>(&keys::routes())
            .await?
            .into_iter()
            .map(|(_, v, _)| v)
            .filter(|r| r.app == app)
            .collect();
        routes.sort_by(|a, b| (&a.domain, &a.path).cmp(&(&b.domain, &b.path)));
        Ok(routes)
    }

    /// Deletes one of `app`'s routes and frees its domain and path; 404 when the app
    /// has no route with this id.
    pub async fn delete_route(&self, app: &str, id: &str) -> Result<(), ApiError> {
        let not_found = || ApiError::NotFound(format!("route {id:?} not found"));
        let Some((route, rev)) = self.coord.get::<Route>(&keys::route(id)).await? else {
            return Err(not_found());
        };
        if route.app != app {
            return Err(not_found());
        }
        let mut batch = Batch::new();
        batch.delete(&keys::route(id), rev);
        let name_key = keys::route_name_of(&route);
        if let Some((owner, name_rev)) = self.coord.get::<String>(&name_key).await? {
            if owner == id {
                batch.delete(&name_key, name_rev);
            }
        }
        self.coord.commit(batch).await.map_err(|e| match e {
            CoordError::Conflict { .. } | CoordError::NotFound { .. } => {
                ApiError::Conflict(format!("route {id:?} changed while being removed; retry"))
            }
            other => other.into(),
        })?;
        Ok(())
    }
}
