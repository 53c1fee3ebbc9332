//! Each form's largest batch under a per-GPU memory budget, and the modelled tokens/s there, for
//! DeepSeek-V3 and Kimi-K2 at TP 2/4/8 and contexts 4K-32K (all from [`super::cost`]).
//!
//! Two budgets, both labelled in the output:
//! - `full-model`: the GPU holds its `1/tp` share of every weight (fp8, as these checkpoints
//!   ship) plus its attention blocks as the form lays them out; the step adds the modelled MoE /
//!   FFN / LM-head weight reads. DeepSeek-V3 (671 B) does not fit on 2 or 4 H200s this way.
//! - `attention-only`: the GPU holds the attention blocks and embeddings only (the experts live
//!   elsewhere, e.g. expert parallelism on other GPUs); the step is the attention blocks alone.
//!   This is the setting of the paper's TP2 comparison.

use serde::Serialize;
use tpla_model::{MlaConfig, Preset};

use super::cost::{block_params, layer_cost, Hardware, ModelRest, RESERVE_BYTES};
use super::plan::{Form, KvNorm, ReduceAt};

/// Which weights share the GPU with the cache (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// The whole model's `1/tp` share.
    FullModel,
    /// Attention blocks and embeddings only.
    AttentionOnly,
}

/// One point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct MaxBatchRow {
    /// Model preset.
    pub model: String,
    /// Budget.
    pub budget: Budget,
    /// Tensor-parallel ranks.
    pub tp: usize,
    /// Tokens per sequence.
    pub context: usize,
    /// Form name.
    pub form: String,
    /// Weights per GPU, GB.
    pub weights_gb: f64,
    /// Cache of one sequence on one GPU (all layers), MB.
    pub kv_per_seq_mb: f64,
    /// Largest batch (0: the weights do not fit).
    pub max_batch: usize,
    /// Modelled step time at that batch, ms.
    pub step_ms: f64,
    /// Modelled decode tokens/s at that batch (all GPUs of the group together).
    pub tokens_per_s: f64,
}

/// Weight bytes per parameter of the deployed checkpoints (fp8).
pub const DEPLOYED_WEIGHT_BYTES: f64 = 1.0;

/// Weights on one GPU, bytes.
pub fn weights_per_gpu(
    cfg: &MlaConfig,
    rest: &ModelRest,
    form: Form,
    tp: usize,
    budget: Budget,
    wb: f64,
) -> f64 {
    let attn = cfg.layers as f64 * block_params(cfg, form, tp) * wb;
    let other = match budget {
        Budget::FullModel => rest.params(cfg),
        Budget::AttentionOnly => 2.0 * rest.vocab as f64 * cfg.hidden as f64,
    };
    attn + other * wb / tp as f64
}

/// Cache bytes of one sequence of `context` tokens on one GPU, every layer (bf16).
pub fn kv_per_seq(cfg: &MlaConfig, form: Form, tp: usize, context: usize) -> f64 {
    let (lat, rope) = (cfg.kv_lora_rank as f64, cfg.qk_rope as f64);
    let per_token = match form {
        Form::MlaTp => lat + rope,
        Form::Tpla { groups, .. } => lat / groups as f64 + rope,
        Form::Dcp => (lat + rope) / tp as f64,
    };
    cfg.layers as f64 * context as f64 * per_token * 2.0
}

/// The largest batch of `form` and its modelled step.
#[allow(clippy::too_many_arguments)]
pub fn row(
    cfg: &MlaConfig,
    rest: &ModelRest,
    form: Form,
    tp: usize,
    context: usize,
    budget: Budget,
    hw: &Hardware,
) -> MaxBatchRow {
    let wb = DEPLOYED_WEIGHT_BYTES;
    let weights = weights_per_gpu(cfg, rest, form, tp, budget, wb);
    let kv = kv_per_seq(cfg, form, tp, context);
    let free = hw.memory_bytes - RESERVE_BYTES - weights;
    let max_batch = if free > 0.0 {
        (free / kv).floor() as usize
    } else {
        0
    };
    let (step_ms, tokens_per_s) = if max_batch == 0 {
        (0.0, 0.0)
    } else {
        let layer = layer_cost(cfg, form, tp, max_batch, context, wb, hw).total_s();
        let mut step = cfg.layers as f64 * layer;
        if budget == Budget::FullModel {
            step += rest.step_s(cfg, tp, max_batch, wb, hw);
        }
        (step * 1e3, max_batch as f64 / step)
    };
    MaxBatchRow {
        model: cfg.name.clone(),
        budget,
        tp,
        context,
        form: form.name(),
        weights_gb: weights / 1e9,
        kv_per_seq_mb: kv / 1e6,
        max_batch,
        step_ms,
        tokens_per_s,
    }
}

/// The forms compared at `tp`: MLA-TP, TPLA g = 2 (the paper's), TPLA g = tp, DCP.
pub fn forms(tp: usize) -> Vec<Form> {
    let mut f = vec![
        Form::MlaTp,
        Form::Tpla {
            groups: 2,
            norm: KvNorm::Sliced,
            reduce: ReduceAt::Wo,
        },
    ];
    if tp != 2 {
        f.push(Form::Tpla {
            groups: tp,
            norm: KvNorm::Sliced,
            reduce: ReduceAt::Wo,
        });
    }
    f.push(Form::Dcp);
    f
}

/// The whole sweep: both models, TP 2/4/8, contexts 4K-32K, both budgets.
pub fn sweep(hw: &Hardware) -> Vec<MaxBatchRow> {
    let mut rows = Vec::new();
    for preset in [Preset::DeepseekV3, Preset::KimiK2] {
        let cfg = preset.config();
        let rest = ModelRest::for_preset(preset.name()).expect("both presets have a rest model");
        for budget in [Budget::AttentionOnly, Budget::FullModel] {
            for tp in [2, 4, 8] {
                for context in [4096, 8192, 16384, 32768] {
                    for form in forms(tp) {
                        rows.push(row(&cfg, &rest, form, tp, context, budget, hw));
                    }
                }
            }
        }
    }
    rows
}

/// TPLA (g = 2) over MLA-TP tokens/s in `rows` for one model, budget, tp and context.
pub fn tpla_speedup(
    rows: &[MaxBatchRow],
    model: &str,
    budget: Budget,
    tp: usize,
    context: usize,
) -> Option<f64> {
    let find = |form: &str| {
        rows.iter()
            .find(|r| {
                r.model == model
                    && r.budget == budget
                    && r.tp == tp
                    && r.context == context
                    && r.form == form
            })
            .map(|r| r.tokens_per_s)
    };
    let (t, m) = (find("tpla-g2")?, find("mla-tp")?);
    (m > 0.0).then(|| t / m)
}

/// The paper's decode-throughput ratios TPLA / MLA at 32K, TP2 (H800): (model, ratio).
pub const PAPER: [(&str, f64); 2] = [("deepseek-v3", 1.79), ("kimi-k2", 1.93)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_arithmetic_by_hand() {
        let cfg = Preset::DeepseekV3.config();
        let rest = ModelRest::for_preset("deepseek-v3").unwrap();
        // 61 layers × 32768 tokens × 576 × 2 B = 2.303 GB per sequence for MLA; 320 wide for TPLA
        // g = 2; a quarter of 576 for DCP4.
        assert_eq!(
            kv_per_seq(&cfg, Form::MlaTp, 2, 32768),
            61.0 * 32768.0 * 1152.0
        );
        assert_eq!(
            kv_per_seq(
                &cfg,
                Form::Tpla {
                    groups: 2,
                    norm: KvNorm::Sliced,
                    reduce: ReduceAt::Wo,
                },
                2,
                32768
            ),
            61.0 * 32768.0 * 640.0
        );
        assert_eq!(
            kv_per_seq(&cfg, Form::Dcp, 4, 32768),
            61.0 * 32768.0 * 288.0
        );
        let hw = Hardware::h200();
        // The full 671 B model in fp8 does not fit on 2 H200s.
        let r = row(&cfg, &rest, Form::MlaTp, 2, 32768, Budget::FullModel, &hw);
        assert_eq!(r.max_batch, 0);
        // Attention-only at TP2: (141 − 6 − weights) GB / 2.303 GB.
        let r = row(
            &cfg,
            &rest,
            Form::MlaTp,
            2,
            32768,
            Budget::AttentionOnly,
            &hw,
        );
        let w = weights_per_gpu(&cfg, &rest, Form::MlaTp, 2, Budget::AttentionOnly, 1.0);
        assert_eq!(
            r.max_batch,
            ((141e9 - 6e9 - w) / (61.0 * 32768.0 * 1152.0)).floor() as usize
        );
        assert!(r.max_batch > 40 && r.max_batch < 60, "{}", r.max_batch);
        assert!(r.tokens_per_s > 0.0);
    }

    #[test]
    fn the_sweep_covers_every_point_and_tpla_holds_more_sequences() {
        let rows = sweep(&Hardware::h200());
        // 2 models × 2 budgets × 4 contexts × (3 forms at TP2: MLA-TP, TPLA g=2, DCP; 4 at TP4
        // and TP8, adding TPLA g=tp).
        assert_eq!(rows.len(), 2 * 2 * 4 * (3 + 4 + 4));
        for r in rows
            .iter()
            .filter(|r| r.form == "tpla-g2" && r.budget == Budget::AttentionOnly)
        {
            let m = rows
                .iter()
                .find(|m| {
                    m.form == "mla-tp"
                        && m.model == r.model
                        && m.tp == r.tp
                        && m.context == r.context
                        && m.budget == r.budget
                })
                .unwrap();
            assert!(r.max_batch > m.max_batch, "{r:?} vs {m:?}");
        }
        assert!(tpla_speedup(&rows, "kimi-k2", Budget::AttentionOnly, 2, 32768).unwrap() > 1.0);
    }
}
