//! The owned-cache decoders for continuous batching: `LatentDecoder` appends per sequence and
//! resets a sequence; `TpDecoder` returns every rank's latent output and LSE, which merge and
//! project to the same step. Checked against the f64 reference.

use rand::{Rng, SeedableRng};
use tpla::decoder::{DecoderShape, LatentDecoder};
use tpla::tp::TpDecoder;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{rel_error, tpla_shard_attention};
use tpla_runtime::{CpuExecutor, Executor, HostAllReduce, HostTensor, RuntimeError};

const HEADS: usize = 4;
const LAT: usize = 64;
const ROPE: usize = 64;
const D: usize = LAT + ROPE;
const SCALE: f32 = 0.11;

fn shape(batch: usize, groups: usize) -> DecoderShape {
    DecoderShape {
        batch,
        heads: HEADS,
        lat: LAT,
        rope: ROPE,
        groups,
        page_size: 16,
        max_tokens: 64,
        splits: 2,
        scale: SCALE,
    }
}

fn random(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect()
}

fn f64s(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Checks shard outputs `(out, lse)` of every non-empty sequence against the reference.
fn check_shards(
    exec: &CpuExecutor,
    outs: &[(HostTensor<f32>, HostTensor<f32>)],
    rows: &[Vec<bf16>],
    q: &HostTensor<bf16>,
    groups: usize,
    first: usize,
) {
    let w = LAT / groups;
    for (j, (o, l)) in outs.iter().enumerate() {
        let (o, l) = (exec.download(o).unwrap(), exec.download(l).unwrap());
        for (b, r) in rows.iter().enumerate() {
            let ob = &o.data()[b * HEADS * w..(b + 1) * HEADS * w];
            let lb = &l.data()[b * HEADS..(b + 1) * HEADS];
            assert!(ob.iter().chain(lb).all(|x| x.is_finite()), "seq {b}");
            if r.is_empty() {
                continue;
            }
            let qb = f64s(&q.data()[b * HEADS * D..(b + 1) * HEADS * D]);
            let want = tpla_shard_attention(
                &qb,
                &f64s(r),
                HEADS,
                LAT,
                ROPE,
                SCALE as f64,
                groups,
                first + j,
            );
            let got: Vec<f64> = ob.iter().map(|&x| x as f64).collect();
            let e = rel_error(&got, &want.out);
            assert!(e < 1e-4, "shard {} seq {b}: rel error {e}", first + j);
            for (g, w) in lb.iter().zip(&want.lse) {
                assert!((*g as f64 - w).abs() < 1e-3, "seq {b}: lse {g} vs {w}");
            }
        }
    }
}

#[test]
fn latent_decoder_appends_per_sequence_and_resets() {
    let exec = CpuExecutor::new(0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut dec = LatentDecoder::new(&exec, shape(3, 2)).unwrap();
    let mut rows: Vec<Vec<bf16>> = vec![Vec::new(); 3];
    let mut add =
        |dec: &mut LatentDecoder<CpuExecutor>, rows: &mut Vec<Vec<bf16>>, b: usize, n: usize| {
            let r = random(&mut rng, n * D);
            dec.append_seq(&exec, b, &HostTensor::from_vec(&[n, D], r.clone()).unwrap())
                .unwrap();
            rows[b].extend(r);
        };
    add(&mut dec, &mut rows, 0, 20);
    add(&mut dec, &mut rows, 2, 33);
    add(&mut dec, &mut rows, 0, 1);
    add(&mut dec, &mut rows, 1, 5);
    assert_eq!(dec.lens(), &[21, 5, 33]);
    // Sequence 0 finishes; a new request takes its place.
    dec.reset_seq(&exec, 0).unwrap();
    rows[0].clear();
    add(&mut dec, &mut rows, 0, 3);
    assert_eq!(dec.lens(), &[3, 5, 33]);

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let q = HostTensor::from_vec(&[3, HEADS, D], random(&mut rng, 3 * HEADS * D)).unwrap();
    let outs = dec.attend(&exec, &q).unwrap();
    check_shards(&exec, &outs, &rows, &q, 2, 0);

    // Refusals change nothing.
    let too_long = HostTensor::from_vec(&[32, D], vec![bf16::ZERO; 32 * D]).unwrap();
    let e = dec.append_seq(&exec, 2, &too_long).unwrap_err();
    assert!(matches!(e, RuntimeError::LengthPastCache { .. }), "{e}");
    let narrow = HostTensor::from_vec(&[1, D - 1], vec![bf16::ZERO; D - 1]).unwrap();
    assert!(dec.append_seq(&exec, 1, &narrow).is_err());
    assert!(dec.append_seq(&exec, 3, &narrow).is_err());
    assert!(dec.reset_seq(&exec, 3).is_err());
    assert_eq!(dec.lens(), &[3, 5, 33]);
    let again = dec.attend(&exec, &q).unwrap();
    for ((a, _), (b, _)) in outs.iter().zip(&again) {
        assert_eq!(a.data(), b.data(), "a refused append changed the cache");
    }
}

#[test]
fn tp_decoder_returns_per_rank_out_and_lse() {
    let g = 2;
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let execs = vec![CpuExecutor::new(0).unwrap(), CpuExecutor::new(0).unwrap()];
    let dv = 16;
    let w = HostTensor::from_vec(&[HEADS, LAT, dv], random(&mut rng, HEADS * LAT * dv)).unwrap();
    let mut tp = TpDecoder::new(execs, HostAllReduce { ranks: g }, shape(2, g), &w).unwrap();
    let n = 40;
    let all = random(&mut rng, 2 * n * D);
    tp.append(&HostTensor::from_vec(&[2, n, D], all.clone()).unwrap())
        .unwrap();
    let rows: Vec<Vec<bf16>> = all.chunks(n * D).map(<[bf16]>::to_vec).collect();
    let q = HostTensor::from_vec(&[2, HEADS, D], random(&mut rng, 2 * HEADS * D)).unwrap();
    let queries = tp.rank_queries(&q).unwrap();

    let per_rank = tp.attend(&queries).unwrap();
    assert_eq!(per_rank.len(), g);
    for (r, (out, lse)) in per_rank.iter().enumerate() {
        let exec = &tp.execs()[r];
        check_shards(exec, &[(out.clone(), lse.clone())], &rows, &q, g, r);
    }
    // Projecting and reducing the per-rank outputs is the step.
    let latent: Vec<HostTensor<f32>> = per_rank.into_iter().map(|(o, _)| o).collect();
    let y = tp.project_reduce(&latent).unwrap();
    let step = tp.step(&queries).unwrap();
    for (a, b) in y.iter().zip(&step) {
        assert_eq!(a.data(), b.data());
    }
    assert!(tp.project_reduce(&latent[..1]).is_err());
    assert!(tp.attend(&queries[..1]).is_err());
}

/// A tune entry's uniform split count (`apply_tuned`) is what the decode uses: every count,
/// including one past the blocks of the longest sequence (clamped), matches the reference with
/// mixed lengths, where some splits of the shorter sequences are empty.
#[test]
fn a_tuned_uniform_split_count_matches_the_reference() {
    use tpla_runtime::tune::{SplitPolicy, TuneEntry};
    let exec = CpuExecutor::new(0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut auto = shape(3, 2);
    auto.splits = 0;
    let mut dec = LatentDecoder::new(&exec, auto).unwrap();
    let mut rows: Vec<Vec<bf16>> = vec![Vec::new(); 3];
    for (b, n) in [(0, 61), (1, 2), (2, 37)] {
        let r = random(&mut rng, n * D);
        dec.append_seq(&exec, b, &HostTensor::from_vec(&[n, D], r.clone()).unwrap())
            .unwrap();
        rows[b] = r;
    }
    let q = HostTensor::from_vec(&[3, HEADS, D], random(&mut rng, 3 * HEADS * D)).unwrap();
    let config = tpla_codegen::KernelDef::default_config(&tpla_kernels::latent_decode, &[])
        .unwrap()
        .with("BLOCK_N", 16);
    for n in [1, 3, 9] {
        let entry = TuneEntry {
            config: Default::default(),
            time_us: 1.0,
            date: "d".into(),
            split_policy: Some(SplitPolicy::Uniform),
            splits: Some(n),
        };
        let how = dec.apply_tuned(config.clone(), &entry);
        assert_eq!(how, format!(", uniform splits ({n})"));
        let outs = dec.attend(&exec, &q).unwrap();
        check_shards(&exec, &outs, &rows, &q, 2, 0);
    }
}
