//! A tokio runtime standing in for a separate process that can be killed like `kill -9`.

/// A runtime of its own standing in for a separate process: [`Crashable::crash`] makes
/// every task in it vanish at once, and nothing it would do on the way out (such as
/// revoking a dropped lease) gets to run: as with `kill -9`, leases have to expire.
/// Dropping it crashes it too.
pub struct Crashable(Option<tokio::runtime::Runtime>);

impl Crashable {
    /// A fresh one-worker runtime.
    pub fn new() -> Crashable {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        Crashable(Some(runtime))
    }

    /// Runs `future` in this runtime.
    pub fn spawn<F>(&self, future: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("not crashed").spawn(future);
    }

    /// Stops every task at once, without letting them clean up.
    pub fn crash(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Default for Crashable {
    fn default() -> Self {
        Crashable::new()
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        self.crash();
    }
}
