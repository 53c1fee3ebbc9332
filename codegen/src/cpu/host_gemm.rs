//! Host-compiled tile gemm for the generated code.
//!
//! Cranelift's x64 backend emits 128-bit vectors only, so the register-blocked gemm loops it
//! compiles (`lower/gemm.rs`) peak at four multiply-adds per instruction. For gemm tiles above
//! [`HOST_GEMM_MIN_MACS`] multiply-adds the generated code instead fills a [`GemmCall`] on its
//! stack and calls `host_gemm`, whose microkernels (compiled into this crate with
//! `#[target_feature]`, chosen at run time: [`vector_kernel`]) run sixteen lanes with fused
//! multiply-adds on AVX-512F (`avx512.rs`) or eight on AVX2 + FMA (`avx2.rs`), as it already calls
//! the host for `log2` and prefetch. Where the host has neither (older x86-64 CPUs, aarch64) the
//! backend keeps its own loops ([`host_gemm_available`] is false); `host_gemm` still computes the
//! right result there with a portable loop.
//!
//! Semantics, for `i < m`, `j < n` (strides in elements):
//! `out[i*ldo + j] = start(i, j) + sum_k a[i*a_s0 + k*a_s1] * b[k*b_s0 + j*b_s1]`, where
//! `start` is `0`, `init[i*ldo + j]` or `init[i*ldo + j] * col[i*col_s]`; `init` may be `out`
//! itself (each element is read before it is written), the operands may not overlap `out`.

/// Symbol name of `host_gemm`.
pub(super) const GEMM_SYMBOL: &str = "tpla_cpu_gemm";

/// Gemms with fewer multiply-adds than this stay in the generated loops (a call, the stores of
/// its arguments and the edge handling cost more than they save on a small tile).
pub const HOST_GEMM_MIN_MACS: usize = 4096;

/// The arguments of one `host_gemm` call, written by the generated code (field order and
/// types are part of that contract: eight-byte fields, see [`GemmCall::FIELDS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmCall {
    /// Element `[0, 0]` of the left operand `[m, k]`.
    pub a: *const f32,
    /// Element `[0, 0]` of the right operand `[k, n]`.
    pub b: *const f32,
    /// Element `[0, 0]` of the dense destination `[m, n]`, row stride `ldo`.
    pub out: *mut f32,
    /// Where the accumulators start (`[m, n]`, row stride `ldo`), or null for zero.
    pub init: *const f32,
    /// A column `[m, 1]` scaling `init` row by row (stride `col_s`), or null for none.
    pub col: *const f32,
    /// Rows of the result.
    pub m: i64,
    /// Columns of the result.
    pub n: i64,
    /// The contracted length.
    pub k: i64,
    /// Strides of `a` (rows, K) in elements.
    pub a_s0: i64,
    pub a_s1: i64,
    /// Strides of `b` (K, columns) in elements.
    pub b_s0: i64,
    pub b_s1: i64,
    /// Row stride of `out` and `init` in elements.
    pub ldo: i64,
    /// Stride of `col` in elements.
    pub col_s: i64,
}

impl GemmCall {
    /// Field names in memory order; each field is eight bytes at `8 * index`.
    pub const FIELDS: [&'static str; 14] = [
        "a", "b", "out", "init", "col", "m", "n", "k", "a_s0", "a_s1", "b_s0", "b_s1", "ldo",
        "col_s",
    ];

    /// Byte offset of field `name` (one of [`Self::FIELDS`]).
    pub fn offset(name: &str) -> i32 {
        let i = Self::FIELDS
            .iter()
            .position(|f| *f == name)
            .expect("a GemmCall field");
        (i * 8) as i32
    }

    /// Size in bytes.
    pub const BYTES: u32 = 14 * 8;
}

/// The vector microkernels `host_gemm` has, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKernel {
    /// Sixteen lanes: AVX-512F.
    Avx512,
    /// Eight lanes: AVX2 with FMA.
    Avx2,
}

/// Whether this machine has the instructions of `kernel`.
fn present(kernel: VectorKernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match kernel {
            VectorKernel::Avx512 => std::is_x86_feature_detected!("avx512f"),
            VectorKernel::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        false
    }
}

/// The vector kernel `host_gemm` runs on this machine, if it has one (the best present).
pub fn vector_kernel() -> Option<VectorKernel> {
    [VectorKernel::Avx512, VectorKernel::Avx2]
        .into_iter()
        .find(|&k| present(k))
}

/// Whether `host_gemm` has a vector kernel on this machine (AVX-512F, or AVX2 with FMA): only
/// then does the backend call it.
pub fn host_gemm_available() -> bool {
    vector_kernel().is_some()
}

/// The host gemm the generated code calls (see the module doc).
///
/// # Safety
/// `call` points to a valid [`GemmCall`] whose pointers cover every element the strides and
/// sizes address; `out` overlaps neither operand nor `col` (it may equal `init`).
pub(super) unsafe extern "C" fn host_gemm(call: *const GemmCall) {
    // SAFETY: the caller passes a valid, initialized call record.
    let c = unsafe { &*call };
    if c.m <= 0 || c.n <= 0 {
        return;
    }
    // SAFETY: the pointer contract is the caller's.
    unsafe { run_kernel(vector_kernel(), c) }
}

/// Runs `kernel` (the portable loop for `None`) on `c`.
///
/// # Safety
/// As `host_gemm`, and the machine has `kernel`'s instructions.
unsafe fn run_kernel(kernel: Option<VectorKernel>, c: &GemmCall) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked AVX-512F; the pointer contract is the caller's.
        Some(VectorKernel::Avx512) => unsafe { avx512::gemm(c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked AVX2 and FMA; the pointer contract is the caller's.
        Some(VectorKernel::Avx2) => unsafe { avx2::gemm(c) },
        // SAFETY: the pointer contract is the caller's.
        _ => unsafe { portable(c) },
    }
}

/// The accumulator start of element `(i, j)` (see the module doc).
///
/// # Safety
/// As `host_gemm`.
#[inline(always)]
unsafe fn start(c: &GemmCall, i: isize, j: isize) -> f32 {
    if c.init.is_null() {
        return 0.0;
    }
    // SAFETY: `(i, j)` is inside the `[m, n]` result, which `init` covers.
    let x = unsafe { *c.init.offset(i * c.ldo as isize + j) };
    if c.col.is_null() {
        x
    } else {
        // SAFETY: row `i` of the `[m, 1]` column.
        x * unsafe { *c.col.offset(i * c.col_s as isize) }
    }
}

/// Which microkernel the strides of a call allow (the same rule for every vector width).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `a` rows and `b` columns contiguous along K (`q @ kv.t()`).
    Nt,
    /// `b` rows contiguous along N (`p @ kv.cols(..)`).
    Nn,
    /// Anything else: the portable loop.
    Other,
}

#[cfg(target_arch = "x86_64")]
fn form(c: &GemmCall) -> Form {
    let k_unit = c.a_s1 == 1 || c.k == 1;
    let kb_unit = c.b_s0 == 1 || c.k == 1;
    let n_unit = c.b_s1 == 1 || c.n == 1;
    if c.k <= 0 {
        Form::Other
    } else if k_unit && kb_unit {
        Form::Nt
    } else if n_unit {
        Form::Nn
    } else {
        Form::Other
    }
}

/// Adds the start to the four dot products `sums` of row `i` at columns `j..j + 4` and stores
/// them (the NT kernels' whole blocks; SSE, present on every x86-64).
///
/// # Safety
/// As `host_gemm`, the four elements inside `[m, n]`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn store_row4(c: &GemmCall, i: usize, j: usize, sums: core::arch::x86_64::__m128) {
    use core::arch::x86_64::*;
    let o = i * c.ldo as usize + j;
    let mut x = sums;
    // SAFETY: row `i`, columns `j..j + 4` of the destination (and of `init`, `col` row `i`), all
    // inside `[m, n]`.
    unsafe {
        if !c.init.is_null() {
            let mut s = _mm_loadu_ps(c.init.add(o));
            if !c.col.is_null() {
                s = _mm_mul_ps(s, _mm_set1_ps(*c.col.add(i * c.col_s as usize)));
            }
            x = _mm_add_ps(x, s);
        }
        _mm_storeu_ps(c.out.add(o), x);
    }
}

/// Adds the start to the dot product `sum` of element `(i, j)` and stores it (the NT kernels'
/// edge blocks).
///
/// # Safety
/// As `host_gemm`, `(i, j)` inside `[m, n]`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn store_one(c: &GemmCall, i: usize, j: usize, sum: f32) {
    let (i, j) = (i as isize, j as isize);
    // SAFETY: `(i, j)` is inside `[m, n]`.
    unsafe { *c.out.offset(i * c.ldo as isize + j) = start(c, i, j) + sum };
}

/// Plain loops: any strides, any machine.
///
/// # Safety
/// As `host_gemm`.
unsafe fn portable(c: &GemmCall) {
    for i in 0..c.m as isize {
        for j in 0..c.n as isize {
            // SAFETY: the pointer contract of `host_gemm`, indices inside `[m, k]`, `[k, n]`.
            let mut s = unsafe { start(c, i, j) };
            for kk in 0..c.k as isize {
                // SAFETY: as above.
                let (x, y) = unsafe {
                    (
                        *c.a.offset(i * c.a_s0 as isize + kk * c.a_s1 as isize),
                        *c.b.offset(kk * c.b_s0 as isize + j * c.b_s1 as isize),
                    )
                };
                s = x.mul_add(y, s);
            }
            // SAFETY: `(i, j)` is inside the destination.
            unsafe { *c.out.offset(i * c.ldo as isize + j) = s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random f32 in `[-1, 1)`, never zero.
    fn rnd(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = ((*state >> 40) as f32) / (1u64 << 24) as f32 * 2.0 - 1.0;
        if x == 0.0 {
            0.5
        } else {
            x
        }
    }

    /// Runs `host_gemm` (and the portable loop) on `a @ b` (NT when `nt`: `b` given as `[n, k]`
    /// rows) with a scaled start, against an f64 reference.
    fn check(m: usize, n: usize, k: usize, nt: bool, init: bool, seed: u64) {
        let mut s = seed;
        let a: Vec<f32> = (0..m * k).map(|_| rnd(&mut s)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rnd(&mut s)).collect();
        let ini: Vec<f32> = (0..m * n).map(|_| rnd(&mut s)).collect();
        let col: Vec<f32> = (0..m).map(|_| rnd(&mut s)).collect();
        let (b_s0, b_s1) = if nt { (1, k) } else { (n, 1) };
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = if init {
                    ini[i * n + j] as f64 * col[i] as f64
                } else {
                    0.0
                };
                for kk in 0..k {
                    acc += a[i * k + kk] as f64 * b[kk * b_s0 + j * b_s1] as f64;
                }
                want[i * n + j] = acc;
            }
        }
        // Every kernel this machine can run (AVX-512 hosts also run the AVX2 kernel), then
        // the portable loop.
        let mut kernels: Vec<Option<VectorKernel>> = [VectorKernel::Avx512, VectorKernel::Avx2]
            .into_iter()
            .filter(|&k| present(k))
            .map(Some)
            .collect();
        kernels.push(None);
        for kernel in kernels {
            let mut out = if init {
                ini.clone()
            } else {
                vec![f32::NAN; m * n]
            };
            let call = GemmCall {
                a: a.as_ptr(),
                b: b.as_ptr(),
                out: out.as_mut_ptr(),
                init: if init { out.as_ptr() } else { std::ptr::null() },
                col: if init { col.as_ptr() } else { std::ptr::null() },
                m: m as i64,
                n: n as i64,
                k: k as i64,
                a_s0: k as i64,
                a_s1: 1,
                b_s0: b_s0 as i64,
                b_s1: b_s1 as i64,
                ldo: n as i64,
                col_s: 1,
            };
            // SAFETY: every pointer covers the shapes of `call`; `init` is `out` itself; the
            // machine has the kernel's instructions (checked above).
            unsafe { run_kernel(kernel, &call) };
            for (e, (g, w)) in out.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                assert!(
                    (*g as f64 - w).abs() <= tol,
                    "m {m} n {n} k {k} nt {nt} init {init} {kernel:?}: \
                     element {e}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn matches_f64_on_edges_and_blocks() {
        let mut seed = 1;
        for &(m, n, k) in &[
            (16, 64, 576),
            (16, 512, 64),
            (5, 7, 3),
            (1, 1, 1),
            (7, 33, 17),
            (13, 50, 100),
            (4, 16, 16),
            (3, 129, 31),
        ] {
            for nt in [true, false] {
                for init in [false, true] {
                    seed += 1;
                    check(m, n, k, nt, init, seed);
                }
            }
        }
    }

    #[test]
    fn call_record_layout_is_fourteen_words() {
        assert_eq!(std::mem::size_of::<GemmCall>(), GemmCall::BYTES as usize);
        assert_eq!(GemmCall::offset("a"), 0);
        assert_eq!(GemmCall::offset("col_s"), 13 * 8);
        assert_eq!(
            std::mem::offset_of!(GemmCall, ldo),
            GemmCall::offset("ldo") as usize
        );
        assert_eq!(
            std::mem::offset_of!(GemmCall, k),
            GemmCall::offset("k") as usize
        );
    }
}
