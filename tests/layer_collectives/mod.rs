//! The layer's collectives: TPLA reduced after `W_UV` against after `W_O`, collectives that
//! cross devices timed (and stand-ins not), a bf16 payload, one rank per thread or per process,
//! and NCCL over the GPUs of one process.

use super::*;

/// Reducing after `W_UV` or after `W_O` is the same sum in another order: the two outputs agree
/// far more closely than either is to the reference's tolerance, at every step; and the `W_UV`
/// form's ranks hold `1/g` of the `W_O` heads.
#[test]
fn reducing_after_wuv_equals_reducing_after_wo() {
    for tp in [2, 4] {
        let form = |reduce| Form::Tpla {
            groups: 2,
            norm: KvNorm::Sliced,
            reduce,
        };
        let run = |reduce| {
            run_steps(
                cpu(tp),
                HostAllReduce { ranks: tp },
                form(reduce),
                Some(corr2()),
                GemmPath::Auto,
                Payload::F32,
            )
        };
        let ((ea, a), (eb, b)) = (run(ReduceAt::Wo), run(ReduceAt::Wuv));
        for (t, (x, y)) in a.iter().zip(&b).enumerate() {
            let (x, y): (Vec<f64>, Vec<f64>) = (
                x.iter().map(|&v| f64::from(v)).collect(),
                y.iter().map(|&v| f64::from(v)).collect(),
            );
            let gap = rel_err(&y, &x);
            assert!(gap < 5e-3, "tp {tp} step {t}: W_UV vs W_O {gap:.2e}");
        }
        eprintln!("tp {tp} g 2: error after W_O {ea:.2e}, after W_UV {eb:.2e}");
        let roles = tpla::layer::roles(form(ReduceAt::Wuv), tp, 8, 512).unwrap();
        for r in &roles {
            assert_eq!(r.uv_heads, r.attn_heads);
            assert_eq!(r.out_heads.len() * 2, r.uv_heads.len(), "{r:?}");
            assert!(r.reduces_values());
        }
    }
}

/// One GPU per rank with NCCL between them (in one process), the collective timed: every form
/// at TP 2 (and TP 4 / 8 where the host has the GPUs) against its reference. Skips visibly
/// without two GPUs and NCCL; fails instead under `TPLA_REQUIRE_GPUS=2` (or more).
#[test]
fn gpus_with_nccl_match_the_references() {
    use tpla_runtime::cuda::nccl::NcclGroup;
    use tpla_runtime::cuda::CudaExecutor;
    let required: usize = std::env::var("TPLA_REQUIRE_GPUS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let open = |tp: usize| -> Result<(Vec<CudaExecutor>, NcclGroup), String> {
        let execs = (0..tp)
            .map(|r| CudaExecutor::new(r).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let group = NcclGroup::new(&execs).map_err(|e| e.to_string())?;
        Ok((execs, group))
    };
    let mut ran = 0;
    for tp in [2, 4, 8] {
        if let Err(why) = open(tp) {
            assert!(
                required < tp,
                "TPLA_REQUIRE_GPUS={required} but {tp} GPUs with NCCL are not usable: {why}"
            );
            eprintln!("SKIPPED gpus_with_nccl_match_the_references at tp {tp}: {why}");
            break;
        }
        for (form, corr) in forms(tp) {
            let (execs, group) = open(tp).unwrap();
            assert!(AllReduce::<CudaExecutor>::crosses_devices(&group));
            let e = worst_error(execs, group, form, corr);
            eprintln!("nccl tp {tp} {}: worst rel err {e:.2e}", form.name());
            assert!(e <= 1e-2, "nccl tp {tp} {}: {e:.3e}", form.name());
        }
        ran = tp;
    }
    eprintln!("gpus_with_nccl_match_the_references: ran up to tp {ran}");
}

/// A host sum that says it crosses devices and takes a known time per call.
struct SlowLink {
    inner: HostAllReduce,
    pause: std::time::Duration,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AllReduce<CpuExecutor> for SlowLink {
    fn ranks(&self) -> usize {
        self.inner.ranks
    }
    fn all_reduce_sum(
        &self,
        execs: &[CpuExecutor],
        parts: &mut [HostTensor<f32>],
    ) -> Result<(), tpla_runtime::RuntimeError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.pause);
        self.inner.all_reduce_sum(execs, parts)
    }
    fn crosses_devices(&self) -> bool {
        true
    }
}

/// A collective that crosses devices is timed as every rank's collective phase (each call, in
/// `RankTimes::total`); a stand-in is not timed (its time is modelled).
#[test]
fn collectives_that_cross_devices_are_timed_and_stand_ins_are_not() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let shape = layer_shape(1, 4, 1, 1);
    let x = HostTensor::full(&[1, d], 0.25f32);
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Exact,
        reduce: ReduceAt::Wuv,
    };
    // MLA-TP: one all-reduce; TPLA exact norm reduced after W_UV: three; DCP: three.
    for (form, calls_per_step) in [(Form::MlaTp, 1), (wuv, 3), (Form::Dcp, 3)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let pause = Duration::from_millis(15);
        let link = SlowLink {
            inner: HostAllReduce { ranks: 2 },
            pause,
            calls: calls.clone(),
        };
        let mut l = TpLayer::new(cpu(2), link, &layer, form, shape.clone(), None).unwrap();
        assert!(l.collective_measured());
        let (_, times) = l.step(&x).unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            calls_per_step,
            "{}",
            form.name()
        );
        for t in &times {
            assert!(
                t.collective >= pause * calls_per_step as u32,
                "{}: {t:?}",
                form.name()
            );
            assert!(t.total() >= t.device() + t.collective);
        }
    }
    let mut l = cpu_layer(2, &layer, Form::MlaTp, shape).unwrap();
    assert!(!l.collective_measured());
    let (_, times) = l.step(&x).unwrap();
    assert!(times.iter().all(|t| t.collective == Duration::ZERO));
}

/// A bf16 payload on the output collectives: every form still matches its reference (host sum
/// and device sum, TP 2 and 4, TPLA reduced after `W_O` and after `W_UV`); the outputs differ
/// from the f32 payload's (the rounding happened) by less than the tolerance.
#[test]
fn a_bf16_payload_matches_the_references() {
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wuv,
    };
    for tp in [2, 4] {
        for (form, corr) in [
            (Form::MlaTp, None),
            (Form::tpla(2), Some(corr2())),
            (wuv, Some(corr2())),
            (Form::Dcp, None),
        ] {
            let run = |payload, device: bool| {
                if device {
                    run_steps(
                        cpu(tp),
                        DeviceSum { ranks: tp },
                        form,
                        corr.clone(),
                        GemmPath::Auto,
                        payload,
                    )
                } else {
                    run_steps(
                        cpu(tp),
                        HostAllReduce { ranks: tp },
                        form,
                        corr.clone(),
                        GemmPath::Auto,
                        payload,
                    )
                }
            };
            let (e32, y32) = run(Payload::F32, false);
            let (e16, y16) = run(Payload::Bf16, false);
            let (ed, yd) = run(Payload::Bf16, true);
            eprintln!(
                "tp {tp} {}: rel err f32 payload {e32:.2e}, bf16 {e16:.2e} (device sum {ed:.2e})",
                form.name()
            );
            assert!(e16 <= 1e-2 && ed <= 1e-2, "tp {tp} {}", form.name());
            let flat = |y: &Vec<Vec<f32>>| -> Vec<f64> {
                y.iter().flatten().map(|&v| f64::from(v)).collect()
            };
            let gap = rel_err(&flat(&y16), &flat(&y32));
            assert!(
                gap > 0.0 && gap < 1e-2,
                "tp {tp} {}: {gap:.2e}",
                form.name()
            );
            assert_eq!(y16, yd, "host and device bf16 sums agree bit for bit");
        }
    }
}

/// A group whose ranks live in threads of this process, one rank each: every call passes that
/// rank's one part; the parts are summed in rank order (as the host all-reduce) behind barriers.
struct ThreadSum {
    rank: usize,
    world: usize,
    shared: std::sync::Arc<(std::sync::Mutex<Vec<Vec<f32>>>, TimedBarrier)>,
}

/// A barrier whose wait gives up after 60 s with a typed error: a thread that panicked before
/// arriving fails the others instead of hanging the suite.
struct TimedBarrier {
    n: usize,
    state: std::sync::Mutex<(usize, u64)>,
    cv: std::sync::Condvar,
}

impl TimedBarrier {
    fn new(n: usize) -> Self {
        TimedBarrier {
            n,
            state: std::sync::Mutex::new((0, 0)),
            cv: std::sync::Condvar::new(),
        }
    }

    fn wait(&self) -> Result<(), tpla_runtime::RuntimeError> {
        let mut st = self.state.lock().unwrap();
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.n {
            *st = (0, generation + 1);
            self.cv.notify_all();
            return Ok(());
        }
        let (st, timeout) = self
            .cv
            .wait_timeout_while(st, std::time::Duration::from_secs(60), |s| {
                s.1 == generation
            })
            .unwrap();
        drop(st);
        if timeout.timed_out() {
            return Err(tpla_runtime::RuntimeError::InvalidInput(
                "a rank's thread did not reach the sum within 60 s".into(),
            ));
        }
        Ok(())
    }

    fn shared(world: usize) -> std::sync::Arc<(std::sync::Mutex<Vec<Vec<f32>>>, TimedBarrier)> {
        std::sync::Arc::new((
            std::sync::Mutex::new(vec![Vec::new(); world]),
            TimedBarrier::new(world),
        ))
    }
}

impl AllReduce<CpuExecutor> for ThreadSum {
    fn ranks(&self) -> usize {
        1
    }
    fn world(&self) -> usize {
        self.world
    }
    fn first_rank(&self) -> usize {
        self.rank
    }
    fn all_reduce_sum(
        &self,
        _execs: &[CpuExecutor],
        parts: &mut [HostTensor<f32>],
    ) -> Result<(), tpla_runtime::RuntimeError> {
        let (slots, barrier) = (&self.shared.0, &self.shared.1);
        slots.lock().unwrap()[self.rank] = parts[0].data().to_vec();
        barrier.wait()?;
        let sum = {
            let all = slots.lock().unwrap();
            let mut sum = vec![0.0f32; all[0].len()];
            for p in all.iter() {
                for (s, x) in sum.iter_mut().zip(p) {
                    *s += x;
                }
            }
            sum
        };
        // Everyone has read the slots before anyone writes the next call's part.
        barrier.wait()?;
        parts[0].data_mut().copy_from_slice(&sum);
        Ok(())
    }
    fn all_reduce_sum_bf16(
        &self,
        _execs: &[CpuExecutor],
        _parts: &mut [HostTensor<tpla_runtime::half::bf16>],
    ) -> Result<(), tpla_runtime::RuntimeError> {
        Err(tpla_runtime::RuntimeError::InvalidInput("f32 only".into()))
    }
}

/// One rank per thread, as an engine runs one rank per GPU process: each thread builds only
/// its own rank of the layer (`TpLayer` over a collective with `ranks() == 1`), and the outputs
/// equal those of all ranks driven from one place, bit for bit, for every form (TP 2 and 4;
/// TPLA with heads split inside the groups, reduced after `W_O` and after `W_UV`; DCP).
#[test]
fn one_rank_per_thread_equals_all_ranks_in_one_place() {
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Exact,
        reduce: ReduceAt::Wuv,
    };
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let xs = hidden_tokens(d, 4);
    for (tp, form) in [
        (2, Form::MlaTp),
        (4, Form::tpla(2)),
        (4, wuv),
        (2, Form::Dcp),
    ] {
        let shape = layer_shape(BATCH, 5, 2, 1);
        let mut whole = cpu_layer(tp, &layer, form, shape.clone()).unwrap();
        let want = run_against_reference(&mut whole, &layer, None, &xs).unwrap();
        let shared = TimedBarrier::shared(tp);
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..tp)
                .map(|rank| {
                    let (layer, xs, shape) = (&layer, &xs, shape.clone());
                    let shared = shared.clone();
                    s.spawn(move || {
                        let sum = ThreadSum {
                            rank,
                            world: tp,
                            shared,
                        };
                        let mut mine = TpLayer::new(cpu(1), sum, layer, form, shape, None).unwrap();
                        assert_eq!((mine.world(), mine.roles()[0].rank), (tp, rank));
                        run_against_reference(&mut mine, layer, None, xs).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, run) in got.iter().enumerate() {
            assert_eq!(
                run.outputs,
                want.outputs,
                "{} tp {tp}: rank {rank}'s thread differs",
                form.name()
            );
        }
        assert!(
            want.worst <= 1e-2,
            "{} tp {tp}: {}",
            form.name(),
            want.worst
        );
    }
    // A collective whose ranks do not match the executors is refused.
    let e = TpLayer::new(
        cpu(2),
        ThreadSum {
            rank: 1,
            world: 2,
            shared: TimedBarrier::shared(2),
        },
        &layer,
        Form::MlaTp,
        layer_shape(1, 4, 1, 1),
        None,
    )
    .err()
    .expect("two executors for one rank");
    assert!(e.to_string().contains("2 executors"), "{e}");
}

/// One process per GPU (as an engine runs): the test re-runs itself as two child processes that
/// join one NCCL group (`NcclRank`, bounded waits), each building only its rank of the layer;
/// each checks every form's outputs against the f64 reference. Skips visibly without two GPUs
/// and NCCL; fails instead under `TPLA_REQUIRE_GPUS=2`.
#[test]
fn layer_ranks_in_two_processes_match_the_reference() {
    use std::process::Command;
    use std::time::Duration;
    use tpla_runtime::cuda::nccl::{NcclId, NcclRank};
    use tpla_runtime::cuda::CudaExecutor;
    const NAME: &str = "collectives::layer_ranks_in_two_processes_match_the_reference";
    if let Ok(rank) = std::env::var("TPLA_LAYER_CHILD_RANK") {
        let rank: usize = rank.parse().unwrap();
        let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
        let xs = hidden_tokens(layer.cfg.hidden, 4);
        for (i, form) in [Form::MlaTp, Form::tpla(2), Form::Dcp]
            .into_iter()
            .enumerate()
        {
            let id = std::env::var(format!("TPLA_LAYER_NCCL_ID_{i}")).unwrap();
            let exec = CudaExecutor::new(rank).unwrap();
            let comm = NcclRank::with_timeout(
                &exec,
                &NcclId::from_hex(&id).unwrap(),
                rank,
                2,
                Duration::from_secs(60),
            )
            .unwrap();
            comm.agree(
                &exec,
                &format!("{} {:?}", form.name(), layer_shape(BATCH, 5, 2, 1)),
            )
            .unwrap();
            let mut l = TpLayer::new(
                vec![exec],
                comm,
                &layer,
                form,
                layer_shape(BATCH, 5, 2, 1),
                None,
            )
            .unwrap();
            let run = run_against_reference(&mut l, &layer, None, &xs).unwrap();
            println!(
                "process rank {rank} {}: worst rel err {:.2e}",
                form.name(),
                run.worst
            );
            assert!(
                run.worst <= 1e-2,
                "rank {rank} {}: {}",
                form.name(),
                run.worst
            );
            assert!(run
                .times
                .iter()
                .flatten()
                .all(|t| t.collective > Duration::ZERO));
        }
        return;
    }
    let required = std::env::var("TPLA_REQUIRE_GPUS").is_ok_and(|v| v.trim() == "2");
    let ids = CudaExecutor::new(0)
        .and_then(|_| CudaExecutor::new(1))
        .and_then(|_| (0..3).map(|_| NcclId::new()).collect::<Result<Vec<_>, _>>());
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            assert!(
                !required,
                "TPLA_REQUIRE_GPUS=2 but two GPUs with NCCL are not usable: {e}"
            );
            eprintln!("SKIP {NAME}: {e}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|r| {
            let mut c = Command::new(&exe);
            c.args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env("TPLA_LAYER_CHILD_RANK", r.to_string());
            for (i, id) in ids.iter().enumerate() {
                c.env(format!("TPLA_LAYER_NCCL_ID_{i}"), id.to_hex());
            }
            c.spawn().unwrap()
        })
        .collect();
    let ok: Vec<bool> = super::procs::wait_all(
        &mut children,
        Duration::from_secs(300),
        "the rank processes",
    )
    .iter()
    .map(|s| s.success())
    .collect();
    assert_eq!(ok, [true, true], "rank processes succeeded");
}
