//! The two-consumer "seesaw" schedule (`SEESAW = 1`, `cuda/lower/seesaw/`) on the host
//! emulation: where it applies, where it changes nothing, and the emulated decode against the
//! CPU backend and the f64 reference with NaN-poisoned outputs (odd block counts, a split shorter
//! than one block, empty splits, several splits, latent 512 and 256, 16- and 32-token blocks, one
//! to three stages, multi-token queries).
//!
//! Needs a C++17 compiler (`$CXX`, else `c++`) for the emulation; without one those tests print
//! SKIP and pass, unless `TPLA_REQUIRE_CXX=1`.

#[path = "support/samples.rs"]
mod samples;

#[path = "support/emu.rs"]
mod emu;

#[path = "support/emu_decode.rs"]
mod emu_decode;

use emu::*;
use emu_decode::*;

/// `WG_KV_SPLIT = 1`: the same two warpgroups on alternate blocks, each with the whole
/// accumulator, merged after the loop (in a file of its own).
#[path = "emu/kv_split.rs"]
mod kv_split;

/// `FULL_GROUPS`: the score warpgroup's ring with a full mbarrier per column group.
#[path = "emu/full_groups.rs"]
mod full_groups;
/// `SCORE_WG = 1`: a score warpgroup beside two value warpgroups (in a file of its own).
#[path = "emu/roles.rs"]
mod roles;
use samples::{latent_decode, DecodeParams};
use tpla_codegen::cuda::{emit, CudaSource, Target};
use tpla_codegen::ir::*;

fn dp(bn: usize, st: usize, lat: usize) -> DecodeParams {
    DecodeParams {
        lat,
        rope: 64,
        block_h: 64,
        block_n: bn,
        stages: st,
        q_bf16: true,
        p_bf16: true,
    }
}

fn emit_with(p: DecodeParams, knobs: &[(&str, i64)], t: Target) -> CudaSource {
    let mut k = latent_decode(p).unwrap();
    k.config
        .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
    emit(&k, t).unwrap()
}

/// The schedule applies to the 64-row decode on Hopper: eight warps, the ring doubled, the
/// warpgroup's start and slots per pair, the row statistics combined and P exchanged, every
/// `P·V` a register-A `wgmma` (own block, then the other's).
#[test]
fn seesaw_applies_to_the_64_row_decode() {
    for (bn, st, lat) in [(32, 2, 512), (16, 3, 512), (32, 1, 256), (16, 2, 256)] {
        let on = emit_with(dp(bn, st, lat), &[("SEESAW", 1)], Target::sm90());
        let off = emit_with(dp(bn, st, lat), &[], Target::sm90());
        let tag = format!("bn{bn} st{st} lat{lat}");
        assert_eq!(on.block_threads, 256, "{tag}");
        assert!(on.code.contains("2 * it_ < pb"), "{tag}: a loop over pairs");
        assert!(on.code.contains("_oth = "), "{tag}: the other slot");
        assert!(on.code.contains("xr") && on.code.contains("xp_["), "{tag}");
        let regs_a = on
            .code
            .lines()
            .filter(|l| l.trim_start().starts_with("tpla_wgmma_m64n") && l.contains("k16_r"))
            .count();
        assert_eq!(regs_a, 2, "{tag}: own and other P·V");
        assert!(!off.code.contains("_oth"), "{tag}");
        assert!(
            on.shared_bytes > off.shared_bytes,
            "{tag}: two blocks per stage"
        );
    }
}

/// `SEESAW = 0` is the default's code byte for byte; where the schedule does not apply (no
/// warpgroup path, 16- or 32-row head blocks, narrow latents that warpgroups do not split,
/// 64-token blocks whose pair ring does not fit) `SEESAW = 1` changes
/// nothing either.
#[test]
fn seesaw_elsewhere_changes_nothing() {
    let same = |p: DecodeParams, knobs: &[(&str, i64)], t: Target| {
        let mut on = knobs.to_vec();
        on.push(("SEESAW", 1));
        let mut off = knobs.to_vec();
        off.push(("SEESAW", 0));
        // The knob is named in the source's header comment only.
        let code = |knobs: &[(&str, i64)]| {
            emit_with(p, knobs, t)
                .code
                .replace(",SEESAW=0", "")
                .replace(",SEESAW=1", "")
        };
        let base = code(knobs);
        assert!(code(&off) == base, "SEESAW=0 changed {p:?} {knobs:?}");
        assert!(code(&on) == base, "SEESAW=1 changed {p:?} {knobs:?}");
    };
    let sm90 = Target::sm90();
    same(dp(32, 2, 512), &[], Target::new(8, 0));
    same(dp(32, 2, 512), &[], sm90.with_wgmma(false));
    same(
        DecodeParams {
            block_h: 32,
            ..dp(32, 2, 512)
        },
        &[],
        sm90,
    );
    same(
        DecodeParams {
            block_h: 16,
            ..dp(32, 2, 512)
        },
        &[],
        sm90,
    );
    same(dp(32, 2, 128), &[], sm90);
    same(dp(32, 2, 64), &[("WG_SPLIT", 32)], sm90);
    same(dp(64, 2, 512), &[], sm90);
    same(dp(32, 2, 512), &[("WARPS", 4)], sm90);
    // An f32-labelled P keeps its hi/lo split gemm: never rounded to bf16 for the exchange.
    same(
        DecodeParams {
            p_bf16: false,
            ..dp(32, 2, 512)
        },
        &[],
        sm90,
    );
    let bad = {
        let mut k = latent_decode(dp(32, 2, 512)).unwrap();
        k.config.push(("SEESAW".into(), 2));
        emit(&k, sm90).unwrap_err().to_string()
    };
    assert!(bad.contains("SEESAW"), "{bad}");
}

/// Under `PRODUCER = 1` the seesaw consumers are fed by the producer warpgroup: 384 threads,
/// `2 STAGES` producer stages (one per ring slot) streamed up to an even block count, the
/// consumers waiting on both slots' full mbarriers and arriving on both empty ones (256
/// arrivals), no `cp.async` of their own, and 240 registers each after the producer's 24.
#[test]
fn seesaw_with_producer_applies() {
    for (bn, st, lat) in [(32, 2, 512), (16, 3, 256), (32, 1, 256)] {
        let src = emit_with(
            dp(bn, st, lat),
            &[("SEESAW", 1), ("PRODUCER", 1)],
            Target::sm90(),
        );
        let code = &src.code;
        let tag = format!("bn{bn} st{st} lat{lat}");
        let slots = 2 * st;
        assert_eq!(src.block_threads, 384, "{tag}");
        assert!(
            code.contains("2 * it_ < pb") && code.contains("_oth = "),
            "{tag}"
        );
        assert!(
            code.contains("+ 1) & ~1); ++j_)"),
            "{tag}: pairs up to an even count"
        );
        assert!(
            code.contains(&format!("tpla_mbar_init(&tpla_mbar[{slots} + i_], 256)")),
            "{tag}: both consumer warpgroups release a slot"
        );
        assert!(
            code.contains(&format!(
                "tpla_mbar_wait(&tpla_mbar[(2 * it_ + 1) % {slots}], (it_ / {st}) & 1)"
            )),
            "{tag}: the other slot is waited for too"
        );
        assert!(
            code.contains(&format!(
                "tpla_mbar_arrive(&tpla_mbar[{slots} + (2 * it_ + 1) % {slots}])"
            )),
            "{tag}"
        );
        assert!(code.contains("tpla_setmaxnreg_inc<240>()"), "{tag}");
        let consumers = code.rsplit("tpla_setmaxnreg_inc<240>();").next().unwrap();
        // (The query tile's own copies, issued by the consumers that read it, aside.)
        assert!(
            !consumers
                .replace("tpla_cp_async16(d_, g_ + o_, true);", "")
                .contains("tpla_cp_async16("),
            "{tag}: consumers never copy the cache"
        );
        assert!(
            !consumers.contains("__syncthreads"),
            "{tag}: named barriers only"
        );
    }
}

/// The seesaw consumers fed by the `cp.async` producer warpgroup, emulated vs the CPU backend
/// and the f64 reference: odd block counts, a split shorter than a block, an empty split,
/// several splits, latent 512 and 256, 16-, 32- and 64-token blocks, one to three stages.
#[test]
fn emulated_seesaw_producer_decode() {
    let Some(cxx) = skip_without_cxx("emulated_seesaw_producer_decode") else {
        return;
    };
    let ws = &[("SEESAW", 1), ("PRODUCER", 1)];
    let sm90 = Target::sm90();
    decode_case_with(&cxx, dp(32, 2, 512), ws, sm90, 64, &[130, 20, 1], 2, 41);
    decode_case_with(&cxx, dp(16, 3, 256), ws, sm90, 64, &[301, 75], 2, 42);
    decode_case_with(&cxx, dp(32, 1, 256), ws, sm90, 50, &[97, 33], 3, 43);
    decode_case_with(&cxx, dp(64, 2, 256), ws, sm90, 64, &[300, 64], 2, 44);
}

/// Emulated decode with the schedule vs the CPU backend and the f64 reference (NaN-poisoned
/// outputs): odd block counts (the last pair's odd block past the split), a split shorter than
/// one block, empty splits, several splits, latent 512 and 256, 16-, 32- and 64-token blocks,
/// one to three stages.
#[test]
fn emulated_seesaw_decode() {
    let Some(cxx) = skip_without_cxx("emulated_seesaw_decode") else {
        return;
    };
    let ss = &[("SEESAW", 1)];
    // 130 tokens in 2 splits: 65 + 65 -> 3 blocks of 32 per split (odd); 20 < one block; the
    // third sequence's second split is empty.
    decode_case_with(
        &cxx,
        dp(32, 2, 512),
        ss,
        Target::sm90(),
        64,
        &[130, 20, 1],
        2,
        31,
    );
    // Latent 256 (eight warps forced), 16-token blocks, three stages: pairs refill the ring.
    decode_case_with(
        &cxx,
        dp(16, 3, 256),
        ss,
        Target::sm90(),
        64,
        &[301, 75],
        2,
        32,
    );
    // One stage, a partial head block (50 of 64 rows), three splits.
    decode_case_with(
        &cxx,
        dp(32, 1, 256),
        ss,
        Target::sm90(),
        50,
        &[97, 33],
        3,
        33,
    );
    // 64-token blocks (latent 256: the pair ring fits), odd block counts in both splits.
    decode_case_with(
        &cxx,
        dp(64, 2, 256),
        ss,
        Target::sm90(),
        64,
        &[300, 64],
        2,
        35,
    );
    // Full width, 16-token blocks, one split of many pairs with a partial last block.
    decode_case_with(&cxx, dp(16, 2, 512), ss, Target::sm90(), 64, &[157], 1, 34);
}

/// Multi-token queries (the library kernel at `SQ = 2`): the causal limit per row and block
/// (`len - s_q + row - kv.start()`) is an integer tile in each warpgroup's row registers (the
/// layout pass pulls it in, `cuda/layout.rs`), so the two warpgroups mask their own blocks with
/// their own block starts and the schedule applies; the decode (alone and with the TMA
/// producer) matches the CPU backend. (Until 2026-12-05 the limit was a shared-memory tile both
/// warpgroups would have shared with different starts, and the schedule refused the loop.)
#[test]
fn emulated_seesaw_multi_token_decode() {
    let Some(cxx) = skip_without_cxx("emulated_seesaw_multi_token_decode") else {
        return;
    };
    // The last case with the TMA producer warpgroup.
    for (i, (heads, bn, lat, lens, splits, producer)) in [
        (32usize, 32i64, 512i64, &[70i32, 1, 33][..], 2usize, 0i64),
        (32, 16, 256, &[45, 2], 3, 0),
        (32, 32, 256, &[99, 40], 2, 0),
        (32, 32, 256, &[99, 40], 2, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let sq = 2i64;
        let k = mtp_kernel(
            lat,
            sq,
            &[
                ("BLOCK_H", 64),
                ("BLOCK_N", bn),
                ("STAGES", 2),
                ("WG_SPLIT", 128),
                ("SEESAW", 1),
                ("PRODUCER", producer),
                ("TMA", producer),
            ],
        );
        let src = emit(&k, Target::sm90()).unwrap();
        assert!(
            src.code.contains("_oth = "),
            "the seesaw applies: the causal limit lives in registers"
        );
        assert_eq!(src.code.contains("tpla_setmaxnreg_inc<"), producer > 0);
        let tag = format!("seesaw_mtp_{i}_bn{bn}_lat{lat}_ws{producer}");
        check_multi_token_decode(
            &cxx,
            &k,
            sq as usize * heads,
            lat as usize,
            lens,
            splits,
            50 + i as u64,
            &tag,
        );
    }
}

/// The pattern check refuses loops that are not the online softmax it is derived from: the
/// running max combined by `min`, a row sum subtracted, the max reduced over the other axis
/// of a per-block tile. Each mutation of the decode's loop leaves `SEESAW = 1` without effect.
#[test]
fn seesaw_pattern_refuses_other_loops() {
    let base = || {
        let mut k = latent_decode(dp(32, 2, 512)).unwrap();
        k.config.push(("SEESAW".into(), 1));
        k
    };
    let applied = |k: &Kernel| {
        let code = emit(k, Target::sm90()).unwrap().code;
        code.contains("_oth = ")
    };
    assert!(applied(&base()));
    fn loop_body(k: &mut Kernel) -> &mut Vec<Stmt> {
        k.body
            .iter_mut()
            .find_map(|s| match s {
                Stmt::PagedBlocks { body, .. } => Some(body),
                _ => None,
            })
            .unwrap()
    }
    // Reductions of the body, by op.
    let reduced = |k: &mut Kernel, want: ReduceOp| -> TileId {
        loop_body(k)
            .iter()
            .find_map(|s| match s {
                Stmt::Assign {
                    dst,
                    op: TileOp::Reduce { op, .. },
                } if *op == want => Some(*dst),
                _ => None,
            })
            .unwrap()
    };
    // Rewrites the binary op that consumes tile `t`.
    let rewrite = |k: &mut Kernel, t: TileId, from: BinaryOp, to: BinaryOp| {
        let mut done = false;
        for s in loop_body(k).iter_mut() {
            if let Stmt::Assign {
                op: TileOp::Binary(op, x, y),
                ..
            } = s
            {
                if *op == from && (*x == Operand::Tile(t) || *y == Operand::Tile(t)) {
                    *op = to;
                    done = true;
                }
            }
        }
        assert!(done);
    };
    let mut k = base();
    let mx = reduced(&mut k, ReduceOp::Max);
    rewrite(&mut k, mx, BinaryOp::Max, BinaryOp::Min);
    assert!(!applied(&k), "a running min is not the pattern");
    let mut k = base();
    let sum = reduced(&mut k, ReduceOp::Sum);
    rewrite(&mut k, sum, BinaryOp::Add, BinaryOp::Sub);
    assert!(!applied(&k), "a subtracted row sum is not the pattern");
    let mut k = base();
    for s in loop_body(&mut k).iter_mut() {
        if let Stmt::Assign {
            op:
                TileOp::Reduce {
                    op: ReduceOp::Max,
                    axis,
                    ..
                },
            ..
        } = s
        {
            *axis = 0;
        }
    }
    // (The mutated kernel may not validate; either way the schedule must not apply.)
    if let Ok(src) = emit(&k, Target::sm90()) {
        assert!(
            !src.code.contains("_oth = "),
            "a max over the heads is not the pattern"
        );
    }
}
