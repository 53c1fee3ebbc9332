//! Bounds on the sizes a user gives the CLI, checked before anything is allocated.
//!
//! Every size on the command line (batch, context, splits, page size, groups, heads, steps,
//! threads, ranks) has a fixed upper limit that keeps the size arithmetic far from overflow, and
//! the memory a run needs is estimated against what the host has (`MemAvailable` in
//! `/proc/meminfo`; `TPLA_HOST_MEMORY` in bytes overrides it, e.g. to test the check). Both
//! errors name the flag and the limit.

use super::error::CliError;

/// Sequences per batch.
pub const MAX_BATCH: usize = 1 << 20;
/// Tokens per sequence (cache lengths are `i32` on the device).
pub const MAX_CONTEXT: usize = 1 << 30;
/// Decode steps.
pub const MAX_STEPS: usize = 1 << 20;
/// Tokens per cache page.
pub const MAX_PAGE_SIZE: usize = 1 << 16;
/// KV splits per sequence.
pub const MAX_SPLITS: usize = 1024;
/// Query heads.
pub const MAX_HEADS: usize = 4096;
/// Latent width.
pub const MAX_LAT: usize = 1 << 14;
/// CPU threads.
pub const MAX_THREADS: usize = 4096;
/// Timed repetitions.
pub const MAX_REPS: usize = 1 << 16;

/// `value` of `flag` lies in `min..=max`, or an error naming the flag and the bound.
pub fn check(flag: &str, value: usize, min: usize, max: usize) -> Result<(), CliError> {
    if value < min {
        return Err(CliError::Usage(format!(
            "{flag} {value} is below the minimum of {min}"
        )));
    }
    if value > max {
        return Err(CliError::Limit {
            flag: flag.to_string(),
            value: value as u128,
            limit: max as u128,
        });
    }
    Ok(())
}

/// [`check`] for each `(flag, value, min, max)` in turn.
pub fn check_sizes(sizes: &[(&str, usize, usize, usize)]) -> Result<(), CliError> {
    sizes
        .iter()
        .try_for_each(|&(flag, v, min, max)| check(flag, v, min, max))
}

/// `value` of `flag` is at most `max` (no lower bound checked here).
pub fn at_most(flag: &str, value: usize, max: usize) -> Result<(), CliError> {
    check(flag, value, 0, max)
}

/// A running total of the bytes a command will hold at its peak, term by term.
#[derive(Debug, Default)]
pub struct MemoryPlan {
    bytes: u128,
}

impl MemoryPlan {
    /// Adds `count` elements of `elem` bytes each (product of `dims`), saturating.
    pub fn add(&mut self, dims: &[usize], elem: usize) -> &mut Self {
        let n = dims
            .iter()
            .fold(elem as u128, |acc, &d| acc.saturating_mul(d as u128));
        self.bytes = self.bytes.saturating_add(n);
        self
    }

    /// Adds `bytes`, saturating.
    pub fn add_bytes(&mut self, bytes: u128) -> &mut Self {
        self.bytes = self.bytes.saturating_add(bytes);
        self
    }

    /// Fails when the total exceeds the host's available memory, naming the flags that size
    /// the run (`flags`, e.g. `"--batch 4 and --context 100000"`).
    pub fn check_host(&self, flags: &str) -> Result<(), CliError> {
        let Some((avail, source)) = host_available() else {
            return Ok(());
        };
        if self.bytes > avail as u128 {
            return Err(CliError::Memory {
                flags: flags.to_string(),
                need: self.bytes,
                available: avail as u128,
                origin: source,
            });
        }
        Ok(())
    }
}

/// Bytes of memory this host can give a new allocation, and where the number comes from.
pub fn host_available() -> Option<(u64, &'static str)> {
    if let Ok(v) = std::env::var("TPLA_HOST_MEMORY") {
        if let Ok(n) = v.trim().parse::<u64>() {
            return Some((n, "TPLA_HOST_MEMORY"));
        }
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available(&info).map(|n| (n, "MemAvailable in /proc/meminfo"))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(info: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut it = line.split_whitespace().skip(1);
    let n: u64 = it.next()?.parse().ok()?;
    let unit = match it.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    n.checked_mul(unit)
}

/// Bytes as a short human number (GiB / MiB).
pub fn human(bytes: u128) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_available() {
        let info = "MemTotal: 100 kB\nMemFree: 5 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(info), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn bounds_name_the_flag() {
        let e = check("--splits", 5000, 1, MAX_SPLITS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--splits") && e.contains("1024"), "{e}");
        let e = check("--batch", 0, 1, MAX_BATCH).unwrap_err().to_string();
        assert!(e.contains("--batch") && e.contains("minimum of 1"), "{e}");
        assert!(check("--batch", 4, 1, MAX_BATCH).is_ok());
    }

    #[test]
    fn memory_plan_saturates() {
        let mut p = MemoryPlan::default();
        p.add(&[usize::MAX, usize::MAX, usize::MAX], 8);
        p.add(&[usize::MAX], 8);
        assert_eq!(p.bytes, u128::MAX);
    }
}
