//! What the health API's probes mean for a PostgreSQL member (the routes themselves are
//! the appliance core's `health`).

use paas_appliance::health::{Probed, Probes};

use crate::cluster::{MemberStatus, Role};

impl Probed for MemberStatus {
    fn probes(&self) -> Probes {
        probes(self)
    }
}

/// Judges the probes from a status: `/primary` on the leading primary, `/replica` on a
/// streaming standby, `/health` while PostgreSQL answers.
pub fn probes(status: &MemberStatus) -> Probes {
    let streaming = status.streaming;
    Probes {
        primary: status.running && status.role == Role::Primary,
        replica: status.running && matches!(status.role, Role::Sync | Role::Async) && streaming,
        health: status.running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, running: bool, streaming: bool) -> MemberStatus {
        MemberStatus {
            name: "pg0".into(),
            pg_addr: "127.0.0.1:1".into(),
            health_addr: "127.0.0.1:2".into(),
            role,
            running,
            streaming,
            wal_lsn: None,
            lag_bytes: None,
            generation: Some(1),
            decision: String::new(),
            has_data: true,
            archiving: None,
        }
    }

    #[test]
    fn probes_follow_role_and_streaming() {
        let check = |role, running, streaming, expected: (bool, bool, bool)| {
            let p = probes(&status(role, running, streaming));
            assert_eq!(
                (p.primary, p.replica, p.health),
                expected,
                "{role:?} running={running} streaming={streaming}"
            );
        };
        check(Role::Primary, true, false, (true, false, true));
        check(Role::Sync, true, true, (false, true, true));
        check(Role::Async, true, false, (false, false, true));
        check(Role::Stopped, false, false, (false, false, false));
        check(Role::Primary, false, false, (false, false, false));
    }
}
