//! What the health API's probes mean for a Redis member (the routes themselves are the
//! appliance core's `health`).

use paas_appliance::health::{Probed, Probes};

use crate::cluster::{MemberStatus, Role};

impl Probed for MemberStatus {
    fn probes(&self) -> Probes {
        Probes {
            primary: self.running && self.role == Role::Primary,
            replica: self.running && self.role == Role::Replica && self.link_up,
            health: self.running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_role_and_link() {
        let mut status = MemberStatus {
            name: "r0".into(),
            addr: "127.1.1.1:16379".into(),
            health_addr: "127.1.1.1:18208".into(),
            role: Role::Primary,
            running: true,
            upstream: None,
            link_up: false,
            offset: Some(1),
            lag_bytes: None,
            generation: Some(1),
            decision: String::new(),
            has_data: true,
        };
        let p = status.probes();
        assert_eq!((p.primary, p.replica, p.health), (true, false, true));
        status.role = Role::Replica;
        status.upstream = Some("r1".into());
        let p = status.probes();
        assert_eq!((p.primary, p.replica, p.health), (false, false, true));
        status.link_up = true;
        assert!(status.probes().replica);
        status.running = false;
        let p = status.probes();
        assert_eq!((p.primary, p.replica, p.health), (false, false, false));
    }
}
