//! The aggregator as `paas up` configures it takes lines and answers queries only with
//! the platform's credentials: syslog over TLS with a client certificate from the
//! cluster CA (the shipper presents it), the HTTP API with the bearer secret. Forged
//! frames from a caller without them are refused and not stored, and the service keeps
//! running. (Forward's shared key: `ingest_forward.rs`, with the Node client.)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_logshipper::ingest::IngestConfig;
use paas_logshipper::journal::JournalConfig;
use paas_logshipper::line::{LogLine, Stream};
use paas_logshipper::service::{Service, ServiceConfig};
use paas_logshipper::shipper::{Shipper, ShipperConfig};
use paas_logshipper::tls;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "cluster-secret-for-tests";

/// A CA and, signed by it, the aggregator's certificate and a client identity, written
/// to `dir` under the names `paas up` uses.
fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut server = CertificateParams::new(vec![tls::SERVER_NAME.to_string()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
    for (name, text) in [
        (tls::CA_FILE, ca.pem()),
        (tls::SERVER_CERT_FILE, server.pem()),
        (tls::SERVER_KEY_FILE, server_key.serialize_pem()),
        (tls::CLIENT_CERT_FILE, client.pem()),
        (tls::CLIENT_KEY_FILE, client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

async fn start(data: &Path, pki_dir: &Path) -> Service {
    let ingest = IngestConfig {
        syslog_addr: Some("127.0.0.1:0".parse().unwrap()),
        syslog_tls: Some(tls::mutual_server_config(pki_dir).unwrap()),
        ..IngestConfig::default()
    };
    Service::start(ServiceConfig {
        data_dir: data.to_path_buf(),
        ingest,
        api_addr: "127.0.0.1:0".parse().unwrap(),
        journal: JournalConfig::default(),
        lines_per_app: 1000,
        api_bearer: Some(SECRET.into()),
        persist_interval: Duration::from_millis(100),
    })
    .await
    .unwrap()
}

async fn get(service: &Service, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", service.api_addr()));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Waits until the syslog input has refused at least `n` connections at the TLS
/// handshake; fails after a minute.
async fn wait_refused(service: &Service, n: u64) {
    let series = r#"logshipper_parse_errors_total{input="syslog",reason="tls"} "#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = get(service, "/metrics", Some(SECRET)).await;
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} refused, not {n}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn frame(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

fn line(app: &str, i: u64) -> LogLine {
    LogLine {
        id: 0,
        app: app.into(),
        process_type: Some("web".into()),
        job: Some("j1".into()),
        host: Some("h1".into()),
        stream: Stream::Stdout,
        timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
        message: format!("shipped {i}"),
    }
}

fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .map(Result::unwrap)
        .collect()
}

/// A TLS client trusting the CA in `roots_dir`, presenting the client certificate in
/// `identity_dir` (or none).
fn connector(roots_dir: &Path, identity_dir: Option<&Path>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(&roots_dir.join(tls::CA_FILE)) {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity_dir {
        None => builder.with_no_client_auth(),
        Some(dir) => {
            let key = std::fs::read(dir.join(tls::CLIENT_KEY_FILE)).unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .unwrap()
                .unwrap();
            builder
                .with_client_auth_cert(pem_certs(&dir.join(tls::CLIENT_CERT_FILE)), key)
                .unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends one frame on `stream` and reads until the server closes it.
async fn send_and_wait_close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_platforms_certificate_and_secret_open_the_aggregator() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let other_ca = dir.path().join("other-pki");
    pki(&other_ca);
    let service = start(&dir.path().join("agg"), &pki_dir).await;
    let syslog = service.syslog_addr().unwrap();

    // The query API: 401 without the secret or with a wrong one.
    let (status, body) = get(&service, "/apps/shop/log", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(get(&service, "/apps/shop/log", Some("wrong")).await.0, 401);
    assert_eq!(get(&service, "/drains", None).await.0, 401);
    assert_eq!(get(&service, "/metrics", None).await.0, 401);
    assert_eq!(get(&service, "/apps/shop/log", Some(SECRET)).await.0, 200);

    // A forged frame for app "shop" on plain TCP.
    let mut plain = TcpStream::connect(syslog).await.unwrap();
    send_and_wait_close(
        &mut plain,
        &frame("<14>1 - h shop web.1 stdout - forged plain"),
    )
    .await;
    wait_refused(&service, 1).await;

    // Over TLS without a client certificate, then with one from another CA: the server
    // refuses both at the handshake (TLS 1.3 clients may finish theirs first and learn
    // of it on their first write).
    for (identity, n) in [(None, 2), (Some(other_ca.as_path()), 3)] {
        let tcp = TcpStream::connect(syslog).await.unwrap();
        if let Ok(mut s) = connector(&pki_dir, identity)
            .connect(tls::server_name(), tcp)
            .await
        {
            send_and_wait_close(&mut s, &frame("<14>1 - h shop web.1 stdout - forged tls")).await;
        }
        wait_refused(&service, n).await;
    }

    // A flood of forged connections: each is refused (counted; the log lines about them
    // are limited), and the service goes on taking the platform's lines below.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(tokio::spawn(async move {
            if let Ok(mut s) = TcpStream::connect(syslog).await {
                send_and_wait_close(&mut s, &frame("<14>1 - h shop web.1 stdout - forged flood"))
                    .await;
            }
        }));
    }
    for f in flood {
        f.await.unwrap();
    }
    wait_refused(&service, 203).await;

    // The shipper with the platform's identity gets its lines in.
    let mut config = ShipperConfig::new(dir.path().join("spool"), syslog.to_string());
    config.tls = Some(tls::client_config(&pki_dir).unwrap());
    let shipper = Shipper::start(config).unwrap();
    let mut lines: Vec<LogLine> = (0..100).map(|i| line("shop", i)).collect();
    shipper.ship(&mut lines).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = get(&service, "/apps/shop/log?lines=1000", Some(SECRET)).await;
        assert_eq!(status, 200);
        if body.lines().count() >= 100 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let messages: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<String> = (0..100).map(|i| format!("shipped {i}")).collect();
    assert_eq!(messages, want, "every shipped line, no forged one");
    assert!(
        shipper.status().last_error.is_none(),
        "{:?}",
        shipper.status()
    );
    shipper.shutdown().await;

    // A shipper without the identity is refused, and does not get a line in.
    let mut config = ShipperConfig::new(dir.path().join("spool-plain"), syslog.to_string());
    config.tls = None;
    let plain_shipper = Shipper::start(config).unwrap();
    plain_shipper.ship(&mut [line("shop", 1000)]).unwrap();
    wait_refused(&service, 204).await;
    plain_shipper.shutdown().await;
    let (_, body) = get(&service, "/apps/shop/log?lines=1000", Some(SECRET)).await;
    assert_eq!(body.lines().count(), 100, "{body}");
    service.shutdown().await;
}

/// rsyslog, as an operator would point it at the aggregator: `omfwd` with the gtls
/// stream driver (Debian `rsyslog-gnutls`), the cluster's client certificate, and the
/// aggregator's name checked (`x509/name`, `paas-logs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_sends_over_tls_with_the_cluster_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let service = start(&dir.path().join("agg"), &pki_dir).await;
    let input = dir.path().join("app.log");
    let lines: Vec<String> = (0..500).map(|i| format!("rsyslog tls line {i}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}"
       DefaultNetstreamDriverCAFile="{pki}/{ca}"
       DefaultNetstreamDriverCertFile="{pki}/{cert}"
       DefaultNetstreamDriverKeyFile="{pki}/{key}")
module(load="imfile")
input(type="imfile" File="{input}" Tag="tlsapp")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="{name}")
"#,
            work = dir.path().display(),
            pki = pki_dir.display(),
            ca = tls::CA_FILE,
            cert = tls::CLIENT_CERT_FILE,
            key = tls::CLIENT_KEY_FILE,
            input = input.display(),
            port = service.syslog_addr().unwrap().port(),
            name = tls::SERVER_NAME,
        ),
    )
    .unwrap();
    let _rsyslogd = tokio::process::Command::new("rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslogd.pid"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("rsyslogd must be installed (apt-get install rsyslog rsyslog-gnutls)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let got: Vec<String> = loop {
        let (_, body) = get(&service, "/apps/tlsapp/log?lines=1000", Some(SECRET)).await;
        let got: Vec<String> = body
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        if got.len() >= lines.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, lines);
    service.shutdown().await;
}
