//! Backend selection: run a job on the best (or the requested) executor.

use tpla_runtime::{CpuExecutor, Executor, RuntimeError};

use super::error::CliError;
use super::BackendArg;

/// A job that runs on any executor.
pub trait ExecJob {
    /// What it returns.
    type Out;
    /// Runs on `exec`.
    fn run<X: Executor>(self, exec: &X) -> Result<Self::Out, CliError>;
}

/// Why the CUDA backend cannot be used here, or its description.
pub fn probe_cuda() -> Result<String, String> {
    Err("this build has no CUDA executor yet".into())
}

/// Runs `job` on the executor `choice` selects; `auto` falls back to the CPU with a message on
/// stderr when no GPU is usable. `threads` sizes the CPU pool (0 = all cores).
pub fn dispatch<J: ExecJob>(
    choice: BackendArg,
    threads: usize,
    job: J,
) -> Result<J::Out, CliError> {
    match choice {
        BackendArg::Cuda => {
            let why = probe_cuda().err().unwrap_or_default();
            Err(RuntimeError::BackendUnavailable {
                backend: "cuda".into(),
                reason: why,
            }
            .into())
        }
        BackendArg::Auto | BackendArg::Cpu => {
            if choice == BackendArg::Auto {
                if let Err(why) = probe_cuda() {
                    eprintln!("tpla: no GPU backend ({why}); using the CPU JIT");
                }
            }
            let exec = CpuExecutor::new(threads)?;
            job.run(&exec)
        }
    }
}
