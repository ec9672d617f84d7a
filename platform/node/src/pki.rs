//! The cluster's certificate authority and the certificates made from it, in the data
//! dir's `pki/` (0700, keys 0600): etcd's server certificate (also its peer certificate), the log aggregator's
//! (`logs.pem`, for the name `paas-logs`) and the one client identity the platform's
//! processes present to etcd (`paas_coord::tls`) and to the aggregator's syslog input
//! (`paas_logshipper::tls`). Both run with client-certificate authentication, so a
//! process without these files (any job, any other user) cannot read or write the
//! platform's state or write into its logs.
//!
//! Made once and kept (joined hosts hold copies); made again only when the address etcd
//! listens on changed, since its certificate names it.

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
    // A directory made before the aggregator had a certificate is made again whole (the
    // CA's key is not kept): joined hosts then need the new copy.
    let complete = [
        CA_FILE,
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

fn make(dir: &Path, ip: IpAddr) -> Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "paas cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

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
