//! `SCORE_WG = 1` under host emulation: a score warpgroup computes each block's q·kᵀ and
//! softmax and issues the ring's copies, two value warpgroups keep the accumulator and run the
//! rescale and P·V one block behind (`codegen/src/cuda/lower/roles.rs`).

use super::emu::*;
use super::emu_decode::*;
use super::samples::{latent_decode_with, DecodeParams};
use tpla_codegen::cuda::{emit, Target};

fn dp(bn: usize, st: usize, lat: usize) -> DecodeParams {
    DecodeParams::bf16(lat, 64, bn, st)
}

const SCORE_BRANCH: &str = "if (warp < 4) {\n";

/// Where it applies (64-row tiles; at latent 512 two accumulator warpgroups): 384 threads and no
/// producer warpgroup, the two role loops with their handoff mbarriers and no block-wide barrier
/// inside them, the value warpgroups' P·V on `wgmma` from the shared copy of P; at the shard
/// widths one value warpgroup (256 threads).
#[test]
fn score_warpgroup_applies_to_the_latent_decode() {
    for (p, tma) in [
        (dp(32, 3, 512), 1),
        (dp(32, 4, 512), 1),
        (dp(64, 2, 512), 0),
    ] {
        let knobs = [("PRODUCER", 1), ("TMA", tma), ("SCORE_WG", 1)];
        let src = emit(&latent_decode_with(p, &knobs).unwrap(), Target::sm90()).unwrap();
        let code = &src.code;
        assert_eq!(src.block_threads, 384, "{p:?}");
        assert!(
            src.score_wg,
            "{p:?}: the source says the score warpgroup applied"
        );
        assert!(
            !code.contains("tpla_setmaxnreg_dec<"),
            "{p:?}: no producer warpgroup"
        );
        let roles = &code[code.find(SCORE_BRANCH).expect("the score branch")..];
        let roles = &roles[..roles.find("sh_t2_").expect("m published after the loops")];
        assert!(
            !roles.contains("tpla_bar_sync(1, 384)"),
            "{p:?}: a block barrier in the roles"
        );
        // The handoffs on mbarriers after the ring's `2 * STAGES` (P_READY, then P_FREE), each
        // thread arriving (release) and waiting (acquire) for itself.
        let (ready, free) = (2 * p.stages, 2 * p.stages + 1);
        for handoff in [
            format!("tpla_mbar_arrive(&tpla_mbar[{ready}])"),
            format!("tpla_mbar_wait(&tpla_mbar[{ready}], it_ & 1)"),
            format!("tpla_mbar_arrive(&tpla_mbar[{free}])"),
            format!("tpla_mbar_wait(&tpla_mbar[{free}], (it_ - 1) & 1)"),
        ] {
            assert!(roles.contains(&handoff), "{p:?}: {handoff}");
        }
        assert!(
            code.contains(&format!("tpla_mbar_init(&tpla_mbar[{free}], 256)")),
            "{p:?}: P_FREE counts both value warpgroups"
        );
        assert!(
            !roles.contains("tpla_bar_arrive("),
            "{p:?}: no named-barrier handoff"
        );
        assert!(
            roles.contains("tpla_wgmma_m64n256k16"),
            "{p:?}: P·V on wgmma"
        );
        assert!(src.shared_bytes <= 232448, "{p:?}: {} B", src.shared_bytes);
    }
    // At the shard widths one warpgroup holds the accumulator: the score warpgroup and one
    // value warpgroup, 256 threads, the role barriers and the ring's releases counting them.
    for lat in [256, 128] {
        let knobs = [("PRODUCER", 1), ("TMA", 1), ("SCORE_WG", 1)];
        let src = emit(
            &latent_decode_with(dp(64, 4, lat), &knobs).unwrap(),
            Target::sm90(),
        )
        .unwrap();
        assert_eq!(src.block_threads, 256, "lat {lat}");
        assert!(
            src.code.contains("tpla_mbar_init(&tpla_mbar[9], 128)"),
            "lat {lat}: P_FREE counts the one value warpgroup"
        );
        assert!(
            src.code.contains("tpla_mbar_init(&tpla_mbar[4 + i_], 128)"),
            "lat {lat}"
        );
    }
}

/// The emulated decode against the f64 reference with NaN-poisoned outputs: TMA and `cp.async`
/// copies, 32- and 64-token blocks, two to four stages, empty and one-block splits, odd lengths,
/// a partial head block.
#[test]
fn emulated_decode_score_warpgroup() {
    let Some(cxx) = skip_without_cxx("emulated_decode_score_warpgroup") else {
        return;
    };
    let tma = [("PRODUCER", 1), ("TMA", 1), ("SCORE_WG", 1)];
    let cp = [("PRODUCER", 1), ("SCORE_WG", 1)];
    let t = Target::sm90();
    decode_case_with(&cxx, dp(32, 3, 512), &tma, t, 64, &[300, 41, 0], 2, 71);
    decode_case_with(&cxx, dp(32, 4, 512), &tma, t, 40, &[130, 33], 1, 72);
    decode_case_with(&cxx, dp(64, 2, 512), &cp, t, 64, &[200, 7], 3, 73);
    decode_case_with(&cxx, dp(32, 2, 512), &cp, t, 64, &[65, 1], 2, 74);
    // With laggards (warps drifting apart): the copies into a slot wait for both value
    // warpgroups' release (without that wait this fails), P and the rescale for their barriers.
    // The shard widths: one value warpgroup.
    decode_case_with(&cxx, dp(64, 4, 256), &tma, t, 64, &[500, 41, 0], 2, 77);
    decode_case_with(&cxx, dp(32, 2, 128), &cp, t, 40, &[130, 1], 3, 78);
    with_laggards(|| {
        decode_case_with(&cxx, dp(64, 2, 512), &cp, t, 64, &[400, 7], 2, 75);
        decode_case_with(&cxx, dp(32, 3, 512), &tma, t, 64, &[300, 65], 2, 76);
        decode_case_with(&cxx, dp(64, 3, 256), &cp, t, 64, &[400, 9], 2, 79);
    });
}

/// `PV_FIRST = 1`: the score warpgroup waits for the previous block's P·V before issuing the
/// next q·kᵀ. The same handoffs in another order: emulated against the f64 reference, with
/// laggards, at latent 512 (two value warpgroups) and 256 (one).
#[test]
fn emulated_decode_score_warpgroup_pv_first() {
    let Some(cxx) = skip_without_cxx("emulated_decode_score_warpgroup_pv_first") else {
        return;
    };
    let tma = [
        ("PRODUCER", 1),
        ("TMA", 1),
        ("SCORE_WG", 1),
        ("PV_FIRST", 1),
    ];
    let cp = [("PRODUCER", 1), ("SCORE_WG", 1), ("PV_FIRST", 1)];
    let t = Target::sm90();
    decode_case_with(&cxx, dp(32, 3, 512), &tma, t, 64, &[300, 41, 0], 2, 81);
    with_laggards(|| {
        decode_case_with(&cxx, dp(64, 2, 512), &cp, t, 64, &[400, 7], 2, 82);
        decode_case_with(&cxx, dp(64, 4, 256), &tma, t, 64, &[500, 41, 0], 2, 83);
    });
}

/// The score warpgroup over TMA copies, each value warpgroup refilling its own half.
const SPLIT_RELEASE_KNOBS: [(&str, i64); 4] = [
    ("PRODUCER", 1),
    ("TMA", 1),
    ("SCORE_WG", 1),
    ("SPLIT_RELEASE", 1),
];

/// `SPLIT_RELEASE = 1`: each value warpgroup refills its own half of a slot after its own P·V
/// (TMA), the first one a block copied by `cp.async` whole after the slot's release. Emulated
/// against the f64 reference with laggards, with copies landing in issue order, and with warp
/// stalls on 64-token pages (the GPU agreement test's row that hung: a value warpgroup that
/// also waited for the other's half fell two phases behind that half's mbarrier): 32- and
/// 64-token blocks, 2-3 stages, lengths that end inside a block (the `cp.async` path) and
/// sequences shorter than the ring.
#[test]
fn emulated_decode_score_warpgroup_split_release() {
    let Some(cxx) = skip_without_cxx("emulated_decode_score_warpgroup_split_release") else {
        return;
    };
    let knobs = SPLIT_RELEASE_KNOBS;
    let t = Target::sm90();
    // Where it applies (two value warpgroups over TMA) the source says so; not at latent 256
    // (one value warpgroup) nor without the knob.
    let applied = |p, knobs: &[(&str, i64)]| {
        emit(&latent_decode_with(p, knobs).unwrap(), t)
            .unwrap()
            .split_release
    };
    assert!(applied(dp(64, 2, 512), &knobs) && applied(dp(32, 3, 512), &knobs));
    assert!(!applied(dp(64, 2, 256), &knobs));
    assert!(!applied(dp(64, 2, 512), &knobs[..3]));
    decode_case_with(&cxx, dp(64, 2, 512), &knobs, t, 64, &[300, 41, 0], 2, 91);
    with_laggards(|| {
        decode_case_with(&cxx, dp(32, 3, 512), &knobs, t, 64, &[400, 65], 2, 92);
        with_fifo_landing(|| {
            decode_case_with(&cxx, dp(64, 2, 512), &knobs, t, 64, &[700, 130, 7], 3, 93);
        });
        with_stalls(|| {
            with_page(64, || {
                decode_case_with(&cxx, dp(32, 3, 512), &knobs, t, 64, &[1000, 333, 9], 3, 95);
            });
        });
    });
}

/// Without the value warpgroups' named barrier before each refills its half, a warp's elected
/// thread copies the next block over columns its warpgroup's other warps may still be reading
/// (a warp's `wgmma` wait covers its own rows only): the emulated decode then differs.
#[test]
fn split_release_without_its_warpgroup_barrier_fails() {
    let Some(cxx) = skip_without_cxx("split_release_without_its_warpgroup_barrier_fails") else {
        return;
    };
    let knobs = SPLIT_RELEASE_KNOBS;
    let k = latent_decode_with(dp(64, 2, 512), &knobs).unwrap();
    let mut src = emit(&k, Target::sm90()).unwrap();
    let lines: Vec<&str> = src.code.lines().collect();
    let kept: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.contains("tpla_bar_sync(7"))
        .collect();
    assert_eq!(
        lines.len() - kept.len(),
        2,
        "one barrier per value warpgroup"
    );
    src.code = kept.join("\n");
    super::full_groups::mutated_run_fails(&cxx, &k, &src, "split release");
}

/// Under `SPLIT_RELEASE` each value warpgroup waits for its own half of a block only. Waiting
/// also for the other half (the value warpgroups' wait without the knob), one a whole block
/// behind the other waits for a parity that half's mbarrier has passed twice, refilled by the
/// other warpgroup: with warp stalls the emulated decode deadlocks (the GPU agreement test hung
/// on that row), and the same run of the emitted kernel finishes.
#[test]
fn split_release_waiting_for_both_halves_deadlocks() {
    let Some(cxx) = skip_without_cxx("split_release_waiting_for_both_halves_deadlocks") else {
        return;
    };
    let k = latent_decode_with(dp(32, 3, 512), &SPLIT_RELEASE_KNOBS).unwrap();
    let src = emit(&k, Target::sm90()).unwrap();
    let args = super::full_groups::mutated_args();
    let mut both = src.clone();
    let own = "if (warp < 8) { tpla_mbar_wait(";
    assert_eq!(src.code.matches(own).count(), 1, "one own-half wait");
    both.code = src
        .code
        .lines()
        .map(|l| {
            if l.contains(own) {
                l.replacen("if (warp < 8) {", "{", 1)
                    .replacen("} else {", "", 1)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let run = |s| with_stalls(|| with_laggards(|| run_emu(&cxx, &k, s, &args, "split-halves")));
    run(&src).expect("the emitted kernel under warp stalls");
    match run(&both) {
        Ok(_) => panic!("waiting for both halves under warp stalls finished"),
        Err(err) => assert!(err.contains("deadlock"), "{err}"),
    }
}

/// Multi-token queries under the score warpgroup (the library kernel at `SQ = 2`, 32 heads x 2
/// tokens in the 64-row tile, the causal mask in the score warpgroup's softmax): what `tpla
/// bench`'s `mla-sq2` rows pick at 64 heads. Latent 512 over TMA, with and without each value
/// warpgroup refilling its half, and at latent 256 over `cp.async` (one value warpgroup); with
/// laggards and warp stalls, against the f64 reference.
#[test]
fn emulated_score_warpgroup_multi_token_decode() {
    let Some(cxx) = skip_without_cxx("emulated_score_warpgroup_multi_token_decode") else {
        return;
    };
    for (i, (lat, tma, split, lens, splits)) in [
        (512i64, 1i64, 1i64, &[300i32, 2, 65][..], 2usize),
        (512, 1, 0, &[200, 1], 1),
        (256, 0, 0, &[250, 33], 2),
    ]
    .into_iter()
    .enumerate()
    {
        let (sq, heads) = (2i64, 32usize);
        let knobs = [
            ("BLOCK_H", 64),
            ("BLOCK_N", 64),
            ("STAGES", 2),
            ("PRODUCER", 1),
            ("TMA", tma),
            ("SCORE_WG", 1),
            ("SPLIT_RELEASE", split),
        ];
        let k = mtp_kernel(lat, sq, &knobs);
        assert!(
            emit(&k, Target::sm90()).unwrap().score_wg,
            "{knobs:?}: the score warpgroup applies"
        );
        let tag = format!("score_wg_mtp_{i}_lat{lat}_tma{tma}_split{split}");
        with_stalls(|| {
            with_laggards(|| {
                check_multi_token_decode(
                    &cxx,
                    &k,
                    sq as usize * heads,
                    lat as usize,
                    lens,
                    splits,
                    90 + i as u64,
                    &tag,
                )
            })
        });
    }
}
