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
    assert!((b.glue_s - a.glue_s - 4e-3).abs() < 1e-12);
    assert_eq!(b.coll_s, a.coll_s);
    // DCP merges, TPLA reduced after W_UV takes heads and casts W_O's input, and a bf16
    // payload casts and widens around each output collective.
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wuv,
    };
    assert_eq!(KernelCounts::of(Form::Dcp, 4.0).glue, 5.0);
    let k = KernelCounts::of(wuv, 2.0);
    assert_eq!((k.projections, k.glue), (8.0, 5.0 + 4.0));
    assert_eq!(KernelCounts::of(Form::MlaTp, 2.0).glue, 6.0);
    // TPLA's exact norm sums Σ c² between the down norms and the cache row: two kernels.
    let exact = Form::Tpla {
        groups: 2,
        norm: KvNorm::Exact,
        reduce: ReduceAt::Wo,
    };
    assert_eq!(KernelCounts::of(exact, 4.0).glue, 5.0);
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
    // The query latent's norm; the cache row's kernel is the same one and reads `c` once.
    let norms = 4.0 * (1536.0 + 1536.0) + 2.0 * 1536.0;
    let row = 4.0 * 576.0 + 2.0 * 576.0 * 3.0;
    let split = 6.0 * 64.0 * 128.0;
    // The absorbed latent in bf16, q_pe in f32, the query written in bf16.
    let query = 2.0 * 64.0 * 512.0 + 4.0 * 64.0 * 64.0 + 2.0 * 64.0 * 576.0;
    assert_eq!(
        glue_bytes(&cfg, Form::MlaTp, 2, 1),
        norms + row + split + query
    );
    // DCP2 adds the merge of 64 output heads from 2 ranks' 128-head states.
    let dcp = glue_bytes(&cfg, Form::Dcp, 2, 1);
    let split = 6.0 * 128.0 * 128.0;
    let query = 2.0 * 128.0 * 512.0 + 4.0 * 128.0 * 64.0 + 2.0 * 128.0 * 576.0;
    let merge = 4.0 * (2.0 * 64.0 * 513.0 + 64.0 * 512.0);
    assert_eq!(dcp, norms + row + split + query + merge);
    // TPLA's exact norm: a down-norm kernel of its own reads `c` and writes `Σ c²`.
    let exact = Form::Tpla {
        groups: 2,
        norm: KvNorm::Exact,
        reduce: ReduceAt::Wo,
    };
    let sliced = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wo,
    };
    assert_eq!(
        glue_bytes(&cfg, exact, 2, 1) - glue_bytes(&cfg, sliced, 2, 1),
        4.0 * (256.0 + 1.0)
    );
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
