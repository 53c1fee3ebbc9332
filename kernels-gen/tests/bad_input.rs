//! Bad launches are typed errors that change nothing.

use tpla_codegen::launch::LaunchError;
use tpla_codegen::{IrError, KernelDef};
use tpla_kernels::ops::{decode_attention, DecodeParams};
use tpla_kernels::{append_rows, latent_decode};
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, HostPagedCache, HostTensor, RuntimeError};

fn setup() -> (CpuExecutor, HostTensor<bf16>, HostPagedCache<bf16>) {
    let ex = CpuExecutor::new(1).unwrap();
    let q = HostTensor::<bf16>::full(&[2, 4, 128], bf16::from_f32(0.5));
    let mut cache = HostPagedCache::<bf16>::new(2, 32, 16, 128).unwrap();
    cache.set_seq_lens(&[10, 20]).unwrap();
    (ex, q, cache)
}

#[test]
fn wrong_query_width_is_a_shape_error_and_writes_nothing() {
    let (ex, _, cache) = setup();
    let q = HostTensor::<bf16>::full(&[2, 4, 100], bf16::from_f32(0.5));
    let cfg = latent_decode
        .default_config(&[("LAT", 64), ("ROPE", 64)])
        .unwrap();
    let mut out = HostTensor::<f32>::full(&[1, 2, 4, 64], -7.0);
    let mut lse = HostTensor::<f32>::full(&[1, 2, 4], -7.0);
    let e = latent_decode::launch(&ex, &cfg, &q, &cache, &mut out, &mut lse, 0.1).unwrap_err();
    assert!(
        matches!(e, RuntimeError::Launch(LaunchError::Shape { ref param, .. }) if param == "q"),
        "{e}"
    );
    assert!(out.data().iter().all(|&x| x == -7.0));
}

#[test]
fn disagreeing_batch_is_a_dim_mismatch() {
    let (ex, q, cache) = setup();
    let cfg = latent_decode
        .default_config(&[("LAT", 64), ("ROPE", 64)])
        .unwrap();
    let mut out = HostTensor::<f32>::zeros(&[1, 3, 4, 64]);
    let mut lse = HostTensor::<f32>::zeros(&[1, 2, 4]);
    let e = latent_decode::launch(&ex, &cfg, &q, &cache, &mut out, &mut lse, 0.1).unwrap_err();
    assert!(
        matches!(e, RuntimeError::Launch(LaunchError::DimMismatch { ref dim, .. }) if dim == "batch"),
        "{e}"
    );
}

#[test]
fn cache_row_width_must_match_the_kernel() {
    let (ex, q, _) = setup();
    let cache = HostPagedCache::<bf16>::new(2, 32, 16, 96).unwrap();
    let cfg = latent_decode
        .default_config(&[("LAT", 64), ("ROPE", 64)])
        .unwrap();
    let mut out = HostTensor::<f32>::zeros(&[1, 2, 4, 64]);
    let mut lse = HostTensor::<f32>::zeros(&[1, 2, 4]);
    let e = latent_decode::launch(&ex, &cfg, &q, &cache, &mut out, &mut lse, 0.1).unwrap_err();
    assert!(
        matches!(e, RuntimeError::Launch(LaunchError::Paged { .. })),
        "{e}"
    );
}

#[test]
fn length_past_the_block_table_is_rejected() {
    let (_, _, mut cache) = setup();
    let e = cache.set_seq_lens(&[10, 33]).unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::LengthPastCache {
                len: 33,
                capacity: 32
            }
        ),
        "{e}"
    );
    assert_eq!(cache.seq_lens(), &[10, 20], "nothing changed");
}

#[test]
fn page_size_zero_is_rejected() {
    let e = HostPagedCache::<bf16>::new(2, 32, 0, 128).unwrap_err();
    assert!(matches!(e, RuntimeError::InvalidInput(_)), "{e}");
}

#[test]
fn zero_heads_is_rejected_before_launch() {
    let (ex, _, cache) = setup();
    let q = HostTensor::<bf16>::zeros(&[2, 0, 128]);
    let p = DecodeParams::new(2, 0, 64, 64, 1, 0.1);
    let mut out = HostTensor::<f32>::zeros(&[2, 0, 64]);
    let mut lse = HostTensor::<f32>::zeros(&[2, 0]);
    let e = decode_attention(&ex, &p, &q, &cache, &mut out, &mut lse).unwrap_err();
    assert!(matches!(e, RuntimeError::InvalidInput(_)), "{e}");
}

#[test]
fn unknown_tune_value_is_a_config_error() {
    let cfg = latent_decode
        .default_config(&[("LAT", 64), ("ROPE", 64)])
        .unwrap()
        .with("BLOCK_H", 12);
    let e = latent_decode.build(&cfg).unwrap_err();
    assert!(
        matches!(e, IrError::BadConfig { ref name, .. } if name == "BLOCK_H"),
        "{e}"
    );
    let e = latent_decode
        .build(&latent_decode.default_config(&[("LAT", 64)]).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, IrError::MissingConfig(ref n) if n == "ROPE"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_rejected() {
    // An f32 tensor where the kernel wants bf16 rows: the typed launcher would not compile, so go
    // through the untyped executor entry point.
    use tpla_runtime::Executor;
    let (ex, _, mut cache) = setup();
    let rows = HostTensor::<f32>::zeros(&[2, 1, 128]);
    let cfg = append_rows.default_config(&[("ROW", 128)]).unwrap();
    let args = [
        CpuExecutor::tensor_arg(&rows),
        CpuExecutor::paged_arg_mut(&mut cache),
    ];
    let e = ex.launch(&append_rows, &cfg, &args).unwrap_err();
    assert!(
        matches!(e, RuntimeError::Launch(LaunchError::DType { .. })),
        "{e}"
    );
}

#[test]
fn single_split_rejects_a_permuted_output_and_keeps_its_shape() {
    // With one split the decode writes `out` directly: a tensor with the right element count
    // but the wrong shape must still be refused, untouched and with its shape unchanged.
    let (ex, q, cache) = setup();
    let p = DecodeParams::new(2, 4, 64, 64, 1, 0.1);
    for (out_shape, lse_shape) in [(vec![4, 2, 64], vec![2, 4]), (vec![2, 4, 64], vec![4, 2])] {
        let mut out = HostTensor::<f32>::full(&out_shape, -7.0);
        let mut lse = HostTensor::<f32>::full(&lse_shape, -7.0);
        let e = decode_attention(&ex, &p, &q, &cache, &mut out, &mut lse).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidInput(_)), "{e}");
        assert_eq!(out.shape(), &out_shape[..]);
        assert_eq!(lse.shape(), &lse_shape[..]);
        assert!(out.data().iter().chain(lse.data()).all(|&x| x == -7.0));
    }
    // The right shapes decode and come back as [batch, heads, lat] / [batch, heads].
    let mut out = HostTensor::<f32>::full(&[2, 4, 64], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[2, 4], f32::NAN);
    decode_attention(&ex, &p, &q, &cache, &mut out, &mut lse).unwrap();
    assert_eq!(out.shape(), &[2, 4, 64]);
    assert_eq!(lse.shape(), &[2, 4]);
    assert!(out.data().iter().chain(lse.data()).all(|x| x.is_finite()));
}
