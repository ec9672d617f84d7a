//! Starting a server process tied to its parent.

use std::process::Command;

/// Ties `cmd`'s child to this process: it leads its own process group (so one signal
/// reaches everything it forks), the kernel sends it `on_parent_death` when this process
/// dies however it dies (SIGKILL included), and with `user` it runs as that (uid, gid)
/// (switched first: a uid change clears the parent-death signal). If this process died
/// before the signal was armed, the child exits instead of running unsupervised.
pub fn tie(cmd: &mut Command, on_parent_death: i32, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls
    // (setgroups, setgid, setuid, prctl, getppid) and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, on_parent_death as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then no signal would ever come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tied_child_leads_its_own_process_group() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ps -o pgid= -p $$"]);
        tie(&mut cmd, libc::SIGKILL, None);
        let out = cmd.output().unwrap();
        let pgid: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(pgid, std::process::id());
    }
}
