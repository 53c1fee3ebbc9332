//! Backend selection: run a job on the best (or the requested) executor.

use tpla_runtime::cuda::device::CudaExecutor;
use tpla_runtime::{CpuExecutor, Executor, RuntimeError};

use super::error::CliError;
use super::BackendArg;

/// A job that runs on any executor.
pub trait ExecJob {
    /// What it returns.
    type Out;
    /// Runs on `exec`.
    fn run<X: Executor + 'static>(self, exec: &X) -> Result<Self::Out, CliError>;
}

/// A usable CUDA executor on device 0 (driver, device and libnvrtc all load), or why not.
pub fn open_cuda() -> Result<CudaExecutor, RuntimeError> {
    let exec = CudaExecutor::new(0)?;
    tpla_runtime::cuda::nvrtc::nvrtc().map_err(|e| RuntimeError::BackendUnavailable {
        backend: "cuda".into(),
        reason: e.to_string(),
    })?;
    Ok(exec)
}

/// A one-line description of the CUDA backend, or why it cannot be used here.
pub fn probe_cuda() -> Result<String, String> {
    match open_cuda() {
        Ok(e) => {
            let i = e.info();
            Ok(format!(
                "{} (sm_{}{}, {} SMs, {:.0} GiB, driver {}), NVRTC JIT",
                i.name,
                i.compute_capability.0,
                i.compute_capability.1,
                i.sm_count,
                i.total_memory as f64 / (1u64 << 30) as f64,
                i.driver_version
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `job` on the executor `choice` selects; `auto` falls back to the CPU with a message on
/// stderr when no GPU is usable. `threads` sizes the CPU pool (0 = all cores).
pub fn dispatch<J: ExecJob>(
    choice: BackendArg,
    threads: usize,
    job: J,
) -> Result<J::Out, CliError> {
    match choice {
        BackendArg::Cuda => job.run(&open_cuda()?),
        BackendArg::Auto => match open_cuda() {
            Ok(exec) => job.run(&exec),
            Err(why) => {
                eprintln!("tpla: no GPU backend ({why}); using the CPU JIT");
                job.run(&CpuExecutor::new(threads)?)
            }
        },
        BackendArg::Cpu => job.run(&CpuExecutor::new(threads)?),
    }
}
