//! Bounds on the user-given sizes of `convert` and `accuracy`, checked before anything is
//! allocated, so a bad flag is a clear error naming the flag and its limit instead of the process
//! being killed for memory.
//!
//! Two kinds of bound: fixed limits on a flag ([`check_at_most`]) and an estimate of the memory a
//! run holds, compared with what the machine has available ([`check_memory`]).

use super::accuracy::{AccuracyOptions, FINE};
use super::config::MlaConfig;
use super::convert::ConvertOptions;
use super::error::{ModelError, Result};
use super::reparam::Transform;
use super::shard::ShardPlan;

/// Most devices k (`--devices`) a conversion shards for (a TP group of 64 ranks).
pub const MAX_DEVICES: usize = 64;
/// Most latent groups g (`--groups`); with the 512-wide latent this leaves 8 columns per shard.
pub const MAX_GROUPS: usize = 64;
/// Most tokens of one accuracy stream (`--prefill` + `--decode`, and `--calib-tokens`): the
/// harness holds every token's projections and attends over all of them at each evaluated step.
pub const MAX_TOKENS: usize = 1 << 16;

/// `value <= limit`, else [`ModelError::TooLarge`] naming `flag`.
pub fn check_at_most(flag: &'static str, value: usize, limit: usize, why: &str) -> Result<()> {
    if value > limit {
        return Err(ModelError::TooLarge {
            flag,
            value,
            limit,
            detail: why.to_string(),
        });
    }
    Ok(())
}

/// f64 values of one MLA layer with dims `cfg` (every matrix of [`super::weights::MlaLayer`]).
pub fn layer_values(cfg: &MlaConfig) -> u64 {
    let (d, h, l) = (cfg.hidden as u64, cfg.heads as u64, cfg.kv_lora_rank as u64);
    let qh = cfg.q_head() as u64;
    let q = match cfg.q_lora_rank {
        Some(r) => {
            let r = r as u64;
            d * r + r + r * h * qh
        }
        None => d * h * qh,
    };
    let kv = d * l + d * cfg.qk_rope as u64 + l;
    let up = h * l * (cfg.qk_nope as u64 + cfg.v_head as u64);
    q + kv + up + h * cfg.v_head as u64 * d
}

/// Memory the machine has available now (Linux `MemAvailable`); `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `need` bytes fit in `avail` (when known), else [`ModelError::OutOfMemory`] with `hint`.
pub fn check_memory_against(what: &str, need: u64, avail: Option<u64>, hint: &str) -> Result<()> {
    match avail {
        Some(a) if need > a => Err(ModelError::OutOfMemory {
            what: what.to_string(),
            need_mib: need.div_ceil(1 << 20),
            avail_mib: a >> 20,
            hint: hint.to_string(),
        }),
        _ => Ok(()),
    }
}

/// [`check_memory_against`] the machine's available memory.
pub fn check_memory(what: &str, need: u64, hint: &str) -> Result<()> {
    check_memory_against(what, need, available_memory(), hint)
}

/// Check `convert`'s sizes and the calibration flag before anything is loaded or allocated.
pub fn check_convert(opts: &ConvertOptions, cfg: &MlaConfig) -> Result<()> {
    check_at_most(
        "--groups",
        opts.groups,
        MAX_GROUPS,
        "each shard keeps at least 8 latent columns",
    )?;
    check_at_most(
        "--devices",
        opts.devices,
        MAX_DEVICES,
        "one rank file per device, all held in memory until written",
    )?;
    if opts.calib.is_some() && opts.transform != Transform::Pca {
        return Err(ModelError::InvalidValue {
            name: "--calib",
            detail: format!(
                "only --transform pca reads a calibration file, not --transform {}",
                opts.transform.name()
            ),
        });
    }
    // `--force` replaces --out whole: it must not hold an input of this run.
    if let Ok(out) = opts.out_dir.canonicalize() {
        for (flag, input) in [("--checkpoint", &opts.checkpoint), ("--calib", &opts.calib)] {
            let input = input.as_ref().and_then(|p| p.canonicalize().ok());
            if input.is_some_and(|p| p.starts_with(&out)) {
                return Err(ModelError::OutputPath {
                    path: opts.out_dir.display().to_string(),
                    detail: format!("holds the {flag} input; choose another --out"),
                });
            }
        }
    }
    if opts.transform == Transform::Pca && opts.checkpoint.is_some() && opts.calib.is_none() {
        return Err(ModelError::MissingCalibration);
    }
    if let Some(v) = &opts.layers {
        if let Some(&bad) = v.iter().find(|&&i| i >= cfg.layers) {
            return Err(ModelError::InvalidValue {
                name: "--layers",
                detail: format!("layer {bad} >= the {} layers of {}", cfg.layers, cfg.name),
            });
        }
    }
    Ok(())
}

/// Memory `convert` holds for `layers` layers: every rank's shards (f64) until written, the
/// layer and its reparameterised copy, the calibration latents and one rank's serialised file.
pub fn convert_memory(cfg: &MlaConfig, plan: &ShardPlan, layers: usize) -> u64 {
    let rank_cfg = MlaConfig {
        heads: cfg.heads / plan.shards_per_group(),
        kv_lora_rank: cfg.kv_lora_rank / plan.groups,
        ..cfg.clone()
    };
    let rank = layer_values(&rank_cfg);
    let calib = 4 * cfg.kv_lora_rank as u64 * (cfg.hidden + cfg.kv_lora_rank) as u64;
    8 * (layers as u64 * rank * (plan.devices as u64 + 2) + 3 * layer_values(cfg) + calib)
}

/// Check the accuracy harness's sizes before anything is allocated: non-zero, bounded
/// ([`MAX_TOKENS`]), at least one evaluated step after the prefill, g dividing 8 and the latent,
/// and the estimated memory within what the machine has.
pub fn check_accuracy(opts: &AccuracyOptions, cfg: &MlaConfig) -> Result<()> {
    let l = cfg.kv_lora_rank;
    if opts.stride == 0 || opts.decode_tokens == 0 {
        return Err(ModelError::InvalidValue {
            name: "stride/decode_tokens",
            detail: "must be > 0".into(),
        });
    }
    let why = "the harness holds every token and attends over all of them at each step";
    check_at_most("--decode", opts.decode_tokens, MAX_TOKENS, why)?;
    check_at_most("--prefill", opts.prefill_tokens, MAX_TOKENS, why)?;
    check_at_most("--calib-tokens", opts.calib_tokens, MAX_TOKENS, why)?;
    let (p, total) = (
        opts.prefill_tokens,
        opts.prefill_tokens + opts.decode_tokens,
    );
    if total / opts.stride == p / opts.stride {
        return Err(ModelError::InvalidValue {
            name: "--stride",
            detail: format!(
                "stride {} evaluates none of the {} decoded tokens; use a stride <= {}",
                opts.stride, opts.decode_tokens, opts.decode_tokens
            ),
        });
    }
    for &g in &opts.groups {
        if g == 0 || !l.is_multiple_of(g) {
            return Err(ModelError::GroupsNotDividingLatent {
                groups: g,
                latent: l,
            });
        }
        if !FINE.is_multiple_of(g) || !l.is_multiple_of(FINE) {
            return Err(ModelError::InvalidValue {
                name: "groups",
                detail: format!("harness evaluates g dividing {FINE}, got {g}"),
            });
        }
    }
    // Per token: hidden state, projections, exact cache entry, per transform the rotated latent
    // (and its transient copies); per calibration token its hidden state and latents; per worker
    // thread the logits of one step; the layer and its reparameterised copies.
    let nt = opts.transforms.len().max(1) as u64;
    let (d, lu, rope) = (cfg.hidden as u64, l as u64, cfg.qk_rope as u64);
    let per_token = d
        + 2 * lu
        + 2 * rope
        + cfg.heads as u64 * cfg.q_head() as u64
        + nt * (3 * lu + FINE as u64 + 1);
    let threads = rayon::current_num_threads() as u64;
    let values = total as u64 * (per_token + 12 * threads)
        + opts.calib_tokens as u64 * (d + lu * (1 + nt))
        + (1 + nt) * layer_values(cfg);
    check_memory(
        &format!("the accuracy harness on {} tokens of {}", total, cfg.name),
        8 * values,
        "lower --prefill, --decode or --calib-tokens",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn at_most_names_flag_and_limit() {
        assert!(check_at_most("--devices", 64, MAX_DEVICES, "").is_ok());
        let e = check_at_most("--devices", 512, MAX_DEVICES, "x").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--devices 512") && msg.contains("limit 64"),
            "{msg}"
        );
    }

    #[test]
    fn memory_check_compares_with_what_is_available() {
        assert!(check_memory_against("w", 10, None, "h").is_ok());
        assert!(check_memory_against("w", 10 << 20, Some(20 << 20), "h").is_ok());
        let e = check_memory_against("w", 30 << 20, Some(20 << 20), "lower --x").unwrap_err();
        assert!(e.to_string().contains("30 MiB") && e.to_string().contains("lower --x"));
    }

    #[test]
    fn layer_values_counts_every_matrix() {
        let cfg = crate::config::MlaConfig::small(Preset::DeepseekV2Lite, 64, 2, Some(32));
        let layer = crate::synthetic::synthetic_layer(&cfg, 0).unwrap();
        let mut w = crate::tensors::TensorWriter::default();
        layer.store(&mut w, 0);
        // Stored tensors hold the same matrices (kv_a fused, kv_b fused), so the counts agree.
        assert_eq!(w.values() as u64, layer_values(&cfg));
    }
}
