//! The CUDA executor on a GPU: copies, the paged cache, errors, and the builder-made decode
//! variants of the test-support samples (`codegen/tests/support/samples.rs`: bf16 / f32
//! operands, every tile size) against the CPU executor, with outputs poisoned beforehand. Every
//! test prints SKIP and passes without a GPU, unless `TPLA_REQUIRE_GPU=1`.

#[path = "../../codegen/tests/support/samples.rs"]
mod samples;

use samples::{latent_decode, DecodeParams};
use tpla_codegen::ir::Kernel;
use tpla_codegen::{Config, IrError, KernelDef, TuneParam};
use tpla_runtime::cuda::device::{device_count, executor_or_skip};
use tpla_runtime::cuda::{CudaExecutor, F32Gemm};
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, Executor, HostPagedCache, HostTensor, RuntimeError};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[test]
fn no_gpu_is_a_typed_error_not_a_panic() {
    if device_count() > 0 {
        tpla_runtime::cuda::device::skip_notice(
            "SKIP no_gpu_is_a_typed_error_not_a_panic: a GPU is present",
        );
        return;
    }
    match CudaExecutor::new(0) {
        Err(RuntimeError::BackendUnavailable { backend, .. }) => assert_eq!(backend, "cuda"),
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
}

#[test]
fn copies_round_trip() {
    let Some(exec) = executor_or_skip("copies_round_trip") else {
        return;
    };
    println!("{}", exec.backend_name());
    let f = HostTensor::<f32>::from_vec(&[3, 5], (0..15).map(|i| i as f32 * 0.5 - 3.0).collect())
        .unwrap();
    assert_eq!(exec.download(&exec.upload(&f).unwrap()).unwrap(), f);
    let b = HostTensor::<bf16>::from_vec(
        &[7],
        (0..7).map(|i| bf16::from_f32(i as f32 - 2.5)).collect(),
    )
    .unwrap();
    assert_eq!(exec.download(&exec.upload(&b).unwrap()).unwrap(), b);
    let i = HostTensor::<i32>::from_vec(&[2, 2], vec![-1, 2, i32::MAX, i32::MIN]).unwrap();
    assert_eq!(exec.download(&exec.upload(&i).unwrap()).unwrap(), i);
    let empty = HostTensor::<f32>::from_vec(&[0, 4], vec![]).unwrap();
    assert_eq!(exec.download(&exec.upload(&empty).unwrap()).unwrap(), empty);

    let mut c = HostPagedCache::<bf16>::new(2, 40, 16, 8).unwrap();
    for (k, x) in c.data_mut().iter_mut().enumerate() {
        *x = bf16::from_f32(k as f32);
    }
    c.set_seq_lens(&[40, 3]).unwrap();
    let mut g = exec.upload_paged(&c).unwrap();
    assert_eq!(exec.download_paged(&g).unwrap(), c);
    exec.set_seq_lens(&mut g, &[10, 0]).unwrap();
    assert_eq!(g.seq_lens(), &[10, 0]);
    assert!(matches!(
        exec.set_seq_lens(&mut g, &[49, 0]),
        Err(RuntimeError::LengthPastCache { .. })
    ));
    assert_eq!(g.seq_lens(), &[10, 0], "a failed update changes nothing");
    let bad = vec![99; g.block_table().len()];
    assert!(exec.set_block_table(&mut g, &bad).is_err());
}

#[test]
fn out_of_memory_is_an_error_and_the_executor_stays_usable() {
    let Some(exec) = executor_or_skip("out_of_memory_is_an_error_and_the_executor_stays_usable")
    else {
        return;
    };
    let huge = exec.info().total_memory as usize / 4 * 2; // elements of f32: twice the memory
    match exec.alloc::<f32>(&[huge, 1]) {
        Err(RuntimeError::Device(msg)) => assert!(msg.contains("out of device memory"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("allocating twice the device memory succeeded"),
    }
    let t = HostTensor::<f32>::full(&[4], 1.5);
    assert_eq!(exec.download(&exec.upload(&t).unwrap()).unwrap(), t);
}

/// The builder-made decode kernel as a `KernelDef`; the variant is part of the config so each
/// executor caches every variant separately.
struct SampleDecode;

impl KernelDef for SampleDecode {
    fn name(&self) -> &'static str {
        "sample_latent_decode"
    }
    fn tune_params(&self) -> &'static [TuneParam] {
        &[]
    }
    fn shape_constants(&self) -> &'static [&'static str] {
        &[
            "LAT", "ROPE", "BLOCK_H", "BLOCK_N", "STAGES", "Q_BF16", "P_BF16",
        ]
    }
    fn build(&self, c: &Config) -> Result<Kernel, IrError> {
        latent_decode(DecodeParams {
            lat: c.get("LAT")? as usize,
            rope: c.get("ROPE")? as usize,
            block_h: c.get("BLOCK_H")? as usize,
            block_n: c.get("BLOCK_N")? as usize,
            stages: c.get("STAGES")? as usize,
            q_bf16: c.get("Q_BF16")? == 1,
            p_bf16: c.get("P_BF16")? == 1,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn run_decode<X: Executor, Q: tpla_runtime::tensor::Element>(
    exec: &X,
    cfg: &Config,
    q: &HostTensor<Q>,
    cache: &HostPagedCache<bf16>,
    splits: usize,
    lat: usize,
    scale: f32,
    download: impl Fn(&X, &X::Tensor<f32>) -> HostTensor<f32>,
) -> (Vec<f32>, Vec<f32>)
where
    X::Tensor<Q>: Sized,
{
    let (b, h) = (q.shape()[0], q.shape()[1]);
    let gq = exec.upload(q).unwrap();
    let gc = exec.upload_paged(cache).unwrap();
    let mut out = exec
        .upload(&HostTensor::<f32>::full(&[splits, b, h, lat], f32::NAN))
        .unwrap();
    let mut lse = exec
        .upload(&HostTensor::<f32>::full(&[splits, b, h], f32::NAN))
        .unwrap();
    let args = [
        X::tensor_arg(&gq),
        X::paged_arg(&gc),
        X::tensor_arg_mut(&mut out),
        X::tensor_arg_mut(&mut lse),
        tpla_runtime::KernelArg::F32(scale),
    ];
    exec.launch(&SampleDecode, cfg, &args).unwrap();
    let o = download(exec, &out).into_vec();
    let l = download(exec, &lse).into_vec();
    (o, l)
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn builder_decode_variants_match_the_cpu_executor() {
    let Some(exec) = executor_or_skip("builder_decode_variants_match_the_cpu_executor") else {
        return;
    };
    let cpu = CpuExecutor::new(0).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for lat in [512usize, 256, 128, 64] {
        let d = lat + 64;
        let (b, h, splits) = (3usize, 37usize, 3usize);
        let lens = [300usize, 1, 77];
        let mut cache = HostPagedCache::<bf16>::new(b, 300, 16, d).unwrap();
        let mut table = cache.block_table().to_vec();
        table.reverse();
        cache.set_block_table(table).unwrap();
        cache.data_mut().iter_mut().for_each(|x| *x = bf16::NAN);
        for (s, &len) in lens.iter().enumerate() {
            for t in 0..len {
                let row: Vec<bf16> = (0..d).map(|_| bf16::from_f32(rng.f())).collect();
                cache.write_token(s, t, &row).unwrap();
            }
        }
        cache.set_seq_lens(&lens).unwrap();
        let qf: Vec<f32> = (0..b * h * d).map(|_| rng.f()).collect();
        for (bh, bn, st) in [(16, 32, 2), (32, 64, 3), (64, 16, 1), (64, 64, 2)] {
            for (qb, pb) in [(true, true), (false, false), (false, true)] {
                let cfg = Config::new()
                    .with("LAT", lat as i64)
                    .with("ROPE", 64)
                    .with("BLOCK_H", bh)
                    .with("BLOCK_N", bn)
                    .with("STAGES", st)
                    .with("Q_BF16", qb as i64)
                    .with("P_BF16", pb as i64);
                let ((go, gl), (co, cl)) = if qb {
                    let q = HostTensor::<bf16>::from_vec(
                        &[b, h, d],
                        qf.iter().map(|&x| bf16::from_f32(x)).collect(),
                    )
                    .unwrap();
                    (
                        run_decode(&exec, &cfg, &q, &cache, splits, lat, 0.12, |e, t| {
                            e.download(t).unwrap()
                        }),
                        run_decode(&cpu, &cfg, &q, &cache, splits, lat, 0.12, |e, t| {
                            e.download(t).unwrap()
                        }),
                    )
                } else {
                    let q = HostTensor::<f32>::from_vec(&[b, h, d], qf.clone()).unwrap();
                    (
                        run_decode(&exec, &cfg, &q, &cache, splits, lat, 0.12, |e, t| {
                            e.download(t).unwrap()
                        }),
                        run_decode(&cpu, &cfg, &q, &cache, splits, lat, 0.12, |e, t| {
                            e.download(t).unwrap()
                        }),
                    )
                };
                assert!(go.iter().all(|x| x.is_finite()), "{cfg}: non-finite output");
                let (ro, rl) = (rel(&go, &co), rel(&gl, &cl));
                let tol = if pb || !qb { 1e-2 } else { 2e-3 };
                println!("{cfg}: out rel {ro:.2e}, lse rel {rl:.2e}");
                assert!(ro <= tol && rl <= 1e-3, "{cfg}: out rel {ro}, lse rel {rl}");
            }
        }
    }
}

#[test]
fn f32_policies_agree() {
    let Some(mut exec) = executor_or_skip("f32_policies_agree") else {
        return;
    };
    let cpu = CpuExecutor::new(0).unwrap();
    let (b, h, lat, d, splits) = (2usize, 16usize, 128usize, 192usize, 2usize);
    let mut rng = Rng(99);
    let mut cache = HostPagedCache::<bf16>::new(b, 100, 64, d).unwrap();
    cache
        .data_mut()
        .iter_mut()
        .for_each(|x| *x = bf16::from_f32(rng.f()));
    cache.set_seq_lens(&[100, 64]).unwrap();
    let q =
        HostTensor::<f32>::from_vec(&[b, h, d], (0..b * h * d).map(|_| rng.f()).collect()).unwrap();
    let cfg = Config::new()
        .with("LAT", lat as i64)
        .with("ROPE", 64)
        .with("BLOCK_H", 16)
        .with("BLOCK_N", 32)
        .with("STAGES", 2)
        .with("Q_BF16", 0)
        .with("P_BF16", 0);
    let (co, _) = run_decode(&cpu, &cfg, &q, &cache, splits, lat, 0.2, |e, t| {
        e.download(t).unwrap()
    });
    for (policy, tol) in [
        (F32Gemm::Split, 1e-4),
        (F32Gemm::RoundBf16, 1e-2),
        (F32Gemm::Fma, 1e-5),
    ] {
        exec.set_f32_gemm(policy);
        let (go, _) = run_decode(&exec, &cfg, &q, &cache, splits, lat, 0.2, |e, t| {
            e.download(t).unwrap()
        });
        let r = rel(&go, &co);
        println!("{policy:?}: rel {r:.2e}");
        assert!(r <= tol, "{policy:?}: rel {r}");
    }
}

#[test]
fn the_device_pool_keeps_freed_memory_across_a_synchronisation() {
    use tpla_runtime::cudarc::driver::{result, sys};
    let Some(exec) =
        executor_or_skip("the_device_pool_keeps_freed_memory_across_a_synchronisation")
    else {
        return;
    };
    let ctx = exec.context();
    if !ctx.has_async_alloc() {
        tpla_runtime::cuda::device::skip_notice("SKIP: this device has no memory pools");
        return;
    }
    let attr = |a: sys::CUmemPool_attribute| -> u64 {
        let mut v = 0u64;
        // SAFETY: the default pool of a live context's device; both attributes read a u64.
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device()).unwrap();
            result::mem_pool::get_attribute(pool, a, (&mut v as *mut u64).cast()).unwrap();
        }
        v
    };
    use sys::CUmemPool_attribute::*;
    assert_eq!(attr(CU_MEMPOOL_ATTR_RELEASE_THRESHOLD), 2 << 30);
    // 64 MB allocated, freed and synchronised: still reserved (the driver's default threshold,
    // 0, would have returned it at the synchronisation).
    let t = exec.alloc::<f32>(&[16 << 20]).unwrap();
    drop(t);
    exec.synchronize().unwrap();
    let reserved = attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT);
    assert!(
        reserved >= 64 << 20,
        "pool holds {reserved} bytes after the free"
    );
}

/// The timing loop's queue guard (`bench::measure`): a run whose host side takes 300 µs before
/// it launches one small kernel is timed by the kernel alone once the guard has learnt the
/// queueing (the first run's 200 µs guard is outlasted, and counted); without the guard the
/// event time would hold the host's 300 µs.
#[test]
fn the_timing_loop_keeps_the_hosts_queueing_out_of_the_event_time() {
    let Some(exec) =
        executor_or_skip("the_timing_loop_keeps_the_hosts_queueing_out_of_the_event_time")
    else {
        return;
    };
    let k = exec
        .load_source(
            "tpla_test_store",
            r#"extern "C" __global__ void tpla_test_store(unsigned* p) { p[threadIdx.x] = 7u; }"#,
        )
        .unwrap();
    let (buf, ptr) = exec.alloc_raw(128 * 4).unwrap();
    let m = tpla_runtime::cuda::bench::measure(&exec, 0, 9, || {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_micros(300) {
            std::hint::spin_loop();
        }
        let mut p = ptr;
        let mut params = [&mut p as *mut u64 as *mut std::ffi::c_void];
        // SAFETY: one pointer parameter to a buffer of 128 u32, one thread per element.
        unsafe { exec.launch_raw(&k, (1, 1, 1), 128, 0, &mut params) }
    })
    .unwrap();
    println!("{m:?}");
    assert!(m.host_queue_max_us >= 300.0, "{m:?}");
    assert!(m.host_exposed_runs <= 1, "{m:?}");
    assert!(
        m.median_ms < 0.2,
        "the host's 300 us is in the median: {m:?}"
    );
    drop(buf);
}
