//! The latent decode on the Hopper warpgroup paths under host emulation: `wgmma` geometries and
//! warp specialisation (`PRODUCER = 1`, with `QK_AHEAD` and `WG_SPLIT`).

use super::*;

/// The Hopper warpgroup path: q·kᵀ by wgmma from shared memory (K-major A and B), P·V by wgmma
/// with P from registers and N-major V, with one warpgroup (latent 256) and two (latent 512, in
/// `emulated_decode_full_size`), a partial head block and narrow token blocks.
#[test]
fn emulated_decode_warpgroup_paths() {
    let Some(cxx) = skip_without_cxx("emulated_decode_warpgroup_paths") else {
        return;
    };
    let dp = |bn, lat| DecodeParams {
        lat,
        rope: 64,
        block_h: 64,
        block_n: bn,
        stages: 2,
        q_bf16: true,
        p_bf16: true,
    };
    // (calls with A from shared memory, calls with A from registers)
    let calls = |p: DecodeParams, t: Target| {
        let src = tpla_codegen::cuda::emit(&latent_decode(p).unwrap(), t).unwrap();
        let issued: Vec<&str> = src
            .code
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("tpla_wgmma_m64n"))
            .collect();
        let regs = issued.iter().filter(|l| l.contains("k16_r")).count();
        (issued.len() - regs, regs)
    };
    assert_eq!(calls(dp(64, 256), Target::sm90()), (1, 1));
    assert_eq!(calls(dp(32, 128), Target::sm90()), (1, 1));
    assert_eq!(calls(dp(64, 512), Target::sm90()), (1, 1));
    assert_eq!(calls(dp(64, 256), Target::sm90().with_wgmma(false)), (0, 0));
    // One warpgroup (4 warps): P·V is m64n256, q·kᵀ m64n64.
    decode_case(&cxx, dp(64, 256), Target::sm90(), 64, &[130, 40], 2, 11);
    // Partial head block, 32-token blocks.
    decode_case(&cxx, dp(32, 128), Target::sm90(), 50, &[75], 1, 12);
    // Two warpgroups, 16-token blocks: 2 rows x 72 chunks per warp, a partial copy pass.
    let p = DecodeParams {
        stages: 3,
        ..dp(16, 512)
    };
    decode_case(&cxx, p, Target::sm90(), 64, &[90], 1, 13);
    // Warpgroups split q·kᵀ too (WG_SPLIT = 32): cross-warpgroup row statistics and P through
    // shared memory, both gemms from shared-memory descriptors, no duplicate tensor work.
    let src = |extra: i64| {
        let mut k = latent_decode(dp(64, 512)).unwrap();
        k.config.push(("WG_SPLIT".into(), extra));
        tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap().code
    };
    let split = src(32);
    assert!(
        split.contains("tpla_wgmma_m64n32k16_00(") && split.contains("tpla_wgmma_m64n256k16_01(")
    );
    assert!(
        !split.contains("k16_r1("),
        "P from shared memory when q·kᵀ is split"
    );
    assert!(src(128).contains("tpla_wgmma_m64n64k16_00("));
    // The denominator's per-block row sums stay per warpgroup, made whole once after the loop
    // (`lower/partial_sum.rs`): inside the loop only the row maximum crosses warpgroups.
    let (lp, after) = split.split_at(split.find("for (int it_").unwrap());
    let (body, tail) = after.split_at(after.find("\n    }\n").unwrap());
    let _ = lp;
    assert_eq!(
        body.matches("__syncthreads()").count(),
        3,
        "max, P, end of block"
    );
    assert!(tail.contains("lsum") && !body.contains("lsum"));
    decode_case_with(
        &cxx,
        dp(64, 512),
        &[("WG_SPLIT", 32)],
        Target::sm90(),
        64,
        &[150, 33],
        2,
        14,
    );
    decode_case_with(
        &cxx,
        dp(32, 256),
        &[("WG_SPLIT", 32)],
        Target::sm90(),
        40,
        &[70],
        1,
        15,
    );
}

/// Warp specialisation (`PRODUCER = 1`): a producer warpgroup streams the paged blocks through
/// the full / empty mbarrier ring while the consumer warpgroups only compute (latent 512 and 256,
/// 32- and 64-token blocks, two and three stages, odd lengths, several splits, a partial head
/// block, and q·kᵀ split over warpgroups).
#[test]
fn emulated_decode_producer_warpgroup() {
    let Some(cxx) = skip_without_cxx("emulated_decode_producer_warpgroup") else {
        return;
    };
    let dp = |bn, st, lat| DecodeParams {
        lat,
        rope: 64,
        block_h: 64,
        block_n: bn,
        stages: st,
        q_bf16: true,
        p_bf16: true,
    };
    let emit_ws = |p: DecodeParams, knobs: &[(&str, i64)]| {
        let mut k = latent_decode(p).unwrap();
        k.config
            .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
        tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap()
    };
    // The producer warpgroup joins the consumer warps; consumers never copy.
    let (on, off) = (
        emit_ws(dp(64, 2, 512), &[("PRODUCER", 1)]),
        emit_ws(dp(64, 2, 512), &[]),
    );
    assert_eq!(on.block_threads, off.block_threads + 128);
    assert!(on.code.contains("tpla_cp_async_mbar_arrive(") && on.code.contains("setmaxnreg"));
    let consumer = &on.code[on.code.find("tpla_setmaxnreg_inc<").unwrap()..];
    assert!(!consumer.contains("__syncthreads"));
    let blocks = &consumer[consumer.find("for (int it_").unwrap()..];
    assert!(!blocks.contains("tpla_cp_async16(") && blocks.contains("tpla_mbar_wait("));
    assert!(!off.code.contains("tpla_mbar"));
    // With QK_AHEAD = 1 the next block's q·kᵀ is issued behind this block's P·V
    // (`lower/first_gemm.rs`), block 0's before the loop; never with one stage (its slot would
    // still be in use). Off by default.
    assert!(
        !blocks.contains("if (it_ + 1 < "),
        "QK_AHEAD is off by default"
    );
    let ahead = emit_ws(dp(64, 2, 512), &[("PRODUCER", 1), ("QK_AHEAD", 1)]);
    let ahead = &ahead.code[ahead.code.find("tpla_setmaxnreg_inc<").unwrap()..];
    let ahead = &ahead[ahead.find("for (int it_").unwrap()..];
    let next = ahead
        .find("if (it_ + 1 < ")
        .expect("the next block's q·kᵀ in the loop");
    let commit = ahead[..next]
        .rfind("tpla_wgmma_commit();")
        .expect("behind a gemm's commit");
    assert!(!ahead[commit..next].contains("tpla_wgmma_wait0();"));
    let one_stage = emit_ws(dp(64, 1, 256), &[("PRODUCER", 1), ("QK_AHEAD", 1)]);
    assert!(!one_stage.code.contains("if (it_ + 1 < "));
    // Elsewhere (no warpgroup path) the knob changes nothing.
    let pre = |knobs: &[(&str, i64)]| {
        let mut k = latent_decode(dp(64, 2, 256)).unwrap();
        k.config
            .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
        tpla_codegen::cuda::emit(&k, Target::new(8, 0))
            .unwrap()
            .code
    };
    assert_eq!(pre(&[("PRODUCER", 1)]).replace(",PRODUCER=1", ""), pre(&[]));
    let ws = |p, knobs: &[(&str, i64)], heads, lens: &[i32], splits, seed| {
        let mut all = vec![("PRODUCER", 1)];
        all.extend_from_slice(knobs);
        decode_case_with(&cxx, p, &all, Target::sm90(), heads, lens, splits, seed)
    };
    // Splits of several blocks per stage of the ring, so every stage is refilled (the empty
    // barriers matter), with partial last blocks and a one-block split.
    ws(dp(64, 2, 256), &[], 64, &[390, 41], 2, 21);
    ws(dp(32, 3, 256), &[], 40, &[75, 301], 2, 22);
    ws(dp(32, 3, 512), &[], 64, &[333], 2, 23);
    ws(dp(64, 2, 512), &[("WG_SPLIT", 32)], 64, &[300, 33], 2, 24);
    ws(dp(64, 2, 512), &[("QK_AHEAD", 1)], 64, &[390, 41], 2, 25);
    ws(
        dp(32, 3, 256),
        &[("QK_AHEAD", 1), ("WG_SPLIT", 32)],
        64,
        &[300, 33],
        2,
        26,
    );
}

/// 128-row head blocks on two warpgroups stacked along the rows (FlashAttention-3's consumer
/// pair): each warpgroup owns 64 heads whole (its own q·kᵀ rows, softmax and accumulator), both
/// read one K / V tile; only where the accumulators fit (latent 256 and below). Checked against
/// the f64 reference with and without the producer warpgroup (cp.async and TMA), a partial head
/// block, several splits and odd lengths.
#[test]
fn emulated_decode_two_warpgroups_along_rows() {
    let Some(cxx) = skip_without_cxx("emulated_decode_two_warpgroups_along_rows") else {
        return;
    };
    let dp = |bn, st, lat| DecodeParams {
        lat,
        rope: 64,
        block_h: 128,
        block_n: bn,
        stages: st,
        q_bf16: true,
        p_bf16: true,
    };
    let emit_with = |p: DecodeParams, knobs: &[(&str, i64)]| {
        let mut k = latent_decode(p).unwrap();
        k.config
            .extend(knobs.iter().map(|(n, v)| (n.to_string(), *v)));
        tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap()
    };
    let src = emit_with(dp(64, 2, 256), &[]);
    assert!(src.warpgroups);
    assert!(
        emit_with(dp(32, 2, 128), &[]).warpgroups,
        "not fewer mma.sync warps"
    );
    assert_eq!(src.block_threads, 256, "two consumer warpgroups");
    // q·kᵀ: each warpgroup's A starts at its own 64 rows; P·V: A from its registers, all 256
    // value columns per warpgroup (no column split, no exchange).
    assert!(src.code.contains("tpla_wgmma_m64n64k16_00(") && src.code.contains("(wm128 / 4) * 64"));
    assert!(src.code.contains("tpla_wgmma_m64n256k16_r1("));
    let body = &src.code[src.code.find("for (int it_").unwrap()..];
    assert!(
        !body.contains("red_s"),
        "row statistics stay in each warpgroup's registers"
    );
    // At latent 512 the accumulators (256 per thread) do not fit: no warpgroup geometry (and
    // no room in shared memory for the query), which `tpla tune` and `tpla bench` skip.
    let wide = latent_decode(dp(64, 1, 512)).unwrap();
    assert!(tpla_codegen::cuda::emit(&wide, Target::sm90()).map_or(true, |s| !s.warpgroups));
    let case = |p, knobs: &[(&str, i64)], heads, lens: &[i32], splits, seed| {
        decode_case_with(&cxx, p, knobs, Target::sm90(), heads, lens, splits, seed)
    };
    case(dp(64, 2, 256), &[], 128, &[130, 40], 2, 41);
    case(dp(32, 2, 128), &[], 100, &[75], 1, 42);
    case(dp(64, 3, 256), &[("PRODUCER", 1)], 128, &[390, 41], 2, 43);
    case(
        dp(64, 3, 256),
        &[("PRODUCER", 1), ("TMA", 1)],
        96,
        &[300, 33],
        2,
        44,
    );
    // PINGPONG: the two warpgroups take turns issuing their gemms (two named barriers); an
    // empty split (no block) and odd block counts keep both barriers balanced, which the
    // emulator checks at the end of every block.
    let pp = emit_with(dp(64, 3, 256), &[("PRODUCER", 1), ("PINGPONG", 1)]);
    assert_eq!(
        pp.code
            .matches("tpla_bar_sync(3 + (warp >> 2), 256);")
            .count(),
        2
    );
    assert_eq!(
        pp.code
            .matches("tpla_bar_arrive(3 + ((warp >> 2) ^ 1), 256);")
            .count(),
        2
    );
    // Without the producer, or on 64-row blocks, the knob changes nothing.
    let same = |p: DecodeParams, knobs: &[(&str, i64)]| {
        let mut on = knobs.to_vec();
        on.push(("PINGPONG", 1));
        let strip = |c: String| c.replace(",PINGPONG=1", "");
        strip(emit_with(p, &on).code) == emit_with(p, knobs).code
    };
    assert!(same(dp(64, 3, 256), &[]));
    assert!(same(
        DecodeParams {
            block_h: 64,
            ..dp(64, 3, 256)
        },
        &[("PRODUCER", 1)]
    ));
    case(
        dp(64, 3, 256),
        &[("PRODUCER", 1), ("PINGPONG", 1)],
        128,
        &[390, 41, 0],
        3,
        45,
    );
    case(
        dp(32, 2, 128),
        &[("PRODUCER", 1), ("TMA", 1), ("PINGPONG", 1)],
        100,
        &[75, 300],
        2,
        46,
    );
}
