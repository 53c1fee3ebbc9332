//! The balanced split-KV schedule, computed on the device from the device-resident lengths.
//!
//! Uniform splits give every sequence the same number of pieces, so with mixed lengths the
//! programs of a long sequence do many times the work of a short one's while those idle. This
//! kernel instead gives sequence `b` pieces of `chunk[b]` tokens, about equal across the whole
//! batch, sized so the pieces of all sequences about fill the device's program slots; the decode
//! kernel, built with the schedule knob `KV_CHUNKS = 1`, reads the table through its cache
//! argument, and `combine_counted` merges the first `nsplits[b]` partials. No host sync: the
//! lengths never leave the device, so the step can be captured in a CUDA graph.

use tpla_macros::kernel;

/// Writes `chunk[b]` and `nsplits[b]` for `b` in `0..batch` (`batch <= MAX_B`) from
/// `seq_lens`, in one program.
///
/// Work is counted in blocks of `BLOCK_N` tokens. With `u = units · ceil(batch / units)` (the
/// work units of whole waves that hold a piece of every sequence), the kernel searches for the
/// smallest piece `c` (in blocks, at least `ceil(min_chunk / BLOCK_N)` and the balanced bound
/// `ceil(total / u)`) whose pieces number at most `u` in all, counting sequence `b` as `n_b =
/// max(1, ceil(blocks_b / max(c, fit_b)))` where `fit_b = ceil(blocks_b / max_splits)` keeps
/// every `n_b <= max_splits`; when no `c` fits it takes one piece per sequence. Then each
/// sequence's `n_b` pieces are evened out: `chunk[b] = ceil(blocks_b / n_b) · BLOCK_N` tokens and
/// `nsplits[b] = max(1, ceil(len_b / chunk[b])) <= n_b`. The longest piece, what a wave waits
/// for, is thus as short as `u` units allow. Counts are f32 (exact below 2^24 blocks); negative
/// lengths count as 0.
///
/// The search is `PROBES`-ary: a round counts the pieces of `PROBES` sizes spread over the
/// interval `[lo, hi]` at once (a `[PROBES, MAX_B]` tile reduced over the batch), keeps the
/// smallest that fits as `hi` and moves `lo` past the largest that does not, so the interval
/// shrinks `PROBES`-fold a round where a bisection halves it. `rounds`
/// ([`crate::ops::schedule_rounds`]) closes the widest interval the cache's capacity allows.
/// The piece count only falls as `c` grows, so the result is the bisection's, in 2-3 rounds
/// instead of 9-11 (each round is a reduction over the batch with its barriers: the 11-round
/// bisection took ~22 us on the H200).
#[kernel(grid = (1, 1, 1), constants(BLOCK_N, MAX_B, PROBES = 32))]
pub fn split_schedule(
    seq_lens: Tensor<i32, dims![batch]>,
    chunk: TensorMut<i32, dims![batch]>,
    nsplits: TensorMut<i32, dims![batch]>,
    units: i32,
    max_splits: i32,
    min_chunk: i32,
    rounds: i32,
) {
    let live = iota([MAX_B], 0) < batch;
    let lens = max(load(seq_lens.tile([0..MAX_B])).cast::<f32>(), 0.0);
    let blocks = ((lens + (BLOCK_N - 1)) / BLOCK_N)
        .cast::<i32>()
        .cast::<f32>();
    let ms = max(max_splits, 1);
    let fit = ((blocks + (ms - 1)) / ms).cast::<i32>().cast::<f32>();
    let u = max(units, 1) * cdiv(batch, max(units, 1));
    let total = reduce_sum(blocks, 0);
    let least = max(cdiv(min_chunk, BLOCK_N), 1);
    let mut lo = max(((total + (u - 1)) / u).cast::<i32>().cast::<f32>(), least);
    let mut hi = max(reduce_max(blocks, 0), lo);
    let probe = iota([PROBES], 0).cast::<f32>();
    for _round in range(0, rounds) {
        // Sizes lo + floor(i · (hi − lo) / PROBES), i < PROBES: lo itself, then steps of at
        // most ceil((hi − lo) / PROBES), all below hi (which fits) while hi > lo.
        let size = lo + ((probe * (hi - lo)) / PROBES).cast::<i32>().cast::<f32>();
        let per = max(fit.unsqueeze(0), size.unsqueeze(1));
        let n = max(
            ((blocks.unsqueeze(0) + per - 1.0) / per)
                .cast::<i32>()
                .cast::<f32>(),
            1.0,
        );
        let pieces = reduce_sum(select(live.unsqueeze(0), n, 0.0), 1);
        let fits = pieces <= u;
        hi = min(hi, 0.0 - reduce_max(select(fits, 0.0 - size, -1.0e30), 0));
        lo = max(lo, reduce_max(select(fits, 0.0, size + 1.0), 0));
    }
    let per = max(fit, hi);
    let n = max(
        ((blocks + per - 1.0) / per).cast::<i32>().cast::<f32>(),
        1.0,
    );
    let even = max(((blocks + n - 1.0) / n).cast::<i32>().cast::<f32>(), 1.0);
    let n = max(
        ((blocks + even - 1.0) / even).cast::<i32>().cast::<f32>(),
        1.0,
    );
    store(chunk.tile([0..MAX_B]), (even * BLOCK_N).cast::<i32>());
    store(nsplits.tile([0..MAX_B]), n.cast::<i32>());
}
