//! Resource limits of a process type's jobs: what `paas scale -a shop web=3 --memory 512M
//! --cpu 0.5` records in the formation, the scheduler copies into each placement and the
//! host agent enforces with cgroups. Pure: parsing and display only.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The smallest memory limit accepted: below it not even a shell starts reliably.
pub const MIN_MEMORY: u64 = 16 << 20;

/// The largest CPU limit accepted, in thousandths of a CPU (64 CPUs).
pub const MAX_CPU_MILLIS: u32 = 64_000;

/// Limits of one job; a field that is `None` is not limited. Equal limits mean equal
/// jobs: a job placed under other limits than its formation's is replaced, like a job
/// of an older release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Memory (resident plus swap) in bytes; over it the kernel kills the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU time in thousandths of a CPU per wall-clock second (500 = half a CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
}

impl Limits {
    /// True when nothing is limited (the job needs no cgroup).
    pub fn is_unlimited(&self) -> bool {
        self.memory.is_none() && self.cpu_millis.is_none()
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = self.memory {
            parts.push(format!("memory {}", format_memory(m)));
        }
        if let Some(c) = self.cpu_millis {
            parts.push(format!("cpu {}", format_cpu(c)));
        }
        if parts.is_empty() {
            f.write_str("unlimited")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Why a limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Not a size: a number with an optional unit K, M, G (powers of 1024; `KiB`,
    /// `MB`... are read the same).
    #[error("memory {0:?}: expected a size such as 512M or 1G")]
    MemoryFormat(String),
    /// Below [`MIN_MEMORY`].
    #[error("memory {0:?}: at least 16M")]
    MemoryTooSmall(String),
    /// Not a CPU amount: a number of CPUs (`0.5`, `2`) or thousandths (`500m`).
    #[error("cpu {0:?}: expected a number of CPUs such as 0.5 or 2, or thousandths such as 500m")]
    CpuFormat(String),
    /// Outside 0.01 ..= 64 CPUs.
    #[error("cpu {0:?}: between 0.01 and 64")]
    CpuRange(String),
}

/// Parses a memory size: `512M`, `1G`, `1.5G`, `65536K`, `256MiB`, or bytes.
pub fn parse_memory(s: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::MemoryFormat(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    let bytes = bytes as u64;
    if bytes < MIN_MEMORY {
        return Err(LimitError::MemoryTooSmall(s.to_string()));
    }
    Ok(bytes)
}

/// Parses a CPU amount into thousandths of a CPU: `0.5` -> 500, `2` -> 2000, `250m` -> 250.
pub fn parse_cpu(s: &str) -> Result<u32, LimitError> {
    let t = s.trim();
    let millis = match t.strip_suffix('m') {
        Some(m) => m
            .parse::<u32>()
            .map_err(|_| LimitError::CpuFormat(s.to_string()))? as f64,
        None => {
            let cpus: f64 = t
                .parse()
                .map_err(|_| LimitError::CpuFormat(s.to_string()))?;
            if !cpus.is_finite() {
                return Err(LimitError::CpuFormat(s.to_string()));
            }
            (cpus * 1000.0).round()
        }
    };
    if !(10.0..=MAX_CPU_MILLIS as f64).contains(&millis) {
        return Err(LimitError::CpuRange(s.to_string()));
    }
    Ok(millis as u32)
}

/// `536870912` -> `512 MiB`, `1610612736` -> `1.5 GiB`.
pub fn format_memory(bytes: u64) -> String {
    const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        let size = 1u64 << shift;
        if bytes >= size {
            let whole = bytes / size;
            let tenths = (bytes % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// `500` -> `0.5`, `2000` -> `2`, `1250` -> `1.25`.
pub fn format_cpu(millis: u32) -> String {
    let s = format!("{}.{:03}", millis / 1000, millis % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5G"), Ok(3 << 29));
        assert_eq!(parse_memory("65536K"), Ok(64 << 20));
        assert_eq!(parse_memory("33554432"), Ok(32 << 20));
        assert!(matches!(
            parse_memory("1M"),
            Err(LimitError::MemoryTooSmall(_))
        ));
        for bad in ["", "M", "12Q", "-5M", "1e400G", "five"] {
            assert!(
                matches!(parse_memory(bad), Err(LimitError::MemoryFormat(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert_eq!(parse_cpu("0.01"), Ok(10));
        assert!(matches!(parse_cpu("0.001"), Err(LimitError::CpuRange(_))));
        assert!(matches!(parse_cpu("65"), Err(LimitError::CpuRange(_))));
        assert!(matches!(parse_cpu("NaN"), Err(LimitError::CpuFormat(_))));
        assert!(matches!(parse_cpu("half"), Err(LimitError::CpuFormat(_))));
    }

    #[test]
    fn display() {
        assert_eq!(format_memory(512 << 20), "512 MiB");
        assert_eq!(format_memory(3 << 29), "1.5 GiB");
        assert_eq!(format_cpu(500), "0.5");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_cpu(1250), "1.25");
        let l = Limits {
            memory: Some(256 << 20),
            cpu_millis: Some(500),
        };
        assert_eq!(l.to_string(), "memory 256 MiB, cpu 0.5");
        assert_eq!(Limits::default().to_string(), "unlimited");
    }

    #[test]
    fn serde_skips_unset_fields() {
        assert_eq!(serde_json::to_string(&Limits::default()).unwrap(), "{}");
        let l: Limits = serde_json::from_str(r#"{"memory":1048576}"#).unwrap();
        assert_eq!(l.memory, Some(1 << 20));
    }
}
