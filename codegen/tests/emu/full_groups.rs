//! `FULL_GROUPS` under host emulation: the score warpgroup's ring with one full mbarrier per
//! column group (`codegen/src/cuda/full_groups.rs`), q·kᵀ waiting for each group inside its k
//! loop. The emulator lands bulk copies one at a time (in a pseudo-random order, or in issue
//! order), so a k-step that reads a group before its wait reads the slot's block two before: the
//! mutation below shows it.

use super::emu::*;
use super::emu_decode::*;
use super::samples::{latent_decode_with, DecodeParams};
use tpla_codegen::cuda::{emit, Target};
use tpla_codegen::ir::DType;

fn dp(bn: usize, st: usize, lat: usize) -> DecodeParams {
    DecodeParams::bf16(lat, 64, bn, st)
}

fn knobs(groups: i64) -> [(&'static str, i64); 4] {
    [
        ("PRODUCER", 1),
        ("TMA", 1),
        ("SCORE_WG", 1),
        ("FULL_GROUPS", groups),
    ]
}

/// The emitted ring: `g - 1` more full mbarriers per stage after the handoffs, each group's
/// `expect_tx` carrying its bytes, the waits inside q·kᵀ's k loop, the value warpgroups waiting
/// for every group; `FULL_GROUPS = 1` is the schedule without the knob, byte for byte.
#[test]
fn full_groups_split_the_stage_barrier_by_column_group() {
    let p = dp(64, 2, 512);
    let src = |g: i64| emit(&latent_decode_with(p, &knobs(g)).unwrap(), Target::sm90()).unwrap();
    let plain = emit(
        &latent_decode_with(p, &knobs(1)[..3]).unwrap(),
        Target::sm90(),
    )
    .unwrap();
    assert_eq!(
        src(1).code.replace(",FULL_GROUPS=1", ""),
        plain.code,
        "FULL_GROUPS = 1 changes nothing"
    );
    let three = src(3);
    let code = &three.code;
    // Handoffs at 4 and 5; groups 1 and 2 of stages 0 and 1 at 6 .. 10.
    assert!(
        code.contains("for (int i_ = 0; i_ < 4; ++i_) tpla_mbar_init(&tpla_mbar[6 + i_], 128);")
    );
    assert_eq!(three.shared_bytes, plain.shared_bytes + 32);
    for g in [
        "tpla_mbar[j_ % 2]",
        "tpla_mbar[6 + (j_ % 2) * 2 + 0]",
        "tpla_mbar[6 + (j_ % 2) * 2 + 1]",
    ] {
        assert!(
            code.contains(&format!("tpla_mbar_arrive_expect_tx(&{g}, 24576u);")),
            "{g}: a third of the 64 x 576 block"
        );
    }
    // q·kᵀ in three commit groups, each later one after its group's wait and a wgmma fence.
    assert!(three.group_waits);
    for (k, bar) in [(192, 0), (384, 1)] {
        assert!(
            code.contains(&format!(
                "tpla_wgmma_commit();\n            tpla_mbar_wait(&tpla_mbar[6 + (it_ % 2) * 2 + {bar}], (it_ / 2) & 1);\n            tpla_wgmma_fence();\n            #pragma unroll\n            for (int k_ = {k}; k_ < {}; k_ += 16) {{",
                k + 192
            )),
            "group {} waited before k {k}",
            bar + 1
        );
    }
    // Nine groups: one per 64-column box.
    let nine = src(9).code;
    assert!(nine.contains("tpla_mbar_arrive_expect_tx(&tpla_mbar[6 + (j_ % 2) * 8 + 7], 8192u);"));
    assert!(nine.contains("for (int k_ = 512; k_ < 576; k_ += 16) {"));
    // Without TMA the knob is refused when the config is read.
    let e = latent_decode_with(p, &[("PRODUCER", 1), ("SCORE_WG", 1), ("FULL_GROUPS", 3)])
        .map(|k| emit(&k, Target::sm90()).map(|_| ()))
        .map_err(|e| e.to_string());
    assert!(
        matches!(&e, Err(m) if m.contains("FULL_GROUPS")) || matches!(&e, Ok(Err(_))),
        "{e:?}"
    );
}

/// The emulated decode against the CPU backend and the f64 reference with NaN-poisoned outputs:
/// 3 and 9 groups at latent 512, 3 uneven groups over the shard's 5 boxes, 32- and 64-token
/// blocks, pages of 16 (four boxes of rows per block), odd lengths, an empty split; with laggards,
/// and with the copies landing in issue order.
#[test]
fn emulated_decode_with_full_groups() {
    let Some(cxx) = skip_without_cxx("emulated_decode_with_full_groups") else {
        return;
    };
    let t = Target::sm90();
    decode_case_with(&cxx, dp(64, 2, 512), &knobs(3), t, 64, &[300, 41, 0], 2, 81);
    decode_case_with(&cxx, dp(32, 3, 512), &knobs(9), t, 40, &[200, 65], 1, 82);
    decode_case_with(&cxx, dp(64, 4, 256), &knobs(3), t, 64, &[500, 41], 2, 83);
    with_laggards(|| {
        decode_case_with(&cxx, dp(64, 2, 512), &knobs(9), t, 64, &[400, 7], 2, 84);
        decode_case_with(&cxx, dp(32, 2, 128), &knobs(2), t, 64, &[130, 70], 1, 85);
    });
    // Copies landing in issue order, as in the mutation test below.
    with_fifo_landing(|| {
        decode_case_with(
            &cxx,
            dp(64, 2, 512),
            &knobs(3),
            t,
            64,
            &[640, 384, 512],
            1,
            86,
        );
    });
}

/// The producer schedule without the score warpgroup: the consumers' own q·kᵀ takes the waits
/// (q·kᵀ split by columns across the warpgroups at latent 512, `WG_SPLIT = 32`; one warpgroup
/// at the shard width; two on alternate blocks, `WG_KV_SPLIT`), against the CPU backend and the
/// f64 reference, with laggards and with the copies landing in issue order.
#[test]
fn emulated_plain_producer_decode_with_full_groups() {
    let Some(cxx) = skip_without_cxx("emulated_plain_producer_decode_with_full_groups") else {
        return;
    };
    let t = Target::sm90();
    let plain = |g: i64| [("PRODUCER", 1), ("TMA", 1), ("FULL_GROUPS", g)];
    let split32 = [
        ("PRODUCER", 1),
        ("TMA", 1),
        ("FULL_GROUPS", 3),
        ("WG_SPLIT", 32),
    ];
    let kv = [
        ("PRODUCER", 1),
        ("TMA", 1),
        ("FULL_GROUPS", 3),
        ("WG_KV_SPLIT", 1),
    ];
    decode_case_with(&cxx, dp(64, 2, 512), &split32, t, 64, &[300, 41, 0], 2, 91);
    decode_case_with(&cxx, dp(64, 3, 256), &plain(5), t, 64, &[500, 9], 2, 92);
    decode_case_with(&cxx, dp(64, 4, 256), &kv, t, 64, &[700, 130], 1, 93);
    with_laggards(|| {
        decode_case_with(&cxx, dp(32, 2, 512), &split32, t, 40, &[200, 65], 1, 94);
        decode_case_with(&cxx, dp(64, 4, 256), &kv, t, 64, &[520, 64], 2, 95);
    });
    with_fifo_landing(|| {
        decode_case_with(&cxx, dp(64, 3, 256), &plain(3), t, 64, &[640, 384], 1, 96);
    });
}

/// Without the waits inside q·kᵀ (the later groups read unwaited) the emulated decode is wrong:
/// the emulation catches a missing group wait. (The same kernel with its waits passes the same
/// way, `emulated_decode_with_full_groups`.)
#[test]
fn a_missing_group_wait_fails_the_emulation() {
    let Some(cxx) = skip_without_cxx("a_missing_group_wait_fails_the_emulation") else {
        return;
    };
    let plain = [
        ("PRODUCER", 1),
        ("TMA", 1),
        ("FULL_GROUPS", 3),
        ("WG_SPLIT", 32),
    ];
    for (label, extra) in [
        ("score warpgroup", &knobs(3)[..]),
        ("plain producer", &plain[..]),
    ] {
        mutated_decode_fails(&cxx, extra, label);
    }
}

fn mutated_decode_fails(cxx: &str, extra: &[(&str, i64)], label: &str) {
    let p = dp(64, 2, 512);
    let k = latent_decode_with(p, extra).unwrap();
    let mut src = emit(&k, Target::sm90()).unwrap();
    assert!(src.group_waits, "{label}");
    // Drop the waits inside q·kᵀ (a group's wait is the one followed by a wgmma fence); the
    // value warpgroups' waits for the groups stay.
    let lines: Vec<&str> = src.code.lines().collect();
    let mut dropped = 0;
    let kept: Vec<&str> = (0..lines.len())
        .filter(|&i| {
            let qk_wait = lines[i].contains("tpla_mbar_wait(")
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.contains("tpla_wgmma_fence();"));
            dropped += qk_wait as usize;
            !qk_wait
        })
        .map(|i| lines[i])
        .collect();
    assert_eq!(dropped, 2, "{label}: the two later groups' waits in q·kᵀ");
    src.code = kept.join("\n");
    mutated_run_fails(cxx, &k, &src, label);
}

/// Runs a mutated MLA decode source (64-row tiles, latent 512, 64-token pages) emulated with
/// copies landing in issue order, and asserts that it no longer matches the CPU backend.
pub(super) fn mutated_run_fails(
    cxx: &str,
    k: &tpla_codegen::ir::Kernel,
    src: &tpla_codegen::cuda::CudaSource,
    label: &str,
) {
    let args = mutated_args();
    // Copies landing in issue order (group 0's boxes first): the unwaited groups are still in
    // flight when q·kᵀ reads them, holding the block two before.
    let gpu = match with_fifo_landing(|| run_emu(cxx, k, src, &args, "mutated")) {
        Ok(gpu) => gpu,
        // The emulator itself refused the run (a missing wait, a deadlock): that fails too.
        Err(e) if e.contains("emu: ") => return,
        Err(e) => panic!("{label}: {e}"),
    };
    let cpu = run_cpu(k, &args);
    let diff = max_diff(&gpu[2], &cpu[2]);
    assert!(
        diff.is_nan() || diff > 2e-2,
        "{label}: the mutated decode matched the CPU backend (max diff {diff})"
    );
}

/// The arguments of the mutation tests' latent-512 decode: three sequences of 640, 384 and 512
/// tokens on 64-token pages, 64 heads, one split, outputs NaN.
pub(super) fn mutated_args() -> Vec<HostArg> {
    let lens = [640, 384, 512];
    let (batch, heads, d) = (lens.len(), 64, 576);
    let mut rng = Rng::new(86);
    let q = bf16_round(&rng.vec(batch * heads * d));
    vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![batch, heads, d],
            data: Bytes::from_bf16(&q),
        },
        paged(&mut rng, d, &lens, 64, false),
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![1, batch, heads, 512],
            data: Bytes::from_f32(&vec![f32::NAN; batch * heads * 512]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![1, batch, heads],
            data: Bytes::from_f32(&vec![f32::NAN; batch * heads]),
        },
        HostArg::F32(1.0 / (d as f32).sqrt() * 4.0),
    ]
}
