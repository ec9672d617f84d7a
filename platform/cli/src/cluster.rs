//! `paas cluster backup FILE` (the controller streams the whole cluster as one file) and
//! `paas cluster restore FILE --data-dir DIR` (local: lays the file out in an empty data
//! dir for the next `paas up`, see `paas_node::restore`).

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};

use crate::backups::human_bytes;
use crate::client::Client;
use crate::config;

/// `paas cluster backup FILE|-`: writes the archive to `FILE.partial`, renames it to
/// FILE only once the transfer ended cleanly and the file checked out whole (every
/// part against its manifest), so a FILE that exists is complete. `-` writes to
/// stdout (a broken transfer then leaves an archive without its manifest, which a
/// restore refuses).
pub async fn backup(json_out: bool, file: &Path) -> Result<()> {
    let to_stdout = file == Path::new("-");
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write a binary archive to a terminal; redirect it: paas cluster backup - > FILE");
    }
    eprintln!("taking a fresh backup of every resource and an etcd snapshot...");
    let resp = Client::new(config::load()?)?
        .stream(Method::POST, "/cluster/backup")
        .await?;
    if to_stdout {
        let mut out = std::io::stdout().lock();
        let (size, sha) = copy(resp, &mut out).await?;
        out.flush()?;
        eprintln!("{} written to stdout, sha256 {sha}", human_bytes(size));
        return Ok(());
    }
    let partial = partial_path(file);
    let result = async {
        // 0600: the file holds every secret of the cluster (database passwords in the
        // apps' variables, token hashes, routes' private keys).
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let (size, sha) = copy(resp, &mut out).await?;
        out.sync_all()?;
        let manifest =
            paas_backups::archive::check(std::io::BufReader::new(std::fs::File::open(&partial)?))
                .context("the written file does not check out")?;
        Ok::<_, anyhow::Error>((size, sha, manifest))
    }
    .await;
    let (size, sha, manifest) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context("cluster backup failed; no file was written"));
        }
    };
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), file.display()))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    println!(
        "{}: {} ({} parts, sha256 {sha}, checked)",
        file.display(),
        human_bytes(size),
        manifest.parts.len()
    );
    println!("  {}", counts(&manifest.counts));
    for r in &manifest.resources {
        println!(
            "  {} {} of {}: backup {}",
            r.kind, r.resource, r.app, r.backup
        );
    }
    Ok(())
}

/// `FILE.partial`, next to FILE.
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    file.with_file_name(name)
}

/// Copies the reply's body to `out`; its size and SHA-256. A body that ends with an
/// error (the server failed midway) is an error here.
async fn copy(resp: reqwest::Response, out: &mut impl Write) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the transfer broke off (the server reported a failure)")?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).context("writing the archive")?;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn counts(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `paas cluster restore FILE --data-dir DIR`.
pub fn restore(json_out: bool, file: &Path, data_dir: &Path) -> Result<()> {
    let restored = paas_node::restore::restore(file, data_dir)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&restored.manifest)?);
        return Ok(());
    }
    let m = &restored.manifest;
    println!(
        "restored the backup of {} (paas {}, etcd {}) into {}",
        m.created.format("%Y-%m-%d %H:%M:%S UTC"),
        m.paas_version,
        m.etcd_version,
        restored.data_dir.display()
    );
    println!("  {}", counts(&m.counts));
    println!(
        "now run `paas up --data-dir {}` with the same --appliance flags: it re-creates the {} \
         resource(s) and loads their data before its API opens",
        restored.data_dir.display(),
        m.resources.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_file_is_next_to_the_target() {
        assert_eq!(
            partial_path(Path::new("/backups/c.tar")),
            PathBuf::from("/backups/c.tar.partial")
        );
        assert_eq!(
            partial_path(Path::new("c.tar")),
            PathBuf::from("c.tar.partial")
        );
    }
}
