//! A roofline model of one decode step per device for each [`Form`]: bytes, FLOPs and
//! collective bytes, the predicted time, and the rest of the model's weight reads (modelled).
//! The element-wise glue kernels (norms, RoPE, query and cache-row assembly, DCP's merge) are
//! modelled by the bytes they move ([`glue_bytes`]).
//!
//! Everything here is arithmetic on the model's config and a [`Hardware`] description; nothing
//! is measured. The H200 figures in [`Hardware::h200`] are modelled (datasheet peaks times a
//! stated efficiency), and a caller with measured rooflines replaces them.

use serde::Serialize;
use tpla_model::MlaConfig;

use super::plan::{Form, KvNorm, ReduceAt};

/// Bytes of one bf16 value.
const BF16: f64 = 2.0;
/// Bytes of one f32 value.
const F32: f64 = 4.0;

/// Peak HBM bandwidth of an H200 (datasheet, bytes/s).
pub const H200_HBM_BYTES_PER_S: f64 = 4.8e12;
/// Dense bf16 matmul peak of an H200 (datasheet, FLOP/s, no sparsity).
pub const H200_BF16_FLOPS: f64 = 989e12;
/// Modelled fraction of peak bandwidth a good kernel reaches (GLA/FlashMLA report 90-93 %).
pub const MEM_EFFICIENCY: f64 = 0.85;
/// Modelled fraction of the matmul peak reached (FlashMLA: 660 of 989 TFLOPS on H800).
pub const MATMUL_EFFICIENCY: f64 = 0.67;
/// Modelled NVLink bus bandwidth per direction for collectives (H200 NVLink 4: 900 GB/s total,
/// about 450 GB/s each way), bytes/s.
pub const NVLINK_BUS_BYTES_PER_S: f64 = 450e9;
/// Modelled latency of one collective call (a few µs on NVLink), seconds.
pub const COLLECTIVE_LATENCY_S: f64 = 5e-6;
/// Modelled time one small kernel costs in a queued stream (launch, ramp-up and drain of a
/// kernel far below the rooflines), seconds; a same-run measurement replaces it
/// (`check::measure_rooflines`).
pub const KERNEL_FLOOR_S: f64 = 4e-6;
/// HBM of one H200, bytes (141 GB).
pub const H200_HBM_BYTES: f64 = 141e9;
/// Memory held back per GPU for activations, workspace and the allocator (modelled), bytes.
pub const RESERVE_BYTES: f64 = 6e9;

/// The rooflines a prediction uses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Hardware {
    /// Achievable memory bandwidth, bytes/s.
    pub mem_bytes_per_s: f64,
    /// Achievable matmul rate, FLOP/s.
    pub flops: f64,
    /// Collective bus bandwidth per direction, bytes/s.
    pub bus_bytes_per_s: f64,
    /// Latency of one collective, seconds.
    pub latency_s: f64,
    /// Device memory, bytes.
    pub memory_bytes: f64,
    /// Time one kernel costs beyond its roofline time (launch, ramp-up, drain), seconds: each
    /// phase pays it once per kernel it launches ([`KernelCounts`]).
    pub kernel_s: f64,
}

impl Hardware {
    /// An H200 with the modelled figures above.
    pub fn h200() -> Self {
        Hardware {
            mem_bytes_per_s: H200_HBM_BYTES_PER_S * MEM_EFFICIENCY,
            flops: H200_BF16_FLOPS * MATMUL_EFFICIENCY,
            bus_bytes_per_s: NVLINK_BUS_BYTES_PER_S,
            latency_s: COLLECTIVE_LATENCY_S,
            memory_bytes: H200_HBM_BYTES,
            kernel_s: KERNEL_FLOOR_S,
        }
    }

    /// Roofline time of work moving `bytes` and doing `flops`.
    pub fn time(&self, bytes: f64, flops: f64) -> f64 {
        (bytes / self.mem_bytes_per_s).max(flops / self.flops)
    }

    /// Ring all-reduce of `bytes` over `ranks`: `latency + 2 (R−1)/R · bytes / bus`.
    pub fn all_reduce(&self, bytes: f64, ranks: usize) -> f64 {
        if ranks <= 1 {
            return 0.0;
        }
        let r = ranks as f64;
        self.latency_s + 2.0 * (r - 1.0) / r * bytes / self.bus_bytes_per_s
    }

    /// Ring reduce-scatter of `bytes` (each rank's whole input) over `ranks`, each ending with
    /// its `1/R` summed: `latency + (R−1)/R · bytes / bus`.
    pub fn reduce_scatter(&self, bytes: f64, ranks: usize) -> f64 {
        self.all_gather(bytes, ranks)
    }

    /// All-gather / all-to-all where each rank ends with `bytes` of which `(R−1)/R` came from
    /// the others: `latency + (R−1)/R · bytes / bus`.
    pub fn all_gather(&self, bytes: f64, ranks: usize) -> f64 {
        if ranks <= 1 {
            return 0.0;
        }
        let r = ranks as f64;
        self.latency_s + (r - 1.0) / r * bytes / self.bus_bytes_per_s
    }
}

/// Kernels one rank launches in a layer step, per phase, on the GPU path (cuBLAS for the
/// projections; a uniform-split decode: the decode kernel and its combine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KernelCounts {
    /// Decode attention.
    pub attention: f64,
    /// The projections' gemms and their casts.
    pub projections: f64,
    /// The element-wise kernels.
    pub glue: f64,
}

impl KernelCounts {
    /// The counts of `form` with the output collectives in `payload_bytes` per element:
    /// - attention: decode + combine;
    /// - projections: the down-projection (its input's cast + gemm), `W_UQ`, `W_UK`, `W_UV`
    ///   (the attention output's cast + gemm), `W_O`; reduced after `W_UV`, `W_O` casts its
    ///   reduced f32 input;
    /// - glue: the down norms with the cache row (one kernel, `down_row`; two where TPLA's
    ///   exact norm sums `Σ c²` between them), the `q_nope` split, the query assembly, the
    ///   append; DCP's merge; the head take after a reduce-scatter; a bf16 payload's cast and
    ///   widening around each output collective.
    pub fn of(form: Form, payload_bytes: f64) -> Self {
        let wuv = matches!(
            form,
            Form::Tpla {
                reduce: ReduceAt::Wuv,
                ..
            }
        );
        let output_collectives = if wuv { 2.0 } else { 1.0 };
        let mut glue = if form.exact_kv_norm() { 5.0 } else { 4.0 };
        if form == Form::Dcp {
            glue += 1.0;
        }
        if wuv {
            glue += 1.0;
        }
        if payload_bytes < F32 {
            glue += 2.0 * output_collectives;
        }
        KernelCounts {
            attention: 2.0,
            projections: if wuv { 8.0 } else { 7.0 },
            glue,
        }
    }
}

/// One device's work in one layer's decode step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LayerCost {
    /// Cache bytes read by attention (plus its query and output).
    pub attn_bytes: f64,
    /// Attention FLOPs (FlashMLA convention: `2·Σlen·H·(d_qk + d_v)`).
    pub attn_flops: f64,
    /// Weight bytes of the block's dense projections read by this rank.
    pub proj_bytes: f64,
    /// Dense projection FLOPs.
    pub proj_flops: f64,
    /// Bytes each rank contributes to collectives (all-reduce of `[B, D]`, DCP's state
    /// exchange, the exact norm's scalar).
    pub coll_bytes: f64,
    /// Predicted attention time, s.
    pub attn_s: f64,
    /// Predicted projection time, s.
    pub proj_s: f64,
    /// Predicted collective time, s (modelled NVLink).
    pub coll_s: f64,
    /// Bytes the element-wise glue kernels read and write ([`glue_bytes`]).
    pub glue_bytes: f64,
    /// Predicted glue time, s (memory roofline).
    pub glue_s: f64,
    /// Kernels per phase; each phase's time above holds `count · kernel_s` of the hardware.
    pub kernels: KernelCounts,
}

impl LayerCost {
    /// The layer's predicted step time on one device (no overlap).
    pub fn total_s(&self) -> f64 {
        self.device_s() + self.coll_s
    }
    /// The predicted work on the device: attention, projections and glue.
    pub fn device_s(&self) -> f64 {
        self.attn_s + self.proj_s + self.glue_s
    }
}

/// Bytes one rank's element-wise glue kernels move in a step (f32 activations, bf16 rows):
/// the down-projection's norms (read `q_a | c`, write `q_a` in bf16), the cache row (read `c |
/// k_pe`, write it in bf16) and its append (read and write the bf16 row), the `q_nope` split
/// (read `[B, H, nope]`, write it in bf16), the query assembly (read the absorbed latent in bf16 and `q_pe`, write the
/// bf16 query), and under DCP the merge (read every rank's `(out, lse)` of the rank's heads,
/// write the merged output).
pub fn glue_bytes(cfg: &MlaConfig, form: Form, tp: usize, batch: usize) -> f64 {
    let (ha, w, _, _, ho) = per_rank(cfg, form, tp, 0.0);
    let b = batch as f64;
    let (ql, rope, nope) = (
        cfg.q_lora_rank.unwrap_or(0) as f64,
        cfg.qk_rope as f64,
        cfg.qk_nope as f64,
    );
    // The query latent's norm (read `q_a` and `γ`, write `q_a` in bf16); under TPLA's exact
    // norm a kernel of its own also reads `c` and writes `Σ c²`, elsewhere the cache row's
    // kernel is the same kernel and reads `c` once (`down_row`).
    let exact_norm = if form.exact_kv_norm() {
        F32 * (b * w + b)
    } else {
        0.0
    };
    let norms = F32 * (b * ql + ql) + BF16 * b * ql + exact_norm;
    let row = F32 * b * (w + rope) + BF16 * b * (w + rope) * 3.0;
    let split = (F32 + BF16) * b * ha * nope;
    let query = BF16 * b * ha * w + F32 * b * ha * rope + BF16 * b * ha * (w + rope);
    let merge = match form {
        Form::Dcp => {
            let lat = cfg.kv_lora_rank as f64;
            F32 * (tp as f64 * b * ho * (lat + 1.0) + b * ho * lat)
        }
        _ => 0.0,
    };
    // TPLA reduced after `W_UV`: the output heads taken out of the reduced values.
    let take = match form {
        Form::Tpla {
            reduce: ReduceAt::Wuv,
            ..
        } => 2.0 * F32 * b * ho * cfg.v_head as f64,
        _ => 0.0,
    };
    norms + row + split + query + merge + take
}

/// The per-rank shape of a form: (heads attended (whose `W_UQ` it runs), latent width of the
/// cache rows, tokens of a sequence held out of `len`, heads whose `W_UV` it applies, heads
/// whose `W_O` it applies).
fn per_rank(cfg: &MlaConfig, form: Form, tp: usize, len: f64) -> (f64, f64, f64, f64, f64) {
    let (h, lat, r) = (cfg.heads as f64, cfg.kv_lora_rank as f64, tp as f64);
    match form {
        Form::MlaTp => (h / r, lat, len, h / r, h / r),
        Form::Tpla { groups, reduce, .. } => {
            let g = groups as f64;
            let ha = h / (r / g);
            let ho = match reduce {
                ReduceAt::Wo => ha,
                ReduceAt::Wuv => ha / g,
            };
            (ha, lat / g, len, ha, ho)
        }
        Form::Dcp => (h, lat, len / r, h / r, h / r),
    }
}

/// Parameters of this rank's share of one attention block.
pub fn block_params(cfg: &MlaConfig, form: Form, tp: usize) -> f64 {
    let (ha, w, _, hv, ho) = per_rank(cfg, form, tp, 0.0);
    let (d, ql) = (cfg.hidden as f64, cfg.q_lora_rank.unwrap_or(0) as f64);
    let (rope, nope, dv) = (cfg.qk_rope as f64, cfg.qk_nope as f64, cfg.v_head as f64);
    d * (ql + w + rope) + ql * ha * (nope + rope) + ha * nope * w + hv * w * dv + ho * dv * d
}

/// One device's cost of one layer's decode step: `batch` sequences of `len` tokens, weights of
/// `weight_bytes` per parameter, the output collectives in f32 (the layer's default payload;
/// [`layer_cost_payload`] for bf16).
pub fn layer_cost(
    cfg: &MlaConfig,
    form: Form,
    tp: usize,
    batch: usize,
    len: usize,
    weight_bytes: f64,
    hw: &Hardware,
) -> LayerCost {
    layer_cost_payload(cfg, form, tp, batch, len, weight_bytes, F32, hw)
}

/// [`layer_cost`] with the output collectives (the all-reduce of `[B, D]`, TPLA's values
/// reduce-scattered after `W_UV`) carrying `payload_bytes` per element.
#[allow(clippy::too_many_arguments)]
pub fn layer_cost_payload(
    cfg: &MlaConfig,
    form: Form,
    tp: usize,
    batch: usize,
    len: usize,
    weight_bytes: f64,
    payload_bytes: f64,
    hw: &Hardware,
) -> LayerCost {
    layer_cost_tokens(
        cfg,
        form,
        tp,
        batch,
        1,
        len,
        weight_bytes,
        payload_bytes,
        hw,
    )
}

/// [`layer_cost_payload`] with `query_len` new tokens per sequence per step (MTP, speculative
/// verify): the cache is read once per step, the query rows, projections, glue and collectives
/// scale with `batch · query_len`.
#[allow(clippy::too_many_arguments)]
pub fn layer_cost_tokens(
    cfg: &MlaConfig,
    form: Form,
    tp: usize,
    batch: usize,
    query_len: usize,
    len: usize,
    weight_bytes: f64,
    payload_bytes: f64,
    hw: &Hardware,
) -> LayerCost {
    let (seqs, l) = (batch as f64, len as f64);
    // Query rows per step.
    let b = seqs * query_len.max(1) as f64;
    let (ha, w, tokens, _, _) = per_rank(cfg, form, tp, l);
    let rope = cfg.qk_rope as f64;
    let (dqk, dv_lat) = (w + rope, w);
    let attn_bytes = BF16 * (seqs * tokens * dqk + b * ha * dqk) + 4.0 * b * ha * dv_lat;
    let attn_flops = 2.0 * b * tokens * ha * (dqk + dv_lat);
    let params = block_params(cfg, form, tp);
    let proj_bytes = params * weight_bytes;
    let proj_flops = 2.0 * b * params;
    let d = cfg.hidden as f64;
    let out = b * d * payload_bytes;
    let mut coll_bytes = out;
    let mut coll_s = hw.all_reduce(out, tp);
    match form {
        Form::Dcp => {
            // Each rank ends with every rank's (out, lse) of its head slice, f32.
            let h = cfg.heads as f64;
            let states = b * (h / tp as f64) * (cfg.kv_lora_rank as f64 + 1.0) * 4.0 * tp as f64;
            coll_bytes += states;
            coll_s += hw.all_gather(states, tp);
        }
        Form::Tpla {
            groups,
            norm,
            reduce,
        } => {
            if norm == KvNorm::Exact && groups > 1 {
                coll_bytes += b * 4.0;
                coll_s += hw.all_reduce(b * 4.0, groups);
            }
            if reduce == ReduceAt::Wuv {
                // The values of the rank's heads, reduce-scattered over the groups.
                let values = b * ha * cfg.v_head as f64 * payload_bytes;
                coll_bytes += values;
                coll_s += hw.reduce_scatter(values, groups);
            }
        }
        _ => {}
    }
    let glue = glue_bytes(cfg, form, tp, batch * query_len.max(1));
    let k = KernelCounts::of(form, payload_bytes);
    LayerCost {
        attn_bytes,
        attn_flops,
        proj_bytes,
        proj_flops,
        coll_bytes,
        attn_s: hw.time(attn_bytes, attn_flops) + k.attention * hw.kernel_s,
        proj_s: hw.time(proj_bytes, proj_flops) + k.projections * hw.kernel_s,
        coll_s,
        glue_bytes: glue,
        glue_s: hw.time(glue, 0.0) + k.glue * hw.kernel_s,
        kernels: k,
    }
}

/// The non-attention part of a model, from its public config (modelled: what a step must read).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelRest {
    /// Layers with a dense FFN (the first few).
    pub dense_layers: usize,
    /// Dense FFN intermediate width.
    pub dense_inter: usize,
    /// Routed experts per MoE layer.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Shared experts per MoE layer.
    pub shared: usize,
    /// Expert intermediate width.
    pub expert_inter: usize,
    /// Vocabulary (embedding and LM head).
    pub vocab: usize,
}

impl ModelRest {
    /// DeepSeek-V3 (config.json: 3 dense layers of 18432, 256 experts top-8 + 1 shared of 2048,
    /// vocab 129280) and Kimi-K2 (1 dense layer, 384 experts top-8 + 1 shared, vocab 163840).
    pub fn for_preset(name: &str) -> Option<Self> {
        let base = ModelRest {
            dense_layers: 3,
            dense_inter: 18432,
            experts: 256,
            top_k: 8,
            shared: 1,
            expert_inter: 2048,
            vocab: 129280,
        };
        match name {
            "deepseek-v3" => Some(base),
            "kimi-k2" => Some(ModelRest {
                dense_layers: 1,
                experts: 384,
                vocab: 163840,
                ..base
            }),
            _ => None,
        }
    }

    /// Parameters of one expert (gate, up, down).
    pub fn expert_params(&self, hidden: usize) -> f64 {
        3.0 * hidden as f64 * self.expert_inter as f64
    }

    /// All non-attention parameters of a model with `layers` layers.
    pub fn params(&self, cfg: &MlaConfig) -> f64 {
        let d = cfg.hidden as f64;
        let dense = self.dense_layers as f64 * 3.0 * d * self.dense_inter as f64;
        let moe = (cfg.layers - self.dense_layers) as f64
            * (self.experts + self.shared) as f64
            * self.expert_params(cfg.hidden);
        dense + moe + 2.0 * self.vocab as f64 * d
    }

    /// Expected distinct experts a batch of `batch` tokens touches in one layer (uniform routing):
    /// `E · (1 − (1 − k/E)^B)`.
    pub fn experts_touched(&self, batch: usize) -> f64 {
        let e = self.experts as f64;
        e * (1.0 - (1.0 - self.top_k as f64 / e).powf(batch as f64))
    }

    /// One device's modelled time for the rest of the model in one step at `batch` (tensor
    /// parallel over `tp`: every weight split `tp` ways): the weights it reads (touched experts,
    /// shared experts, dense FFNs, LM head) against the FLOPs of the routed tokens.
    pub fn step_s(
        &self,
        cfg: &MlaConfig,
        tp: usize,
        batch: usize,
        weight_bytes: f64,
        hw: &Hardware,
    ) -> f64 {
        let (d, r, b) = (cfg.hidden as f64, tp as f64, batch as f64);
        let moe_layers = (cfg.layers - self.dense_layers) as f64;
        let ep = self.expert_params(cfg.hidden);
        let read = moe_layers * (self.experts_touched(batch) + self.shared as f64) * ep
            + self.dense_layers as f64 * 3.0 * d * self.dense_inter as f64
            + self.vocab as f64 * d;
        let active = moe_layers * (self.top_k + self.shared) as f64 * ep
            + self.dense_layers as f64 * 3.0 * d * self.dense_inter as f64
            + self.vocab as f64 * d;
        hw.time(read * weight_bytes / r, 2.0 * b * active / r)
    }
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod tests;
