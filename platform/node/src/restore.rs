//! Whole-cluster restore: `paas cluster restore FILE --data-dir DIR` lays the file out
//! in an empty data dir ([`restore`]); the next `paas up --data-dir DIR` finishes it
//! ([`prepare`] before anything runs, [`finish`] once the appliances are ready).
//!
//! What [`restore`] writes, after the whole file was checked (every part's SHA-256
//! against the manifest; a damaged file leaves the data dir untouched, a failure later
//! leaves it empty again):
//!
//! ```text
//! DIR/etcd/                       the snapshot restored by `etcdctl snapshot restore`,
//!                                 as member `paas` on DIR's own peer URL
//! DIR/artifacts/<sha256>.tar.gz   the releases' code
//! DIR/restore/backups/<app>/<id>/ the resources' backups (a paas-backups store)
//! DIR/restore/pending.json        what `paas up` still has to do (phase, resources)
//! ```
//!
//! Why `paas up` finishes the work: the resources' data goes back through the engines'
//! own restore hooks, which need the appliance clusters running, and those run only
//! under `paas up`. The phases, recorded in `pending.json` so a start that fails midway
//! is resumed by the next one:
//! - `records`: the snapshot still holds the old cluster's processes: placements, host
//!   and job records, the scheduler's leader key, the appliances' own records (state
//!   document, leader, members) and the formations. These are deleted before the host
//!   agent or any member starts, so the new, empty members bootstrap as a new cluster
//!   (with the old state document they would wait for a primary that does not exist;
//!   with their system apps' old formations, members with the old data dir's paths
//!   would be placed). The apps' formations are kept in `pending.json` and put back
//!   last, so no app job runs before its data is back, and so is where the old
//!   cluster published its CA (`pki/ca-path`, before this start records its own).
//!   Then `data`. A start that finds `data` (the previous one failed midway) deletes
//!   the appliances' formations and placements it left before anything runs: each
//!   cluster's launch checks its members' ports are free, then writes them again.
//! - `data`: once the appliances are ready, the CA's path is moved in the apps'
//!   variables when this data dir publishes it elsewhere ([`moved_ca`]: the restored
//!   cluster has a new CA, at `DIR/ca.pem`), then every resource recorded in etcd is
//!   re-created under its recorded names and credentials (`Provider::reinstate`; a
//!   Redis group under its recorded secret and endpoint port), so the apps' URLs work
//!   unchanged, and its backup from the file is restored into it (checked against its
//!   manifest first). Then the apps' formations go back into etcd and `DIR/restore/`
//!   is removed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use paas_backups::archive::{self, ArchiveManifest, Part, ResourceBackup};
use paas_backups::location::S3Options;
use paas_backups::{Backups, Location, Target};
use serde::{Deserialize, Serialize};

/// The restore's own directory in the data dir.
const RESTORE_DIR: &str = "restore";
/// What is left to do, in [`RESTORE_DIR`].
const PENDING: &str = "pending.json";

/// The phase a restored data dir is in (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The old cluster's process records are still in etcd.
    Records,
    /// Only the resources' data is missing.
    Data,
}

/// `DIR/restore/pending.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Where the restore stands.
    pub phase: Phase,
    /// The backups in `DIR/restore/backups/`, one per resource.
    pub resources: Vec<ResourceBackup>,
    /// The apps' formations (etcd key -> value), held out of etcd from phase `records`
    /// until their data is back, so no app job runs on a half-restored database.
    #[serde(default)]
    pub formations: BTreeMap<String, serde_json::Value>,
    /// Where the old cluster published its CA (`pki/ca-path` in the snapshot), which
    /// the apps' variables name; `None` when it recorded none.
    #[serde(default)]
    pub old_ca: Option<String>,
}

/// What [`restore`] did, for the command's report.
#[derive(Debug)]
pub struct Restored {
    /// The file's manifest.
    pub manifest: ArchiveManifest,
    /// The data dir, canonical.
    pub data_dir: PathBuf,
}

/// Where part `path` of the archive goes under the data dir, or `None` for a path this
/// format never writes (pure; refuses `..`, empty and nested components).
pub fn destination(path: &str) -> Option<PathBuf> {
    let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('\\');
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [name] if *name == archive::ETCD_SNAPSHOT => {
            Some(Path::new(RESTORE_DIR).join(archive::ETCD_SNAPSHOT))
        }
        ["artifacts", name] => {
            let digest = name.strip_suffix(".tar.gz")?;
            (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| Path::new("artifacts").join(name))
        }
        ["backups", app, id, file]
            if plain(app) && plain(id) && (*file == "dump" || *file == "manifest.json") =>
        {
            Some(
                Path::new(RESTORE_DIR)
                    .join("backups")
                    .join(app)
                    .join(id)
                    .join(file),
            )
        }
        _ => None,
    }
}

/// Whether `app` is an appliance's system app (`paas-<kind>`, `paas-<kind>-<cluster>`),
/// whose formation `paas up` writes itself. Pure.
pub fn is_system_app(app: &str) -> bool {
    let kinds = crate::up::appliance_kinds();
    let names = kinds.iter().map(|k| k.kind()).chain(["redis"]);
    names
        .map(|kind| crate::appliance::system_app(kind, "main"))
        .any(|main| {
            app == main
                || app
                    .strip_prefix(main.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
        })
}

/// Checks `file` whole, then lays it out in `data_dir` (which must be empty or absent)
/// and restores etcd's snapshot there; `paas up --data-dir DIR` does the rest.
pub fn restore(file: &Path, data_dir: &Path) -> Result<Restored> {
    if data_dir.exists() {
        let mut entries = fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty; a cluster restore needs an empty (or new) data dir",
                data_dir.display()
            );
        }
    }
    let open = || fs::File::open(file).with_context(|| format!("cannot open {}", file.display()));
    let manifest = archive::check(std::io::BufReader::new(open()?))
        .with_context(|| format!("{} refused, nothing was written", file.display()))?;
    for part in &manifest.parts {
        if destination(&part.path).is_none() {
            bail!(
                "{} refused, nothing was written: part {:?} is not one this format writes",
                file.display(),
                part.path
            );
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    match lay_out(&manifest, open()?, &data_dir) {
        Ok(()) => Ok(Restored { manifest, data_dir }),
        Err(e) => {
            empty(&data_dir);
            Err(e.context(format!(
                "restore into {} failed; the directory was emptied again",
                data_dir.display()
            )))
        }
    }
}

/// Removes everything inside `dir`, leaving it empty.
fn empty(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }
}

fn lay_out(manifest: &ArchiveManifest, file: fs::File, data_dir: &Path) -> Result<()> {
    let put = |part: &Part, bytes: &mut dyn Read| -> std::io::Result<()> {
        let relative = destination(&part.path)
            .ok_or_else(|| std::io::Error::other(format!("unexpected part {:?}", part.path)))?;
        let path = data_dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::io::copy(bytes, &mut out)?;
        out.sync_all()
    };
    archive::extract(std::io::BufReader::new(file), manifest, put)?;
    let restore_dir = data_dir.join(RESTORE_DIR);
    let snapshot = restore_dir.join(archive::ETCD_SNAPSHOT);
    restore_etcd(&snapshot, data_dir)?;
    fs::remove_file(&snapshot)?;
    for dir in ["etcd", "artifacts"] {
        let dir = data_dir.join(dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    }
    write_pending(
        data_dir,
        &Pending {
            phase: Phase::Records,
            resources: manifest.resources.clone(),
            formations: BTreeMap::new(),
            old_ca: None,
        },
    )
}

/// `etcdctl snapshot restore` into `DATA_DIR/etcd`, as the single member `paas` on the
/// peer URL `paas up` gives this data dir's etcd.
fn restore_etcd(snapshot: &Path, data_dir: &Path) -> Result<()> {
    let peer = crate::up::etcd_peer_url(data_dir)?;
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg("--name")
        .arg("paas")
        .arg("--data-dir")
        .arg(data_dir.join("etcd"))
        .arg("--initial-cluster")
        .arg(format!("paas={peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("etcdctl is not installed (apt-get install etcd-client)")
            } else {
                anyhow::anyhow!("cannot run etcdctl: {e}")
            }
        })?;
    if !out.status.success() {
        bail!(
            "etcdctl snapshot restore failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn write_pending(data_dir: &Path, pending: &Pending) -> Result<()> {
    let dir = data_dir.join(RESTORE_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let tmp = dir.join(format!("{PENDING}.new"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(pending)?)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(PENDING))?;
    Ok(())
}

fn read_pending(data_dir: &Path) -> Result<Option<Pending>> {
    let path = data_dir.join(RESTORE_DIR).join(PENDING);
    match fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("cannot parse {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// At `paas up` start, before the host agent or any appliance member runs: if the data
/// dir holds an unfinished restore, deletes the old cluster's process records from
/// etcd (phase `records`) and returns what [`finish`] must do. The restored keyspace is
/// the embedded etcd's (`DATA_DIR/etcd`): with `external_etcd`, an unfinished restore
/// is refused rather than deleting records of another etcd.
pub async fn prepare(
    coord: &paas_coord::Coord,
    data_dir: &Path,
    external_etcd: bool,
) -> Result<Option<Pending>> {
    let Some(mut pending) = read_pending(data_dir)? else {
        return Ok(None);
    };
    if external_etcd {
        bail!(
            "{} holds an unfinished cluster restore, whose etcd is DATA_DIR/etcd: start \
             without --etcd",
            data_dir.display()
        );
    }
    if pending.phase == Phase::Records {
        // The apps' formations wait in pending.json; the system apps' are written anew
        // when their clusters launch (the old ones name the old data dir).
        let formations = coord
            .list::<serde_json::Value>(&paas_model::keys::formations())
            .await
            .context("restore: cannot read the formations")?;
        for (key, value, _) in formations {
            let app = value["app"].as_str().unwrap_or_default();
            if !is_system_app(app) {
                pending.formations.insert(key, value);
            }
        }
        pending.old_ca = coord
            .get::<String>(&paas_model::keys::ca_path())
            .await
            .context("restore: cannot read the old CA's path")?
            .map(|(path, _)| path);
        write_pending(data_dir, &pending)?;
        let mut prefixes = vec![
            paas_model::keys::formations(),
            paas_model::keys::placements(),
            paas_model::keys::job_statuses(),
            paas_model::keys::hosts(),
            paas_model::keys::services(),
            paas_model::keys::scheduler_leader(),
        ];
        for kind in crate::up::appliance_kinds() {
            prefixes.push(kind.keys("main").base().to_string());
        }
        prefixes.push(paas_redis::cluster::groups_prefix());
        for prefix in &prefixes {
            let deleted = coord
                .delete_prefix(prefix)
                .await
                .with_context(|| format!("restore: cannot delete {prefix} from etcd"))?;
            tracing::info!(%prefix, deleted, "restore: old cluster's records deleted");
        }
        pending.phase = Phase::Data;
        write_pending(data_dir, &pending)?;
    } else {
        // A start that failed midway left its clusters' formations and placements: the
        // members would be placed before their launch checks and writes them again.
        let formations = coord
            .list::<serde_json::Value>(&paas_model::keys::formations())
            .await
            .context("restore: cannot read the formations")?;
        let mut batch = paas_coord::Batch::new();
        let mut left = 0;
        for (key, value, revision) in formations {
            if is_system_app(value["app"].as_str().unwrap_or_default()) {
                batch.delete(&key, revision);
                left += 1;
            }
        }
        if left > 0 {
            coord
                .commit(batch)
                .await
                .context("restore: cannot delete the appliances' formations")?;
        }
        let placements = paas_model::keys::placements();
        coord
            .delete_prefix(&placements)
            .await
            .with_context(|| format!("restore: cannot delete {placements} from etcd"))?;
        tracing::info!("restore: resumed; the failed start's appliance jobs were unscheduled");
    }
    Ok(Some(pending))
}

/// `value` with the CA path `old` replaced by `new` (pure): a value that is the path
/// (`PGSSLROOTCERT`, `MYSQL_SSL_CA`, `REDIS_TLS_CA`) or a URL whose query names it
/// (`sslrootcert=`, percent-encoded as the Postgres provider writes it); `None` when it
/// names no such path.
fn moved_value(value: &str, old: &str, new: &str) -> Option<String> {
    if value == old {
        return Some(new.to_string());
    }
    let (old_query, new_query) = (
        format!("={}", paas_postgres::provision::percent_encode(old)),
        format!("={}", paas_postgres::provision::percent_encode(new)),
    );
    let (url, query) = value.split_once('?')?;
    let mut changed = false;
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if param[name.len()..] == old_query => {
                changed = true;
                format!("{name}{new_query}")
            }
            _ => param.to_string(),
        })
        .collect();
    changed.then(|| format!("{url}?{}", params.join("&")))
}

/// `env` with the CA's path moved from `old` to `new` in every value that names it
/// (pure, see [`moved_value`]); `None` when no value does. A restored cluster has a new
/// CA, published in its own data dir: variables naming the old data dir's `ca.pem`
/// would make verifying clients trust a file that is not there, or the old CA.
pub fn moved_ca(
    env: &BTreeMap<String, String>,
    old: &str,
    new: &str,
) -> Option<BTreeMap<String, String>> {
    if old == new {
        return None;
    }
    let mut changed = false;
    let moved = env
        .iter()
        .map(|(key, value)| match moved_value(value, old, new) {
            Some(value) => {
                changed = true;
                (key.clone(), value)
            }
            None => (key.clone(), value.clone()),
        })
        .collect();
    changed.then_some(moved)
}

/// Moves the CA's path from `old` to `new` in every app's resources and, through a
/// new release, in its variables (releases are never changed; the new one says why).
/// Idempotent: a resumed restore finds nothing left to move.
async fn move_ca(store: &paas_controller::Store, old: &str, new: &str) -> Result<()> {
    let api = |e: paas_controller::ApiError| anyhow::anyhow!("restore: moving the CA path: {e}");
    for app in store.list_apps().await.map_err(api)? {
        if is_system_app(&app.name) {
            continue;
        }
        for mut resource in store.list_resources(&app.name).await.map_err(api)? {
            if let Some(env) = moved_ca(&resource.env, old, new) {
                resource.env = env;
                store.put_resource(&resource).await.map_err(api)?;
            }
        }
        let current = store.release(&app.name, app.release).await.map_err(api)?;
        if moved_ca(&current.env, old, new).is_some() {
            let release = store
                .new_release(&app.name, |current| {
                    let env =
                        moved_ca(&current.env, old, new).unwrap_or_else(|| current.env.clone());
                    Ok((env, format!("Cluster restore: the CA is now {new}")))
                })
                .await
                .map_err(api)?;
            tracing::info!(app = %app.name, version = release.version, %old, %new,
                "restore: the CA's path moved in the app's variables");
        }
    }
    Ok(())
}

/// Once the appliances are ready: re-creates every resource recorded in etcd under its
/// recorded credentials and loads its backup from the file, then removes
/// `DATA_DIR/restore/`. A resource without a backup in the file (made after the
/// snapshot's backups) is re-created empty, with a warning.
pub async fn finish(
    pending: &Pending,
    data_dir: &Path,
    store: &paas_controller::Store,
    providers: &paas_controller::Providers,
) -> Result<()> {
    let dir = data_dir.join(RESTORE_DIR).join("backups");
    fs::create_dir_all(&dir)?;
    let objects = Location::Dir(dir.clone())
        .open(&S3Options::default())
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let backups = Backups::new(objects);
    let api = |e: paas_controller::ApiError| anyhow::anyhow!("{e}");
    let pki = data_dir.join("pki");
    if let (Some(old), true) = (&pending.old_ca, crate::pki::has_ca_key(&pki)) {
        let new = data_dir.join(crate::pki::PUBLIC_CA);
        move_ca(store, old, &new.display().to_string()).await?;
    }
    // Every provider first: a missing engine stops the start before any data moves.
    let mut work = Vec::new();
    for app in store.list_apps().await.map_err(api)? {
        for resource in store.list_resources(&app.name).await.map_err(api)? {
            let Some(provider) = providers.get(&resource.kind) else {
                bail!(
                    "restore: resource {} of app {} is {}, which this `paas up` does not run \
                     (start it with --appliance {}=N)",
                    resource.id,
                    resource.app,
                    resource.kind,
                    resource.kind
                );
            };
            work.push((resource, provider));
        }
    }
    for (resource, provider) in work {
        provider
            .reinstate(&resource.app, &resource.id, &resource.env, &resource.data)
            .await
            .with_context(|| {
                format!(
                    "restore: cannot re-create resource {} of app {}",
                    resource.id, resource.app
                )
            })?;
        let backup = pending
            .resources
            .iter()
            .find(|r| r.app == resource.app && r.resource == resource.id);
        let Some(backup) = backup else {
            tracing::warn!(app = %resource.app, resource = %resource.id,
                "restore: the file holds no backup of this resource; it is empty");
            continue;
        };
        let manifest = backups.get(&backup.app, &backup.backup).await?;
        let target = Target {
            app: resource.app.clone(),
            resource: resource.id.clone(),
            kind: resource.kind.clone(),
            // Completed from the variables for resources older than the backup hooks
            // (a Redis URL, a MariaDB password), as the backups themselves were.
            data: provider.backup_data(&resource.data, &resource.env),
            provider,
        };
        backups.restore(&manifest, &target).await.with_context(|| {
            format!(
                "restore: loading backup {} into resource {} of app {}",
                backup.backup, resource.id, resource.app
            )
        })?;
        tracing::info!(app = %resource.app, resource = %resource.id, backup = %backup.backup,
            "restore: resource data restored");
    }
    let mut batch = paas_coord::Batch::new();
    for (key, formation) in &pending.formations {
        batch.put(key, formation)?;
    }
    store
        .coord()
        .commit(batch)
        .await
        .context("restore: cannot put the apps' formations back")?;
    fs::remove_dir_all(data_dir.join(RESTORE_DIR))?;
    tracing::info!(
        formations = pending.formations.len(),
        "restore: finished; the apps' jobs start"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_apps_are_the_appliances_own() {
        for app in [
            "paas-postgres",
            "paas-mysql",
            "paas-redis-g1a2b",
            "paas-postgres-b",
        ] {
            assert!(is_system_app(app), "{app}");
        }
        for app in [
            "shop",
            "paas-postgresx",
            "paas",
            "paas-",
            "my-paas-postgres",
        ] {
            assert!(!is_system_app(app), "{app}");
        }
    }

    #[test]
    fn the_ca_path_moves_wherever_a_variable_names_it() {
        let (old, new) = ("/srv/old paas/ca.pem", "/srv/new/ca.pem");
        let env = BTreeMap::from(
            [
                ("PGSSLROOTCERT", old),
                ("MYSQL_SSL_CA", old),
                ("REDIS_TLS_CA", old),
                (
                    "DATABASE_URL",
                    "postgres://a:pw@127.0.0.1:6432/a?sslmode=verify-full&sslrootcert=/srv/old%20paas/ca.pem",
                ),
                ("REDIS_URL", "rediss://default:pw@127.0.0.1:26379"),
                ("OTHER", "/srv/old paas/ca.pem.bak"),
                ("LINK", "http://x/?f=/srv/old%20paas/ca.pem2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let moved = moved_ca(&env, old, new).expect("something moved");
        for key in ["PGSSLROOTCERT", "MYSQL_SSL_CA", "REDIS_TLS_CA"] {
            assert_eq!(moved[key], new, "{key}");
        }
        assert_eq!(
            moved["DATABASE_URL"],
            "postgres://a:pw@127.0.0.1:6432/a?sslmode=verify-full&sslrootcert=/srv/new/ca.pem"
        );
        for key in ["REDIS_URL", "OTHER", "LINK"] {
            assert_eq!(moved[key], env[key], "{key}");
        }
        assert_eq!(moved_ca(&moved, old, new), None, "nothing left to move");
        assert_eq!(moved_ca(&env, old, old), None, "the same path");
        let encoded = moved_ca(&env, old, "/srv/new dir/ca.pem").unwrap();
        assert!(
            encoded["DATABASE_URL"].ends_with("sslrootcert=/srv/new%20dir/ca.pem"),
            "{}",
            encoded["DATABASE_URL"]
        );
        assert_eq!(encoded["PGSSLROOTCERT"], "/srv/new dir/ca.pem");
    }

    #[test]
    fn parts_land_only_where_the_format_puts_them() {
        let sha = "ab".repeat(32);
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(destination(path), expected.map(PathBuf::from), "{path}");
        };
        check("etcd.snapshot", Some("restore/etcd.snapshot"));
        check(
            &format!("artifacts/{sha}.tar.gz"),
            Some(&format!("artifacts/{sha}.tar.gz")),
        );
        check(
            "backups/shop/20261201T030000Z-1a2b3c/dump",
            Some("restore/backups/shop/20261201T030000Z-1a2b3c/dump"),
        );
        check(
            "backups/shop/x/manifest.json",
            Some("restore/backups/shop/x/manifest.json"),
        );
        check("backups/../x/dump", None);
        check("backups/shop/../dump", None);
        check("backups/shop/x/other", None);
        check("backups/shop/x/y/dump", None);
        check("artifacts/../../etc.tar.gz", None);
        check("artifacts/short.tar.gz", None);
        check("/etc/passwd", None);
        check("manifest.json", None);
        check("etcd/member/snap/db", None);
    }
}
