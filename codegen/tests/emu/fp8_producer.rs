//! The FP8 cache fed by the producer warpgroup (`KV_FP8` with `PRODUCER = 1`,
//! `codegen/src/cuda/lower/fp8_producer.rs`) under host emulation: raw rows `cp.async`ed into the
//! staging ring, dequantised by the producer into the bf16 ring, full / empty mbarriers. Checked
//! against the CPU backend on the same IR and against the f64 reference of the dequantised rows,
//! with NaN bytes in every pool row no sequence holds and NaN-poisoned outputs.

use super::*;

fn dp(bn: usize, st: usize, lat: usize) -> DecodeParams {
    DecodeParams::bf16(lat, 64, bn, st)
}

/// The FP8 decode with the producer warpgroup, and the further knobs `extra`.
fn producer_kernel(p: DecodeParams, extra: &[(&str, i64)]) -> Kernel {
    let mut knobs = vec![("KV_FP8", p.lat as i64), ("PRODUCER", 1)];
    knobs.extend_from_slice(extra);
    latent_decode_with(p, &knobs).unwrap()
}

/// The bf16 pool a kernel reads from `cache` (FP8 rows): every row dequantised (NaN rows stay
/// NaN), for the f64 reference.
fn dequantised(cache: &HostArg, lat: usize) -> HostArg {
    let HostArg::Paged {
        row,
        data,
        block_table,
        seq_lens,
        page_size,
        pages_per_seq,
        num_pages,
        ..
    } = cache
    else {
        unreachable!()
    };
    let rb = fp8_row_bytes(lat, *row);
    let vals: Vec<f32> = data
        .bytes()
        .chunks(rb)
        .flat_map(|r| dequantise_row(r, lat, *row))
        .collect();
    HostArg::Paged {
        dtype: DType::BF16,
        row: *row,
        data: Bytes::from_bf16(&vals),
        block_table: block_table.clone(),
        seq_lens: seq_lens.clone(),
        page_size: *page_size,
        pages_per_seq: *pages_per_seq,
        num_pages: *num_pages,
        chunks: None,
    }
}

/// Emulates the producer-fed FP8 decode (its source through `patch`, to break it on purpose):
/// against the CPU backend, then against the f64 reference. `Err` carries the failure.
#[allow(clippy::too_many_arguments)]
fn producer_case_patched(
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
        "fp8_producer_lat{}_n{}_s{}_page{page}_h{heads}_seed{seed}{}",
        p.lat,
        p.block_n,
        p.stages,
        extra
            .iter()
            .map(|(k, v)| format!("_{k}{v}"))
            .collect::<String>()
    );
    let k = producer_kernel(p, extra);
    let d = p.lat + p.rope;
    let batch = lens.len();
    let mut rng = Rng::new(seed);
    let q = bf16_round(&rng.vec(batch * heads * d));
    let cache = fp8_paged(&mut rng, p.lat, d, lens, page);
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
    let mut src = emit(&k, Target::sm90()).map_err(|e| format!("{tag}: {e}"))?;
    if !(src.code.contains("tpla_bar_sync(2, 128)") || src.code.contains("tpla_bar_sync(2, 256)"))
        || !src
            .code
            .contains("unsigned char* const stg_ = tpla_smem + ")
    {
        return Err(format!("{tag}: not the FP8 producer schedule"));
    }
    src.code = patch(src.code);
    let gpu = run_emu(cxx, &k, &src, &args, &tag)?;
    let cpu = run_cpu(&k, &args);
    for i in [2, 3] {
        let diff = max_diff(&gpu[i], &cpu[i]);
        if diff.is_nan() || diff > 2e-2 {
            return Err(format!(
                "{tag}: output {i} differs from the CPU backend by {diff}"
            ));
        }
    }
    let exact = dequantised(&cache, p.lat);
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
                    &q, &exact, b, h, heads, s, splits, p.lat, d, p.block_n, scale,
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
    println!(
        "{tag}: ok ({} bytes of shared memory, max |out - ref| = {worst:.2e})",
        src.shared_bytes
    );
    Ok(worst)
}

#[allow(clippy::too_many_arguments)]
fn producer_case(
    cxx: &str,
    p: DecodeParams,
    page: usize,
    heads: usize,
    lens: &[i32],
    splits: usize,
    seed: u64,
) {
    if let Err(e) = producer_case_patched(cxx, p, &[], page, heads, lens, splits, seed, &|c| c) {
        panic!("{e}");
    }
}

/// What the compiler chooses: the producer keeps 40 registers beside two consumer warpgroups
/// (latent 512), 72 beside one (latent 256), and converts, a staging ring of
/// raw rows lies after the bf16 ring, every plan fits the H200's shared memory (the 64-token
/// MLA block falls back to one bf16 stage), `TMA = 1` changes nothing (no tensor map), and
/// `SEESAW = 1` with the producer is a typed error.
#[test]
fn fp8_producer_source_and_plan() {
    for (p, min_stages) in [
        (dp(64, 2, 512), 1),
        (dp(32, 2, 512), 2),
        (dp(32, 3, 512), 2),
        (dp(32, 2, 256), 2),
        (dp(64, 2, 256), 2),
    ] {
        let src = emit(&producer_kernel(p, &[]), Target::sm90()).unwrap();
        let code = &src.code;
        // Two consumer warpgroups at latent 512 (the accumulator split), one at 256.
        let regs = match src.block_threads {
            384 => 40,
            256 => 72,
            n => panic!("{n} threads"),
        };
        assert!(code.contains(&format!("tpla_setmaxnreg_dec<{regs}>()")));
        let consumers = if src.block_threads == 384 { 232 } else { 240 };
        assert!(code.contains(&format!("tpla_setmaxnreg_inc<{consumers}>()")));
        assert!(code.contains("tpla_bar_sync(2, 128)"));
        assert!(code.contains("tpla_e8x2_(w_.x & 0xffffu, sc_, a_.x)"));
        assert!(
            code.contains("tpla_fence_proxy_async();\n")
                && code.contains("tpla_mbar_arrive(&tpla_mbar[j_ %")
        );
        assert_eq!(src.block_threads, if p.lat == 512 { 384 } else { 256 });
        let staging = code
            .lines()
            .find(|l| l.contains("unsigned char* const sd_ = stg_ + "))
            .unwrap_or_default()
            .trim();
        println!(
            "lat {} BLOCK_N {}: stages {:?}, {} bytes of shared memory, {staging}",
            p.lat, p.block_n, src.stages, src.shared_bytes
        );
        assert!(src.shared_bytes <= Target::sm90().max_shared_bytes);
        assert!(
            src.stages.iter().all(|&s| s >= min_stages),
            "{:?}",
            src.stages
        );
        let tma = emit(&producer_kernel(p, &[("TMA", 1)]), Target::sm90()).unwrap();
        assert!(
            !tma.code.contains("tpla_tmap")
                && tma
                    .code
                    .contains("unsigned char* const stg_ = tpla_smem + ")
        );
    }
    let err = emit(
        &producer_kernel(dp(32, 2, 512), &[("SEESAW", 1)]),
        Target::sm90(),
    );
    if let Err(e) = err {
        assert!(e.to_string().contains("SEESAW"), "{e}");
    }
}

/// Emulated: MLA rows at 64-, 32- and 16-token blocks, the g = 2 and g = 4 shards (latent 256 / 128),
/// 1 to 3 stages, pages of 64, 16, 8 and 1 tokens, lengths ending mid-block, several splits
/// (one empty), fewer heads than rows.
#[test]
fn emulated_fp8_producer_decode() {
    let Some(cxx) = skip_without_cxx("emulated_fp8_producer_decode") else {
        return;
    };
    producer_case(&cxx, dp(64, 2, 512), 64, 64, &[333, 64], 2, 71);
    producer_case(&cxx, dp(32, 2, 256), 16, 40, &[130, 5, 97], 3, 72);
    producer_case(&cxx, dp(32, 3, 128), 1, 64, &[45], 1, 73);
    producer_case(&cxx, dp(16, 2, 512), 8, 64, &[101, 17], 2, 74);
    // MLA rows at 32-token blocks with three bf16 stages beside the staging ring: the FP8
    // configs the bench sweeps from 2026-12-04 evening (two consumer warpgroups, 384 threads).
    producer_case(&cxx, dp(32, 3, 512), 64, 64, &[250, 31], 2, 75);
    // 16- and 32-row blocks: the producer feeds four mma.sync consumer warps (one warpgroup,
    // 256 threads), the memory-bound H16 shape without padding to 64 rows.
    let small = |bh, bn, st, lat| DecodeParams::bf16(lat, bh, bn, st);
    producer_case(&cxx, small(16, 32, 2, 512), 64, 16, &[300, 70], 2, 76);
    producer_case(&cxx, small(16, 64, 2, 512), 16, 16, &[129, 1], 1, 77);
    producer_case(&cxx, small(32, 32, 3, 512), 64, 32, &[97, 200], 2, 78);
    producer_case(&cxx, small(16, 32, 2, 256), 1, 16, &[55, 33], 2, 79);
}

/// The evidence can fail: without the producer's wait for an empty slot it runs ahead of the
/// consumers (their full-barrier phases no longer match: a deadlock or wrong blocks), and a
/// conversion reading the wrong staging slot gives wrong rows. (A missing producer barrier
/// between the copies and the conversion cannot show here: the emulator's copies are synchronous
/// and the producer's fibers run in lock step through the copy loop's shuffles.)
#[test]
fn emulated_fp8_producer_breakages_are_caught() {
    let Some(cxx) = skip_without_cxx("emulated_fp8_producer_breakages_are_caught") else {
        return;
    };
    let p = dp(32, 2, 256);
    let run = |patch: &dyn Fn(String) -> String| {
        producer_case_patched(&cxx, p, &[], 16, 64, &[200], 1, 75, patch).unwrap_err()
    };
    let no_empty_wait = run(&|c: String| {
        let w = "if (pc_ == 0 && j_ >= 2) tpla_mbar_wait(";
        assert!(c.contains(w), "the empty wait moved");
        c.replace(w, "if (false) tpla_mbar_wait(")
    });
    assert!(
        no_empty_wait.contains("deadlock")
            || no_empty_wait.contains("differs")
            || no_empty_wait.contains("missing wait"),
        "{no_empty_wait}"
    );
    let wrong_slot = run(&|c: String| {
        let w = "const unsigned char* const ss_ = stg_ + (g_ % ";
        assert!(c.contains(w), "the conversion's slot moved");
        c.replace(w, "const unsigned char* const ss_ = stg_ + ((g_ + 1) % ")
    });
    assert!(
        wrong_slot.contains("differs") || wrong_slot.contains("out["),
        "{wrong_slot}"
    );
    // A register split past what the block holds at launch (the H200 hang of 2026-12-04: 32
    // producer registers beside two consumer warpgroups of 240, 384 threads holding 168 each;
    // here 48 beside 232): the consumers' `setmaxnreg.inc` never returns.
    let split = producer_case_patched(
        &cxx,
        dp(64, 2, 512),
        &[],
        64,
        64,
        &[70],
        1,
        76,
        &|c: String| {
            let w = "tpla_setmaxnreg_dec<40>();";
            assert!(c.contains(w), "the producer's register count moved");
            c.replace(w, "tpla_setmaxnreg_dec<48>();")
        },
    )
    .unwrap_err();
    assert!(split.contains("setmaxnreg.inc"), "{split}");
}

/// `FP8_PRODUCERS = 2`: two producer warpgroups share each piece's copies and conversion beside
/// one consumer warpgroup (384 threads, the producer barrier and the full mbarriers counting 256
/// threads, 72 registers each, the consumers 240); beside two consumer warpgroups (latent 512,
/// 64 rows) it changes nothing.
#[test]
fn two_fp8_producer_warpgroups_source() {
    let two = [("FP8_PRODUCERS", 2i64)];
    for p in [
        DecodeParams::bf16(512, 16, 64, 3),
        DecodeParams::bf16(512, 32, 32, 2),
        dp(64, 2, 256),
    ] {
        let src = emit(&producer_kernel(p, &two), Target::sm90()).unwrap();
        let code = &src.code;
        assert_eq!(src.block_threads, 384, "{p:?}");
        for needle in [
            "tpla_bar_sync(2, 256)",
            "tpla_mbar_init(&tpla_mbar[i_], 256)",
            "tpla_setmaxnreg_dec<72>()",
            "tpla_setmaxnreg_inc<240>()",
            "const int r_ = pw_ + lane * 8;",
        ] {
            assert!(code.contains(needle), "{p:?}: {needle}");
        }
        let one = emit(&producer_kernel(p, &[]), Target::sm90()).unwrap();
        assert_eq!(one.block_threads, 256, "{p:?}");
    }
    let wide = emit(&producer_kernel(dp(32, 2, 512), &two), Target::sm90()).unwrap();
    let one = emit(&producer_kernel(dp(32, 2, 512), &[]), Target::sm90()).unwrap();
    assert_eq!(wide.block_threads, one.block_threads);
    assert!(
        wide.code.contains("tpla_bar_sync(2, 128)") && !wide.code.contains("tpla_bar_sync(2, 256)"),
        "two consumer warpgroups: one producer warpgroup"
    );
}

/// `FP8_PRODUCERS = 2` emulated against the CPU backend and the f64 reference: 16- / 32- / 64-row
/// blocks, MLA rows and both shard widths, pages of 64, 16 and 1 tokens, ends mid-block, empty
/// splits; two cases with laggards (warps drifting apart), where the producer barrier over both
/// warpgroups and the full mbarriers' 256 arrivals are what keeps the consumers off a half-converted
/// block.
#[test]
fn emulated_fp8_two_producer_warpgroups() {
    let Some(cxx) = skip_without_cxx("emulated_fp8_two_producer_warpgroups") else {
        return;
    };
    let two = [("FP8_PRODUCERS", 2i64)];
    let small = |bh, bn, st, lat| DecodeParams::bf16(lat, bh, bn, st);
    let case = |p: DecodeParams, page, heads, lens: &[i32], splits, seed| {
        if let Err(e) =
            producer_case_patched(&cxx, p, &two, page, heads, lens, splits, seed, &|c| c)
        {
            panic!("{e}");
        }
    };
    case(small(16, 64, 3, 512), 64, 16, &[300, 70], 2, 91);
    case(small(32, 32, 2, 512), 16, 32, &[97, 200, 0], 3, 92);
    case(dp(64, 2, 256), 64, 64, &[333, 64], 2, 93);
    case(small(16, 32, 2, 128), 1, 16, &[55, 33], 2, 94);
    with_laggards(|| {
        case(small(16, 64, 2, 512), 16, 16, &[129, 1], 1, 95);
        case(dp(32, 3, 256), 64, 40, &[250, 31], 2, 96);
        // The evidence can fail: full mbarriers counting one warpgroup's arrivals let the
        // consumers in when the first warpgroup is done with a block.
        let e = producer_case_patched(
            &cxx,
            dp(32, 2, 256),
            &two,
            16,
            64,
            &[200],
            1,
            97,
            &|c: String| {
                let w = "tpla_mbar_init(&tpla_mbar[i_], 256)";
                assert!(c.contains(w), "the full mbarriers' count moved");
                c.replace(w, "tpla_mbar_init(&tpla_mbar[i_], 128)")
            },
        )
        .unwrap_err();
        assert!(
            e.contains("differs")
                || e.contains("deadlock")
                || e.contains("missing wait")
                || e.contains("out["),
            "{e}"
        );
    });
}
