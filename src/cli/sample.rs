//! Helpers the `decode` commands share: random cache rows, medians of timings, and the check of
//! an output against the f64 reference.

use rand::Rng;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::rel_error;
use tpla_runtime::HostTensor;

use super::error::CliError;

/// `[batch, n, width]` rows of U(-1, 1) values in bf16.
pub fn random_rows(
    batch: usize,
    n: usize,
    width: usize,
    rng: &mut impl Rng,
) -> Result<HostTensor<bf16>, CliError> {
    let v: Vec<bf16> = (0..batch * n * width)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
        .collect();
    HostTensor::from_vec(&[batch, n, width], v).map_err(|e| CliError::Usage(e.to_string()))
}

/// The median (upper middle) of timings; NaN for none.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Prints `what` vs the f64 reference and fails the command past bf16 tolerance (1e-2).
pub fn check_against_reference(what: &str, got: &[f64], want: &[f64]) -> Result<(), CliError> {
    let e = rel_error(got, want);
    println!(
        "{what} vs f64 reference (sequence 0): rel err {e:.2e} {}",
        if e <= 1e-2 { "(ok)" } else { "(TOO LARGE)" }
    );
    if e > 1e-2 || !e.is_finite() {
        return Err(CliError::Usage(format!(
            "{what} disagrees with the f64 reference: rel err {e:.3e}"
        )));
    }
    Ok(())
}
