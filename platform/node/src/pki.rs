//! The cluster's certificate authority and the certificates made from it, in the data
//! dir's `pki/` (0700, keys 0600): etcd's server certificate (also its peer certificate), the log aggregator's
//! (`logs.pem`, for the name `paas-logs`) and the one client identity the platform's
//! processes present to etcd (`paas_coord::tls`) and to the aggregator's syslog input
//! (`paas_logshipper::tls`). Both run with client-certificate authentication, so a
//! process without these files (any job, any other user) cannot read or write the
//! platform's state or write into its logs.
//!
//! Made once and kept (joined hosts hold copies); made again only when the address etcd
//! listens on changed, since its certificate names it, or when the CA's key is missing
//! (data dirs from before it was kept).
//!
//! The CA's key stays in `pki/` (0600) so the node can issue the appliance clusters'
//! server certificates ([`issue_server`]); the CA's certificate alone is also published
//! world-readable as `DATA_DIR/ca.pem` ([`publish_ca`]), where the apps' jobs (other
//! uids, which cannot enter `pki/`) read it to verify the database servers.
//!
//! That path is recorded in etcd ([`announce_ca`], key `pki/ca-path`); a joined host
//! (`paas host --join --etcd-tls-dir DIR`) writes the CA it was handed (`DIR/ca.pem`,
//! the one its etcd connection verifies) at the same path ([`install_joined_ca`]), so
//! the URLs handed to apps name a file that exists on every host. Only the path comes
//! from etcd, and only a path ending in `ca.pem` is written.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use paas_coord::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use paas_logshipper::tls::{SERVER_CERT_FILE as LOGS_CERT, SERVER_KEY_FILE as LOGS_KEY};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// etcd's server certificate and key.
pub const SERVER_CERT: &str = "etcd.pem";
/// etcd's server key.
pub const SERVER_KEY: &str = "etcd-key.pem";
/// The address the server certificate was made for.
const SERVER_ADDR: &str = "etcd-addr";
/// The CA's private key.
const CA_KEY: &str = "ca-key.pem";
/// The CA certificate every job may read, in the data dir itself.
pub const PUBLIC_CA: &str = "ca.pem";
/// What an issued server certificate names, next to it (re-issued when this changes).
const ISSUED_FOR: &str = "issued-for";

/// Makes (or keeps) the PKI in `DATA_DIR/pki` for an etcd listening on `ip`; returns the
/// directory.
pub fn ensure(data_dir: &Path, ip: IpAddr) -> Result<PathBuf> {
    let dir = data_dir.join("pki");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    // A directory made before the aggregator had a certificate, or before the CA's key
    // was kept, is made again whole: joined hosts then need the new copy.
    let complete = [
        CA_FILE,
        CA_KEY,
        CERT_FILE,
        KEY_FILE,
        SERVER_CERT,
        SERVER_KEY,
        LOGS_CERT,
        LOGS_KEY,
    ]
    .iter()
    .all(|f| dir.join(f).exists());
    let same_addr =
        fs::read_to_string(dir.join(SERVER_ADDR)).is_ok_and(|a| a.trim() == ip.to_string());
    if complete && same_addr {
        return Ok(dir);
    }
    make(&dir, ip).with_context(|| {
        format!(
            "cannot make the cluster's certificates in {}",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// The CA's parameters. Signing them again with the kept key gives an issuer that
/// signs certificates the original CA certificate verifies (same name, same key).
fn ca_params() -> Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "paas cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca_params)
}

fn make(dir: &Path, ip: IpAddr) -> Result<()> {
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&ca_key)?;

    let mut server_params = CertificateParams::new(vec!["localhost".to_string()])?;
    server_params.subject_alt_names.push(SanType::IpAddress(ip));
    server_params
        .distinguished_name
        .push(DnType::CommonName, "paas etcd");
    // Also a client certificate: etcd members present it to each other on the peer port.
    server_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;

    // The aggregator's name, not an address: shippers on any host check this name.
    let mut logs_params =
        CertificateParams::new(vec![paas_logshipper::tls::SERVER_NAME.to_string()])?;
    logs_params
        .distinguished_name
        .push(DnType::CommonName, "paas log aggregator");
    logs_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let logs_key = KeyPair::generate()?;
    let logs = logs_params.signed_by(&logs_key, &ca, &ca_key)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "paas platform");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &ca, &ca_key)?;

    write(dir, CA_KEY, &ca_key.serialize_pem())?;
    write(dir, CA_FILE, &ca.pem())?;
    write(dir, SERVER_CERT, &server.pem())?;
    write(dir, SERVER_KEY, &server_key.serialize_pem())?;
    write(dir, LOGS_CERT, &logs.pem())?;
    write(dir, LOGS_KEY, &logs_key.serialize_pem())?;
    write(dir, CERT_FILE, &client.pem())?;
    write(dir, KEY_FILE, &client_key.serialize_pem())?;
    write(dir, SERVER_ADDR, &ip.to_string())?;
    tracing::info!(dir = %dir.display(), %ip, "made the cluster's certificates");
    Ok(())
}

/// Whether `pki` holds the CA's key (made by [`ensure`]; absent with an external etcd).
pub fn has_ca_key(pki: &Path) -> bool {
    pki.join(CA_KEY).exists()
}

/// Issues a server certificate of the cluster CA in `pki` for `ips` and `localhost`
/// into `out` (0700, files 0600, names of `paas_appliance::tls`, with the CA's
/// certificate), unless the one there already names exactly these and was signed by
/// this CA. Members copy the files at each start, so a certificate is replaced only
/// when it must be.
pub fn issue_server(pki: &Path, out: &Path, common_name: &str, ips: &[IpAddr]) -> Result<()> {
    use paas_appliance::tls::{CA_FILE as OUT_CA, CERT_FILE as OUT_CERT, KEY_FILE as OUT_KEY};
    let ca_pem = fs::read_to_string(pki.join(CA_FILE))
        .with_context(|| format!("cannot read {}", pki.join(CA_FILE).display()))?;
    let mut ips = ips.to_vec();
    ips.sort();
    ips.dedup();
    let wanted = format!(
        "{common_name} {}",
        ips.iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let current = [OUT_CA, OUT_CERT, OUT_KEY]
        .iter()
        .all(|f| out.join(f).exists())
        && fs::read_to_string(out.join(ISSUED_FOR)).is_ok_and(|f| f == wanted)
        && fs::read_to_string(out.join(OUT_CA)).is_ok_and(|c| c == ca_pem);
    if current {
        return Ok(());
    }
    let ca_key_pem = fs::read_to_string(pki.join(CA_KEY))
        .with_context(|| format!("cannot read {}", pki.join(CA_KEY).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o700))?;
    // Each file is replaced atomically; a member copying in between gets a pair that
    // does not match, fails that start and copies again at its next.
    write(out, OUT_KEY, &key.serialize_pem())?;
    write(out, OUT_CERT, &cert.pem())?;
    write(out, OUT_CA, &ca_pem)?;
    write(out, ISSUED_FOR, &wanted)?;
    tracing::info!(dir = %out.display(), names = %wanted, "issued a server certificate");
    Ok(())
}

/// Writes the CA's certificate (public) to `DATA_DIR/ca.pem`, mode 0644, and returns
/// its path: the data dir is 0711, so every job can read the file by name.
pub fn publish_ca(data_dir: &Path, pki: &Path) -> Result<PathBuf> {
    let ca = fs::read_to_string(pki.join(CA_FILE))
        .with_context(|| format!("cannot read {}", pki.join(CA_FILE).display()))?;
    let path = data_dir.join(PUBLIC_CA);
    if fs::read_to_string(&path).is_ok_and(|c| c == ca) {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        return Ok(path);
    }
    write(data_dir, PUBLIC_CA, &ca)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(path)
}

/// Records in etcd where the CA's certificate is published (`ca_file`, from
/// [`publish_ca`]), for the hosts that join.
pub async fn announce_ca(coord: &paas_coord::Coord, ca_file: &Path) -> Result<()> {
    let key = paas_model::keys::ca_path();
    let path = ca_file.display().to_string();
    match coord.get::<String>(&key).await? {
        Some((current, _)) if current == path => Ok(()),
        Some((_, revision)) => {
            coord.cas(&key, &path, revision).await?;
            Ok(())
        }
        None => {
            coord.create(&key, &path).await?;
            Ok(())
        }
    }
}

/// Why a path recorded as the CA's cannot be written on a joined host; `None` when it
/// can (absolute, ending in `ca.pem`, no `..`).
pub fn unusable_ca_path(path: &Path) -> Option<&'static str> {
    if !path.is_absolute() {
        return Some("it is not absolute");
    }
    if path.file_name() != Some(std::ffi::OsStr::new(PUBLIC_CA)) {
        return Some("its file name is not ca.pem");
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Some("it has a `..`");
    }
    None
}

/// On a joined host: writes `tls_dir/ca.pem` (the CA handed over at join) at the path
/// `paas up` recorded (0644; missing directories made 0755), and returns it; `None`
/// when nothing is recorded (an external etcd without `paas up`'s CA).
pub async fn install_joined_ca(
    coord: &paas_coord::Coord,
    tls_dir: &Path,
) -> Result<Option<PathBuf>> {
    let Some((path, _)) = coord.get::<String>(&paas_model::keys::ca_path()).await? else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if let Some(why) = unusable_ca_path(&path) {
        anyhow::bail!(
            "the CA path recorded in etcd, {}, is unusable: {why}",
            path.display()
        );
    }
    copy_ca(&tls_dir.join(CA_FILE), &path)?;
    Ok(Some(path))
}

/// Copies the CA certificate `from` to `to` (0644), unless `to` already holds it.
fn copy_ca(from: &Path, to: &Path) -> Result<()> {
    let ca = fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
    if fs::read_to_string(to).is_ok_and(|c| c == ca) {
        return Ok(());
    }
    let dir = to.parent().context("the CA path has no directory")?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    write(dir, PUBLIC_CA, &ca)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Writes `name` in `dir` (0600), replacing it atomically.
fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.new"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::MetadataExt;

    fn openssl_verifies(ca: &Path, cert: &Path) -> bool {
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(cert)
            .output()
            .expect("openssl runs")
            .status
            .success()
    }

    #[test]
    fn appliance_certificates_come_from_the_kept_ca_and_are_issued_once() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure(tmp.path(), Ipv4Addr::new(127, 0, 0, 9).into()).unwrap();
        assert!(has_ca_key(&pki));
        let out = tmp.path().join("postgres/tls");
        let ips: Vec<IpAddr> = vec![
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::new(127, 1, 2, 3).into(),
        ];
        issue_server(&pki, &out, "paas postgres", &ips).unwrap();
        let cert = out.join(paas_appliance::tls::CERT_FILE);
        let key = out.join(paas_appliance::tls::KEY_FILE);
        assert!(openssl_verifies(&pki.join(CA_FILE), &cert));
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&out).unwrap().mode() & 0o777, 0o700);

        // Same names and CA: kept; other names: issued again.
        let first = fs::read_to_string(&cert).unwrap();
        issue_server(&pki, &out, "paas postgres", &[ips[1], ips[0]]).unwrap();
        assert_eq!(fs::read_to_string(&cert).unwrap(), first);
        issue_server(&pki, &out, "paas postgres", &ips[..1]).unwrap();
        assert_ne!(fs::read_to_string(&cert).unwrap(), first);

        // Another CA (etcd's address changed) replaces the certificate on the next issue.
        let pki = ensure(tmp.path(), Ipv4Addr::new(127, 0, 0, 10).into()).unwrap();
        assert!(!openssl_verifies(&pki.join(CA_FILE), &cert));
        issue_server(&pki, &out, "paas postgres", &ips[..1]).unwrap();
        assert!(openssl_verifies(&pki.join(CA_FILE), &cert));

        let public = publish_ca(tmp.path(), &pki).unwrap();
        assert_eq!(public, tmp.path().join(PUBLIC_CA));
        assert_eq!(fs::metadata(&public).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_to_string(&public).unwrap(),
            fs::read_to_string(pki.join(CA_FILE)).unwrap()
        );
    }

    #[test]
    fn a_joined_host_writes_only_the_ca_it_was_given_where_the_urls_name_it() {
        assert_eq!(unusable_ca_path(Path::new("/var/lib/paas/ca.pem")), None);
        assert!(unusable_ca_path(Path::new("var/lib/paas/ca.pem")).is_some());
        assert!(unusable_ca_path(Path::new("/etc/passwd")).is_some());
        assert!(unusable_ca_path(Path::new("/var/lib/../../etc/ca.pem")).is_some());

        let tmp = tempfile::tempdir().unwrap();
        let pki = ensure(tmp.path(), Ipv4Addr::new(127, 0, 0, 9).into()).unwrap();
        let to = tmp.path().join("elsewhere/paas/ca.pem");
        copy_ca(&pki.join(CA_FILE), &to).unwrap();
        assert_eq!(
            fs::read_to_string(&to).unwrap(),
            fs::read_to_string(pki.join(CA_FILE)).unwrap()
        );
        assert_eq!(fs::metadata(&to).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::metadata(to.parent().unwrap()).unwrap().mode() & 0o777,
            0o755
        );
        copy_ca(&pki.join(CA_FILE), &to).unwrap();
    }

    #[test]
    fn a_pki_without_the_ca_key_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(127, 0, 0, 9).into();
        let pki = ensure(tmp.path(), ip).unwrap();
        let old_ca = fs::read_to_string(pki.join(CA_FILE)).unwrap();
        assert_eq!(
            fs::read_to_string(ensure(tmp.path(), ip).unwrap().join(CA_FILE)).unwrap(),
            old_ca
        );
        fs::remove_file(pki.join(CA_KEY)).unwrap();
        ensure(tmp.path(), ip).unwrap();
        assert!(has_ca_key(&pki));
        assert_ne!(fs::read_to_string(pki.join(CA_FILE)).unwrap(), old_ca);
    }
}
