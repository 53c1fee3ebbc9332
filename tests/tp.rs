//! Tensor-parallel latent attention against the f64 reference: TPLA over ranks with one
//! all-reduce (CPU ranks with the host all-reduce here; two GPUs with NCCL where present) and the
//! head-parallel MLA baseline.

use half::bf16;
use rand::{Rng, SeedableRng};
use tpla::decoder::DecoderShape;
use tpla::tp::{HeadParallelMla, TpDecoder};
use tpla_runtime::reference::{rel_error, tpla_attention};
use tpla_runtime::{CpuExecutor, Executor, HostAllReduce, HostTensor, RuntimeError};

const DV: usize = 32;

struct Problem {
    shape: DecoderShape,
    rows: HostTensor<bf16>,
    q: HostTensor<bf16>,
    w: HostTensor<bf16>,
}

fn problem(groups: usize, seed: u64) -> Problem {
    let shape = DecoderShape {
        batch: 2,
        heads: 4,
        lat: 128,
        rope: 64,
        groups,
        page_size: 16,
        max_tokens: 96,
        splits: 2,
        scale: 0.09,
    };
    let d = shape.lat + shape.rope;
    let n = 70;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rand_bf16 = |len: usize| -> Vec<bf16> {
        (0..len)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
            .collect()
    };
    let rows = HostTensor::from_vec(&[shape.batch, n, d], rand_bf16(shape.batch * n * d)).unwrap();
    let q = HostTensor::from_vec(
        &[shape.batch, shape.heads, d],
        rand_bf16(shape.batch * shape.heads * d),
    )
    .unwrap();
    let w = HostTensor::from_vec(
        &[shape.heads, shape.lat, DV],
        rand_bf16(shape.heads * shape.lat * DV),
    )
    .unwrap();
    Problem { shape, rows, q, w }
}

/// `[batch, heads, DV]`: the (TPLA g) attention output projected by each head's `W_UV`.
fn reference(p: &Problem, g: usize) -> Vec<f64> {
    let s = &p.shape;
    let d = s.lat + s.rope;
    let n = p.rows.shape()[1];
    let f = |x: &[bf16]| x.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    let mut y = Vec::new();
    for b in 0..s.batch {
        let rows = f(&p.rows.data()[b * n * d..(b + 1) * n * d]);
        let q = f(&p.q.data()[b * s.heads * d..(b + 1) * s.heads * d]);
        let o = tpla_attention(&q, &rows, s.heads, s.lat, s.rope, s.scale as f64, g);
        for h in 0..s.heads {
            for v in 0..DV {
                let mut acc = 0.0;
                for c in 0..s.lat {
                    acc += o[h * s.lat + c] * p.w.data()[(h * s.lat + c) * DV + v].to_f64();
                }
                y.push(acc);
            }
        }
    }
    y
}

fn to_f64(t: &HostTensor<f32>) -> Vec<f64> {
    t.data().iter().map(|&x| x as f64).collect()
}

/// TPLA over `execs` (one rank each) with `collective`; every rank's result vs the reference.
fn check_tpla<X: Executor, C: tpla_runtime::AllReduce<X>>(execs: Vec<X>, collective: C, tag: &str) {
    let g = execs.len();
    let p = problem(g, 7);
    let mut tp = TpDecoder::new(execs, collective, p.shape.clone(), &p.w).unwrap();
    tp.append(&p.rows).unwrap();
    let qs = tp.rank_queries(&p.q).unwrap();
    let ys = tp.step(&qs).unwrap();
    tp.synchronize().unwrap();
    let want = reference(&p, g);
    for (r, (y, exec)) in ys.iter().zip(tp.execs()).enumerate() {
        let got = to_f64(&exec.download(y).unwrap());
        let e = rel_error(&got, &want);
        assert!(
            e <= 1e-2,
            "{tag}: rank {r} differs from the f64 reference by {e}"
        );
        println!("{tag}: rank {r} rel err {e:.2e}");
    }
}

#[test]
fn tpla_over_two_cpu_ranks_matches_the_reference() {
    let execs = vec![CpuExecutor::new(1).unwrap(), CpuExecutor::new(1).unwrap()];
    check_tpla(execs, HostAllReduce { ranks: 2 }, "cpu g=2");
}

#[test]
fn tpla_over_four_cpu_ranks_matches_the_reference() {
    let execs = (0..4).map(|_| CpuExecutor::new(1).unwrap()).collect();
    check_tpla(execs, HostAllReduce { ranks: 4 }, "cpu g=4");
}

#[test]
fn head_parallel_mla_matches_the_reference() {
    let p = problem(1, 9);
    let execs = vec![CpuExecutor::new(1).unwrap(), CpuExecutor::new(1).unwrap()];
    let mut mla = HeadParallelMla::new(execs, p.shape.clone(), &p.w).unwrap();
    mla.append(&p.rows).unwrap();
    let ys = mla.step(&mla.rank_queries(&p.q).unwrap()).unwrap();
    // Rank r holds heads [2r, 2r + 2): interleave back to [batch, heads, DV].
    let mut got = Vec::new();
    for b in 0..2 {
        for y in &ys {
            got.extend(to_f64(y)[b * 2 * DV..(b + 1) * 2 * DV].iter());
        }
    }
    let e = rel_error(&got, &reference(&p, 1));
    assert!(
        e <= 1e-2,
        "head-parallel MLA differs from the reference by {e}"
    );
}

#[test]
fn bad_groups_weights_and_head_splits_are_typed_errors() {
    let p = problem(2, 3);
    let one = vec![CpuExecutor::new(1).unwrap()];
    let e = TpDecoder::new(one, HostAllReduce { ranks: 1 }, p.shape.clone(), &p.w)
        .err()
        .expect("2 groups on 1 rank");
    assert!(matches!(e, RuntimeError::InvalidInput(_)), "{e}");
    let two = vec![CpuExecutor::new(1).unwrap(), CpuExecutor::new(1).unwrap()];
    let w = HostTensor::from_vec(&[4, 64, DV], vec![bf16::ONE; 4 * 64 * DV]).unwrap();
    let e = TpDecoder::new(two, HostAllReduce { ranks: 2 }, p.shape.clone(), &w)
        .err()
        .expect("W_UV with the wrong latent width");
    assert!(e.to_string().contains("W_UV"), "{e}");
    let three = (0..3).map(|_| CpuExecutor::new(1).unwrap()).collect();
    let e = HeadParallelMla::new(three, p.shape.clone(), &p.w)
        .err()
        .expect("4 heads over 3 ranks");
    assert!(e.to_string().contains("heads"), "{e}");
    // A length past the cache is refused before any rank changes.
    let two = vec![CpuExecutor::new(1).unwrap(), CpuExecutor::new(1).unwrap()];
    let mut tp = TpDecoder::new(two, HostAllReduce { ranks: 2 }, p.shape.clone(), &p.w).unwrap();
    let long = HostTensor::from_vec(&[2, 97, 192], vec![bf16::ONE; 2 * 97 * 192]).unwrap();
    assert!(matches!(
        tp.append(&long),
        Err(RuntimeError::LengthPastCache { .. })
    ));
}

/// Two GPUs and NCCL: skipped with a message on machines with fewer GPUs; fails instead when
/// `TPLA_REQUIRE_GPUS=2`.
#[test]
fn tpla_over_two_gpus_with_nccl_matches_the_reference() {
    use tpla_runtime::cuda::{nccl::NcclGroup, CudaExecutor};
    let required = std::env::var("TPLA_REQUIRE_GPUS").is_ok_and(|v| v.trim() == "2");
    let execs = match (CudaExecutor::new(0), CudaExecutor::new(1)) {
        (Ok(a), Ok(b)) => vec![a, b],
        (a, b) => {
            let why = a
                .err()
                .or(b.err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !required,
                "TPLA_REQUIRE_GPUS=2 but two GPUs are not usable: {why}"
            );
            eprintln!("SKIP tpla_over_two_gpus_with_nccl_matches_the_reference: {why}");
            return;
        }
    };
    let group = match NcclGroup::new(&execs) {
        Ok(g) => g,
        Err(e) => {
            assert!(!required, "TPLA_REQUIRE_GPUS=2 but NCCL failed: {e}");
            eprintln!("SKIP tpla_over_two_gpus_with_nccl_matches_the_reference: {e}");
            return;
        }
    };
    check_tpla(execs, group, "cuda+nccl g=2");
}

/// One process per GPU, as serving engines run: the test re-runs itself as two child processes
/// (rank 0 and 1) that join one NCCL group through an id passed in the environment, each builds
/// only its `TpShard`, steps it and all-reduces with `NcclRank`. Each child checks its result
/// against the f64 reference. Skipped with a message without two GPUs; fails instead when
/// `TPLA_REQUIRE_GPUS=2`.
#[test]
fn tpla_across_two_processes_with_nccl_ranks_matches_the_reference() {
    use std::process::Command;
    use std::time::{Duration, Instant};
    use tpla::tp::{TpShard, TpStage};
    use tpla_runtime::cuda::nccl::{NcclId, NcclRank};
    use tpla_runtime::cuda::CudaExecutor;
    const NAME: &str = "tpla_across_two_processes_with_nccl_ranks_matches_the_reference";

    if let Ok(rank) = std::env::var("TPLA_TP_CHILD_RANK") {
        // Child: one rank.
        let rank: usize = rank.parse().unwrap();
        let id = NcclId::from_hex(&std::env::var("TPLA_TP_NCCL_ID").unwrap()).unwrap();
        let exec = CudaExecutor::new(rank).unwrap();
        let comm = NcclRank::new(&exec, &id, rank, 2).unwrap();
        let p = problem(2, 7);
        let mut shard = TpShard::tpla(&exec, p.shape.clone(), rank, &p.w).unwrap();
        shard.append(&exec, &p.rows).unwrap();
        let q = shard.query(&exec, &p.q).unwrap();
        let mut y = shard.step(&exec, &q, TpStage::Projection).unwrap();
        comm.all_reduce_sum(&mut y).unwrap();
        let got = to_f64(&exec.download(&y).unwrap());
        let e = rel_error(&got, &reference(&p, 2));
        assert!(e <= 1e-2, "process rank {rank}: rel err {e}");
        println!("process rank {rank}: rel err {e:.2e}");
        return;
    }
    let required = std::env::var("TPLA_REQUIRE_GPUS").is_ok_and(|v| v.trim() == "2");
    if let Err(e) = CudaExecutor::new(0).and_then(|_| CudaExecutor::new(1)) {
        assert!(
            !required,
            "TPLA_REQUIRE_GPUS=2 but two GPUs are not usable: {e}"
        );
        eprintln!("SKIP {NAME}: {e}");
        return;
    }
    let id = match NcclId::new() {
        Ok(id) => id,
        Err(e) => {
            assert!(
                !required,
                "TPLA_REQUIRE_GPUS=2 but NCCL is unavailable: {e}"
            );
            eprintln!("SKIP {NAME}: {e}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|r| {
            Command::new(&exe)
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env("TPLA_TP_CHILD_RANK", r.to_string())
                .env("TPLA_TP_NCCL_ID", id.to_hex())
                .spawn()
                .unwrap()
        })
        .collect();
    // ncclCommInitRank waits for every rank: never hang the suite if one child dies early.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut ok = [false; 2];
    let mut done = [false; 2];
    while done.iter().any(|d| !d) {
        for (r, c) in children.iter_mut().enumerate() {
            if !done[r] {
                if let Some(status) = c.try_wait().unwrap() {
                    done[r] = true;
                    ok[r] = status.success();
                }
            }
        }
        if Instant::now() > deadline {
            children.iter_mut().for_each(|c| {
                let _ = c.kill();
            });
            panic!("the rank processes did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok.iter().all(|&o| o), "rank processes succeeded: {ok:?}");
}
