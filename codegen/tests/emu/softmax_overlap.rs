//! `SOFTMAX_OVERLAP = 1` under host emulation: the producer-fed decode loop rotated so block
//! `i`'s P·V is issued after block `i + 1`'s q·kᵀ and waited for after its softmax
//! (`cuda/lower/softmax_overlap.rs`), against the f64 reference.

use super::*;

/// The rotation on every warpgroup geometry it applies to (two row-stacked warpgroups of a
/// 128-row tile, one warpgroup of 64 rows, two warpgroups splitting a 512-wide accumulator),
/// with cp.async and TMA producers, two and three stages, empty splits and partial blocks; and
/// where it does not apply (no producer, one stage), the knob changes nothing.
#[test]
fn emulated_decode_softmax_overlap() {
    let Some(cxx) = skip_without_cxx("emulated_decode_softmax_overlap") else {
        return;
    };
    let dp = |bh, bn, st, lat| DecodeParams {
        lat,
        rope: 64,
        block_h: bh,
        block_n: bn,
        stages: st,
        q_bf16: true,
        p_bf16: true,
    };
    let emit_with = |p: DecodeParams, knobs: &[(&str, i64)]| {
        let mut k = latent_decode(p).unwrap();
        k.config
            .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
        tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap().code
    };
    let on = [("PRODUCER", 1), ("SOFTMAX_OVERLAP", 1)];
    // The rotated loop: block i's q·kᵀ (waited for), then block i - 1's rescale and P·V from
    // the packed P, the softmax between the warpgroup's two scheduling barriers, the P·V's wait,
    // the previous slot released; the last P·V after the loop.
    let code = emit_with(dp(128, 64, 3, 256), &on);
    let body = &code[code.find("for (int it_").unwrap()..];
    let at = |pat: &str| body.find(pat).unwrap_or_else(|| panic!("no {pat}"));
    let (qk, pv) = (
        at("tpla_wgmma_m64n64k16_00("),
        at("tpla_wgmma_m64n256k16_r1(t"),
    );
    let bar = "tpla_bar_sync(5 + (warp >> 2), 128);";
    assert!(
        qk < pv && pv < at(bar),
        "q·kᵀ, the previous P·V, then the softmax"
    );
    assert_eq!(body.matches(bar).count(), 2);
    assert!(!body.contains("tpla_wgmma_wait1"));
    assert!(body.contains("if (it_ > 0) tpla_mbar_arrive(&tpla_mbar[3 + (it_ + 3 - 1) % 3]);"));
    assert_eq!(
        body.matches("tpla_wgmma_m64n256k16_r1(").count(),
        2,
        "in the loop and after it"
    );
    assert!(!body.contains("tpla_mbar_arrive(&tpla_mbar[3 + it_ % 3])"));
    for p in [dp(64, 64, 2, 256), dp(64, 64, 2, 512), dp(128, 32, 2, 128)] {
        assert!(
            emit_with(p, &on).contains("unsigned pprev"),
            "rotated at {p:?}"
        );
    }
    // Where it does not apply the generated code is the knob-free kernel's.
    let same = |p: DecodeParams, knobs: &[(&str, i64)]| {
        let mut with = knobs.to_vec();
        with.push(("SOFTMAX_OVERLAP", 1));
        emit_with(p, &with).replace(",SOFTMAX_OVERLAP=1", "") == emit_with(p, knobs)
    };
    assert!(same(dp(128, 64, 3, 256), &[]), "no producer");
    assert!(same(dp(64, 64, 1, 256), &[("PRODUCER", 1)]), "one stage");
    // Nor over an FP8 cache (its producer converts into the ring; not tried rotated).
    let fp8 = |on: bool| {
        let mut knobs = vec![("KV_FP8", 256i64), ("PRODUCER", 1)];
        if on {
            knobs.push(("SOFTMAX_OVERLAP", 1));
        }
        let k = latent_decode_with(dp(64, 64, 2, 256), &knobs).unwrap();
        let code = tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap().code;
        code.replace(",SOFTMAX_OVERLAP=1", "")
    };
    assert_eq!(fp8(true), fp8(false), "FP8 cache");
    let case = |p, knobs: &[(&str, i64)], heads, lens: &[i32], splits, seed| {
        decode_case_with(&cxx, p, knobs, Target::sm90(), heads, lens, splits, seed)
    };
    let tma = [("PRODUCER", 1), ("TMA", 1), ("SOFTMAX_OVERLAP", 1)];
    case(dp(128, 64, 3, 256), &on, 128, &[390, 41, 0], 3, 51);
    case(dp(128, 64, 3, 256), &tma, 96, &[300, 64], 2, 52);
    case(dp(128, 32, 2, 128), &tma, 100, &[75, 300], 2, 53);
    case(dp(64, 64, 2, 256), &on, 64, &[200, 7], 2, 54);
    case(dp(64, 64, 2, 512), &tma, 40, &[257, 130], 2, 55);
}
