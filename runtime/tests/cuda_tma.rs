//! The TMA producer's tensor map on a GPU (`PRODUCER = 1`, `TMA = 1`): a page pool TMA cannot
//! address (not 16-byte aligned) is refused with a typed error naming the cache, before anything
//! is launched, and the same kernel on the cache's own (aligned) pool runs. Prints SKIP and passes
//! without a GPU, unless `TPLA_REQUIRE_GPU=1`.

use tpla_codegen::launch::LaunchError;
use tpla_codegen::KernelDef;
use tpla_runtime::cuda::device::executor_or_skip;
use tpla_runtime::cuda::CudaExecutor;
use tpla_runtime::half::bf16;
use tpla_runtime::{
    ArgSpace, Executor, HostPagedCache, HostTensor, KernelArg, PagedArg, PagedGeometry,
    RuntimeError,
};

#[test]
fn a_pool_tma_cannot_address_is_refused_before_launch() {
    let Some(exec) = executor_or_skip("a_pool_tma_cannot_address_is_refused_before_launch") else {
        return;
    };
    let (lat, heads, d) = (256usize, 64usize, 320usize);
    let cfg = tpla_kernels::latent_decode
        .default_config(&[("LAT", lat as i64), ("ROPE", 64)])
        .unwrap()
        .with("BLOCK_H", 64)
        .with("BLOCK_N", 64)
        .with("PRODUCER", 1)
        .with("TMA", 1);
    // One sequence of 64 tokens in a pool of two 64-token pages: only page 0 is reached.
    let mut cache = HostPagedCache::<bf16>::new(1, 128, 64, d).unwrap();
    cache.set_seq_lens(&[64]).unwrap();
    cache.set_block_table(vec![0, 1]).unwrap();
    for (i, x) in cache.data_mut().iter_mut().enumerate() {
        *x = bf16::from_f32(((i % 13) as f32 - 6.0) / 8.0);
    }
    let q = HostTensor::<bf16>::full(&[1, heads, d], bf16::from_f32(0.25));
    let gq = exec.upload(&q).unwrap();
    let gc = exec.upload_paged(&cache).unwrap();
    let mut out = exec
        .upload(&HostTensor::<f32>::full(&[1, 1, heads, lat], f32::NAN))
        .unwrap();
    let mut lse = exec
        .upload(&HostTensor::<f32>::full(&[1, 1, heads], f32::NAN))
        .unwrap();
    let KernelArg::Paged(own) = CudaExecutor::paged_arg(&gc) else {
        unreachable!()
    };
    let geometry = PagedGeometry {
        num_pages: 1,
        ..own.geometry()
    };
    // SAFETY: the pool starting 8 bytes in still holds one whole page (of the two allocated),
    // which is every page the length reaches (entry 0 of the table); the tables are the cache's
    // own device tables; nothing writes them; the launch is refused before it runs anyway.
    let shifted = unsafe {
        PagedArg::new(
            own.data() + 8,
            own.block_table(),
            own.seq_lens(),
            geometry,
            None,
            false,
            ArgSpace::Device,
        )
    };
    let args = [
        CudaExecutor::tensor_arg(&gq),
        KernelArg::Paged(shifted),
        CudaExecutor::tensor_arg_mut(&mut out),
        CudaExecutor::tensor_arg_mut(&mut lse),
        KernelArg::F32(0.1),
    ];
    match exec.launch(&tpla_kernels::latent_decode, &cfg, &args) {
        Err(RuntimeError::Launch(LaunchError::Paged { why, .. })) => {
            assert!(why.contains("16-byte aligned"), "{why}")
        }
        other => panic!("expected the tensor map to be refused, got {other:?}"),
    }
    exec.synchronize().unwrap();
    let out_host = exec.download(&out).unwrap();
    assert!(
        out_host.data().iter().all(|x| x.is_nan()),
        "a refused launch wrote"
    );
    // The cache's own pool is aligned: the same kernel runs and writes every output.
    let args = [
        CudaExecutor::tensor_arg(&gq),
        CudaExecutor::paged_arg(&gc),
        CudaExecutor::tensor_arg_mut(&mut out),
        CudaExecutor::tensor_arg_mut(&mut lse),
        KernelArg::F32(0.1),
    ];
    exec.launch(&tpla_kernels::latent_decode, &cfg, &args)
        .unwrap();
    let out_host = exec.download(&out).unwrap();
    assert!(out_host.data().iter().all(|x| x.is_finite()));
}
