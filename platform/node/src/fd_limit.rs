//! The daemons' open-file limit, raised from its soft to its hard value at start.
//!
//! Every client connection of the router, every log client of the aggregator and every
//! watch of the controller holds a descriptor. Systemd starts services with a soft
//! limit of 1024 (hard 524288): at that limit, a thousand idle connections from one
//! client (a slowloris) made `accept` fail with `EMFILE` for every other client until
//! the idle ones timed out, 22 s of refused service in a measurement under
//! `ulimit -Sn 1024`. The soft limit exists for programs that still use `select`; these
//! daemons use epoll, so they take the hard limit, as Go's runtime does for every Go
//! server (Flynn's among them).

/// Never ask for more than this: the kernel refuses a limit above `fs.nr_open`, whose
/// default is this value, and a hard limit of `RLIM_INFINITY` would otherwise be asked.
const CEILING: u64 = 1 << 20;

/// The soft limit to set, given the current `soft` and `hard` ones: the hard one (at
/// most [`CEILING`]), or `None` when the soft one is already there or above. Pure.
pub fn target(soft: u64, hard: u64) -> Option<u64> {
    let want = hard.min(CEILING);
    (want > soft).then_some(want)
}

/// Raises the soft open-file limit of this process (and of the children it starts
/// after) to [`target`]; logs what it did, or why it could not (then the daemon runs
/// on as it is).
pub fn raise() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open-file limit");
        return;
    }
    let Some(want) = target(limit.rlim_cur, limit.rlim_max) else {
        return;
    };
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit from the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(soft = limit.rlim_cur, wanted = want, error = %e,
            "cannot raise the open-file limit; connections beyond it will be refused");
        return;
    }
    tracing::info!(
        from = limit.rlim_cur,
        to = want,
        "raised the open-file limit to its hard value"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_never_down() {
        assert_eq!(target(1024, 524_288), Some(524_288));
        assert_eq!(target(524_288, 524_288), None);
        assert_eq!(target(4096, 2048), None);
    }

    #[test]
    fn an_unlimited_hard_limit_asks_for_what_the_kernel_allows() {
        assert_eq!(target(1024, libc::RLIM_INFINITY), Some(CEILING));
        assert_eq!(target(CEILING, libc::RLIM_INFINITY), None);
    }

    #[test]
    fn raise_sets_the_soft_limit_of_this_process() {
        let read = || {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as in `raise`.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
            l
        };
        let before = read();
        // Set the soft limit one below the target first, so that there is something to
        // do (and never low enough to starve the tests running beside this one).
        let lowered = libc::rlimit {
            rlim_cur: before.rlim_max.min(CEILING) - 1,
            rlim_max: before.rlim_max,
        };
        // SAFETY: as in `raise`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        raise();
        let after = read();
        assert_eq!(after.rlim_max, before.rlim_max);
        assert_eq!(after.rlim_cur, before.rlim_max.min(CEILING));
    }
}
