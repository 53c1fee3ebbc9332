//! AVX2 + FMA microkernels of [`host_gemm`](super::host_gemm): 8 f32 lanes, fused multiply-add,
//! for x86-64 hosts without AVX-512F (AMD Zen 1-3, Intel client cores and those before
//! Skylake-X). The same two kernels as [`super::avx512`], blocked for sixteen vector registers
//! instead of thirty-two:
//!
//! - **NT** (`a` rows and `b` columns contiguous along K, `q @ kv.t()`): a 2x4 block of dot
//!   products keeps eight accumulators across K (six loads per eight FMAs, thirteen registers; a
//!   3x4 block spills, at half the speed);
//!   each row's four accumulators reduce at the end with three horizontal adds ([`reduce_row`]).
//!   Columns outside, rows inside, as on AVX-512.
//! - **NN** (`b` rows contiguous along N, `p @ kv.cols(..)`): a 6 x 16 output block keeps twelve
//!   accumulators; each K step broadcasts six `a` scalars against two `b` vectors (fifteen
//!   registers; 70 GFLOP/s where 4 x 16 made 63, at 16 x 512 x 64 on a 2-vCPU EPYC); the rows
//!   left over take 4- and 1-row blocks.
//! - anything else: the portable loop.
//!
//! Edges: a K tail (NT) and an N tail (NN) use `vmaskmovps` loads and stores, which never touch
//! the masked-off elements; rows and columns outside whole blocks take narrower blocks.

use core::arch::x86_64::*;

use super::{portable, Form, GemmCall};

/// Lanes of a vector.
const L: usize = 8;
/// Rows and columns of the NT kernel's main block.
const NT_ROWS: usize = 2;
const NT_COLS: usize = 4;
/// Rows and vectors of the NN kernel's main block.
const NN_ROWS: usize = 6;
const NN_VECS: usize = 2;

/// Entry point: picks the kernel from the strides.
///
/// # Safety
/// AVX2 and FMA are present, and the pointer contract of [`super::host_gemm`] holds.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm(c: &GemmCall) {
    // SAFETY (all three): the caller's contract; the kernels address only elements inside the
    // shapes of `c`.
    match super::form(c) {
        Form::Nt => unsafe { nt(c) },
        Form::Nn => unsafe { nn(c) },
        Form::Other => unsafe { portable(c) },
    }
}

/// A `vmaskmovps` mask of the first `n` lanes (`1 <= n <= 8`).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn first_lanes(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// The sum of the eight lanes of `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_hadd_ps(s, s);
    _mm_cvtss_f32(_mm_hadd_ps(s, s))
}

/// The four sums of a row of four accumulators, in order: `hadd` pairs within each 128-bit
/// half twice, then the two halves are added.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn reduce_row(x: &[__m256; NT_COLS]) -> __m128 {
    let t = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
    _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t))
}

/// `out = start + a @ b` with `a` rows and `b` columns contiguous along K.
///
/// # Safety
/// As [`gemm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn nt(c: &GemmCall) {
    let (m, n) = (c.m as usize, c.n as usize);
    let (m2, n4) = (m / NT_ROWS * NT_ROWS, n / NT_COLS * NT_COLS);
    // SAFETY (every block call): the block lies inside `[m, n]`.
    for j in (0..n4).step_by(NT_COLS) {
        for i in (0..m2).step_by(NT_ROWS) {
            let acc = unsafe { nt_acc::<NT_ROWS, NT_COLS>(c, i, j) };
            for (r, row) in acc.iter().enumerate() {
                unsafe { super::store_row4(c, i + r, j, reduce_row(row)) };
            }
        }
        for i in m2..m {
            let acc = unsafe { nt_acc::<1, NT_COLS>(c, i, j) };
            unsafe { super::store_row4(c, i, j, reduce_row(&acc[0])) };
        }
    }
    for j in n4..n {
        for i in (0..m2).step_by(NT_ROWS) {
            let acc = unsafe { nt_acc::<NT_ROWS, 1>(c, i, j) };
            unsafe { nt_store(c, i, j, &acc) };
        }
        for i in m2..m {
            let acc = unsafe { nt_acc::<1, 1>(c, i, j) };
            unsafe { nt_store(c, i, j, &acc) };
        }
    }
}

/// The `R x C` dot-product accumulators (8 partial sums each) of the block at `(i, j)`.
///
/// # Safety
/// As [`gemm`], the block inside `[m, n]`, `a` rows and `b` columns contiguous along K.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nt_acc<const R: usize, const C: usize>(
    c: &GemmCall,
    i: usize,
    j: usize,
) -> [[__m256; C]; R] {
    let k = c.k as usize;
    let k8 = k / L * L;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut pa = [c.a; R];
    let mut pb = [c.b; C];
    // SAFETY: rows `i..i + R` of `a` and columns `j..j + C` of `b` exist; every load below
    // reads elements `kk..kk + 8` (or the masked part of the tail) of one of them, all < k.
    unsafe {
        for (r, p) in pa.iter_mut().enumerate() {
            *p = c.a.add((i + r) * c.a_s0 as usize);
        }
        for (q, p) in pb.iter_mut().enumerate() {
            *p = c.b.add((j + q) * c.b_s1 as usize);
        }
        let mut kk = 0;
        while kk < k8 {
            let mut bv = [_mm256_setzero_ps(); C];
            for q in 0..C {
                bv[q] = _mm256_loadu_ps(pb[q].add(kk));
            }
            for r in 0..R {
                let av = _mm256_loadu_ps(pa[r].add(kk));
                for q in 0..C {
                    acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
            kk += L;
        }
        if k8 < k {
            let mask = first_lanes(k - k8);
            let mut bv = [_mm256_setzero_ps(); C];
            for q in 0..C {
                bv[q] = _mm256_maskload_ps(pb[q].add(k8), mask);
            }
            for r in 0..R {
                let av = _mm256_maskload_ps(pa[r].add(k8), mask);
                for q in 0..C {
                    acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
        }
    }
    acc
}

/// Reduces an `R x C` edge block one accumulator at a time, adds the start and stores it.
///
/// # Safety
/// As [`gemm`], the block at `(i, j)` inside `[m, n]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nt_store<const R: usize, const C: usize>(
    c: &GemmCall,
    i: usize,
    j: usize,
    acc: &[[__m256; C]; R],
) {
    for (r, row) in acc.iter().enumerate() {
        for (q, x) in row.iter().enumerate() {
            // SAFETY: `(i + r, j + q)` is inside `[m, n]`.
            unsafe { super::store_one(c, i + r, j + q, hsum(*x)) };
        }
    }
}

/// `out = start + a @ b` with `b` rows contiguous along N.
///
/// # Safety
/// As [`gemm`].
#[target_feature(enable = "avx2,fma")]
unsafe fn nn(c: &GemmCall) {
    let n = c.n as usize;
    let strip = NN_VECS * L;
    let mut j = 0;
    while j < n {
        let w = (n - j).min(strip);
        // The last vector's lanes: all of them where the strip is whole.
        let last = first_lanes(w - (w.div_ceil(L) - 1) * L);
        // SAFETY (every strip): columns `j..j + w` inside `[m, n]`.
        match (w.div_ceil(L), w.is_multiple_of(L)) {
            (2, true) => unsafe { nn_strip::<2, false>(c, j, last) },
            (2, false) => unsafe { nn_strip::<2, true>(c, j, last) },
            _ => unsafe { nn_strip::<1, true>(c, j, last) },
        }
        j += strip;
    }
}

/// Every row block of the strip of `V` vectors at column `j` (the last one masked by `last`
/// when `MASKED`).
///
/// # Safety
/// As [`gemm`], the strip inside `[m, n]`.
#[target_feature(enable = "avx2,fma")]
unsafe fn nn_strip<const V: usize, const MASKED: bool>(c: &GemmCall, j: usize, last: __m256i) {
    let m = c.m as usize;
    let mut i = 0;
    // SAFETY (every block): the blocks lie inside the strip.
    while i + NN_ROWS <= m {
        unsafe { nn_block::<NN_ROWS, V, MASKED>(c, i, j, last) };
        i += NN_ROWS;
    }
    while i + 4 <= m {
        unsafe { nn_block::<4, V, MASKED>(c, i, j, last) };
        i += 4;
    }
    while i < m {
        unsafe { nn_block::<1, V, MASKED>(c, i, j, last) };
        i += 1;
    }
}

/// One `R x 8V` output block of the NN kernel.
///
/// # Safety
/// As [`gemm`], the block inside `[m, n]` (its last vector's columns under `last` when
/// `MASKED`), `b` rows contiguous along N.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn nn_block<const R: usize, const V: usize, const MASKED: bool>(
    c: &GemmCall,
    i: usize,
    j: usize,
    last: __m256i,
) {
    let masked = |v: usize| MASKED && v == V - 1;
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    if !c.init.is_null() {
        for (r, row) in acc.iter_mut().enumerate() {
            let o = (i + r) * c.ldo as usize + j;
            // SAFETY: row `i + r` of `init` (and of `col`), the block's columns (the last vector
            // masked when `MASKED`: masked-off elements are not read), inside `[m, n]`.
            unsafe {
                let scale = (!c.col.is_null())
                    .then(|| _mm256_set1_ps(*c.col.add((i + r) * c.col_s as usize)));
                for (v, x) in row.iter_mut().enumerate() {
                    let p = c.init.add(o + L * v);
                    let s = if masked(v) {
                        _mm256_maskload_ps(p, last)
                    } else {
                        _mm256_loadu_ps(p)
                    };
                    *x = scale.map_or(s, |f| _mm256_mul_ps(s, f));
                }
            }
        }
    }
    let (a_s0, a_s1, b_s0) = (c.a_s0 as usize, c.a_s1 as usize, c.b_s0 as usize);
    // SAFETY: `a` rows `i..i + R` at K index `kk < k`; `b` row `kk`, the block's columns (the
    // last vector masked when `MASKED`: masked-off elements are not read).
    unsafe {
        let pa = c.a.add(i * a_s0);
        let pb = c.b.add(j);
        for kk in 0..c.k as usize {
            let prow = pb.add(kk * b_s0);
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = if masked(v) {
                    _mm256_maskload_ps(prow.add(L * v), last)
                } else {
                    _mm256_loadu_ps(prow.add(L * v))
                };
            }
            let pk = pa.add(kk * a_s1);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*pk.add(r * a_s0));
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(av, bv[v], *x);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let o = (i + r) * c.ldo as usize + j;
        for (v, x) in row.iter().enumerate() {
            // SAFETY: row `i + r`, the masked-in columns of vector `v`, inside the destination.
            unsafe {
                if masked(v) {
                    _mm256_maskstore_ps(c.out.add(o + L * v), last, *x);
                } else {
                    _mm256_storeu_ps(c.out.add(o + L * v), *x);
                }
            }
        }
    }
}
