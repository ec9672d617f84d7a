//! What an app-scoped token may not point a drain at.
//!
//! A drain runs inside the platform: it connects from the aggregator's host, reads files
//! the aggregator can read and signs S3 requests with the platform's credentials. So an
//! app's own token may only ship its logs to public network addresses with the system's
//! trust store: no `ca_file` (any path would be read by the aggregator, `/dev/zero`
//! without end), no S3 (the platform's credentials would sign requests to a bucket of the
//! app's choosing), and no host that is or resolves to a loopback, private, link-local
//! or otherwise internal address (the drain would reach services that trust the
//! machine's network). Admin tokens may do all of these. The check runs when the drain
//! is added; a name that resolves elsewhere later (DNS rebinding) is not re-checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use paas_logshipper::drain::config::SinkConfig;
use paas_logshipper::drain::DrainSpec;

/// Why an app-scoped token may not add this drain, judging its settings alone.
pub fn refusal(spec: &DrainSpec, sink: &SinkConfig) -> Option<String> {
    if spec.ca_file.is_some() {
        return Some("ca_file is admin-only (the aggregator would read that file)".into());
    }
    if let SinkConfig::S3(_) = sink {
        return Some(
            "S3 drains are admin-only (they are signed with the platform's credentials)".into(),
        );
    }
    None
}

/// The host and port the drain connects to.
pub fn target(sink: &SinkConfig) -> Option<(String, u16)> {
    match sink {
        SinkConfig::Elasticsearch(c) => Some((
            c.url.host_str()?.trim_matches(['[', ']']).to_string(),
            c.url.port_or_known_default()?,
        )),
        SinkConfig::Syslog(c) => Some((c.host.clone(), c.port)),
        SinkConfig::Forward(c) => Some((c.host.clone(), c.port)),
        SinkConfig::S3(_) => None,
    }
}

/// Whether `ip` is internal to the machine or its networks: loopback, unspecified,
/// private (RFC 1918, unique local), shared (RFC 6598), link-local, multicast or
/// broadcast, also as an IPv4-mapped IPv6 address.
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// Checks the drain for an app-scoped token: its settings, then every address its host
/// resolves to. `Err` carries the reason for the caller.
pub async fn check_scoped(spec: &DrainSpec, sink: &SinkConfig) -> Result<(), String> {
    if let Some(reason) = refusal(spec, sink) {
        return Err(reason);
    }
    let Some((host, port)) = target(sink) else {
        return Ok(());
    };
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    match addrs.into_iter().find(|ip| internal(*ip)) {
        Some(ip) => Err(format!(
            "{host} is an internal address ({ip}); drains to loopback, private or \
             link-local addresses are admin-only"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "127.3.4.5",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    fn spec(url: &str) -> DrainSpec {
        DrainSpec {
            id: "d-1".into(),
            app: Some("shop".into()),
            kind: url.starts_with("http").then(|| "elasticsearch".into()),
            url: url.into(),
            index: None,
            endpoint: None,
            region: None,
            ca_file: None,
            flush_ms: None,
            batch_bytes: None,
        }
    }

    async fn check(spec: DrainSpec) -> Result<(), String> {
        let config = paas_logshipper::drain::DrainConfig::from_spec(&spec).unwrap();
        check_scoped(&spec, &config.sink).await
    }

    #[tokio::test]
    async fn scoped_drains_to_internal_targets_files_or_s3_are_refused() {
        for url in [
            "http://127.0.0.1:9200",
            "http://[::1]:9200",
            "syslog+tcp://10.0.0.5:514",
            "syslog+tls://localhost:6514",
            "forward://169.254.169.254:24224",
            "s3://bucket/prefix",
        ] {
            let err = check(spec(url)).await.unwrap_err();
            assert!(err.contains("admin-only"), "{url}: {err}");
        }
        let mut with_ca = spec("syslog+tls://8.8.8.8:6514");
        with_ca.ca_file = Some("/dev/zero".into());
        assert!(check(with_ca).await.unwrap_err().contains("ca_file"));
        check(spec("syslog+tls://8.8.8.8:6514")).await.unwrap();
        check(spec("http://93.184.216.34:9200")).await.unwrap();
    }
}
