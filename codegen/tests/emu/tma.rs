//! The TMA producer (`PRODUCER = 1`, `TMA = 1`) under host emulation: bulk tensor copies of
//! 64-column boxes with the 128-byte swizzle, expect-tx / complete-tx byte counting on the full
//! mbarriers, the tensor map parameter; decode against the f64 reference with NaN in every pool
//! row no sequence holds (unused pages and the tails of last pages) and NaN-poisoned outputs.

use super::split_table::chunked_decode_case;
use super::*;
use tpla_codegen::cuda::{PagedInt, ParamAbi};

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

fn tma_kernel(p: DecodeParams) -> Kernel {
    tma_kernel_with(p, &[])
}

/// The TMA decode with the further schedule knobs `extra` (`SEESAW = 1`).
fn tma_kernel_with(p: DecodeParams, extra: &[(&str, i64)]) -> Kernel {
    let mut k = latent_decode(p).unwrap();
    k.config
        .extend([("PRODUCER".to_string(), 1), ("TMA".to_string(), 1)]);
    k.config
        .extend(extra.iter().map(|(n, v)| (n.to_string(), *v)));
    k
}

/// A paged cache of `page`-token pages (shuffled) whose rows past every sequence's length, and
/// whose unused pages, are NaN.
fn nan_tailed_cache(rng: &mut Rng, row: usize, lens: &[i32], page: usize) -> HostArg {
    let HostArg::Paged {
        dtype,
        data,
        block_table,
        seq_lens,
        page_size,
        pages_per_seq,
        num_pages,
        chunks,
        ..
    } = paged(rng, row, lens, page, false)
    else {
        unreachable!()
    };
    let mut vals = data.bf16s();
    let mut held = vec![false; num_pages * page];
    for (b, &len) in lens.iter().enumerate() {
        for t in 0..len as usize {
            let pg = block_table[b * pages_per_seq + t / page] as usize;
            held[pg * page + t % page] = true;
        }
    }
    for (r, h) in held.iter().enumerate() {
        if !h {
            vals[r * row..(r + 1) * row].fill(f32::NAN);
        }
    }
    HostArg::Paged {
        dtype,
        row,
        data: Bytes::from_bf16(&vals),
        block_table,
        seq_lens,
        page_size,
        pages_per_seq,
        num_pages,
        chunks,
    }
}

/// Emulates the TMA decode (its source passed through `patch`, to break it on purpose) and
/// checks it against the f64 reference; `Err` carries the emulator's failure or the mismatch.
#[allow(clippy::too_many_arguments)]
fn tma_case_patched(
    cxx: &str,
    p: DecodeParams,
    page: usize,
    heads: usize,
    lens: &[i32],
    splits: usize,
    seed: u64,
    patch: &dyn Fn(String) -> String,
) -> Result<f64, String> {
    tma_case_knobs(cxx, p, &[], page, heads, lens, splits, seed, patch)
}

/// [`tma_case_patched`] with the further schedule knobs `extra`.
#[allow(clippy::too_many_arguments)]
fn tma_case_knobs(
    cxx: &str,
    p: DecodeParams,
    extra: &[(&str, i64)],
    page: usize,
    heads: usize,
    lens: &[i32],
    splits: usize,
    seed: u64,
    patch: &dyn Fn(String) -> String,
) -> Result<f64, String> {
    let tag = format!(
        "tma_n{}_s{}_lat{}_page{page}_seed{seed}{}",
        p.block_n,
        p.stages,
        p.lat,
        extra
            .iter()
            .map(|(n, v)| format!("_{n}{v}"))
            .collect::<String>()
    );
    let k = tma_kernel_with(p, extra);
    let d = p.lat + p.rope;
    let batch = lens.len();
    let mut rng = Rng::new(seed);
    let q = bf16_round(&rng.vec(batch * heads * d));
    let cache = nan_tailed_cache(&mut rng, d, lens, page);
    let scale = 1.0 / (d as f32).sqrt() * 4.0;
    let args = vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![batch, heads, d],
            data: Bytes::from_bf16(&q),
        },
        cache.clone(),
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads, p.lat],
            data: Bytes::from_f32(&vec![f32::NAN; splits * batch * heads * p.lat]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads],
            data: Bytes::from_f32(&vec![f32::NAN; splits * batch * heads]),
        },
        HostArg::F32(scale),
    ];
    let mut src = emit(&k, Target::sm90()).map_err(|e| e.to_string())?;
    src.code = patch(src.code);
    let gpu = run_emu(cxx, &k, &src, &args, &tag)?;
    let (HostArg::Tensor { data: out, .. }, HostArg::Tensor { data: lse, .. }) = (&gpu[2], &gpu[3])
    else {
        unreachable!()
    };
    let (out, lse) = (out.f32s(), lse.f32s());
    let mut worst = 0.0f64;
    for s in 0..splits {
        for b in 0..batch {
            for h in 0..heads {
                let (o, l) = decode_ref(
                    &q, &cache, b, h, heads, s, splits, p.lat, d, p.block_n, scale,
                );
                let base = ((s * batch + b) * heads + h) * p.lat;
                for j in 0..p.lat {
                    let g = out[base + j] as f64;
                    if !g.is_finite() {
                        return Err(format!("{tag}: out[{s},{b},{h},{j}] = {g}"));
                    }
                    worst = worst.max((g - o[j]).abs());
                }
                let gl = lse[(s * batch + b) * heads + h] as f64;
                let ok = if l.is_finite() {
                    (gl - l).abs() <= 1e-2 * l.abs().max(1.0)
                } else {
                    gl < -1e29
                };
                if !ok {
                    return Err(format!("{tag}: lse[{s},{b},{h}] = {gl}, reference {l}"));
                }
            }
        }
    }
    if worst > 2e-2 {
        return Err(format!("{tag}: out differs from the reference by {worst}"));
    }
    println!("{tag}: ok (max |out - ref| = {worst:.2e})");
    Ok(worst)
}

#[allow(clippy::too_many_arguments)]
fn tma_case(
    cxx: &str,
    p: DecodeParams,
    page: usize,
    heads: usize,
    lens: &[i32],
    splits: usize,
    seed: u64,
) {
    if let Err(e) = tma_case_patched(cxx, p, page, heads, lens, splits, seed, &|c| c) {
        panic!("{e}");
    }
}

/// The source the TMA knob prints: one elected thread issues `row / 64` boxes per block after an
/// expect-tx of the block's bytes, the map is a by-value parameter after the cache's slots, and
/// the `cp.async` producer stays as the fallback.
#[test]
fn tma_producer_source_and_abi() {
    let src = emit(&tma_kernel(dp(64, 2, 512)), Target::sm90()).unwrap();
    let code = &src.code;
    assert!(code.contains("const __grid_constant__ tpla_tmap p1_tmap"));
    assert!(code.contains("tpla_mbar_arrive_expect_tx(&tpla_mbar[j_ % 2], 73728u)"));
    assert!(code.contains("c_ < 9;") && code.contains("tpla_tma_load_2d("));
    assert!(code.contains("tpla_cp_async16(") && code.contains("tpla_tmap_prefetch(&p1_tmap)"));
    let at = src
        .params
        .iter()
        .position(|p| {
            *p == ParamAbi::PagedTmap {
                param: 1,
                box_rows: 64,
            }
        })
        .expect("a tensor map slot");
    assert_eq!(
        src.params[at - 1],
        ParamAbi::PagedInt {
            param: 1,
            what: PagedInt::Batch
        }
    );
    // The shard's 256 + 64 row: 5 boxes of 32 rows.
    let shard = emit(&tma_kernel(dp(32, 3, 256)), Target::sm90()).unwrap();
    assert!(shard.code.contains("c_ < 5;") && shard.code.contains("20480u"));
    // Without the warpgroup path there is no producer, hence no map and no ABI change.
    let k = tma_kernel(dp(64, 2, 256));
    let pre = emit(&k, Target::new(8, 0)).unwrap();
    assert!(
        !pre.code.contains("tpla_tmap")
            && pre
                .params
                .iter()
                .all(|p| !matches!(p, ParamAbi::PagedTmap { .. }))
    );
}

/// Emulated TMA decode at latent 512 and 256, 32- and 64-token blocks, 2 and 3 stages, 64-token
/// pages (TMA for every whole block, the `cp.async` fallback for the partial last block of a
/// split), 16- and 8-token pages (a box per page), 1-token pages (the fallback throughout), odd
/// lengths, several splits, an empty split; NaN in every row no sequence holds.
#[test]
fn emulated_decode_tma_producer() {
    let Some(cxx) = skip_without_cxx("emulated_decode_tma_producer") else {
        return;
    };
    tma_case(&cxx, dp(64, 2, 512), 64, 64, &[333, 64], 2, 31);
    tma_case(&cxx, dp(32, 3, 512), 64, 64, &[201], 3, 32);
    tma_case(&cxx, dp(64, 3, 256), 64, 40, &[390, 41], 2, 33);
    tma_case(&cxx, dp(32, 2, 256), 64, 64, &[130, 5, 97], 4, 34);
    // Pages smaller than the block: a box per 16- or 8-token page; 1-token pages: cp.async.
    tma_case(&cxx, dp(64, 2, 256), 16, 64, &[150, 77], 2, 35);
    tma_case(&cxx, dp(32, 3, 512), 8, 64, &[101], 2, 38);
    tma_case(&cxx, dp(32, 2, 256), 1, 64, &[45], 1, 39);
}

/// The evidence can fail: an expect-tx of a box too many never completes (the emulator's
/// deadlock guard), one of a box too few over-completes, and TMA on the partial last block
/// brings its NaN rows into P·V.
#[test]
fn emulated_tma_breakages_are_caught() {
    let Some(cxx) = skip_without_cxx("emulated_tma_breakages_are_caught") else {
        return;
    };
    let p = dp(32, 2, 256);
    let bytes = 32 * 320 * 2;
    let run = |patch: &dyn Fn(String) -> String| {
        tma_case_patched(&cxx, p, 64, 64, &[75], 1, 36, patch).unwrap_err()
    };
    let expect = format!("tpla_mbar_arrive_expect_tx(&tpla_mbar[j_ % 2], {bytes}u)");
    let more = run(&|c: String| {
        assert!(c.contains(&expect));
        c.replace(
            &expect,
            &expect.replace(&bytes.to_string(), &(bytes + 4096).to_string()),
        )
    });
    assert!(more.contains("deadlock"), "{more}");
    let fewer = run(&|c: String| {
        c.replace(
            &expect,
            &expect.replace(&bytes.to_string(), &(bytes - 4096).to_string()),
        )
    });
    assert!(
        fewer.contains("more than their mbarrier phase expects"),
        "{fewer}"
    );
    // Drop the "whole block inside the split" condition of the TMA guard.
    let nan = run(&|c: String| {
        let guard = "bool tma_ = t0_ + 32 <= ";
        let at = c.find(guard).expect("the TMA guard moved");
        let end = at + c[at..].find(" && ").unwrap() + 4;
        format!("{}bool tma_ = {}", &c[..at], &c[end..])
    });
    assert!(nan.contains("NaN") || nan.contains("nan"), "{nan}");
    // Blocks of whole 16-token pages go through TMA too (a box per page and 64 columns).
    let p64 = dp(64, 2, 256);
    let expect = format!(
        "tpla_mbar_arrive_expect_tx(&tpla_mbar[j_ % 2], {}u)",
        64 * 320 * 2
    );
    let small = tma_case_patched(&cxx, p64, 16, 64, &[150], 1, 37, &|c: String| {
        c.replace(&expect, &expect.replace("u)", " + 2048u)"))
    })
    .unwrap_err();
    assert!(small.contains("deadlock"), "{small}");
}

/// `PREFETCH = 1`: the producer also prefetches into L2 the block a ring round ahead. The
/// emulator checks every prefetched box lies inside the pool (`tpla_emu_tma_prefetch_2d`);
/// results as without it, with the split warpgroups too, 64- and 16-token pages (the latter
/// prefetch nothing: a block spans pages), splits whose last block is partial.
#[test]
fn emulated_decode_tma_l2_prefetch() {
    let Some(cxx) = skip_without_cxx("emulated_decode_tma_l2_prefetch") else {
        return;
    };
    let pf = [("PREFETCH", 1)];
    let split = [("PREFETCH", 1), ("WG_KV_SPLIT", 1)];
    // (params, knobs, page, lengths, splits)
    type Case<'a> = (DecodeParams, &'a [(&'a str, i64)], usize, &'a [i32], usize);
    let cases: [Case; 5] = [
        (dp(64, 2, 512), &pf, 64, &[333, 64], 2),
        (dp(32, 3, 256), &pf, 64, &[390, 41, 200], 3),
        (dp(64, 4, 256), &pf, 64, &[1000], 1),
        (dp(64, 2, 256), &split, 64, &[517, 130], 2),
        (dp(64, 2, 256), &pf, 16, &[150, 77], 2),
    ];
    for (i, (p, extra, page, lens, splits)) in cases.into_iter().enumerate() {
        let seed = 60 + i as u64;
        if let Err(e) = tma_case_knobs(&cxx, p, extra, page, 64, lens, splits, seed, &|c| c) {
            panic!("{e}");
        }
    }
    // The check sees the prefetches: pointed past the pool, the run is refused.
    let past = |c: String| {
        assert!(c.contains("tpla_tma_prefetch_2d(&"), "no prefetch printed");
        c.replace("pg_ * p1_ps + tp_ % p1_ps)", "(pg_ + 100000) * p1_ps)")
    };
    let r = tma_case_knobs(&cxx, dp(64, 2, 512), &pf, 64, 64, &[333, 64], 2, 70, &past);
    assert!(r.is_err(), "an out-of-bounds prefetch went unnoticed");
}

/// The TMA producer over a per-sequence split table (`KV_CHUNKS = 1`): pieces on page
/// boundaries take boxes of 16-token pages, a piece of 40 tokens (not on a boundary) and short
/// sequences take `cp.async`; programs past a sequence's last piece leave with the consumers.
#[test]
fn emulated_decode_tma_split_table() {
    let Some(cxx) = skip_without_cxx("emulated_decode_tma_split_table") else {
        return;
    };
    chunked_decode_case(
        &cxx,
        dp(32, 2, 256),
        &[("PRODUCER", 1), ("TMA", 1)],
        Target::sm90(),
        64,
        &[0, 1, 17, 300, 45, 90],
        &[32, 16, 16, 64, 0, 40],
        5,
        40,
    );
}

/// The seesaw consumers fed by the TMA producer (`SEESAW = PRODUCER = TMA = 1`): 384 threads,
/// one producer stage per ring slot (`2 STAGES`), the producer streaming up to an even block
/// count; emulated at latent 512 and 256, 16- and 32-token blocks, 1 to 3 stages, odd block
/// counts (the last pair's odd block past the split, zero-filled), several splits, a split
/// shorter than a block, an empty split, pages smaller than a block; NaN in every row no
/// sequence holds.
#[test]
fn emulated_decode_seesaw_tma_producer() {
    let ss = &[("SEESAW", 1)];
    let src = emit(&tma_kernel_with(dp(32, 2, 512), ss), Target::sm90()).unwrap();
    assert_eq!(src.block_threads, 384);
    assert!(src.code.contains("_oth = ") && src.code.contains("tpla_tma_load_2d("));
    assert!(src.code.contains("j_ < ((pb") && src.code.contains("+ 1) & ~1)"));
    assert!(src
        .code
        .contains("tpla_mbar_arrive_expect_tx(&tpla_mbar[j_ % 4], 36864u)"));
    let Some(cxx) = skip_without_cxx("emulated_decode_seesaw_tma_producer") else {
        return;
    };
    let case = |p, page, heads, lens: &[i32], splits, seed| {
        if let Err(e) = tma_case_knobs(&cxx, p, ss, page, heads, lens, splits, seed, &|c| c) {
            panic!("{e}");
        }
    };
    // 333 tokens in 2 splits: 167 + 166 -> 6 blocks of 32 each, the last partial (cp.async).
    case(dp(32, 2, 512), 64, 64, &[333, 20, 1], 2, 61);
    // Three stages of pairs refilled, 16-token blocks in 8-token pages (a box per page).
    case(dp(16, 3, 256), 8, 64, &[301, 75], 2, 62);
    // One stage, 50 of 64 head rows, three splits, odd block counts.
    case(dp(32, 1, 256), 64, 50, &[97, 33], 3, 63);
    // Full width, one split of many pairs, 16-token pages (box per page at 32-token blocks).
    case(dp(32, 2, 512), 16, 64, &[157], 1, 64);
    // 64-token blocks at latent 256 (the pair ring fits), odd block counts in both splits.
    case(dp(64, 2, 256), 64, 64, &[300, 64], 2, 65);
}

/// The producer warpgroup feeding mma.sync consumer warps (BLOCK_H 16 / 32: no warpgroup gemms,
/// four consumer warps): TMA boxes and the `cp.async` producer, latent 512 and 256, 64- and
/// 32-token blocks up to four stages, pages of 64 and 16 tokens, odd lengths, several splits,
/// NaN in every row no sequence holds.
#[test]
fn emulated_decode_producer_feeds_mma_sync_warps() {
    let Some(cxx) = skip_without_cxx("emulated_decode_producer_feeds_mma_sync_warps") else {
        return;
    };
    let p = |bh: usize, bn: usize, st: usize, lat: usize| DecodeParams {
        block_h: bh,
        ..dp(bn, st, lat)
    };
    let src = emit(&tma_kernel(p(16, 64, 2, 512)), Target::sm90()).unwrap();
    assert_eq!(
        src.block_threads,
        128 + 128,
        "four consumer warps and the producer"
    );
    let body = &src.code[src.code.find("extern \"C\" __global__").unwrap()..];
    assert!(body.contains("tpla_tma_load_2d(") && !body.contains("tpla_wgmma_"));
    tma_case(&cxx, p(16, 64, 2, 512), 64, 16, &[333, 64], 2, 41);
    tma_case(&cxx, p(16, 32, 4, 512), 64, 16, &[201, 7], 3, 42);
    tma_case(&cxx, p(16, 32, 3, 256), 16, 12, &[130, 5, 97], 2, 43);
    tma_case(&cxx, p(32, 64, 2, 256), 64, 32, &[150, 77], 2, 44);
    for (q, knobs) in [
        (p(16, 64, 2, 512), &[("PRODUCER", 1)][..]),
        (p(16, 32, 4, 256), &[("PRODUCER", 1)][..]),
    ] {
        decode_case_with(&cxx, q, knobs, Target::sm90(), 16, &[190, 41], 2, 45);
    }
}
