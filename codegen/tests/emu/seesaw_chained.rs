//! `SEESAW = 2` (`cuda/lower/seesaw/chained.rs`): the staggered two-consumer schedule fed by the
//! producer warpgroup, under host emulation. Where it applies and where it changes nothing; the
//! emulated decode against the f64 reference (TMA and `cp.async` producers, latent 512 and 256,
//! 16- and 32-token blocks, 2 and 3 stages, odd block counts, pages of 64 and 16 tokens, NaN in
//! every pool row no sequence holds, wide score ranges); and breakages the evidence must catch
//! (either rescale by `exp2(m0 - m1)` dropped, a named-barrier arrival a phase ahead).

use super::tma::tma_case_scaled;
use super::*;
use tpla_codegen::cuda::CudaSource;

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

const CHAINED_TMA: &[(&str, i64)] = &[("SEESAW", 2), ("PRODUCER", 1), ("TMA", 1)];

fn emit_knobs(p: DecodeParams, knobs: &[(&str, i64)]) -> CudaSource {
    let mut k = latent_decode(p).unwrap();
    k.config
        .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
    emit(&k, Target::sm90()).unwrap()
}

/// Where it applies (latent 512 at 32-token blocks, the shard at 16 and 32, 2 and 3 stages):
/// the producer and the two seesaw consumers (384 threads), the three named-barrier handoffs
/// (arrive on one side, sync on the other), no consumer block barrier inside the pair loop, the
/// denominators combined after it; `SEESAW = 1` keeps its symmetric exchanges.
#[test]
fn chained_seesaw_applies_with_the_producer() {
    for (bn, st, lat) in [(32, 2, 512), (32, 3, 256), (16, 3, 256), (32, 2, 256)] {
        let tag = format!("bn{bn} st{st} lat{lat}");
        for knobs in [CHAINED_TMA, &[("SEESAW", 2), ("PRODUCER", 1)][..]] {
            let src = emit_knobs(dp(bn, st, lat), knobs);
            assert!(src.seesaw && src.seesaw_chained, "{tag} {knobs:?}");
            assert_eq!(src.block_threads, 384, "{tag}");
            assert_eq!(src.stages, vec![st], "{tag}: the pair ring fits");
            let code = &src.code;
            for (arrive, sync) in [(3, 3), (4, 4), (5, 5)] {
                assert!(
                    code.contains(&format!("tpla_bar_arrive({arrive}, 256);"))
                        && code.contains(&format!("tpla_bar_sync({sync}, 256);")),
                    "{tag}: handoff on barrier {arrive}"
                );
            }
            // Each warpgroup waits for its own slot at the top, the other's before its second
            // P·V.
            let slots = 2 * st;
            for wait in [
                format!("tpla_mbar_wait(&tpla_mbar[(2 * it_ + (warp >> 2)) % {slots}]"),
                format!("tpla_mbar_wait(&tpla_mbar[(2 * it_ + 1 - (warp >> 2)) % {slots}]"),
            ] {
                assert!(code.contains(&wait), "{tag}: {wait}");
            }
            let body = &code[code.find("for (int it_ = 0; 2 * it_ <").unwrap()..];
            let lp = &body[..body.find("tpla_mbar_arrive(&tpla_mbar[").unwrap()];
            assert!(
                !lp.contains("tpla_bar_sync(1,") && !lp.contains("__syncthreads"),
                "{tag}: no block barrier in the pair loop"
            );
            assert!(code.contains("lsum") && code.contains("tpla_scale_bf16x2("));
        }
        let one = emit_knobs(
            dp(bn, st, lat),
            &[("SEESAW", 1), ("PRODUCER", 1), ("TMA", 1)],
        );
        assert!(one.seesaw && !one.seesaw_chained);
        assert!(
            !one.code.contains("tpla_bar_arrive("),
            "{tag}: SEESAW = 1 as it was"
        );
    }
}

/// Where the chained form does not apply, `SEESAW = 2` emits the base config's kernel and says
/// so: without the producer (the pair loop would open every pair with a block barrier), where
/// the two-consumer split itself does not apply (32-row head blocks, latent 512 at 64-token
/// blocks whose pair ring does not fit, no warpgroup path).
#[test]
fn chained_seesaw_elsewhere_is_the_base_kernel() {
    let same = |p: DecodeParams, knobs: &[(&str, i64)], t: Target| {
        let mut on = knobs.to_vec();
        on.push(("SEESAW", 2));
        let src = {
            let mut k = latent_decode(p).unwrap();
            k.config.extend(on.iter().map(|(n, v)| (n.to_string(), *v)));
            emit(&k, t).unwrap()
        };
        let mut k = latent_decode(p).unwrap();
        k.config
            .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
        let base = emit(&k, t).unwrap();
        let strip = |c: &str| c.replace(",SEESAW=2", "");
        assert!(
            strip(&src.code) == base.code,
            "SEESAW=2 changed {p:?} {knobs:?}"
        );
        assert!(!src.seesaw && !src.seesaw_chained, "{p:?} {knobs:?}");
    };
    let sm90 = Target::sm90();
    same(dp(32, 2, 512), &[], sm90);
    same(dp(16, 3, 256), &[], sm90);
    same(dp(64, 2, 512), &[("PRODUCER", 1), ("TMA", 1)], sm90);
    same(
        DecodeParams {
            block_h: 32,
            ..dp(32, 2, 512)
        },
        &[("PRODUCER", 1), ("TMA", 1)],
        sm90,
    );
    same(dp(32, 2, 512), &[("PRODUCER", 1)], Target::new(8, 0));
}

/// Emulated `SEESAW = 2` decode fed by the TMA producer against the f64 reference, at the
/// default score spread and at a wide one (scale 0.5: scores spread over tens of units, so the
/// pair's second maximum often exceeds the first and `exp2(m0 - m1)` matters): latent 512 (the
/// timed config) and the shard's 256, 32- and 16-token blocks, 2 and 3 stages, pages of 64 and
/// 16 tokens, odd block counts (the last pair's odd block past the split), a split shorter than
/// a block, an empty split.
#[test]
fn emulated_chained_seesaw_decode() {
    let Some(cxx) = skip_without_cxx("emulated_chained_seesaw_decode") else {
        return;
    };
    let case = |p: DecodeParams, page, heads, lens: &[i32], splits, seed, scale: Option<f32>| {
        let scale = scale.unwrap_or(4.0 / ((p.lat + p.rope) as f32).sqrt());
        let r = tma_case_scaled(
            &cxx,
            p,
            &[("SEESAW", 2)],
            page,
            heads,
            lens,
            splits,
            seed,
            scale,
            &|c| c,
        );
        if let Err(e) = r {
            panic!("{e}");
        }
    };
    // 333 tokens in 2 splits: 192 + 141 -> 6 and 5 blocks of 32 (odd); 20 < one block; the
    // third sequence's second split is empty.
    case(dp(32, 2, 512), 64, 64, &[333, 20, 1], 2, 71, None);
    case(dp(32, 2, 512), 64, 64, &[333, 20, 1], 2, 72, Some(0.5));
    // 16-token pages (a box per page), one split of many pairs with a partial last block.
    case(dp(32, 2, 512), 16, 64, &[157], 1, 73, Some(0.5));
    // The shard at three stages, odd counts, 50 of 64 head rows.
    case(dp(32, 3, 256), 64, 50, &[301, 75], 2, 74, Some(0.5));
    case(dp(32, 3, 256), 16, 64, &[97, 33], 3, 75, None);
    // 16-token blocks at three stages: pairs refill the six-slot ring many times.
    case(dp(16, 3, 256), 16, 64, &[301, 40], 2, 76, Some(0.5));
    // One stage (the two slots refilled every pair); latent 128 (64 accumulator columns per
    // warpgroup).
    case(dp(32, 1, 256), 64, 64, &[97, 33], 3, 80, Some(0.5));
    case(dp(16, 2, 128), 16, 64, &[130, 7], 2, 81, Some(0.5));
}

/// The `cp.async` producer (`PRODUCER = 1`, `TMA = 0`) feeding the chained consumers, vs the CPU
/// backend and the f64 reference.
#[test]
fn emulated_chained_seesaw_cp_async_producer() {
    let Some(cxx) = skip_without_cxx("emulated_chained_seesaw_cp_async_producer") else {
        return;
    };
    let knobs = &[("SEESAW", 2), ("PRODUCER", 1)];
    decode_case_with(
        &cxx,
        dp(32, 2, 512),
        knobs,
        Target::sm90(),
        64,
        &[130, 20, 1],
        2,
        77,
    );
    decode_case_with(
        &cxx,
        dp(32, 3, 256),
        knobs,
        Target::sm90(),
        64,
        &[301, 75],
        2,
        78,
    );
}

/// The evidence can fail: dropping warpgroup 0's rescale of `O_L` and `l0` by `exp2(m0 - m1)`,
/// or warpgroup 1's rescale of the P0 it read, breaks the result at a wide score spread; an
/// arrival a phase ahead (warpgroup 0 arriving twice at the barrier that publishes its max)
/// is reported by the emulator.
#[test]
fn emulated_chained_seesaw_breakages_are_caught() {
    let Some(cxx) = skip_without_cxx("emulated_chained_seesaw_breakages_are_caught") else {
        return;
    };
    let run = |patch: &dyn Fn(String) -> String| {
        tma_case_scaled(
            &cxx,
            dp(32, 2, 512),
            &[("SEESAW", 2)],
            64,
            64,
            &[333],
            1,
            79,
            0.5,
            patch,
        )
    };
    let worst = run(&|c| c).unwrap();
    // Warpgroup 0's factor exp2(m0 - m1) for O_L and l0 taken as 1.
    let wg0 = run(&|c: String| {
        let at = c.find("f_[h] = tpla_exp2(").expect("warpgroup 0's factor");
        let end = at + c[at..].find(";\n").unwrap();
        format!("{}f_[h] = 1.0f{}", &c[..at], &c[end..])
    })
    .unwrap_err();
    let wrong = |e: &str| e.contains("differs") || e.contains("lse[");
    assert!(wrong(&wg0), "{wg0}");
    // Warpgroup 1's P0 not rescaled.
    let wg1 = run(&|c: String| {
        let from = "tpla_scale_bf16x2(ss2_po[j_], f_[j_ & 1])";
        assert!(c.contains(from));
        c.replace(from, "ss2_po[j_]")
    })
    .unwrap_err();
    assert!(wrong(&wg1), "{wg1}");
    // Warpgroup 0 arriving at the max barrier twice per pair.
    let twice = run(&|c: String| {
        let from = "tpla_bar_arrive(3, 256);";
        assert!(c.contains(from));
        c.replacen(from, "tpla_bar_arrive(3, 256); tpla_bar_arrive(3, 256);", 1)
    })
    .unwrap_err();
    assert!(twice.contains("twice in one phase"), "{twice}");
    // The P0 handoff dropped (warpgroup 0's arrive and warpgroup 1's sync): warpgroup 1 reads
    // P0 while warpgroup 0, slowed after its previous arrival, has not written it yet.
    let early = run(&|c: String| {
        let (arrive, sync) = ("tpla_bar_arrive(4, 256);", "tpla_bar_sync(4, 256);");
        assert!(c.contains(arrive) && c.contains(sync));
        c.replacen(arrive, "", 1).replacen(sync, "", 1)
    })
    .unwrap_err();
    assert!(wrong(&early) || early.contains("NaN"), "{early}");
    println!("caught: {wg0}\ncaught: {wg1}\ncaught: {early}");
    println!("unbroken max |out - ref| = {worst:.2e}");
}

/// The chained plan needs the online softmax in the kernel's order: the denominator updated
/// before the `P·V` gemm (warpgroup 0 rescales it there). Moved after the gemm (the same
/// result), `SEESAW = 2` steps aside and the kernel is the base config's.
#[test]
fn chained_seesaw_refuses_a_denominator_updated_after_the_gemm() {
    let knobs = CHAINED_TMA;
    let build = |reorder: bool| {
        let mut k = latent_decode(dp(32, 2, 512)).unwrap();
        k.config
            .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
        if reorder {
            let body = k
                .body
                .iter_mut()
                .find_map(|s| match s {
                    Stmt::PagedBlocks { body, .. } => Some(body),
                    _ => None,
                })
                .unwrap();
            let sum = body
                .iter()
                .find_map(|s| match s {
                    Stmt::Assign {
                        dst,
                        op:
                            TileOp::Reduce {
                                op: ReduceOp::Sum, ..
                            },
                    } => Some(*dst),
                    _ => None,
                })
                .unwrap();
            let l_at = body
                .iter()
                .position(|s| {
                    matches!(s, Stmt::Assign { op: TileOp::Binary(BinaryOp::Add, x, y), .. }
                        if *x == Operand::Tile(sum) || *y == Operand::Tile(sum))
                })
                .unwrap();
            let gemm_at = body
                .iter()
                .rposition(|s| {
                    matches!(
                        s,
                        Stmt::Assign {
                            op: TileOp::Gemm { .. },
                            ..
                        }
                    )
                })
                .unwrap();
            assert!(l_at < gemm_at);
            let l = body.remove(l_at);
            body.insert(gemm_at, l);
        }
        emit(&k, Target::sm90()).unwrap()
    };
    assert!(build(false).seesaw_chained);
    let moved = build(true);
    assert!(!moved.seesaw && !moved.seesaw_chained);
    assert!(!moved.code.contains("tpla_bar_arrive("));
}
