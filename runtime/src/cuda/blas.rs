//! Dense projections through cuBLAS: bf16 inputs, f32 accumulation and output, on the
//! executor's stream.
//!
//! [`Cublas::head_gemm`] computes `y[b, h, :] = x[b, h, :] · w[h]` for every head `h` (with one
//! head it is a plain `[M, K] × [K, N]` gemm), the contract of the DSL kernel `head_proj` except
//! that `x` is already bf16. It is one `cublasGemmEx` (one head) or
//! `cublasGemmStridedBatchedEx` (several) issued on the executor's stream, with a workspace
//! allocated up front so cuBLAS allocates nothing while a stream is being captured into a CUDA
//! graph.
//!
//! libcublas is opened at run time (`TPLA_CUBLAS_LIB`, else `libcublas.so.13`/`.12` on the
//! loader path) and only the six entry points used here are bound. cudarc's `cublas` feature
//! would bind all of cuBLAS: measured on this 2-core host it adds about 47 s to every cold
//! build of cudarc (24 s -> 71 s, `-j1`), for six functions. A missing library is
//! [`RuntimeError::BackendUnavailable`]: callers fall back to the DSL path.

use std::ffi::{c_int, c_longlong, c_void};
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use tpla_codegen::ir::DType;

use super::device::{driver_err, unavailable, CudaExecutor};
use crate::exec::{ArgSpace, TensorArg};
use crate::RuntimeError;

type Handle = *mut c_void;
type Status = c_int;
/// `cublasGemmEx`'s signature (cuBLAS 12/13, 32-bit sizes).
type GemmEx = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    *mut c_void,
    c_int,
    c_int,
    c_int,
    c_int,
) -> Status;
/// `cublasGemmStridedBatchedEx`'s signature.
type GemmStridedBatchedEx = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    c_longlong,
    *const c_void,
    c_int,
    c_int,
    c_longlong,
    *const c_void,
    *mut c_void,
    c_int,
    c_int,
    c_longlong,
    c_int,
    c_int,
    c_int,
) -> Status;

// cuBLAS / CUDA library enum values (cublas_api.h, library_types.h).
const OP_N: c_int = 0;
const R_32F: c_int = 0;
const R_16BF: c_int = 14;
const COMPUTE_32F: c_int = 68;
const GEMM_DEFAULT: c_int = -1;

/// The bound entry points of the loaded library.
struct Api {
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    destroy: unsafe extern "C" fn(Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    set_workspace: unsafe extern "C" fn(Handle, *mut c_void, usize) -> Status,
    gemm_ex: GemmEx,
    gemm_sb: GemmStridedBatchedEx,
    path: String,
    _lib: libloading::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn candidates() -> Vec<String> {
    let mut out: Vec<String> = std::env::var("TPLA_CUBLAS_LIB")
        .ok()
        .filter(|p| !p.is_empty())
        .into_iter()
        .collect();
    out.extend(["libcublas.so.13", "libcublas.so.12", "libcublas.so"].map(String::from));
    out
}

fn load() -> Result<Api, String> {
    let mut tried = Vec::new();
    for name in candidates() {
        // SAFETY: loading libcublas runs its (vendor) initialisers, nothing else.
        match unsafe { libloading::Library::new(&name) } {
            Ok(lib) => return bind(lib, name),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "libcublas could not be loaded ({})",
        tried.join("; ")
    ))
}

fn bind(lib: libloading::Library, path: String) -> Result<Api, String> {
    fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
        // SAFETY: each `T` below is the C signature cuBLAS 12/13 declares for `name`
        // (cublas_api.h); the symbol is copied out while `lib` stays loaded inside `Api`.
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("{name}: {e}"))
    }
    Ok(Api {
        create: sym(&lib, "cublasCreate_v2")?,
        destroy: sym(&lib, "cublasDestroy_v2")?,
        set_stream: sym(&lib, "cublasSetStream_v2")?,
        set_workspace: sym(&lib, "cublasSetWorkspace_v2")?,
        gemm_ex: sym(&lib, "cublasGemmEx")?,
        gemm_sb: sym(&lib, "cublasGemmStridedBatchedEx")?,
        path,
        _lib: lib,
    })
}

fn api() -> Result<&'static Api, RuntimeError> {
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| unavailable(e.clone()))
}

/// The file libcublas was opened from, or why it could not be.
pub fn library() -> Result<String, RuntimeError> {
    api().map(|a| a.path.clone())
}

fn check(what: &str, status: Status) -> Result<(), RuntimeError> {
    if status == 0 {
        Ok(())
    } else {
        Err(RuntimeError::Device(format!(
            "cuBLAS {what}: status {status}"
        )))
    }
}

/// Bytes of the workspace given to cuBLAS (Hopper's recommendation is 32 MiB).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The sizes of one [`Cublas::head_gemm`]: `heads` products of `[batch, k] × [k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadGemm {
    /// Rows of `x` and `y` (sequences).
    pub batch: usize,
    /// Independent matrices.
    pub heads: usize,
    /// Inner dimension.
    pub k: usize,
    /// Output columns.
    pub n: usize,
}

fn bad(msg: String) -> RuntimeError {
    RuntimeError::InvalidInput(format!("cuBLAS head gemm: {msg}"))
}

impl HeadGemm {
    /// Checks `x` `[batch, heads, k]`, `w` `[heads, k, n]` and `y` `[batch, heads, n]` against
    /// each other (every size positive and within cuBLAS' 32-bit arguments).
    pub fn from_shapes(x: &[usize], w: &[usize], y: &[usize]) -> Result<HeadGemm, RuntimeError> {
        let (&[batch, heads, k], &[wh, wk, n], &[yb, yh, yn]) = (x, w, y) else {
            return Err(bad(format!(
                "x {x:?}, w {w:?} and y {y:?} must all be rank 3"
            )));
        };
        if (wh, wk) != (heads, k) || (yb, yh, yn) != (batch, heads, n) {
            return Err(bad(format!(
                "x {x:?}, w {w:?} and y {y:?} do not match ([b, h, k] · [h, k, n] -> [b, h, n])"
            )));
        }
        let g = HeadGemm { batch, heads, k, n };
        if [batch, heads, k, n].contains(&0) {
            return Err(bad(format!("empty dimension in {g:?}")));
        }
        let big = [heads * k, heads * n, k * n, batch]
            .iter()
            .any(|&v| v > i32::MAX as usize);
        if big {
            return Err(bad(format!("{g:?} exceeds cuBLAS' 32-bit sizes")));
        }
        Ok(g)
    }

    /// cuBLAS is column-major: the row-major `y_h = x_h · w_h` is `y_hᵀ = w_hᵀ · x_hᵀ`, i.e.
    /// `(m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c)` with `A = w`, `B = x`.
    pub fn column_major(&self) -> [i64; 9] {
        let (b, h, k, n) = (
            self.batch as i64,
            self.heads as i64,
            self.k as i64,
            self.n as i64,
        );
        [n, b, k, n, h * k, h * n, k * n, k, n]
    }

    /// Multiply-adds (`2·b·h·k·n` FLOPs).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.heads * self.k * self.n) as f64
    }
}

/// A cuBLAS handle bound to one executor's stream, with its workspace.
pub struct Cublas {
    api: &'static Api,
    handle: Handle,
    stream: Arc<CudaStream>,
    _workspace: CudaSlice<u8>,
}

// SAFETY: the handle is only used through `&self` calls that enqueue on the fixed stream set at
// creation (never changed); cuBLAS allows one handle to be used from several host threads as
// long as its stream and settings are not changed concurrently.
unsafe impl Send for Cublas {}
// SAFETY: as for `Send`: no method mutates the handle's state.
unsafe impl Sync for Cublas {}

impl std::fmt::Debug for Cublas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cublas")
            .field("library", &self.api.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        // SAFETY: `handle` was created by `create` and is destroyed once, here.
        let _ = unsafe { (self.api.destroy)(self.handle) };
    }
}

impl Cublas {
    /// A handle issuing its work on `exec`'s stream; `BackendUnavailable` when libcublas cannot
    /// be loaded.
    pub fn new(exec: &CudaExecutor) -> Result<Cublas, RuntimeError> {
        let api = api()?;
        let stream = exec.stream().clone();
        exec.context()
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context for cuBLAS", e))?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the executor's context is current on this thread.
        check("create", unsafe { (api.create)(&mut handle) })?;
        // SAFETY: cuBLAS only ever writes the workspace; its contents need no initialisation.
        let workspace = match unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above, destroyed once.
                let _ = unsafe { (api.destroy)(handle) };
                return Err(driver_err("cuBLAS workspace", e));
            }
        };
        let blas = Cublas {
            api,
            handle,
            stream,
            _workspace: workspace,
        };
        let (ptr, guard) = blas._workspace.device_ptr(&blas.stream);
        // SAFETY: the handle is live; the stream belongs to the context the handle was created
        // in and outlives the handle (`blas.stream`); the workspace is a device allocation of
        // WORKSPACE_BYTES on that context kept alive as long as the handle (`_workspace`).
        unsafe {
            check(
                "set stream",
                (api.set_stream)(blas.handle, blas.stream.cu_stream() as *mut c_void),
            )?;
            check(
                "set workspace",
                (api.set_workspace)(blas.handle, ptr as *mut c_void, WORKSPACE_BYTES),
            )?;
        }
        drop(guard);
        Ok(blas)
    }

    /// `y[b, h, :] = x[b, h, :] · w[h]`: `x` bf16 `[batch, heads, k]`, `w` bf16
    /// `[heads, k, n]`, `y` f32 or bf16 `[batch, heads, n]` (writable; f32 accumulation either
    /// way, bf16 rounds the result once), all device tensors of this handle's executor. Queued
    /// on the executor's stream (no synchronisation).
    pub fn head_gemm(
        &self,
        x: TensorArg<'_>,
        w: TensorArg<'_>,
        y: TensorArg<'_>,
    ) -> Result<HeadGemm, RuntimeError> {
        let c_type = match y.dtype() {
            DType::BF16 => R_16BF,
            _ => R_32F,
        };
        for (name, t, dt) in [
            ("x", &x, DType::BF16),
            ("w", &w, DType::BF16),
            (
                "y",
                &y,
                if y.dtype() == DType::BF16 {
                    DType::BF16
                } else {
                    DType::F32
                },
            ),
        ] {
            if t.space() != ArgSpace::Device || t.dtype() != dt {
                return Err(bad(format!(
                    "{name} must be a {dt:?} device tensor, got {:?} in {:?} memory",
                    t.dtype(),
                    t.space()
                )));
            }
        }
        if !y.writable() {
            return Err(bad("y must be passed for writing".into()));
        }
        let g = HeadGemm::from_shapes(x.shape(), w.shape(), y.shape())?;
        let [m, n, k, lda, ldb, ldc, sa, sb, sc] = g.column_major();
        let (alpha, beta) = (1.0f32, 0.0f32);
        let a = w.ptr() as *const c_void;
        let b = x.ptr() as *const c_void;
        let c = y.ptr() as *mut c_void;
        let (al, be) = (
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
        );
        let (m, n, k, lda, ldb, ldc) = (
            m as c_int,
            n as c_int,
            k as c_int,
            lda as c_int,
            ldb as c_int,
            ldc as c_int,
        );
        let h = self.handle;
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context for cuBLAS", e))?;
        // SAFETY: the handle is live and bound to this executor's stream; `x`, `w`, `y` are
        // device tensor arguments (their constructors vouch for live allocations of the stated
        // shapes, with `y` not aliased), and `from_shapes` checked that the column-major sizes
        // and strides stay inside them and fit i32; alpha/beta are host scalars that outlive the
        // call (cuBLAS reads them before returning in host pointer mode).
        let status = unsafe {
            if g.heads == 1 {
                (self.api.gemm_ex)(
                    h,
                    OP_N,
                    OP_N,
                    m,
                    n,
                    k,
                    al,
                    a,
                    R_16BF,
                    lda,
                    b,
                    R_16BF,
                    ldb,
                    be,
                    c,
                    c_type,
                    ldc,
                    COMPUTE_32F,
                    GEMM_DEFAULT,
                )
            } else {
                (self.api.gemm_sb)(
                    h,
                    OP_N,
                    OP_N,
                    m,
                    n,
                    k,
                    al,
                    a,
                    R_16BF,
                    lda,
                    sa,
                    b,
                    R_16BF,
                    ldb,
                    sb,
                    be,
                    c,
                    c_type,
                    ldc,
                    sc,
                    g.heads as c_int,
                    COMPUTE_32F,
                    GEMM_DEFAULT,
                )
            }
        };
        check(&format!("gemm {g:?}"), status)?;
        Ok(g)
    }

    /// The stream the handle issues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let g = HeadGemm::from_shapes(&[4, 2, 8], &[2, 8, 16], &[4, 2, 16]).unwrap();
        assert_eq!(
            g,
            HeadGemm {
                batch: 4,
                heads: 2,
                k: 8,
                n: 16
            }
        );
        assert_eq!(g.flops(), 2.0 * 4.0 * 2.0 * 8.0 * 16.0);
        for (x, w, y) in [
            (&[4, 2, 8][..], &[2, 8, 16][..], &[4, 2, 15][..]),
            (&[4, 2, 8], &[1, 8, 16], &[4, 2, 16]),
            (&[4, 2, 8], &[2, 7, 16], &[4, 2, 16]),
            (&[4, 16], &[1, 16, 16], &[4, 1, 16]),
            (&[0, 1, 8], &[1, 8, 16], &[0, 1, 16]),
        ] {
            let e = HeadGemm::from_shapes(x, w, y).unwrap_err();
            assert!(e.to_string().contains("cuBLAS head gemm"), "{e}");
        }
        let huge = 1usize << 31;
        assert!(HeadGemm::from_shapes(&[huge, 1, 1], &[1, 1, 1], &[huge, 1, 1]).is_err());
    }

    /// Column-major view of the row-major product, checked by evaluating it with the strides on
    /// the host against the row-major definition.
    #[test]
    fn column_major_strides_compute_the_row_major_product() {
        let g = HeadGemm {
            batch: 3,
            heads: 2,
            k: 4,
            n: 5,
        };
        let x: Vec<f32> = (0..3 * 2 * 4).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..2 * 4 * 5).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
        let [m, n, k, lda, ldb, ldc, sa, sb, sc] = g.column_major().map(|v| v as usize);
        let mut y = [f32::NAN; 3 * 2 * 5];
        for h in 0..g.heads {
            // column-major C[i, j] = Σ_p A[i, p] B[p, j], with X[i, j] at base + i + j·ld.
            for i in 0..m {
                for j in 0..n {
                    let s: f32 = (0..k)
                        .map(|p| w[h * sa + i + p * lda] * x[h * sb + p + j * ldb])
                        .sum();
                    y[h * sc + i + j * ldc] = s;
                }
            }
        }
        for b in 0..3 {
            for h in 0..2 {
                for j in 0..5 {
                    let want: f32 = (0..4)
                        .map(|p| x[(b * 2 + h) * 4 + p] * w[(h * 4 + p) * 5 + j])
                        .sum();
                    assert_eq!(y[(b * 2 + h) * 5 + j], want, "b {b} h {h} j {j}");
                }
            }
        }
    }
}
