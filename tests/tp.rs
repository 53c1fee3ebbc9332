//! Tensor-parallel latent attention against the f64 reference: TPLA over ranks with one
//! all-reduce (CPU ranks with the host all-reduce here; two GPUs with NCCL where present) and the
//! head-parallel MLA baseline.

use half::bf16;
use rand::{Rng, SeedableRng};
use tpla::decoder::DecoderShape;
use tpla::tp::{HeadParallelMla, TpDecoder};
use tpla_runtime::reference::{rel_error, tpla_attention};
use tpla_runtime::{CpuExecutor, Executor, HostAllReduce, HostTensor, RuntimeError};

#[path = "procs/mod.rs"]
mod procs;

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
    use std::time::Duration;
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
        comm.wait().unwrap();
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
    let ok: Vec<bool> = procs::wait_all(
        &mut children,
        Duration::from_secs(180),
        "the rank processes",
    )
    .iter()
    .map(|s| s.success())
    .collect();
    assert!(ok.iter().all(|&o| o), "rank processes succeeded: {ok:?}");
}

/// Faults of a group of processes (one GPU each, `NcclRank`), as an engine meets them. The
/// child side: `TPLA_TP_FAULT_MODE=kill` steps until a collective fails (printing each step),
/// and exits 3 with the error; `mismatch` checks the configuration with `NcclRank::agree` (rank
/// r claims batch 2 + r) and exits 4 with the error. Every wait is bounded by
/// `FAULT_TIMEOUT`.
const FAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn fault_child(mode: &str, rank: usize) -> ! {
    use std::io::Write;
    use tpla::tp::{TpShard, TpStage};
    use tpla_runtime::cuda::nccl::{NcclId, NcclRank};
    use tpla_runtime::cuda::CudaExecutor;
    let id = NcclId::from_hex(&std::env::var("TPLA_TP_NCCL_ID").unwrap()).unwrap();
    let exec = CudaExecutor::new(rank).unwrap();
    let comm = NcclRank::with_timeout(&exec, &id, rank, 2, FAULT_TIMEOUT).unwrap();
    let fail = |code: i32, e: RuntimeError| -> ! {
        println!("rank {rank}: {e}");
        std::io::stdout().flush().unwrap();
        std::process::exit(code)
    };
    if mode == "mismatch" {
        let config = format!("TPLA g=2, batch {}, heads 4, latent 128", 2 + rank);
        match comm.agree(&exec, &config) {
            Ok(()) => std::process::exit(0),
            Err(e) => fail(4, e),
        }
    }
    let p = problem(2, 7);
    if let Err(e) = comm.agree(&exec, &format!("{:?}", p.shape)) {
        fail(4, e);
    }
    let mut shard = TpShard::tpla(&exec, p.shape.clone(), rank, &p.w).unwrap();
    shard.append(&exec, &p.rows).unwrap();
    let q = shard.query(&exec, &p.q).unwrap();
    for step in 0..2000 {
        let mut y = shard.step(&exec, &q, TpStage::Projection).unwrap();
        if let Err(e) = comm.all_reduce_sum(&mut y).and_then(|_| comm.wait()) {
            fail(3, e);
        }
        println!("rank {rank} step {step} ok");
        std::io::stdout().flush().unwrap();
    }
    std::process::exit(0)
}

/// Spawns the two ranks of `test` in `mode` with a fresh NCCL id, stdout piped; `None` (after
/// printing why, or failing under `TPLA_REQUIRE_GPUS=2`) without two GPUs and NCCL.
fn spawn_fault_ranks(test: &str, mode: &str) -> Option<Vec<std::process::Child>> {
    use std::process::{Command, Stdio};
    use tpla_runtime::cuda::nccl::NcclId;
    use tpla_runtime::cuda::CudaExecutor;
    let required = std::env::var("TPLA_REQUIRE_GPUS").is_ok_and(|v| v.trim() == "2");
    let id = CudaExecutor::new(0)
        .and_then(|_| CudaExecutor::new(1))
        .and_then(|_| NcclId::new());
    let id = match id {
        Ok(id) => id,
        Err(e) => {
            assert!(
                !required,
                "TPLA_REQUIRE_GPUS=2 but two GPUs with NCCL are not usable: {e}"
            );
            eprintln!("SKIP {test}: {e}");
            return None;
        }
    };
    let exe = std::env::current_exe().unwrap();
    Some(
        (0..2)
            .map(|r| {
                Command::new(&exe)
                    .args(["--exact", test, "--nocapture", "--test-threads=1"])
                    .env("TPLA_TP_FAULT_MODE", mode)
                    .env("TPLA_TP_CHILD_RANK", r.to_string())
                    .env("TPLA_TP_NCCL_ID", id.to_hex())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    )
}

/// Lines of a child's stdout, as they come, on a channel.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kill rank 1 mid-run (SIGKILL after its third step): rank 0 returns a typed collective error
/// within the bound (`FAULT_TIMEOUT` plus 20 s of slack for the abort) and exits; it never
/// hangs. Skipped with a message without two GPUs; fails instead under `TPLA_REQUIRE_GPUS=2`.
#[test]
fn a_rank_killed_mid_step_makes_the_other_fail_within_the_bound() {
    use std::time::{Duration, Instant};
    const NAME: &str = "a_rank_killed_mid_step_makes_the_other_fail_within_the_bound";
    if let (Ok(mode), Ok(rank)) = (
        std::env::var("TPLA_TP_FAULT_MODE"),
        std::env::var("TPLA_TP_CHILD_RANK"),
    ) {
        fault_child(&mode, rank.parse().unwrap());
    }
    let Some(mut children) = spawn_fault_ranks(NAME, "kill") else {
        return;
    };
    let (out0, out1) = (lines_of(&mut children[0]), lines_of(&mut children[1]));
    // Wait (bounded) for rank 1's third step, then kill it.
    let start = Instant::now();
    loop {
        match out1.recv_timeout(Duration::from_secs(120)) {
            Ok(l) if l.contains("rank 1 step 3 ok") => break,
            Ok(_) => {}
            Err(e) => {
                children.iter_mut().for_each(|c| {
                    let _ = c.kill();
                });
                panic!("rank 1 did not reach step 3 ({e:?}, {:?})", start.elapsed());
            }
        }
    }
    children[1].kill().unwrap();
    let killed = Instant::now();
    let bound = FAULT_TIMEOUT + Duration::from_secs(20);
    let status = procs::wait_all(
        &mut children[..1],
        bound,
        "rank 0, after its peer was killed (it hangs)",
    )[0];
    let took = killed.elapsed();
    let _ = children[1].wait();
    // The child has exited: its stdout is closed, so this ends once every line is read.
    let lines: Vec<String> = out0.iter().collect();
    let last = lines.last().cloned().unwrap_or_default();
    println!("rank 0 ended {took:?} after the kill: {last}");
    assert_eq!(status.code(), Some(3), "rank 0: {lines:?}");
    assert!(
        last.contains("collective failed on rank 0 of 2"),
        "rank 0's error: {last}"
    );
}

/// Ranks that disagree on the configuration (batch 2 against 3) are refused at start: each
/// names the other in a typed error, within the bound. Skipped without two GPUs.
#[test]
fn ranks_that_disagree_on_the_configuration_are_refused_at_start() {
    use std::time::Duration;
    const NAME: &str = "ranks_that_disagree_on_the_configuration_are_refused_at_start";
    if let (Ok(mode), Ok(rank)) = (
        std::env::var("TPLA_TP_FAULT_MODE"),
        std::env::var("TPLA_TP_CHILD_RANK"),
    ) {
        fault_child(&mode, rank.parse().unwrap());
    }
    let Some(mut children) = spawn_fault_ranks(NAME, "mismatch") else {
        return;
    };
    let outs: Vec<_> = children.iter_mut().map(lines_of).collect();
    let statuses = procs::wait_all(
        &mut children,
        Duration::from_secs(120),
        "the configuration check",
    );
    for (r, status) in statuses.iter().enumerate() {
        let lines: Vec<String> = outs[r].iter().collect();
        let other = 1 - r;
        assert_eq!(status.code(), Some(4), "rank {r}: {lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("another configuration") && l.contains(&format!("[{other}]"))),
            "rank {r}: {lines:?}"
        );
    }
}

/// `NcclRank`'s bounds on one GPU: a group of one sums to itself and agrees with itself; a
/// group of two that only this rank joins is given up after the bound with a typed error (no
/// hang). Skips visibly without a GPU and NCCL; fails instead under `TPLA_REQUIRE_GPU=1`.
#[test]
fn nccl_rank_joins_sums_and_gives_up_within_its_bound_on_one_gpu() {
    use std::time::{Duration, Instant};
    use tpla_runtime::cuda::nccl::{NcclId, NcclRank};
    use tpla_runtime::cuda::CudaExecutor;
    const NAME: &str = "nccl_rank_joins_sums_and_gives_up_within_its_bound_on_one_gpu";
    let ready = CudaExecutor::new(0).and_then(|e| Ok((e, NcclId::new()?)));
    let (exec, id) = match ready {
        Ok(r) => r,
        Err(e) => {
            assert!(
                std::env::var("TPLA_REQUIRE_GPU").as_deref() != Ok("1"),
                "TPLA_REQUIRE_GPU=1 but no GPU with NCCL: {e}"
            );
            eprintln!("SKIP {NAME}: {e}");
            return;
        }
    };
    let one = NcclRank::with_timeout(&exec, &id, 0, 1, Duration::from_secs(30)).unwrap();
    one.agree(&exec, "one rank").unwrap();
    let x: Vec<f32> = (0..300).map(|i| i as f32 * 0.25 - 7.0).collect();
    let mut t = exec
        .upload(&HostTensor::from_vec(&[3, 100], x.clone()).unwrap())
        .unwrap();
    one.all_reduce_sum(&mut t).unwrap();
    one.wait().unwrap();
    assert_eq!(
        exec.download(&t).unwrap().data(),
        &x[..],
        "a sum over one rank"
    );
    drop(one);
    let bound = Duration::from_secs(3);
    let lonely = NcclId::new().unwrap();
    let start = Instant::now();
    let e = NcclRank::with_timeout(&exec, &lonely, 0, 2, bound).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&e, RuntimeError::Collective { rank: 0, world: 2, detail } if detail.contains("joined")),
        "{e:?}"
    );
    assert!(
        took >= bound && took < bound + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        NcclRank::new(&exec, &lonely, 2, 2).is_err(),
        "rank past the group"
    );
}
