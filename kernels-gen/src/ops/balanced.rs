//! The balanced split schedule: plan-time sizes ([`Balanced`]), the workspace kept at fixed
//! addresses, the schedule kernel's launch and the decode over its split table.

use tpla_codegen::Config;
use tpla_runtime::{Executor, KernelArg, RuntimeError, TensorArg};

use super::{decode_unsplit, DecodeParams};
use crate::{combine_counted, latent_decode, split_schedule};

/// Most pieces the balanced schedule gives one sequence: the decode grid's split axis. Programs
/// past a sequence's last piece exit at once, but each still costs a block launch.
pub const MAX_BALANCED_SPLITS: usize = 64;

/// Waves of program slots the balanced schedule's pieces are sized for where the engine, the
/// decoder and `tpla tune` run it ([`Balanced::with_waves`]). Measured on an H100 (2026-12-05,
/// `tpla bench` `+bal`, MLA H16, 64 sequences of 1..32K tokens, same call): 1 wave 483.7 us, 2
/// waves 465.8, 3 waves 470.5, 4 waves 477.2 (`bench/NOTES-cuda-decode.md`).
pub const BALANCED_WAVES: usize = 2;

/// Plan-time sizes of the balanced split schedule ([`crate::split_schedule`]): fixed once from
/// the capacities and the device, so the schedule itself needs no host work per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balanced {
    /// The decode grid's split axis: no sequence gets more pieces.
    pub max_splits: usize,
    /// Work units the device runs at once: program slots ÷ head blocks per sequence.
    pub units: usize,
    /// Fewest tokens in a piece (a multiple of `BLOCK_N`).
    pub min_chunk: usize,
}

impl Balanced {
    /// The sizes for sequences of at most `max_len` tokens on a device with `slots` program
    /// slots (compute units × resident decode programs per unit): pieces of at least
    /// `max(4 · BLOCK_N, 512)` tokens before the schedule evens a sequence's pieces out
    /// (shorter ones cost more in partial writes and the combine than they add in parallelism,
    /// as in [`super::splits_for_occupancy`]), at most [`MAX_BALANCED_SPLITS`] of them per sequence.
    pub fn for_occupancy(p: &DecodeParams, max_len: usize, slots: usize) -> Balanced {
        let cfg = p.decode_config();
        let bh = cfg.get("BLOCK_H").unwrap_or(16).max(1) as usize;
        let bn = cfg.get("BLOCK_N").unwrap_or(32).max(1) as usize;
        let min_chunk = (4 * bn).max(512).div_ceil(bn) * bn;
        Balanced {
            max_splits: max_len.div_ceil(min_chunk).clamp(1, MAX_BALANCED_SPLITS),
            units: (slots / p.heads.div_ceil(bh).max(1)).max(1),
            min_chunk,
        }
    }

    /// The same sizes with the pieces of `waves` waves of program slots instead of one: pieces
    /// about `waves` times shorter, so the longest piece (what the last wave waits for) is closer
    /// to the average, at the cost of more partials for the combine. With one program slot per
    /// SM (the decode's ring fills shared memory), one wave leaves the rounding of 64 sequences
    /// into ~130 pieces to the slowest SM; `tpla bench` times 1-4 waves on its `+bal` rows.
    pub fn with_waves(self, waves: usize) -> Balanced {
        Balanced {
            units: self.units.saturating_mul(waves.max(1)),
            ..self
        }
    }

    /// The schedule kernel's config: its `BLOCK_N` is the decode's, so pieces start on blocks,
    /// and `MAX_B`, the most sequences it takes, covers `p.batch` (a power of two, at least 32).
    pub fn schedule_config(p: &DecodeParams) -> Result<Config, RuntimeError> {
        use tpla_codegen::KernelDef;
        let bn = p.decode_config().get("BLOCK_N").unwrap_or(32);
        let max_b = p.batch.max(32).checked_next_power_of_two().ok_or_else(|| {
            RuntimeError::InvalidInput(format!("a batch of {} is too large", p.batch))
        })?;
        Ok(split_schedule.default_config(&[
            ("BLOCK_N", bn),
            ("MAX_B", max_b as i64),
            ("PROBES", schedule_probes(max_b) as i64),
        ])?)
    }
}

impl DecodeParams {
    /// The decode kernel's config for the balanced schedule: [`Self::decode_config`] with the
    /// schedule knob `KV_CHUNKS = 1` (the cache carries the split table).
    pub fn balanced_decode_config(&self) -> Config {
        self.decode_config().with("KV_CHUNKS", 1)
    }
}

/// [`Balanced::for_occupancy`] with the occupancy of the balanced decode kernel queried from
/// the executor (the driver's occupancy query on a GPU; it also loads the kernel).
pub fn choose_balanced<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    max_len: usize,
) -> Result<Balanced, RuntimeError> {
    p.validate()?;
    let per_unit = exec.resident_programs(&latent_decode, &p.balanced_decode_config())?;
    Ok(Balanced::for_occupancy(
        p,
        max_len,
        exec.compute_units() * per_unit,
    ))
}

/// Buffers of the balanced decode, allocated once for a batch and kept at fixed addresses: the
/// split table `chunk [batch]`, the piece counts `nsplits [batch]` (both i32, written on the
/// device by the schedule kernel) and the partials `[max_splits, batch, heads, lat]` + LSE.
pub struct BalancedWorkspace<X: Executor> {
    sched: Balanced,
    batch: usize,
    chunk: X::Tensor<i32>,
    nsplits: X::Tensor<i32>,
    part: X::Tensor<f32>,
    part_lse: X::Tensor<f32>,
}

impl<X: Executor> BalancedWorkspace<X> {
    /// Allocates the buffers for `p.batch` sequences under `sched`.
    pub fn new(exec: &X, p: &DecodeParams, sched: Balanced) -> Result<Self, RuntimeError> {
        p.validate()?;
        let (s, b) = (sched.max_splits.max(1), p.batch);
        Ok(BalancedWorkspace {
            sched,
            batch: b,
            chunk: exec.alloc::<i32>(&[b])?,
            nsplits: exec.alloc::<i32>(&[b])?,
            part: exec.alloc::<f32>(&[s, b, p.heads, p.lat])?,
            part_lse: exec.alloc::<f32>(&[s, b, p.heads])?,
        })
    }
    /// The schedule sizes.
    pub fn schedule(&self) -> Balanced {
        self.sched
    }
    /// The split table and piece counts of the last decode (on the device).
    pub fn tables(&self) -> (&X::Tensor<i32>, &X::Tensor<i32>) {
        (&self.chunk, &self.nsplits)
    }
}

/// Latent decode attention with the balanced schedule, three launches and no host sync: the
/// schedule kernel computes `chunk` and `nsplits` from the cache's device-resident lengths, the
/// decode (built with `KV_CHUNKS = 1`) splits sequence `b` into `nsplits[b]` pieces of
/// `chunk[b]` tokens on a grid of `max_splits` splits, and [`crate::combine_counted`] merges the
/// written partials into `out` (`[batch, heads, lat]`) and `lse` (`[batch, heads]`).
/// `p.splits` is not used. With `max_splits = 1` it is the one-split decode.
pub fn decode_attention_balanced<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    ws: &mut BalancedWorkspace<X>,
    q: &X::Tensor<tpla_runtime::half::bf16>,
    cache: &X::Paged<tpla_runtime::half::bf16>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    p.validate()?;
    if ws.batch != p.batch {
        return Err(RuntimeError::InvalidInput(format!(
            "balanced workspace for a batch of {}, decode of {}",
            ws.batch, p.batch
        )));
    }
    if ws.sched.max_splits <= 1 {
        let one = DecodeParams {
            splits: 1,
            ..p.clone()
        };
        return decode_unsplit(exec, &one, q, cache, out, lse);
    }
    let KernelArg::Paged(pa) = X::paged_arg(cache) else {
        return Err(RuntimeError::InvalidInput(
            "decode: the cache is not paged".into(),
        ));
    };
    let lens_shape = [p.batch];
    let lens = pa.seq_lens_arg(&lens_shape)?;
    let g = pa.geometry();
    launch_schedule(
        exec,
        p,
        &ws.sched,
        lens,
        tensor_of(X::tensor_arg_mut(&mut ws.chunk))?,
        tensor_of(X::tensor_arg_mut(&mut ws.nsplits))?,
        g.pages_per_seq * g.page_size,
    )?;
    let chunk = tensor_of(X::tensor_arg(&ws.chunk))?;
    let cache = KernelArg::Paged(pa.with_split_table(chunk)?);
    let args = [
        X::tensor_arg(q),
        cache,
        X::tensor_arg_mut(&mut ws.part),
        X::tensor_arg_mut(&mut ws.part_lse),
        KernelArg::F32(p.scale),
    ];
    exec.launch(&latent_decode, &p.balanced_decode_config(), &args)?;
    let args = [
        X::tensor_arg(&ws.part),
        X::tensor_arg(&ws.part_lse),
        X::tensor_arg(&ws.nsplits),
        X::tensor_arg_mut(out),
        X::tensor_arg_mut(lse),
    ];
    exec.launch(&combine_counted, &p.combine_config(), &args)
}

/// Search rounds of [`crate::split_schedule`] for sequences of at most `max_len` tokens in
/// blocks of `block_n`, with `probes` piece sizes tried a round: a round shrinks the interval
/// of sizes (at most `ceil(max_len / block_n)` blocks wide) from `w` to below `w / probes`, so
/// the smallest `r` with `probes^r >= blocks` closes it; one more for safety, at most 24 (the
/// kernel counts in f32, exact below 2^24 blocks). 3 rounds at 32K tokens of 64-token blocks
/// with 32 probes, where the bisection (2 probes' worth) took 11 (~22 us on the H200,
/// 2026-12-05; a fixed 24 took ~42 us).
pub fn schedule_rounds(max_len: usize, block_n: usize, probes: usize) -> i32 {
    let blocks = max_len.div_ceil(block_n.max(1)).max(1);
    let probes = probes.max(2);
    let (mut reach, mut r) = (1usize, 0i32);
    while reach < blocks && r < 24 {
        reach = reach.saturating_mul(probes);
        r += 1;
    }
    (r + 1).min(24)
}

/// Piece sizes [`crate::split_schedule`] tries a round for a table of `max_b` sequences: its
/// `[PROBES, MAX_B]` tiles stay at 2048 elements (8 KB of f32 each), 2 to 64 probes.
pub fn schedule_probes(max_b: usize) -> usize {
    (2048 / max_b.max(1)).clamp(2, 64)
}

/// Launches [`crate::split_schedule`]: `chunk` and `nsplits` (`[batch]` i32, passed for
/// writing) from `lens` (`[batch]` i32), every length at most `max_len` (the cache's capacity:
/// it bounds the search, [`schedule_rounds`]).
pub fn launch_schedule<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    sched: &Balanced,
    lens: TensorArg<'_>,
    chunk: TensorArg<'_>,
    nsplits: TensorArg<'_>,
    max_len: usize,
) -> Result<(), RuntimeError> {
    let int = |what: &str, v: usize| {
        i32::try_from(v)
            .map(KernelArg::I32)
            .map_err(|_| RuntimeError::InvalidInput(format!("schedule {what} {v} overflows i32")))
    };
    let cfg = Balanced::schedule_config(p)?;
    let rounds = schedule_rounds(
        max_len,
        cfg.get("BLOCK_N")? as usize,
        cfg.get("PROBES")? as usize,
    );
    let args = [
        KernelArg::Tensor(lens),
        KernelArg::Tensor(chunk),
        KernelArg::Tensor(nsplits),
        int("units", sched.units)?,
        int("max_splits", sched.max_splits)?,
        int("min_chunk", sched.min_chunk)?,
        KernelArg::I32(rounds),
    ];
    let max_b = cfg.get("MAX_B")? as usize;
    if lens.shape().iter().product::<usize>() > max_b {
        return Err(RuntimeError::InvalidInput(format!(
            "schedule of {:?} sequences, sized for at most {max_b} (the decode's batch {})",
            lens.shape(),
            p.batch
        )));
    }
    exec.launch(&split_schedule, &cfg, &args)
}

fn tensor_of(a: KernelArg<'_>) -> Result<TensorArg<'_>, RuntimeError> {
    match a {
        KernelArg::Tensor(t) => Ok(t),
        _ => Err(RuntimeError::InvalidInput(
            "expected a tensor argument".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{schedule_probes, schedule_rounds};

    /// Enough rounds to close an interval as wide as the capacity's blocks (a round of `p`
    /// probes takes it from `w` to at most `ceil(w / p) - 1`), and never more than 24.
    #[test]
    fn schedule_rounds_close_the_widest_interval() {
        for probes in [2usize, 4, 32, 64] {
            for (max_len, bn) in [
                (1usize, 64usize),
                (64, 64),
                (65, 64),
                (4096, 32),
                (32768, 64),
                (1 << 20, 16),
            ] {
                let blocks = max_len.div_ceil(bn);
                let (mut w, mut n) = (blocks.saturating_sub(1), 0);
                while w > 0 {
                    w = w.div_ceil(probes) - 1;
                    n += 1;
                }
                let r = schedule_rounds(max_len, bn, probes);
                assert!(
                    r as usize >= n && r <= 24,
                    "{max_len} / {bn}, {probes} probes: {r} rounds, {n} needed"
                );
            }
        }
        assert_eq!(schedule_rounds(32768, 64, 32), 3);
        assert_eq!(schedule_rounds(32768, 64, 2), 10);
        assert_eq!(schedule_rounds(usize::MAX / 2, 1, 2), 24);
        assert_eq!(schedule_probes(64), 32);
        assert_eq!(schedule_probes(1024), 2);
        assert_eq!(schedule_probes(32), 64);
    }
}
