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
    /// - glue: the down norms, the `q_nope` split, the query assembly, the cache row and its
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
        let mut glue = 5.0;
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
/// (read `[B, H, nope]`, write it in bf16), the query assembly (read the absorbed latent and `q_pe`, write the
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
    let norms = F32 * (b * (ql + w) + ql + b) + BF16 * b * ql;
    let row = F32 * b * (w + rope) + BF16 * b * (w + rope) * 3.0;
    let split = (F32 + BF16) * b * ha * nope;
    let query = F32 * b * ha * (w + rope) + BF16 * b * ha * (w + rope);
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
mod tests {
    use super::*;
    use tpla_model::Preset;

    fn hw1() -> Hardware {
        // Round figures so the expected times are easy to check by hand.
        Hardware {
            mem_bytes_per_s: 1e12,
            flops: 1e14,
            bus_bytes_per_s: 1e11,
            latency_s: 1e-6,
            memory_bytes: 1e11,
            kernel_s: 0.0,
        }
    }

    #[test]
    fn every_kernel_adds_its_floor_to_its_phase() {
        let cfg = Preset::DeepseekV3.config();
        let hw = Hardware {
            kernel_s: 1e-3,
            ..hw1()
        };
        let (a, b) = (
            layer_cost(&cfg, Form::MlaTp, 2, 1, 1000, 1.0, &hw1()),
            layer_cost(&cfg, Form::MlaTp, 2, 1, 1000, 1.0, &hw),
        );
        assert!((b.attn_s - a.attn_s - 2e-3).abs() < 1e-12);
        assert!((b.proj_s - a.proj_s - 7e-3).abs() < 1e-12);
        assert!((b.glue_s - a.glue_s - 5e-3).abs() < 1e-12);
        assert_eq!(b.coll_s, a.coll_s);
        // DCP merges, TPLA reduced after W_UV takes heads and casts W_O's input, and a bf16
        // payload casts and widens around each output collective.
        let wuv = Form::Tpla {
            groups: 2,
            norm: KvNorm::Sliced,
            reduce: ReduceAt::Wuv,
        };
        assert_eq!(KernelCounts::of(Form::Dcp, 4.0).glue, 6.0);
        let k = KernelCounts::of(wuv, 2.0);
        assert_eq!((k.projections, k.glue), (8.0, 6.0 + 4.0));
        assert_eq!(KernelCounts::of(Form::MlaTp, 2.0).glue, 7.0);
    }

    #[test]
    fn attention_bytes_and_flops_by_hand() {
        let cfg = Preset::DeepseekV3.config();
        let hw = hw1();
        // MLA-TP2, B 1, 1000 tokens: 64 heads over 576-wide rows.
        let c = layer_cost(&cfg, Form::MlaTp, 2, 1, 1000, 1.0, &hw);
        assert_eq!(
            c.attn_bytes,
            2.0 * (1000.0 * 576.0 + 64.0 * 576.0) + 4.0 * 64.0 * 512.0
        );
        assert_eq!(c.attn_flops, 2.0 * 1000.0 * 64.0 * (576.0 + 512.0));
        // TPLA g = 2 at TP2: 128 heads over 320-wide rows, V 256.
        let t = layer_cost(
            &cfg,
            Form::Tpla {
                groups: 2,
                norm: KvNorm::Sliced,
                reduce: ReduceAt::Wo,
            },
            2,
            1,
            1000,
            1.0,
            &hw,
        );
        assert_eq!(t.attn_flops, 2.0 * 1000.0 * 128.0 * (320.0 + 256.0));
        // DCP2: 500 tokens, 128 heads, 576 wide.
        let d = layer_cost(&cfg, Form::Dcp, 2, 1, 1000, 1.0, &hw);
        assert_eq!(d.attn_flops, 2.0 * 500.0 * 128.0 * (576.0 + 512.0));
        // All-reduce of [1, 7168] f32 over 2 ranks: 1 µs + 2·(1/2)·28672 B / 1e11 B/s.
        assert!((c.coll_s - (1e-6 + 28672.0 / 1e11)).abs() < 1e-15);
        // DCP adds the exchange of 64 heads × 513 f32 × 2 ranks, half of it remote.
        let states = 64.0 * 513.0 * 4.0 * 2.0;
        assert!((d.coll_s - c.coll_s - (1e-6 + 0.5 * states / 1e11)).abs() < 1e-15);
    }

    #[test]
    fn block_params_of_deepseek_v3_by_hand() {
        let cfg = Preset::DeepseekV3.config();
        // TP1 MLA: q_a 7168·1536, kv_a 7168·576, q_b 1536·128·192, UK 128·128·512, UV 128·512·128,
        // o 128·128·7168: 187.1 M, the per-layer attention size of DeepSeek-V3.
        let full = 7168.0 * (1536.0 + 576.0)
            + 1536.0 * 128.0 * 192.0
            + 2.0 * 128.0 * 128.0 * 512.0
            + 128.0 * 128.0 * 7168.0;
        assert_eq!(block_params(&cfg, Form::MlaTp, 1), full);
        assert!((full / 1e6 - 187.1).abs() < 0.1, "{full}");
        // Whole model: 61 blocks + the rest ≈ 671 B parameters.
        let rest = ModelRest::for_preset("deepseek-v3").unwrap();
        let total = 61.0 * full + rest.params(&cfg);
        assert!((total / 1e9 - 671.0).abs() < 3.0, "{}", total / 1e9);
        let kimi = Preset::KimiK2.config();
        let kt = 61.0 * block_params(&kimi, Form::MlaTp, 1)
            + ModelRest::for_preset("kimi-k2").unwrap().params(&kimi);
        assert!((kt / 1e12 - 1.03).abs() < 0.02, "{}", kt / 1e12);
    }

    #[test]
    fn several_query_tokens_read_the_cache_once() {
        let cfg = Preset::KimiK2.config();
        let hw = hw1();
        let one = layer_cost_tokens(&cfg, Form::MlaTp, 2, 4, 1, 1000, 2.0, 4.0, &hw);
        let two = layer_cost_tokens(&cfg, Form::MlaTp, 2, 4, 2, 1000, 2.0, 4.0, &hw);
        assert_eq!(one, layer_cost(&cfg, Form::MlaTp, 2, 4, 1000, 2.0, &hw));
        // The cache (4 × 1000 rows of 576) once; queries and outputs per row.
        let (cache, per_row) = (
            2.0 * 4.0 * 1000.0 * 576.0,
            2.0 * 32.0 * 576.0 + 4.0 * 32.0 * 512.0,
        );
        assert_eq!(one.attn_bytes, cache + 4.0 * per_row);
        assert_eq!(two.attn_bytes, cache + 8.0 * per_row);
        assert_eq!(two.attn_flops, 2.0 * one.attn_flops);
        assert_eq!(two.proj_bytes, one.proj_bytes);
        assert_eq!(two.proj_flops, 2.0 * one.proj_flops);
        assert!(two.coll_bytes == 2.0 * one.coll_bytes && two.glue_bytes > one.glue_bytes);
    }

    #[test]
    fn reducing_after_wuv_by_hand() {
        // Kimi-K2 TPLA g = 2 at TP2: every rank attends with all 64 heads; reduced after W_UV it
        // applies W_O to 32 of them and reduce-scatters the values [B, 64, 128] (f32) first.
        let cfg = Preset::KimiK2.config();
        let hw = hw1();
        let form = |reduce| Form::Tpla {
            groups: 2,
            norm: KvNorm::Sliced,
            reduce,
        };
        let (wo, wuv) = (form(ReduceAt::Wo), form(ReduceAt::Wuv));
        let saved = block_params(&cfg, wo, 2) - block_params(&cfg, wuv, 2);
        assert_eq!(saved, 32.0 * 128.0 * 7168.0, "half of W_O");
        let (a, b) = (
            layer_cost(&cfg, wo, 2, 4, 1000, 2.0, &hw),
            layer_cost(&cfg, wuv, 2, 4, 1000, 2.0, &hw),
        );
        let values = 4.0 * 64.0 * 128.0 * 4.0;
        assert_eq!(b.coll_bytes - a.coll_bytes, values);
        assert!((b.coll_s - a.coll_s - (1e-6 + 0.5 * values / 1e11)).abs() < 1e-15);
        assert_eq!(b.glue_bytes - a.glue_bytes, 2.0 * 4.0 * 4.0 * 32.0 * 128.0);
        assert_eq!(a.attn_bytes, b.attn_bytes);
        // Every other form is unchanged by the option's existence.
        assert_eq!(
            block_params(&cfg, Form::MlaTp, 2) * 2.0,
            block_params(&cfg, Form::MlaTp, 1) + 7168.0 * (1536.0 + 576.0)
        );
    }

    #[test]
    fn glue_bytes_by_hand() {
        let cfg = Preset::DeepseekV3.config();
        // MLA-TP2, B 1: 64 heads, the whole 512 latent; q_lora 1536, nope 128, rope 64.
        let norms = 4.0 * (1536.0 + 512.0 + 1536.0 + 1.0) + 2.0 * 1536.0;
        let row = 4.0 * 576.0 + 2.0 * 576.0 * 3.0;
        let split = 6.0 * 64.0 * 128.0;
        let query = 4.0 * 64.0 * 576.0 + 2.0 * 64.0 * 576.0;
        assert_eq!(
            glue_bytes(&cfg, Form::MlaTp, 2, 1),
            norms + row + split + query
        );
        // DCP2 adds the merge of 64 output heads from 2 ranks' 128-head states.
        let dcp = glue_bytes(&cfg, Form::Dcp, 2, 1);
        let split = 6.0 * 128.0 * 128.0;
        let query = 4.0 * 128.0 * 576.0 + 2.0 * 128.0 * 576.0;
        let merge = 4.0 * (2.0 * 64.0 * 513.0 + 64.0 * 512.0);
        assert_eq!(dcp, norms + row + split + query + merge);
        let hw = hw1();
        let c = layer_cost(&cfg, Form::MlaTp, 2, 1, 1000, 1.0, &hw);
        assert_eq!(c.glue_s, c.glue_bytes / 1e12);
        assert_eq!(c.total_s(), c.attn_s + c.proj_s + c.glue_s + c.coll_s);
    }

    #[test]
    fn roofline_and_experts_touched() {
        let hw = hw1();
        assert_eq!(hw.time(1e12, 1e13), 1.0);
        assert_eq!(hw.time(1e11, 1e15), 10.0);
        assert_eq!(hw.all_reduce(1e9, 1), 0.0);
        let r = ModelRest::for_preset("deepseek-v3").unwrap();
        assert_eq!(r.experts_touched(1), 8.0);
        assert!((r.experts_touched(1000) - 256.0).abs() < 1e-6);
    }
}
