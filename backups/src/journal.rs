//! Where backups tell what they do, line by line, so operators can follow a backup like
//! a job (`paas log -a APP --type backup`): started, complete or failed, restored or
//! refused. `paas up` ships these lines to the log aggregator; without a journal they go
//! only to the process log.

/// A sink for backup events of an app.
pub trait Journal: Send + Sync {
    /// Records `message` for `app`; `job` is the backup id; `failed` marks an error line.
    fn line(&self, app: &str, job: &str, message: &str, failed: bool);
}
