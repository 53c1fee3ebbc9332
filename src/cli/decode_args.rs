//! The options of `tpla decode` (one device and `--devices k`), their checks and the memory a
//! run needs: the one home both decode paths import.

use clap::Args;

use super::error::CliError;
use super::limits::{
    at_most, check, MemoryPlan, MAX_BATCH, MAX_CONTEXT, MAX_PAGE_SIZE, MAX_SPLITS, MAX_STEPS,
    MAX_THREADS,
};
use super::{BackendArg, PresetArg};

/// Latent width of the DeepSeek family.
pub const LAT: usize = 512;
/// RoPE width of the DeepSeek family.
pub const ROPE: usize = 64;

/// Options of `tpla decode`.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Model whose attention shape and softmax scale are used.
    #[arg(long, value_enum, default_value = "deepseek-v3")]
    pub preset: PresetArg,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens already in each sequence's cache before decoding.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// TPLA latent groups (devices the latent is split across); must divide 512.
    #[arg(long, short, default_value_t = 2)]
    pub g: usize,
    /// Decode steps (one new token per sequence each; every step is timed, the kernels are
    /// compiled by an untimed warm-up before the first).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Tokens per cache page.
    #[arg(long, default_value_t = 64)]
    pub page_size: usize,
    /// KV splits per sequence (0 = chosen from the grid size).
    #[arg(long, default_value_t = 0)]
    pub splits: usize,
    /// Executor.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seed of the random cache and queries.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tensor-parallel ranks (GPUs 0..k with NCCL, or k CPU ranks): k >= 2 runs TPLA with
    /// g = k against head-parallel MLA, one layer including `W_UV` and the all-reduce.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Whole attention layers in a parallel form (`--form`, `--tp`, `--layers`, `--max-batch`).
    #[command(flatten)]
    pub layer: super::decode_layer::LayerArgs,
}

impl DecodeArgs {
    /// Checks every size against its limit and the shapes against the model, before anything
    /// is allocated.
    pub fn validate(&self) -> Result<(), CliError> {
        check("--batch", self.batch, 1, MAX_BATCH)?;
        check("--context", self.context, 1, MAX_CONTEXT)?;
        check("--steps", self.steps, 1, MAX_STEPS)?;
        at_most("--page-size", self.page_size, MAX_PAGE_SIZE)?;
        at_most("--splits", self.splits, MAX_SPLITS)?;
        at_most("--threads", self.threads, MAX_THREADS)?;
        if self.g == 0 || !LAT.is_multiple_of(self.g) {
            return Err(tpla_runtime::RuntimeError::InvalidInput(format!(
                "g = {} must divide the latent width {LAT}",
                self.g
            ))
            .into());
        }
        if self.devices == 0 {
            return Err(CliError::Usage("--devices must be at least 1".into()));
        }
        if self.devices > 1 {
            if !LAT.is_multiple_of(self.devices) {
                return Err(tpla_runtime::RuntimeError::InvalidInput(format!(
                    "{} devices must divide the latent width {LAT} (g = devices)",
                    self.devices
                ))
                .into());
            }
            let heads = self.preset.preset().config().heads;
            if !heads.is_multiple_of(self.devices) {
                return Err(tpla_runtime::RuntimeError::InvalidInput(format!(
                    "{} devices must divide the {heads} heads (the MLA baseline splits them)",
                    self.devices
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Tokens each sequence holds at the end (context plus one per step).
    pub fn max_tokens(&self) -> usize {
        self.context + self.steps
    }

    /// The flags that size a run, for a memory error.
    fn size_flags(&self) -> String {
        format!(
            "--batch {}, --context {} and --steps {}",
            self.batch, self.context, self.steps
        )
    }

    /// Bytes of one full-width cache as the decoder lays it out (whole pages).
    fn cache_dims(&self, width: usize) -> [usize; 3] {
        let ps = self.page_size.max(1);
        let tokens = self.max_tokens().div_ceil(ps).max(1).saturating_mul(ps);
        [self.batch, tokens, width]
    }

    /// Fails when the host lacks the memory of this run: the caches (MLA and the TPLA shards,
    /// on the host when `on_cpu`, else one host copy while they are built), the prefix rows,
    /// the split partials and the reference check's copies.
    pub fn check_memory(&self, on_cpu: bool) -> Result<(), CliError> {
        let cfg = self.preset.preset().config();
        let (heads, dv, k) = (cfg.heads, cfg.v_head, self.devices);
        let splits = if self.splits == 0 { 64 } else { self.splits };
        let mut p = MemoryPlan::default();
        let full = self.cache_dims(LAT + ROPE);
        let (groups, mla_copies) = if k > 1 { (k, k) } else { (self.g, 1) };
        let shard = self.cache_dims(LAT / groups + ROPE);
        // One host cache while a decoder is built, the prefix rows, the downloaded cache (or
        // sequence 0's rows in f64) for the reference check.
        p.add(&full, 2).add(&full, 2);
        p.add(&[self.batch, self.context, LAT + ROPE], 2);
        p.add(&[self.max_tokens(), LAT + ROPE], 8);
        if on_cpu {
            for _ in 0..mla_copies {
                p.add(&full, 2);
            }
            for _ in 0..groups {
                p.add(&shard, 2);
            }
            p.add(&[2, splits, self.batch, heads, LAT], 4);
        }
        if k > 1 {
            // W_UV on the host, and its blocks on every rank.
            p.add(&[3, heads, LAT, dv], 2);
        }
        p.check_host(&self.size_flags())
    }
}
