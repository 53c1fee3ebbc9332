//! The latent decode on the GPU under the schedule knobs of the Hopper warpgroup path (every
//! 64-row config with `PRODUCER`, `TMA`, `SEESAW`) and the TMA producer (also feeding mma.sync
//! warps) under compute-sanitizer, each against the CPU JIT and the f64 reference.

use super::*;

/// Every 64-row tune candidate at latent `lat` with the schedule `knobs` added, on sequences of
/// 1000, 333 and 9 tokens in `page`-token pages and `splits` splits (ring stages refilled many
/// times, a partial last block, a one-block sequence), each sequence against the f64 reference.
fn every_64_row_config_agrees(
    g: &CudaExecutor,
    seed: u64,
    lat: usize,
    page: usize,
    splits: usize,
    knobs: &[(&str, i64)],
) {
    every_config_of_rows_agrees(g, seed, (64, 64), lat, page, splits, knobs);
}

/// Every tune candidate with `BLOCK_H = rows` (one `WG_SPLIT` for 128 rows, where it is moot) at
/// latent `lat` with `knobs` added, for `heads` heads on sequences of 1000, 333 and 9 tokens in
/// `page`-token pages and `splits` splits, each sequence against the f64 reference.
fn every_config_of_rows_agrees(
    g: &CudaExecutor,
    seed: u64,
    (rows, heads): (i64, usize),
    lat: usize,
    page: usize,
    splits: usize,
    knobs: &[(&str, i64)],
) {
    let p = Problem::new(seed, 3, heads, lat, 64, vec![1000, 333, 9], page, 0.2);
    for cfg in latent_decode.tune_space(&[]).unwrap() {
        if cfg.get("BLOCK_H").unwrap() != rows
            || (rows == 128 && cfg.get("WG_SPLIT").unwrap() != 128)
        {
            continue;
        }
        let mut params = DecodeParams::new(3, heads, lat, 64, splits, 0.2);
        params.decode = knobs.iter().fold(cfg.clone(), |c, (k, v)| c.with(k, *v));
        each_sequence_agrees(
            g,
            &p,
            &params,
            (3, heads * lat),
            &format!("lat {lat} page {page} {cfg} {knobs:?}"),
        );
    }
}

/// Runs `params` on `p` (`batch` sequences, `row` output values each: heads x latent) and checks
/// every sequence against the f64 reference (relative error at most 5e-3), naming `what`.
fn each_sequence_agrees(
    g: &CudaExecutor,
    p: &Problem,
    params: &DecodeParams,
    (batch, row): (usize, usize),
    what: &str,
) {
    // Progress under `--nocapture`: a variant that hangs on the GPU is the last one named.
    eprintln!("agreeing: {what}");
    let (out, _) = decode_on(g, p, params, |e, t| e.download(t).unwrap());
    for b in 0..batch {
        let e = rel_error(
            &f64s(&out.data()[b * row..(b + 1) * row]),
            &p.reference(b, true).out,
        );
        assert!(e <= 5e-3, "{what} b {b}: {e}");
    }
}

/// 128-row head blocks (two warpgroups stacked along the rows, `Geo::wg_rows`) on every
/// candidate at the shard widths, alone, fed by the `cp.async` producer and by TMA, with and
/// without `PINGPONG` (the warpgroups taking turns at the tensor cores): 150 heads (a whole
/// block and a partial one), 64- and 16-token pages, 3 splits.
#[test]
fn cuda_two_warpgroup_rows_agree() {
    let Some(g) = gpu() else { return };
    for (lat, page) in [(256usize, 64usize), (128, 16)] {
        for knobs in [
            &[][..],
            &[("PRODUCER", 1)],
            &[("PRODUCER", 1), ("TMA", 1)],
            &[("PRODUCER", 1), ("PINGPONG", 1)],
            &[("PRODUCER", 1), ("TMA", 1), ("PINGPONG", 1)],
        ] {
            every_config_of_rows_agrees(g, lat as u64 + 17, (128, 150), lat, page, 3, knobs);
        }
    }
}

/// Warp specialisation (`PRODUCER = 1`: a producer warpgroup feeding an mbarrier ring) on every
/// 64-row config at latent 512 and 256.
#[test]
fn cuda_producer_warpgroup_agrees() {
    let Some(g) = gpu() else { return };
    for lat in [512usize, 256] {
        every_64_row_config_agrees(g, lat as u64 + 7, lat, 16, 2, &[("PRODUCER", 1)]);
    }
}

/// The TMA producer (`PRODUCER = 1`, `TMA = 1`) on every 64-row config at latent 512 and 256:
/// 64-token pages (bulk tensor copies for every whole block, `cp.async` for a split's partial last
/// block), 16-token pages (a box per page); the pool is NaN wherever no sequence holds a token.
#[test]
fn cuda_tma_producer_agrees() {
    let Some(g) = gpu() else { return };
    for (lat, page) in [(512usize, 64usize), (256, 64), (512, 16)] {
        let knobs = [("PRODUCER", 1), ("TMA", 1)];
        every_64_row_config_agrees(g, lat as u64 + 9, lat, page, 3, &knobs);
    }
}

/// The TMA producer with the full mbarriers per column group (`FULL_GROUPS = 3`: q·kᵀ waits for
/// each group inside its k loop) on every 64-row config at latent 512 and 256, 64- and 16-token
/// pages, and with two warpgroups on alternate blocks (`WG_KV_SPLIT`) at latent 256.
#[test]
fn cuda_full_groups_agrees() {
    let Some(g) = gpu() else { return };
    for (lat, page) in [(512usize, 64usize), (256, 64), (512, 16)] {
        let knobs = [("PRODUCER", 1), ("TMA", 1), ("FULL_GROUPS", 3)];
        every_64_row_config_agrees(g, lat as u64 + 37, lat, page, 3, &knobs);
    }
    let knobs = [
        ("PRODUCER", 1),
        ("TMA", 1),
        ("WG_KV_SPLIT", 1),
        ("FULL_GROUPS", 3),
    ];
    every_64_row_config_agrees(g, 291, 256, 64, 3, &knobs);
}

/// `FULL_GROUPS` under compute-sanitizer (memcheck, racecheck, synccheck): the plain producer's
/// q·kᵀ split by columns (latent 512), whole (latent 256, 16-token pages), on alternate blocks
/// (`WG_KV_SPLIT`), each against the f64 reference.
#[test]
fn sanitizer_smoke_every_kernel_full_groups() {
    let Some(g) = gpu() else { return };
    for (lat, bn, st, wg, kv, page, fg) in [
        (512usize, 64i64, 2i64, 32i64, 0i64, 64usize, 3i64),
        (256, 64, 3, 128, 0, 16, 5),
        (256, 64, 4, 128, 1, 64, 3),
    ] {
        let knobs = [
            ("BLOCK_H", 64),
            ("BLOCK_N", bn),
            ("STAGES", st),
            ("WG_SPLIT", wg),
            ("PRODUCER", 1),
            ("TMA", 1),
            ("WG_KV_SPLIT", kv),
            ("FULL_GROUPS", fg),
        ];
        two_sequences_agree(g, 5, lat, page, 2, &knobs, LONG);
    }
}

/// The TMA producer with the L2 prefetch of the block a ring round ahead (`PREFETCH = 1`) on
/// every 64-row config at latent 512 and 256, 64-token pages (prefetches) and 16-token pages
/// (none: a block spans pages); a hint that must change no result.
#[test]
fn cuda_tma_l2_prefetch_agrees() {
    let Some(g) = gpu() else { return };
    for (lat, page) in [(512usize, 64usize), (256, 64), (256, 16)] {
        let knobs = [("PRODUCER", 1), ("TMA", 1), ("PREFETCH", 1)];
        every_64_row_config_agrees(g, lat as u64 + 21, lat, page, 3, &knobs);
    }
}

/// The two-consumer schedule (`SEESAW = 1`: warpgroups take alternate blocks, exchange row
/// statistics and P, each keeps half of the accumulator) on every 64-row config at latent 512
/// and 256 (where it does not apply the knob changes nothing).
#[test]
fn cuda_seesaw_agrees() {
    let Some(g) = gpu() else { return };
    for lat in [512usize, 256] {
        every_64_row_config_agrees(g, lat as u64 + 11, lat, 16, 3, &[("SEESAW", 1)]);
    }
}

/// The seesaw consumers fed by a producer warpgroup (`SEESAW = PRODUCER = 1`, with and without
/// `TMA = 1`) on every 64-row config at latent 512 and 256 (where the seesaw does not apply the
/// producer runs alone): 64- and 16-token pages.
#[test]
fn cuda_seesaw_producer_agrees() {
    let Some(g) = gpu() else { return };
    for (lat, page, tma) in [
        (512usize, 64usize, 1i64),
        (256, 64, 1),
        (512, 16, 1),
        (512, 16, 0),
    ] {
        let knobs = [("SEESAW", 1), ("PRODUCER", 1), ("TMA", tma)];
        every_64_row_config_agrees(g, lat as u64 + 13, lat, page, 3, &knobs);
    }
}

/// The TMA producer under compute-sanitizer (gpu-check.sh runs every test named
/// `sanitizer_smoke_every_kernel*` under memcheck, racecheck and synccheck): latent 512 and 256,
/// 64- and 32-token blocks, 2 to 4 stages, 64-token pages (TMA and the partial-block fallback)
/// and 16-token pages (a box per page); 64-row warpgroup consumers and, at BLOCK_H 16 / 32,
/// mma.sync consumer warps (also fed by the `cp.async` producer, `TMA = 0`). Each checked
/// against the f64 reference.
#[test]
fn sanitizer_smoke_every_kernel_tma() {
    let Some(g) = gpu() else { return };
    for (lat, bh, bn, st, wg, page, tma) in [
        (512usize, 64i64, 64i64, 2i64, 128i64, 64usize, 1i64),
        (512, 64, 32, 3, 32, 64, 1),
        (256, 64, 64, 2, 128, 64, 1),
        (256, 64, 32, 3, 128, 64, 1),
        (512, 64, 64, 2, 128, 16, 1),
        (512, 16, 64, 2, 128, 64, 1),
        (512, 16, 32, 4, 128, 64, 1),
        (256, 32, 32, 4, 128, 16, 1),
        (512, 16, 64, 2, 128, 64, 0),
        (256, 128, 64, 3, 128, 64, 1),
        (128, 128, 32, 2, 128, 16, 1),
        // PINGPONG = 1 below (WG_SPLIT = 0 marks it: the knob is moot on 128-row blocks).
        (256, 128, 64, 3, 0, 64, 1),
        (256, 128, 32, 2, 0, 16, 0),
        // PREFETCH = 1 below (TMA = 2 marks it): the L2 prefetch a ring round ahead.
        (512, 64, 64, 2, 32, 64, 2),
        (256, 64, 64, 3, 128, 64, 2),
    ] {
        let knobs = [
            ("BLOCK_H", bh),
            ("BLOCK_N", bn),
            ("STAGES", st),
            ("WG_SPLIT", if wg == 0 { 128 } else { wg }),
            ("PRODUCER", 1),
            ("TMA", tma.min(1)),
            ("PINGPONG", (wg == 0) as i64),
            ("PREFETCH", (tma == 2) as i64),
        ];
        two_sequences_agree(g, 2, lat, page, 2, &knobs, LONG);
    }
}

/// The long sequence of [`two_sequences_agree`] in the smoke tests: a split of it wraps a
/// four-stage ring of 32-token blocks at three splits, so a protocol fault that shows only when a
/// slot is reused (synccheck's "missing wait" of the first `SPLIT_RELEASE`) is caught; 150
/// tokens did not.
const LONG: usize = 600;

/// One launch of the decode with `knobs` on 17 heads of two sequences (`long` and 33 tokens) in
/// `page`-token pages and `splits` splits, each sequence against the f64 reference: the small
/// case the sanitizer tests run.
fn two_sequences_agree(
    g: &CudaExecutor,
    seed: u64,
    lat: usize,
    page: usize,
    splits: usize,
    knobs: &[(&str, i64)],
    long: usize,
) {
    let p = Problem::new(seed, 2, 17, lat, 64, vec![long, 33], page, 0.3);
    let mut params = DecodeParams::new(2, 17, lat, 64, splits, 0.3);
    params.decode = knobs.iter().fold(params.decode, |c, &(k, v)| c.with(k, v));
    each_sequence_agrees(
        g,
        &p,
        &params,
        (2, 17 * lat),
        &format!("lat {lat} page {page} {knobs:?}"),
    );
}

/// FlashAttention-3's overlap inside a warpgroup (`SOFTMAX_OVERLAP = 1`: each block's P·V issued
/// behind the next block's q·kᵀ and run during its softmax) on every 128-row candidate at the
/// shard widths and every 64-row candidate at latent 512 and 256, fed by the `cp.async` and the
/// TMA producers (where it does not apply, one stage or P through shared memory, the knob
/// changes nothing).
#[test]
fn cuda_softmax_overlap_agrees() {
    let Some(g) = gpu() else { return };
    for tma in [0i64, 1] {
        let knobs = [("PRODUCER", 1), ("TMA", tma), ("SOFTMAX_OVERLAP", 1)];
        for (lat, page) in [(256usize, 64usize), (128, 16)] {
            every_config_of_rows_agrees(g, lat as u64 + 19, (128, 150), lat, page, 3, &knobs);
        }
        for (lat, page) in [(512usize, 64usize), (256, 16)] {
            every_64_row_config_agrees(g, lat as u64 + 23, lat, page, 3, &knobs);
        }
    }
}

/// `SOFTMAX_OVERLAP = 1` under compute-sanitizer (memcheck, racecheck, synccheck; see
/// `sanitizer_smoke_every_kernel_tma`): 128- and 64-row blocks, two and three stages, the
/// `cp.async` and TMA producers, a split with no block (the P·V after the loop skipped), each
/// checked against the f64 reference.
#[test]
fn sanitizer_smoke_every_kernel_overlap() {
    let Some(g) = gpu() else { return };
    for (lat, bh, bn, st, page, tma) in [
        (256usize, 128i64, 64i64, 3i64, 64usize, 1i64),
        (128, 128, 32, 2, 16, 0),
        (512, 64, 64, 2, 64, 1),
        (256, 64, 32, 3, 16, 0),
    ] {
        let knobs = [
            ("BLOCK_H", bh),
            ("BLOCK_N", bn),
            ("STAGES", st),
            ("WG_SPLIT", 128),
            ("PRODUCER", 1),
            ("TMA", tma),
            ("SOFTMAX_OVERLAP", 1),
        ];
        two_sequences_agree(g, 3, lat, page, 3, &knobs, LONG);
    }
}

/// Two consumer warpgroups on alternate blocks of a 64-row tile (`WG_KV_SPLIT = 1`: each with
/// the whole accumulator, merged after the loop) on every 64-row candidate at the shard widths,
/// fed by the `cp.async` and the TMA producers (at latent 512 the accumulator needs both
/// warpgroups and the knob changes nothing).
#[test]
fn cuda_wg_kv_split_agrees() {
    let Some(g) = gpu() else { return };
    for tma in [0i64, 1] {
        let knobs = [("PRODUCER", 1), ("TMA", tma), ("WG_KV_SPLIT", 1)];
        for (lat, page) in [(256usize, 64usize), (128, 16)] {
            every_64_row_config_agrees(g, lat as u64 + 29, lat, page, 3, &knobs);
        }
    }
}

/// `WG_KV_SPLIT = 1` under compute-sanitizer (memcheck, racecheck, synccheck; see
/// `sanitizer_smoke_every_kernel_tma`): two and four stages, 64-, 32- and 16-token blocks (the
/// merge through the ring in one, two and four chunks), the `cp.async` and TMA producers, a
/// split of one block (the second warpgroup without one), each checked against the f64
/// reference.
#[test]
fn sanitizer_smoke_every_kernel_kv_split() {
    let Some(g) = gpu() else { return };
    for (lat, bn, st, page, tma) in [
        (256usize, 64i64, 4i64, 64usize, 1i64),
        (256, 32, 2, 16, 0),
        (128, 16, 2, 16, 1),
    ] {
        let knobs = [
            ("BLOCK_H", 64),
            ("BLOCK_N", bn),
            ("STAGES", st),
            ("WG_SPLIT", 128),
            ("PRODUCER", 1),
            ("TMA", tma),
            ("WG_KV_SPLIT", 1),
        ];
        two_sequences_agree(g, 4, lat, page, 3, &knobs, LONG);
    }
}

/// A score warpgroup beside the value warpgroups (`SCORE_WG = 1`: q·kᵀ and the softmax in one,
/// the rescale and P·V a block behind in the others: two at latent 512, one at the shard width
/// 256) on 64-row candidates it applies to, fed by `cp.async` and TMA copies a value warpgroup
/// issues (TMA also with `FULL_GROUPS = 3`, and 9), 64- and 16-token pages, three splits, on
/// sequences of 1000, 333 and 9 tokens, each against the f64 reference.
#[test]
fn cuda_score_warpgroup_agrees() {
    let Some(g) = gpu() else { return };
    for (lat, page, tma) in [
        (512usize, 64usize, 1i64),
        (512, 16, 1),
        (512, 64, 0),
        (256, 64, 1),
        (256, 16, 0),
    ] {
        let lens = vec![1000, 333, 9];
        let p = Problem::new(page as u64 + 31, 3, 64, lat, 64, lens, page, 0.2);
        let shapes: &[(i64, i64)] = if lat == 512 {
            &[(32, 2), (32, 3), (32, 4), (64, 2)]
        } else {
            &[(32, 2), (64, 3), (64, 4)]
        };
        // Over TMA copies also with the full mbarriers per column group (`FULL_GROUPS`): three
        // groups everywhere, one per box at latent 512 on whole-block pages.
        // And (`SPLIT_RELEASE`, latent 512 over TMA) each value warpgroup refilling its half.
        let groups: &[(i64, i64)] = match (tma, lat, page) {
            (1, 512, 64) => &[(1, 0), (3, 0), (9, 0), (1, 1)],
            (1, 512, _) => &[(1, 0), (3, 0), (1, 1)],
            (1, ..) => &[(1, 0), (3, 0)],
            _ => &[(1, 0)],
        };
        for &(bn, st) in shapes {
            for &(fg, split) in groups {
                let knobs = [
                    ("BLOCK_H", 64),
                    ("BLOCK_N", bn),
                    ("STAGES", st),
                    ("WG_SPLIT", 128),
                    ("PRODUCER", 1),
                    ("TMA", tma),
                    ("SCORE_WG", 1),
                    ("FULL_GROUPS", fg),
                    ("SPLIT_RELEASE", split),
                ];
                let mut params = DecodeParams::new(3, 64, lat, 64, 3, 0.2);
                params.decode = knobs.iter().fold(params.decode, |c, &(k, v)| c.with(k, v));
                let what = format!("lat {lat} page {page} {knobs:?}");
                each_sequence_agrees(g, &p, &params, (3, 64 * lat), &what);
            }
        }
    }
}

/// `SCORE_WG = 1` under compute-sanitizer (memcheck, racecheck, synccheck; see
/// `sanitizer_smoke_every_kernel_tma`): at latent 512 32-token blocks at three and four stages
/// with TMA, 64-token blocks at two stages with `cp.async`, 16-token pages; at latent 256 (one
/// value warpgroup) 64-token blocks at four stages; three of them again with the full mbarriers
/// per column group (`FULL_GROUPS = 3, 9`) and with each value warpgroup refilling its half
/// (`SPLIT_RELEASE`); each against the f64 reference. Sequences of 900 and 33 tokens in three
/// splits: a split of 300 tokens wraps even a four-stage ring of 64-token blocks (synccheck's
/// "missing wait" of the first `SPLIT_RELEASE` showed only where slots are reused).
#[test]
fn sanitizer_smoke_every_kernel_score_warpgroup() {
    let Some(g) = gpu() else { return };
    for (lat, bn, st, page, tma, fg, split) in [
        (512usize, 32i64, 3i64, 64usize, 1i64, 1i64, 0i64),
        (512, 32, 4, 16, 1, 1, 0),
        (512, 64, 2, 64, 0, 1, 0),
        (256, 64, 4, 64, 1, 1, 0),
        // Full mbarriers per column group (`FULL_GROUPS`).
        (512, 64, 2, 64, 1, 3, 0),
        (512, 32, 4, 16, 1, 9, 0),
        (256, 64, 4, 64, 1, 3, 0),
        // Each value warpgroup refilling its half (`SPLIT_RELEASE`).
        (512, 64, 2, 64, 1, 1, 1),
        (512, 32, 3, 16, 1, 1, 1),
    ] {
        let knobs = [
            ("BLOCK_H", 64),
            ("BLOCK_N", bn),
            ("STAGES", st),
            ("WG_SPLIT", 128),
            ("PRODUCER", 1),
            ("TMA", tma),
            ("SCORE_WG", 1),
            ("FULL_GROUPS", fg),
            ("SPLIT_RELEASE", split),
        ];
        two_sequences_agree(g, 4, lat, page, 3, &knobs, 900);
    }
}
