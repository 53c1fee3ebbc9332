//! Host-side guards of a group that spans processes: waits with a bound, and the check that
//! every rank runs the same configuration.
//!
//! A rank of a tensor-parallel group whose peer dies mid-step would otherwise wait forever: its
//! all-reduce kernel spins on data that never comes, and a blocking synchronisation never
//! returns. [`wait_bounded`] polls instead (the device work's completion and the communicator's
//! asynchronous error) and gives up after a stated bound, so the caller can abort the
//! communicator and return a typed error. [`fingerprint_rows`] and [`disagreeing_ranks`] turn
//! "do all ranks run the same configuration?" into one all-reduce: each rank writes a hash of its
//! configuration into its own row of a zeroed `[world, 4]` tensor, the sum gives every rank every
//! rank's hash. Both are plain host code, tested without a GPU; `cuda::nccl::NcclRank` uses them.

use std::time::{Duration, Instant};

use crate::RuntimeError;

/// Why a bounded wait gave up.
#[derive(Debug)]
pub enum Stall {
    /// The bound passed before the work finished.
    TimedOut(Duration),
    /// The communicator reported an asynchronous error (e.g. a peer left).
    Failed(String),
    /// Asking whether the work finished failed.
    Poll(RuntimeError),
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::TimedOut(d) => write!(
                f,
                "not finished within {:.1} s (a rank left or stopped answering)",
                d.as_secs_f64()
            ),
            Stall::Failed(why) => write!(f, "the communicator reported: {why}"),
            Stall::Poll(e) => write!(f, "polling the device failed: {e}"),
        }
    }
}

/// Polls `done` until it returns `true`, `failed` returns an error message, or `timeout` has
/// passed, sleeping between polls from 20 µs up to 1 ms (a wait that ends in microseconds stays
/// short, a long one costs little host time). `done` is asked once more after the bound, so
/// work that finished just then is not reported as a stall.
pub fn wait_bounded(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, RuntimeError>,
    mut failed: impl FnMut() -> Option<String>,
) -> Result<(), Stall> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(20);
    loop {
        if done().map_err(Stall::Poll)? {
            return Ok(());
        }
        if let Some(why) = failed() {
            return Err(Stall::Failed(why));
        }
        if start.elapsed() >= timeout {
            return if done().map_err(Stall::Poll)? {
                Ok(())
            } else {
                Err(Stall::TimedOut(timeout))
            };
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// A 64-bit FNV-1a hash of a rank's configuration text.
pub fn fingerprint(config: &[u8]) -> u64 {
    config.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Rank `rank`'s contribution to the configuration check: a `[world, 4]` row-major tensor of
/// zeros but for row `rank`, which holds `hash` as four 16-bit pieces (exact in f32, and a sum
/// with the other ranks' zeros leaves them exact).
pub fn fingerprint_rows(hash: u64, rank: usize, world: usize) -> Vec<f32> {
    let mut rows = vec![0.0f32; world * 4];
    for (i, v) in rows[rank * 4..rank * 4 + 4].iter_mut().enumerate() {
        *v = ((hash >> (16 * i)) & 0xffff) as f32;
    }
    rows
}

/// The ranks whose row of the summed `[world, 4]` tensor differs from `rank`'s own: those that
/// run another configuration (empty when every rank agrees). A row that is not four exact
/// 16-bit pieces (a rank that wrote into another's row, or garbage) counts as disagreeing.
pub fn disagreeing_ranks(summed: &[f32], rank: usize, world: usize) -> Vec<usize> {
    let row = |r: usize| -> Option<u64> {
        let piece = summed.get(r * 4..r * 4 + 4)?;
        piece.iter().enumerate().try_fold(0u64, |h, (i, &v)| {
            (v.fract() == 0.0 && (0.0..65536.0).contains(&v)).then(|| h | ((v as u64) << (16 * i)))
        })
    };
    let mine = row(rank);
    (0..world)
        .filter(|&r| r != rank && (row(r).is_none() || row(r) != mine))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_wait_ends_when_the_work_is_done() {
        let polls = Cell::new(0);
        let r = wait_bounded(
            Duration::from_secs(5),
            || {
                polls.set(polls.get() + 1);
                Ok(polls.get() >= 3)
            },
            || None,
        );
        assert!(r.is_ok());
        assert_eq!(polls.get(), 3);
    }

    #[test]
    fn a_wait_gives_up_after_its_bound_and_reports_errors() {
        let t = Instant::now();
        let r = wait_bounded(Duration::from_millis(30), || Ok(false), || None);
        assert!(matches!(r, Err(Stall::TimedOut(_))), "{r:?}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(2),
            "{took:?}"
        );
        let r = wait_bounded(
            Duration::from_secs(5),
            || Ok(false),
            || Some("remote process exited".into()),
        );
        assert!(
            matches!(&r, Err(Stall::Failed(m)) if m.contains("exited")),
            "{r:?}"
        );
        let r = wait_bounded(
            Duration::from_secs(5),
            || Err(RuntimeError::Device("lost".into())),
            || None,
        );
        assert!(matches!(r, Err(Stall::Poll(_))), "{r:?}");
        assert!(Stall::TimedOut(Duration::from_secs(3))
            .to_string()
            .contains("3.0 s"));
    }

    #[test]
    fn work_done_at_the_bound_is_not_a_stall() {
        let polls = Cell::new(0);
        let r = wait_bounded(
            Duration::ZERO,
            || {
                polls.set(polls.get() + 1);
                Ok(polls.get() > 1)
            },
            || None,
        );
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn summed_fingerprints_find_the_ranks_that_disagree() {
        let world = 4;
        let hashes = [
            fingerprint(b"batch 2, heads 8"),
            fingerprint(b"batch 2, heads 8"),
            fingerprint(b"batch 3, heads 8"),
            fingerprint(b"batch 2, heads 8"),
        ];
        assert_ne!(hashes[0], hashes[2]);
        let mut sum = vec![0.0f32; world * 4];
        for (r, &h) in hashes.iter().enumerate() {
            for (s, v) in sum.iter_mut().zip(fingerprint_rows(h, r, world)) {
                *s += v;
            }
        }
        assert_eq!(disagreeing_ranks(&sum, 0, world), vec![2]);
        assert_eq!(disagreeing_ranks(&sum, 2, world), vec![0, 1, 3]);
        // Every rank agreeing: nobody is named.
        let same: Vec<f32> = (0..world)
            .flat_map(|r| fingerprint_rows(hashes[0], r, world)[r * 4..r * 4 + 4].to_vec())
            .collect();
        assert!(disagreeing_ranks(&same, 1, world).is_empty());
        // A row that is not four exact 16-bit pieces disagrees; a short tensor names the ranks
        // it lacks.
        let mut bad = same.clone();
        bad[5] = 0.5;
        assert_eq!(disagreeing_ranks(&bad, 0, world), vec![1]);
        assert_eq!(disagreeing_ranks(&same[..8], 0, world), vec![2, 3]);
    }
}
