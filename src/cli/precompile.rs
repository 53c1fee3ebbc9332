//! `--compile-only` of `tpla tune` and `tpla bench --backend cuda`: kernels compiled for sm_90a
//! by NVRTC into the kernel cache (`$TPLA_KERNEL_CACHE_DIR`), without a device, so a later run on
//! a Hopper GPU with the same NVRTC major.minor loads them instead of compiling
//! (`scripts/gpu-kernel-cache.sh`).

use std::collections::HashSet;
use std::time::Instant;

use tpla_codegen::cuda::Target;
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::{compile_kernel, nvrtc, CacheSource, KernelCache};
use tpla_runtime::RuntimeError;

/// Compiles kernels into the kernel cache, each (kernel, config) once, and counts the outcomes.
pub(crate) struct Precompiler {
    command: &'static str,
    cache: KernelCache,
    dir: String,
    seen: HashSet<(String, String)>,
    compiled: usize,
    cached: usize,
    failed: usize,
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
            compiled: 0,
            cached: 0,
            failed: 0,
            start: Instant::now(),
        })
    }

    /// The target compiled for: Hopper, sm_90a, under the environment's code-generation
    /// switches (`TPLA_CUDA_ASYNC_LOADS=0`, `TPLA_CUDA_LOADS_FIRST=0`, ...), as a run on the GPU
    /// under the same variables compiles it.
    pub(crate) fn target(&self) -> Target {
        tpla_runtime::cuda::with_env_switches(Target::sm90())
    }

    /// Builds and compiles `def` at `cfg` unless done already; a config that cannot build (e.g.
    /// past the shared memory) is reported on stderr and counted.
    pub(crate) fn compile(&mut self, def: &dyn KernelDef, cfg: &Config) {
        if !self.seen.insert((def.name().to_string(), cfg.to_string())) {
            return;
        }
        let target = self.target();
        let lookup = def
            .build(cfg)
            .map_err(|e| e.to_string())
            .and_then(|ir| compile_kernel(&ir, target, &self.cache).map_err(|e| e.to_string()));
        match lookup {
            Ok(k) if k.lookup.source == CacheSource::Compiled => self.compiled += 1,
            Ok(_) => self.cached += 1,
            Err(e) => {
                self.failed += 1;
                eprintln!(
                    "tpla {}: {} [{cfg}]: not compiled: {e}",
                    self.command,
                    def.name()
                );
            }
        }
    }

    /// Prints the counts, the time and the cache directory.
    pub(crate) fn report(&self) {
        println!(
            "tpla {} --compile-only: sm_90a, {} compiled, {} already cached, {} not buildable, \
             in {:.0} s, into {}",
            self.command,
            self.compiled,
            self.cached,
            self.failed,
            self.start.elapsed().as_secs_f64(),
            self.dir
        );
    }
}
