//! Progress of long work (`convert`, `accuracy`), reported to whoever drives it: the CLI draws a
//! bar (hidden when stderr is not a terminal), a library caller passes `&()` for none.

/// Receives progress. Called from worker threads, hence `Sync`.
pub trait Progress: Sync {
    /// A new phase of `len` units described by `what`.
    fn start(&self, what: &str, len: u64);
    /// `n` more units of the current phase are done.
    fn inc(&self, n: u64);
    /// The current phase is over.
    fn finish(&self) {}
}

/// No progress reporting.
impl Progress for () {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
}
