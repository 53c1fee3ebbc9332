//! The balanced split schedule (device-computed per-sequence pieces) on the CPU JIT: the tables
//! the schedule kernel writes, and decode through them against the f64 reference with very
//! uneven lengths, shuffled pages, a NaN-poisoned pool and NaN-poisoned outputs.

mod common;

use common::{f64s, Problem};
use proptest::prelude::*;
use tpla_kernels::ops::{decode_attention_balanced, Balanced, BalancedWorkspace, DecodeParams};
use tpla_runtime::reference::rel_error;
use tpla_runtime::{CpuExecutor, HostTensor};

fn exec() -> &'static CpuExecutor {
    static EX: std::sync::OnceLock<CpuExecutor> = std::sync::OnceLock::new();
    EX.get_or_init(|| CpuExecutor::new(2).unwrap())
}

/// Decodes `p` with the balanced schedule `sched` (BLOCK_N = `bn`) into NaN-poisoned outputs,
/// checks every sequence against the f64 reference and returns `(chunk, nsplits)`.
fn run_in(
    p: &Problem,
    ws: &mut BalancedWorkspace<CpuExecutor>,
    params: &DecodeParams,
) -> (Vec<i32>, Vec<i32>) {
    let mut out = HostTensor::<f32>::full(&[p.batch, p.heads, p.lat], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[p.batch, p.heads], f32::NAN);
    decode_attention_balanced(
        exec(),
        params,
        ws,
        &p.q_tensor(),
        &p.cache,
        &mut out,
        &mut lse,
    )
    .unwrap();
    let hl = p.heads * p.lat;
    for b in 0..p.batch {
        let got = f64s(&out.data()[b * hl..(b + 1) * hl]);
        if p.lens[b] == 0 {
            assert!(
                got.iter().all(|&x| x == 0.0),
                "sequence {b} is empty: output 0"
            );
            continue;
        }
        let want = p.reference(b, true);
        let e = rel_error(&got, &want.out);
        assert!(e <= 1e-5, "sequence {b} (len {}): rel error {e}", p.lens[b]);
        let e = rel_error(
            &f64s(&lse.data()[b * p.heads..(b + 1) * p.heads]),
            &want.lse,
        );
        assert!(e <= 1e-5, "sequence {b} lse: rel error {e}");
    }
    let (c, n) = ws.tables();
    (c.data().to_vec(), n.data().to_vec())
}

fn params(p: &Problem, bn: i64) -> DecodeParams {
    let mut params = DecodeParams::new(p.batch, p.heads, p.lat, p.rope, 1, p.scale);
    params.decode = params.decode.with("BLOCK_N", bn);
    params
}

/// The schedule of `split_schedule`'s doc comment, in exact integers: `(chunk, nsplits)`.
fn model(lens: &[usize], s: &Balanced, bn: usize) -> (Vec<i32>, Vec<i32>) {
    let blocks: Vec<usize> = lens.iter().map(|l| l.div_ceil(bn)).collect();
    let ms = s.max_splits.max(1);
    let fit: Vec<usize> = blocks.iter().map(|b| b.div_ceil(ms)).collect();
    let units = s.units.max(1);
    let u = units * lens.len().div_ceil(units);
    let count = |c: usize| -> usize {
        (0..lens.len())
            .map(|b| blocks[b].div_ceil(c.max(fit[b])).max(1))
            .sum()
    };
    let total: usize = blocks.iter().sum();
    let lo = total.div_ceil(u).max(s.min_chunk.div_ceil(bn)).max(1);
    let hi = blocks.iter().copied().max().unwrap_or(0).max(lo);
    let c = (lo..=hi).find(|&c| count(c) <= u).unwrap_or(hi);
    let mut chunk = Vec::new();
    let mut nsplits = Vec::new();
    for b in 0..lens.len() {
        let n = blocks[b].div_ceil(c.max(fit[b])).max(1);
        let even = blocks[b].div_ceil(n).max(1);
        chunk.push((even * bn) as i32);
        nsplits.push(blocks[b].div_ceil(even).max(1) as i32);
    }
    (chunk, nsplits)
}

/// The schedule's contract (pieces on whole blocks covering each sequence in 1 to
/// `max_splits` pieces, at most the units of whole waves in all) and the exact tables of
/// [`model`].
fn check_tables(lens: &[usize], chunk: &[i32], nsplits: &[i32], s: &Balanced, bn: usize) {
    for (b, &len) in lens.iter().enumerate() {
        let (c, n) = (chunk[b] as usize, nsplits[b] as usize);
        assert!(c % bn == 0 && c >= bn, "chunk[{b}] = {c}");
        assert!((1..=s.max_splits).contains(&n), "nsplits[{b}] = {n}");
        assert_eq!(
            n,
            len.div_ceil(c).max(1),
            "nsplits[{b}] for len {len}, chunk {c}"
        );
    }
    let u = s.units * lens.len().div_ceil(s.units);
    let pieces: i32 = nsplits.iter().sum();
    assert!(pieces as usize <= u, "{pieces} pieces for {u} units");
    let (mc, mn) = model(lens, s, bn);
    assert_eq!(
        (chunk, nsplits),
        (&mc[..], &mn[..]),
        "tables vs the model for {lens:?}"
    );
}

#[test]
fn very_uneven_lengths_match_the_reference() {
    let lens = vec![0, 1, 17, 5000, 300, 2, 1024, 63];
    let p = Problem::new(11, lens.len(), 4, 128, 64, lens.clone(), 16, 0.1352);
    for bn in [16i64, 32, 64] {
        let params = params(&p, bn);
        let sched = Balanced {
            max_splits: 8,
            units: 24,
            min_chunk: 64,
        };
        let mut ws = BalancedWorkspace::new(exec(), &params, sched).unwrap();
        let (chunk, nsplits) = run_in(&p, &mut ws, &params);
        check_tables(&lens, &chunk, &nsplits, &sched, bn as usize);
        // The long sequence is split, the short ones are not.
        assert!(
            nsplits[3] > 1 && nsplits[0] == 1 && nsplits[1] == 1,
            "{nsplits:?}"
        );
    }
}

#[test]
fn pieces_about_fill_the_units_and_respect_max_splits() {
    let lens = vec![4000, 100, 3000, 7000, 0, 900];
    let p = Problem::new(12, lens.len(), 1, 64, 64, lens.clone(), 64, 0.2);
    let params = params(&p, 32);
    let sched = Balanced {
        max_splits: 64,
        units: 40,
        min_chunk: 128,
    };
    let mut ws = BalancedWorkspace::new(exec(), &params, sched).unwrap();
    let (chunk, nsplits) = run_in(&p, &mut ws, &params);
    check_tables(&lens, &chunk, &nsplits, &sched, 32);
    // 15000 tokens in at most 40 pieces: none longer than the 40 units need (with rounding).
    let total: i32 = nsplits.iter().sum();
    assert!((30..=40).contains(&total), "{total} pieces: {nsplits:?}");
    assert!(chunk.iter().all(|&c| c <= 512), "{chunk:?}");
    // A grid of 4 splits: the 7000-token sequence takes longer pieces to fit.
    let capped = Balanced {
        max_splits: 4,
        ..sched
    };
    let mut ws = BalancedWorkspace::new(exec(), &params, capped).unwrap();
    let (chunk, nsplits) = run_in(&p, &mut ws, &params);
    check_tables(&lens, &chunk, &nsplits, &capped, 32);
    assert_eq!((chunk[3], nsplits[3]), (1760, 4));
}

/// `Balanced::with_waves`: pieces sized for more waves of program slots are shorter (the longest
/// piece, what the last wave waits for, nearer the average), every table still exact and within
/// the units of the waves, and the grid's `max_splits` unchanged.
#[test]
fn more_waves_give_shorter_pieces_within_their_units() {
    let lens = vec![4000, 100, 3000, 7000, 0, 900, 2500, 6100];
    let p = Problem::new(13, lens.len(), 1, 64, 64, lens.clone(), 64, 0.2);
    let params = params(&p, 32);
    let one = Balanced {
        max_splits: 64,
        units: 10,
        min_chunk: 128,
    };
    let mut longest = Vec::new();
    for waves in 1..=4 {
        let sched = one.with_waves(waves);
        assert_eq!(sched.units, 10 * waves);
        assert_eq!(sched.max_splits, one.max_splits);
        let mut ws = BalancedWorkspace::new(exec(), &params, sched).unwrap();
        let (chunk, nsplits) = run_in(&p, &mut ws, &params);
        check_tables(&lens, &chunk, &nsplits, &sched, 32);
        longest.push(*chunk.iter().max().unwrap());
    }
    assert!(
        longest.windows(2).all(|w| w[1] < w[0]),
        "longest piece per wave count 1..4: {longest:?}"
    );
    assert_eq!(one.with_waves(0), one, "zero waves count as one");
}

/// The schedule kernel alone (no decode), at batches whose `[PROBES, MAX_B]` tiles give 64, 32,
/// 4 and 2 probes a round and capacities wide enough for several rounds: the tables are the
/// exact model's (the smallest fitting piece) after the rounds `schedule_rounds` gives.
#[test]
fn the_probing_search_finds_the_smallest_piece_in_its_rounds() {
    use tpla_kernels::ops::{launch_schedule, schedule_rounds};
    use tpla_runtime::{Executor, KernelArg, TensorArg};
    fn tensor(a: KernelArg<'_>) -> TensorArg<'_> {
        match a {
            KernelArg::Tensor(t) => t,
            _ => unreachable!("host tensors are tensor arguments"),
        }
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % m as u64) as usize
    };
    for (batch, capacity, bn, units) in [
        (20usize, 1usize << 15, 64usize, 33usize),
        (64, 1 << 15, 64, 264),
        (300, 1 << 20, 16, 132),
        (700, 1 << 18, 32, 500),
    ] {
        let lens: Vec<usize> = (0..batch)
            .map(|i| match i % 5 {
                0 => next(capacity + 1),
                1 => next(64),
                _ => next(capacity / 3),
            })
            .collect();
        let mut p = DecodeParams::new(batch, 16, 64, 64, 1, 0.1);
        p.decode = p.decode.with("BLOCK_N", bn as i64);
        let sched = Balanced {
            max_splits: 64,
            units,
            min_chunk: 4 * bn,
        };
        let e = exec();
        let lens_t = e
            .upload(
                &HostTensor::<i32>::from_vec(&[batch], lens.iter().map(|&l| l as i32).collect())
                    .unwrap(),
            )
            .unwrap();
        let mut chunk = HostTensor::<i32>::full(&[batch], -7);
        let mut nsplits = HostTensor::<i32>::full(&[batch], -7);
        launch_schedule(
            e,
            &p,
            &sched,
            tensor(CpuExecutor::tensor_arg(&lens_t)),
            tensor(CpuExecutor::tensor_arg_mut(&mut chunk)),
            tensor(CpuExecutor::tensor_arg_mut(&mut nsplits)),
            capacity,
        )
        .unwrap();
        check_tables(&lens, chunk.data(), nsplits.data(), &sched, bn);
        let cfg = Balanced::schedule_config(&p).unwrap();
        let probes = cfg.get("PROBES").unwrap() as usize;
        assert!(
            schedule_rounds(capacity, bn, probes) >= 3,
            "batch {batch}: {probes} probes, capacity {capacity} take several rounds"
        );
    }
}

#[test]
fn more_sequences_than_units_take_whole_waves() {
    // 12 sequences on 5 units: 3 waves of 5, so 15 pieces, the long sequences split.
    let lens = vec![900, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 700];
    let p = Problem::new(16, lens.len(), 2, 64, 64, lens.clone(), 16, 0.2);
    let params = params(&p, 16);
    let sched = Balanced {
        max_splits: 8,
        units: 5,
        min_chunk: 16,
    };
    let mut ws = BalancedWorkspace::new(exec(), &params, sched).unwrap();
    let (chunk, nsplits) = run_in(&p, &mut ws, &params);
    check_tables(&lens, &chunk, &nsplits, &sched, 16);
    assert_eq!(nsplits.iter().sum::<i32>(), 15, "{nsplits:?}");
}

#[test]
fn a_replay_with_shorter_lengths_never_reads_stale_partials() {
    // The same workspace first holds partials of many pieces; after the lengths shrink, the
    // combine must read only the pieces the new schedule wrote.
    let long = Problem::new(13, 3, 4, 64, 64, vec![3000, 2500, 40], 16, 0.3);
    let params = params(&long, 16);
    let sched = Balanced {
        max_splits: 16,
        units: 30,
        min_chunk: 64,
    };
    let mut ws = BalancedWorkspace::new(exec(), &params, sched).unwrap();
    let (_, n_long) = run_in(&long, &mut ws, &params);
    let short = Problem::new(14, 3, 4, 64, 64, vec![70, 1, 0], 16, 0.3);
    let (_, n_short) = run_in(&short, &mut ws, &params);
    assert!(
        n_long[0] > 2 && n_short[0] <= 2,
        "{n_long:?} then {n_short:?}"
    );
}

#[test]
fn a_workspace_for_another_batch_is_refused() {
    let p = Problem::new(15, 2, 4, 64, 64, vec![10, 20], 16, 0.3);
    let params = params(&p, 16);
    let other = DecodeParams::new(3, 4, 64, 64, 1, 0.3);
    let sched = Balanced::for_occupancy(&other, 4096, 8);
    let mut ws = BalancedWorkspace::new(exec(), &other, sched).unwrap();
    let mut out = HostTensor::<f32>::full(&[2, 4, 64], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[2, 4], f32::NAN);
    let e = decode_attention_balanced(
        exec(),
        &params,
        &mut ws,
        &p.q_tensor(),
        &p.cache,
        &mut out,
        &mut lse,
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch"), "{e}");
    assert!(out.data().iter().all(|x| x.is_nan()), "nothing was written");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

    #[test]
    fn random_lengths_and_schedules_match_the_reference(
        seed in any::<u64>(),
        lens in prop::collection::vec(0usize..1500, 1..6),
        units in 1usize..64,
        max_splits in 1usize..12,
        page_size in prop::sample::select(vec![1usize, 16, 64]),
    ) {
        let p = Problem::new(seed, lens.len(), 3, 64, 64, lens.clone(), page_size, 0.25);
        let params = params(&p, 32);
        let sched = Balanced { max_splits, units, min_chunk: 64 };
        let mut ws = BalancedWorkspace::new(exec(), &params, sched).unwrap();
        let (chunk, nsplits) = run_in(&p, &mut ws, &params);
        if max_splits > 1 {
            check_tables(&lens, &chunk, &nsplits, &sched, 32);
        }
    }
}
