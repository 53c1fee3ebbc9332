//! `--compile-only` of `tpla tune` and `tpla bench --backend cuda`: kernels compiled for sm_90a
//! by NVRTC into the kernel cache (`$TPLA_KERNEL_CACHE_DIR`), without a device, so a later run on
//! a Hopper GPU with the same NVRTC major.minor loads them instead of compiling
//! (`scripts/gpu-kernel-cache.sh`).

use std::collections::HashSet;
use std::time::Instant;

use rayon::prelude::*;
use tpla_codegen::cuda::Target;
use tpla_codegen::ir::Kernel;
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::{compile_kernel, nvrtc, CacheSource, KernelCache};
use tpla_runtime::RuntimeError;

/// Compiles kernels into the kernel cache, each (kernel, config) once, and counts the outcomes.
/// [`Precompiler::compile`] builds a kernel's IR and queues it; [`Precompiler::finish`] runs
/// NVRTC on every queued kernel at once, one per core (a Hopper host's 16 cores compile the
/// bench matrix in a sixteenth of one core's time).
pub(crate) struct Precompiler {
    command: &'static str,
    cache: KernelCache,
    dir: String,
    seen: HashSet<(String, String)>,
    /// Kernel name, config, and its IR or why it did not build, in the order queued.
    queued: Vec<(String, Config, Result<Kernel, String>)>,
    start: Instant,
}

impl Precompiler {
    /// For `command` (`tune`, `bench`): a typed error, before any work, when the kernel cache is
    /// off or NVRTC does not load.
    pub(crate) fn new(command: &'static str) -> Result<Self, RuntimeError> {
        let cache = KernelCache::with_default_dir();
        let Some(dir) = cache.dir().map(|d| d.display().to_string()) else {
            return Err(RuntimeError::InvalidInput(
                "--compile-only needs a kernel cache directory (TPLA_KERNEL_CACHE_DIR is off)"
                    .into(),
            ));
        };
        // No NVRTC is one clear error, not a "not compiled" line per kernel.
        nvrtc::nvrtc().map_err(|e| RuntimeError::BackendUnavailable {
            backend: "nvrtc".into(),
            reason: format!("--compile-only needs NVRTC: {e}"),
        })?;
        Ok(Precompiler {
            command,
            cache,
            dir,
            seen: HashSet::new(),
            queued: Vec::new(),
            start: Instant::now(),
        })
    }

    /// The target compiled for: Hopper, sm_90a.
    pub(crate) fn target(&self) -> Target {
        Target::sm90()
    }

    /// Builds `def` at `cfg` and queues it for [`Precompiler::finish`] unless queued already; a
    /// config that cannot build (e.g. past the shared memory) is reported there and counted.
    pub(crate) fn compile(&mut self, def: &dyn KernelDef, cfg: &Config) {
        if !self.seen.insert((def.name().to_string(), cfg.to_string())) {
            return;
        }
        let ir = def.build(cfg).map_err(|e| e.to_string());
        self.queued.push((def.name().to_string(), cfg.clone(), ir));
    }

    /// Compiles every queued kernel (in parallel, rayon's pool) and prints what failed, the
    /// counts, the time and the cache directory.
    pub(crate) fn finish(self) {
        let target = self.target();
        let outcomes: Vec<Result<bool, String>> = self
            .queued
            .par_iter()
            .map(|(_, _, ir)| {
                let ir = ir.as_ref().map_err(Clone::clone)?;
                compile_kernel(ir, target, &self.cache)
                    .map(|k| k.lookup.source == CacheSource::Compiled)
                    .map_err(|e| e.to_string())
            })
            .collect();
        let (mut compiled, mut cached, mut failed) = (0, 0, 0);
        for ((name, cfg, _), outcome) in self.queued.iter().zip(outcomes) {
            match outcome {
                Ok(true) => compiled += 1,
                Ok(false) => cached += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("tpla {}: {name} [{cfg}]: not compiled: {e}", self.command);
                }
            }
        }
        println!(
            "tpla {} --compile-only: sm_90a, {compiled} compiled, {cached} already cached, \
             {failed} not buildable, in {:.0} s on {} threads, into {}",
            self.command,
            self.start.elapsed().as_secs_f64(),
            rayon::current_num_threads(),
            self.dir
        );
    }
}
