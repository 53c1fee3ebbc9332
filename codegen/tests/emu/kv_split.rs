//! `WG_KV_SPLIT = 1` under host emulation: two consumer warpgroups take alternate blocks of the
//! producer-fed loop of a 64-row tile, each with the whole accumulator, and merge after the loop
//! (`codegen/src/cuda/lower/kv_split.rs`).

use super::emu::*;
use super::emu_decode::*;
use super::samples::{latent_decode, latent_decode_with, DecodeParams};
use tpla_codegen::cuda::{emit, Target};
use tpla_codegen::ir::*;

fn dp(bh: usize, bn: usize, st: usize, lat: usize) -> DecodeParams {
    DecodeParams::bf16(lat, bh, bn, st)
}

const SPLIT_LOOP: &str = "for (int it_ = (warp >> 2); it_ < ";

/// Where it applies: eight consumer warps and the producer (384 threads), each warpgroup on its
/// own blocks, the empty barriers released by one warpgroup, the merge after the loop, the
/// stores by warpgroup 0 only; no barrier inside the loop.
#[test]
fn kv_split_applies_to_the_64_row_shard_decode() {
    let on = [("PRODUCER", 1), ("WG_KV_SPLIT", 1)];
    for (p, tma) in [
        (dp(64, 64, 2, 256), 0),
        (dp(64, 64, 4, 256), 1),
        (dp(64, 32, 2, 256), 1),
        (dp(64, 64, 2, 128), 0),
    ] {
        let mut knobs = on.to_vec();
        knobs.push(("TMA", tma));
        let k = latent_decode_with(p, &knobs).unwrap();
        let src = emit(&k, Target::sm90()).unwrap();
        let code = &src.code;
        assert_eq!(src.block_threads, 384, "{p:?}");
        let body = &code[code.find(SPLIT_LOOP).expect("the split loop")..];
        let lp = &body[..body.find("ka0_").unwrap()];
        assert!(
            !lp.contains("tpla_bar_sync(1, 256)"),
            "{p:?}: no consumer barrier in the loop"
        );
        assert!(code.contains(&format!(
            "tpla_mbar_init(&tpla_mbar[{} + i_], 128);",
            p.stages
        )));
        assert!(body.contains("ka1_[r_] = tpla_exp2(m1_ - mx_);"));
        assert!(code.contains("tpla_setmaxnreg_inc<240>"));
    }
}

/// Elsewhere the knob changes nothing: no producer in the geometry (a pre-Hopper target), a
/// 128-row tile (two warpgroups already), latent 512 at 64 rows (its accumulator needs both
/// warpgroups' registers), a forced warp count, an FP8 cache.
#[test]
fn kv_split_elsewhere_changes_nothing() {
    let same = |p: DecodeParams, knobs: &[(&str, i64)], t: Target| {
        let mut with = knobs.to_vec();
        with.push(("WG_KV_SPLIT", 1));
        let a = emit(&latent_decode_with(p, &with).unwrap(), t)
            .unwrap()
            .code;
        let b = emit(&latent_decode_with(p, knobs).unwrap(), t)
            .unwrap()
            .code;
        a.replace(",WG_KV_SPLIT=1", "") == b
    };
    let ws = [("PRODUCER", 1)];
    assert!(same(dp(64, 64, 2, 256), &ws, Target::new(8, 0)), "sm_80");
    assert!(same(dp(128, 64, 2, 256), &ws, Target::sm90()), "128 rows");
    assert!(same(dp(64, 64, 2, 512), &ws, Target::sm90()), "latent 512");
    assert!(same(dp(64, 64, 1, 256), &ws, Target::sm90()), "one stage");
    assert!(
        same(
            dp(32, 64, 2, 256),
            &[("PRODUCER", 1), ("WARPS", 4)],
            Target::sm90()
        ),
        "WARPS"
    );
    assert!(
        same(
            dp(64, 64, 2, 256),
            &[("PRODUCER", 1), ("KV_FP8", 256)],
            Target::sm90()
        ),
        "FP8 cache"
    );
    // It needs the producer: a config error naming the knob.
    let e = emit(
        &latent_decode_with(dp(64, 64, 2, 256), &[("WG_KV_SPLIT", 1)]).unwrap(),
        Target::sm90(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("WG_KV_SPLIT"), "{e}");
}

/// The pattern check: a loop that is not the online softmax the merge is derived from (the
/// denominator rescaled by something else than `exp2(m - m_new)`, or the accumulator not
/// starting at zero) keeps one warpgroup.
#[test]
fn kv_split_pattern_refuses_other_loops() {
    let base = || latent_decode_with(dp(64, 64, 2, 256), &[("PRODUCER", 1), ("WG_KV_SPLIT", 1)]);
    let applied = |k: &Kernel| emit(k, Target::sm90()).unwrap().code.contains(SPLIT_LOOP);
    assert!(applied(&base().unwrap()));
    // l = l · l + rowsum (alpha replaced by l itself).
    let mut k = base().unwrap();
    let body = k
        .body
        .iter_mut()
        .find_map(|s| match s {
            Stmt::PagedBlocks { body, .. } => Some(body),
            _ => None,
        })
        .unwrap();
    // rs = reduce_sum(p); l = la + rs; la = l · alpha  ->  la = l · l.
    let rs = body
        .iter()
        .find_map(|s| match s {
            Stmt::Assign {
                dst,
                op: TileOp::Reduce {
                    op: ReduceOp::Sum, ..
                },
            } => Some(*dst),
            _ => None,
        })
        .unwrap();
    let (l, la) = body
        .iter()
        .find_map(|s| match s {
            Stmt::Assign {
                dst,
                op: TileOp::Binary(BinaryOp::Add, Operand::Tile(a), Operand::Tile(b)),
            } if *b == rs => Some((*dst, *a)),
            _ => None,
        })
        .unwrap();
    for s in body.iter_mut() {
        if let Stmt::Assign { dst, op } = s {
            if *dst == la {
                *op = TileOp::Binary(BinaryOp::Mul, Operand::Tile(l), Operand::Tile(l));
            }
        }
    }
    assert!(
        !applied(&k),
        "a denominator rescaled by itself is not the pattern"
    );
    // The accumulator starting at one.
    let mut k = base().unwrap();
    let acc = k
        .body
        .iter()
        .find_map(|s| match s {
            Stmt::Assign {
                dst,
                op: TileOp::Full(_),
            } if k.tiles[*dst].shape.len() == 2 => Some(*dst),
            _ => None,
        })
        .unwrap();
    for s in k.body.iter_mut() {
        if let Stmt::Assign { dst, op } = s {
            if *dst == acc {
                *op = TileOp::Full(Operand::Scalar(FScalar::Lit(1.0)));
            }
        }
    }
    assert!(!applied(&k), "an accumulator not starting at zero");
}

/// Against the f64 reference and the CPU backend: empty splits and splits of one block (the
/// second warpgroup without a block), an odd block count, a partial head block, the merge
/// through a ring smaller than the state (32- and 16-token blocks: two and four chunks), the
/// TMA producer.
#[test]
fn emulated_decode_kv_split() {
    let Some(cxx) = skip_without_cxx("emulated_decode_kv_split") else {
        return;
    };
    let on = [("PRODUCER", 1), ("WG_KV_SPLIT", 1)];
    let tma = [("PRODUCER", 1), ("TMA", 1), ("WG_KV_SPLIT", 1)];
    let case = |p, knobs: &[(&str, i64)], heads, lens: &[i32], splits, seed| {
        let code = emit(
            &{
                let mut k = latent_decode(p).unwrap();
                k.config
                    .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
                k
            },
            Target::sm90(),
        )
        .unwrap()
        .code;
        assert!(code.contains(SPLIT_LOOP), "{p:?} splits");
        decode_case_with(&cxx, p, knobs, Target::sm90(), heads, lens, splits, seed)
    };
    case(dp(64, 64, 2, 256), &on, 64, &[390, 41, 0], 3, 61);
    case(dp(64, 64, 4, 256), &tma, 40, &[300, 64, 130], 2, 62);
    case(dp(64, 32, 2, 256), &tma, 64, &[200, 7], 2, 63);
    case(dp(64, 16, 2, 128), &on, 64, &[97, 33], 1, 64);
    // One stage: no slot for each warpgroup, so the kernel goes without the split (with it,
    // warpgroup 1 passed its first wait on the previous phase's parity and the block deadlocked:
    // emulated here, hung on the H100 on 2026-12-05); still correct.
    let one = dp(64, 64, 1, 256);
    let code = emit(&latent_decode_with(one, &on).unwrap(), Target::sm90())
        .unwrap()
        .code;
    assert!(!code.contains(SPLIT_LOOP), "one stage: no split");
    decode_case_with(&cxx, one, &on, Target::sm90(), 64, &[390, 41], 1, 65);
}

/// Multi-token queries (the library kernel at `SQ = 2`, 32 heads x 2 tokens in the 64-row tile):
/// each warpgroup masks its own blocks with the causal limit in its row registers; against the
/// CPU backend, with the `cp.async` and the TMA producers.
#[test]
fn emulated_kv_split_multi_token_decode() {
    let Some(cxx) = skip_without_cxx("emulated_kv_split_multi_token_decode") else {
        return;
    };
    for (i, (bn, lat, lens, splits, tma)) in [
        (32i64, 256i64, &[70i32, 1, 33][..], 2usize, 0i64),
        (64, 128, &[130, 2], 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let (sq, heads) = (2i64, 32usize);
        let knobs = [
            ("BLOCK_H", 64),
            ("BLOCK_N", bn),
            ("STAGES", 2),
            ("PRODUCER", 1),
            ("TMA", tma),
            ("WG_KV_SPLIT", 1),
        ];
        let k = mtp_kernel(lat, sq, &knobs);
        let src = emit(&k, Target::sm90()).unwrap();
        assert!(
            src.code.contains(SPLIT_LOOP),
            "{knobs:?}: the split applies"
        );
        let tag = format!("kv_split_mtp_{i}_bn{bn}_lat{lat}_tma{tma}");
        let rows = sq as usize * heads;
        check_multi_token_decode(
            &cxx,
            &k,
            rows,
            lat as usize,
            lens,
            splits,
            70 + i as u64,
            &tag,
        );
    }
}

/// Every 64-row `WG_KV_SPLIT` config the bench and the tuner can pick at latent 256 (BLOCK_N 16 /
/// 32 / 64 x 1-4 stages x the `cp.async` and TMA producers), each emulated against the f64
/// reference over sequences that wrap the ring several times: the split on an even stage count
/// (every slot one warpgroup's), none on an odd one. Both excluded cases failed on the H100
/// (2026-12-05): one stage deadlocks here too; three stages with the TMA producer read a slot
/// whose copy had not landed (the emulator's bulk copies land late and out of order): with the
/// rule lifted this test fails there with NaN outputs.
#[test]
fn emulated_kv_split_every_stage_count() {
    let Some(cxx) = skip_without_cxx("emulated_kv_split_every_stage_count") else {
        return;
    };
    let mut seed = 80;
    for bn in [64usize, 32, 16] {
        for st in 1..=4usize {
            for tma in [0i64, 1] {
                let p = dp(64, bn, st, 256);
                let knobs = [("PRODUCER", 1), ("TMA", tma), ("WG_KV_SPLIT", 1)];
                let src = emit(&latent_decode_with(p, &knobs).unwrap(), Target::sm90()).unwrap();
                assert_eq!(
                    src.kv_split,
                    st % 2 == 0,
                    "{p:?}: the split on even stage counts"
                );
                seed += 1;
                // 14 and 5 blocks in one split: the ring wraps several times, so a slot is
                // reused past the second phase (where a parity wait can pass early).
                let long = (13 * bn + 3) as i32;
                decode_case_with(
                    &cxx,
                    p,
                    &knobs,
                    Target::sm90(),
                    64,
                    &[long, 4 * bn as i32 + 1],
                    1,
                    seed,
                );
            }
        }
    }
}
