//! How the CLI times a kernel call: by the device's own events where the executor is CUDA (as
//! `tpla bench` times), by the host clock elsewhere (a CPU executor's launches finish before they
//! return, so the host clock is their time).

use tpla_runtime::{Executor, RuntimeError};

use super::error::CliError;

/// The device time of `f` in seconds where `exec` is a CUDA executor: `f` between two events on
/// its stream, queued behind a 256 MB memset so that the start event runs after the host has
/// queued the launches ([`tpla_runtime::cuda::bench::measure`]). `None` on other executors.
pub fn device_seconds<X: Executor + 'static>(
    exec: &X,
    f: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<Option<f64>, CliError> {
    Ok(device_median_us(exec, 1, f)?.map(|us| us * 1e-6))
}

/// The median device time of `reps` runs of `f` in µs, as [`device_seconds`] times each (the
/// cache flushed before every run); `None` on executors other than CUDA.
fn device_median_us<X: Executor + 'static>(
    exec: &X,
    reps: usize,
    f: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<Option<f64>, CliError> {
    use std::any::Any;
    match (exec as &dyn Any).downcast_ref::<tpla_runtime::cuda::CudaExecutor>() {
        Some(cuda) => {
            let m = tpla_runtime::cuda::bench::measure(cuda, 0, reps.max(1), f)?;
            Ok(Some(m.median_ms * 1e3))
        }
        None => Ok(None),
    }
}

/// The median time of `reps` runs of `f` in µs after one untimed run: the device's own time on
/// CUDA ([`device_seconds`]), elsewhere the host clock around each run and a synchronisation.
/// What `tpla tune` ranks candidates by: on a GPU the host clock would add a launch and a wait to
/// every call, which weighs more on the shorter kernels and made the tune's figures differ from
/// `tpla bench`'s.
pub fn median_us<X: Executor + 'static>(
    exec: &X,
    reps: usize,
    mut f: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<f64, CliError> {
    f()?;
    exec.synchronize()?;
    if let Some(us) = device_median_us(exec, reps, &mut f)? {
        return Ok(us);
    }
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        f()?;
        exec.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|x, y| x.total_cmp(y));
    Ok(times[times.len() / 2])
}
