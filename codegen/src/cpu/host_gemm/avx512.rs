//! AVX-512F microkernels of [`host_gemm`](super::host_gemm): 16 f32 lanes, fused multiply-add.
//!
//! - **NT** (`a` rows and `b` columns contiguous along K, `q @ kv.t()`): a 4x4 block of dot
//!   products keeps sixteen accumulators across K (eight loads per sixteen FMAs) and reduces
//!   them together at the end with one transpose-and-add tree ([`reduce_4x4`]). Columns outside,
//!   rows inside: the four `b` rows of a column block stay in L1 while every row block of `a`
//!   passes.
//! - **NN** (`b` rows contiguous along N, `p @ kv.cols(..)`): a 4 x 64 output block keeps sixteen
//!   accumulators; each K step broadcasts four `a` scalars from memory (load ports) against four
//!   `b` vectors. Columns outside, rows inside: the `k x 64` strip of `b` stays in L1.
//! - anything else: the portable loop.
//!
//! Edges: a K tail (NT) and an N tail (NN) use masked loads and stores, which never touch the
//! masked-off elements; rows and columns outside whole blocks take narrower blocks.

use core::arch::x86_64::*;

use super::{portable, Form, GemmCall};

/// Rows and columns (vectors for NN) of the main blocks.
const MR: usize = 4;
const NR: usize = 4;

/// Entry point: picks the kernel from the strides.
///
/// # Safety
/// AVX-512F is present, and the pointer contract of [`super::host_gemm`] holds.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gemm(c: &GemmCall) {
    // SAFETY (all three): the caller's contract; the kernels address only elements inside the
    // shapes of `c`.
    match super::form(c) {
        Form::Nt => unsafe { nt(c) },
        Form::Nn => unsafe { nn(c) },
        Form::Other => unsafe { portable(c) },
    }
}

/// The accumulator start of row `i`, for a vector of 16 columns at `j` (masked by `mask`).
///
/// # Safety
/// As [`gemm`]; the masked-in columns are inside the result.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn start_vec(c: &GemmCall, i: usize, j: usize, mask: __mmask16) -> __m512 {
    if c.init.is_null() {
        return _mm512_setzero_ps();
    }
    // SAFETY: row `i`, columns `j..j + 16` under `mask`, inside `init`'s `[m, n]`; a masked load
    // reads no masked-off element. `col` has `m` rows.
    unsafe {
        let v = _mm512_maskz_loadu_ps(mask, c.init.add(i * c.ldo as usize + j));
        if c.col.is_null() {
            v
        } else {
            _mm512_mul_ps(v, _mm512_set1_ps(*c.col.add(i * c.col_s as usize)))
        }
    }
}

/// `out = start + a @ b` with `a` rows and `b` columns contiguous along K.
///
/// # Safety
/// As [`gemm`].
#[target_feature(enable = "avx512f")]
unsafe fn nt(c: &GemmCall) {
    let (m, n) = (c.m as usize, c.n as usize);
    let (m4, n4) = (m / MR * MR, n / NR * NR);
    // SAFETY (every block call): the block lies inside `[m, n]`.
    for j in (0..n4).step_by(NR) {
        for i in (0..m4).step_by(MR) {
            let acc = unsafe { nt_acc::<MR, NR>(c, i, j) };
            unsafe { nt_store_4x4(c, i, j, reduce_4x4(&acc)) };
        }
        for i in m4..m {
            let acc = unsafe { nt_acc::<1, NR>(c, i, j) };
            unsafe { nt_store(c, i, j, &acc) };
        }
    }
    for j in n4..n {
        for i in (0..m4).step_by(MR) {
            let acc = unsafe { nt_acc::<MR, 1>(c, i, j) };
            unsafe { nt_store(c, i, j, &acc) };
        }
        for i in m4..m {
            let acc = unsafe { nt_acc::<1, 1>(c, i, j) };
            unsafe { nt_store(c, i, j, &acc) };
        }
    }
}

/// The `R x C` dot-product accumulators (16 partial sums each) of the block at `(i, j)`.
///
/// # Safety
/// As [`gemm`], the block inside `[m, n]`, `a` rows and `b` columns contiguous along K.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn nt_acc<const R: usize, const C: usize>(
    c: &GemmCall,
    i: usize,
    j: usize,
) -> [[__m512; C]; R] {
    let k = c.k as usize;
    let k16 = k / 16 * 16;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut pa = [c.a; R];
    let mut pb = [c.b; C];
    // SAFETY: rows `i..i + R` of `a` and columns `j..j + C` of `b` exist; every load below
    // reads elements `kk..kk + 16` (or the masked part of the tail) of one of them, all < k.
    unsafe {
        for (r, p) in pa.iter_mut().enumerate() {
            *p = c.a.add((i + r) * c.a_s0 as usize);
        }
        for (q, p) in pb.iter_mut().enumerate() {
            *p = c.b.add((j + q) * c.b_s1 as usize);
        }
        let mut kk = 0;
        while kk < k16 {
            let mut bv = [_mm512_setzero_ps(); C];
            for q in 0..C {
                bv[q] = _mm512_loadu_ps(pb[q].add(kk));
            }
            for r in 0..R {
                let av = _mm512_loadu_ps(pa[r].add(kk));
                for q in 0..C {
                    acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
            kk += 16;
        }
        if k16 < k {
            let mask: __mmask16 = ((1u32 << (k - k16)) - 1) as u16;
            let mut bv = [_mm512_setzero_ps(); C];
            for q in 0..C {
                bv[q] = _mm512_maskz_loadu_ps(mask, pb[q].add(k16));
            }
            for r in 0..R {
                let av = _mm512_maskz_loadu_ps(mask, pa[r].add(k16));
                for q in 0..C {
                    acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
        }
    }
    acc
}

/// The sixteen sums of a 4x4 block of accumulators in one vector, row-major (`[r * 4 + c]`).
///
/// Two `vshuff32x4` levels fold the 512-bit accumulators to one 128-bit partial each, four to a
/// vector; an in-lane 4x4 transpose-and-add finishes them: 30 shuffles and 15 adds for sixteen
/// dot products, where sixteen separate reductions take about 128 instructions.
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce_4x4(acc: &[[__m512; NR]; MR]) -> __m512 {
    // v[q * 4 + r] = acc[r][q]: the tree below leaves the sum of v[4e + l] at element 4l + e.
    let mut v = [_mm512_setzero_ps(); 16];
    for (r, row) in acc.iter().enumerate() {
        for (q, x) in row.iter().enumerate() {
            v[q * 4 + r] = *x;
        }
    }
    let mut w = [_mm512_setzero_ps(); 8];
    for (t, wt) in w.iter_mut().enumerate() {
        let (x, y) = (v[2 * t], v[2 * t + 1]);
        // [x0 + x2, x1 + x3, y0 + y2, y1 + y3] in 128-bit lanes.
        *wt = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        );
    }
    let mut z = [_mm512_setzero_ps(); 4];
    for (t, zt) in z.iter_mut().enumerate() {
        let (x, y) = (w[2 * t], w[2 * t + 1]);
        // 128-bit lane l: the 4-float partial of v[4t + l].
        *zt = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        );
    }
    let s01 = _mm512_add_ps(
        _mm512_unpacklo_ps(z[0], z[1]),
        _mm512_unpackhi_ps(z[0], z[1]),
    );
    let s23 = _mm512_add_ps(
        _mm512_unpacklo_ps(z[2], z[3]),
        _mm512_unpackhi_ps(z[2], z[3]),
    );
    // Lane l, element e: the total of z[e]'s lane l, that is of v[4e + l].
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(s01, s23),
        _mm512_shuffle_ps::<0xEE>(s01, s23),
    )
}

/// Adds the start to a reduced 4x4 block and stores it.
///
/// # Safety
/// As [`gemm`], the 4x4 block at `(i, j)` inside `[m, n]`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn nt_store_4x4(c: &GemmCall, i: usize, j: usize, sums: __m512) {
    let rows = [
        _mm512_extractf32x4_ps::<0>(sums),
        _mm512_extractf32x4_ps::<1>(sums),
        _mm512_extractf32x4_ps::<2>(sums),
        _mm512_extractf32x4_ps::<3>(sums),
    ];
    for (r, x) in rows.into_iter().enumerate() {
        // SAFETY: row `i + r`, columns `j..j + 4`, inside `[m, n]`.
        unsafe { super::store_row4(c, i + r, j, x) };
    }
}

/// Reduces an `R x C` edge block one accumulator at a time, adds the start and stores it.
///
/// # Safety
/// As [`gemm`], the block at `(i, j)` inside `[m, n]`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn nt_store<const R: usize, const C: usize>(
    c: &GemmCall,
    i: usize,
    j: usize,
    acc: &[[__m512; C]; R],
) {
    for (r, row) in acc.iter().enumerate() {
        for (q, x) in row.iter().enumerate() {
            // SAFETY: `(i + r, j + q)` is inside `[m, n]`.
            unsafe { super::store_one(c, i + r, j + q, _mm512_reduce_add_ps(*x)) };
        }
    }
}

/// `out = start + a @ b` with `b` rows contiguous along N.
///
/// # Safety
/// As [`gemm`].
#[target_feature(enable = "avx512f")]
unsafe fn nn(c: &GemmCall) {
    let n = c.n as usize;
    let strip = NR * 16;
    let mut j = 0;
    while j < n {
        let w = (n - j).min(strip);
        let last: __mmask16 = if w.is_multiple_of(16) {
            0xFFFF
        } else {
            ((1u32 << (w % 16)) - 1) as u16
        };
        // SAFETY (every strip): columns `j..j + w` inside `[m, n]`.
        match (w.div_ceil(16), w.is_multiple_of(16)) {
            (4, true) => unsafe { nn_strip::<4, false>(c, j, last) },
            (4, false) => unsafe { nn_strip::<4, true>(c, j, last) },
            (3, _) => unsafe { nn_strip::<3, true>(c, j, last) },
            (2, _) => unsafe { nn_strip::<2, true>(c, j, last) },
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
#[target_feature(enable = "avx512f")]
unsafe fn nn_strip<const V: usize, const MASKED: bool>(c: &GemmCall, j: usize, last: __mmask16) {
    let m = c.m as usize;
    let m4 = m / MR * MR;
    // SAFETY (both): the blocks lie inside the strip.
    for i in (0..m4).step_by(MR) {
        unsafe { nn_block::<MR, V, MASKED>(c, i, j, last) };
    }
    for i in m4..m {
        unsafe { nn_block::<1, V, MASKED>(c, i, j, last) };
    }
}

/// One `R x 16V` output block of the NN kernel.
///
/// # Safety
/// As [`gemm`], the block inside `[m, n]` (its last vector's columns under `last` when
/// `MASKED`), `b` rows contiguous along N.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn nn_block<const R: usize, const V: usize, const MASKED: bool>(
    c: &GemmCall,
    i: usize,
    j: usize,
    last: __mmask16,
) {
    let mask = |v: usize| if MASKED && v == V - 1 { last } else { 0xFFFF };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, x) in row.iter_mut().enumerate() {
            // SAFETY: row `i + r`, the masked-in columns of vector `v`, inside `[m, n]`.
            *x = unsafe { start_vec(c, i + r, j + 16 * v, mask(v)) };
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
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = if MASKED && v == V - 1 {
                    _mm512_maskz_loadu_ps(last, prow.add(16 * v))
                } else {
                    _mm512_loadu_ps(prow.add(16 * v))
                };
            }
            let pk = pa.add(kk * a_s1);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*pk.add(r * a_s0));
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(av, bv[v], *x);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let o = (i + r) * c.ldo as usize + j;
        for (v, x) in row.iter().enumerate() {
            // SAFETY: row `i + r`, the masked-in columns of vector `v`, inside the destination.
            unsafe {
                if MASKED && v == V - 1 {
                    _mm512_mask_storeu_ps(c.out.add(o + 16 * v), last, *x);
                } else {
                    _mm512_storeu_ps(c.out.add(o + 16 * v), *x);
                }
            }
        }
    }
}
