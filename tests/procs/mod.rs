//! Child processes of the multi-process tests (one rank per process): waiting for them without
//! ever hanging the suite.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for every child to exit, within `bound` from now; past it every child is killed and
/// the test fails naming `what`. The exit statuses in order.
pub fn wait_all(children: &mut [Child], bound: Duration, what: &str) -> Vec<ExitStatus> {
    let deadline = Instant::now() + bound;
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    while done.iter().any(Option::is_none) {
        for (c, d) in children.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                *d = c.try_wait().unwrap();
            }
        }
        if done.iter().any(Option::is_none) && Instant::now() > deadline {
            children.iter_mut().for_each(|c| {
                let _ = c.kill();
            });
            panic!("{what} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.into_iter().flatten().collect()
}
