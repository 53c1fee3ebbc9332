//! A small dense row-major f64 matrix, enough for one attention layer on the CPU.
//!
//! Convention: activations are row vectors and a projection `W` has shape `[in, out]`, so a
//! projection is `x · W`. (Checkpoints store torch `Linear` weights as `[out, in]`; the loader
//! transposes.)

use rayon::prelude::*;

/// Dense row-major f64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f64>,
}

impl Mat {
    /// All zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Identity of size n.
    pub fn identity(n: usize) -> Self {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    /// From a function of (row, col).
    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                data.push(f(r, c));
            }
        }
        Mat { rows, cols, data }
    }

    /// Element (r, c).
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    /// Mutable element (r, c).
    #[inline]
    pub fn at_mut(&mut self, r: usize, c: usize) -> &mut f64 {
        &mut self.data[r * self.cols + c]
    }

    /// Row r as a slice.
    #[inline]
    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Transpose.
    pub fn t(&self) -> Mat {
        let mut m = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                m.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        m
    }

    /// Columns [c0, c1).
    pub fn cols_range(&self, c0: usize, c1: usize) -> Mat {
        let w = c1 - c0;
        let mut m = Mat::zeros(self.rows, w);
        for r in 0..self.rows {
            m.data[r * w..(r + 1) * w].copy_from_slice(&self.row(r)[c0..c1]);
        }
        m
    }

    /// Rows [r0, r1).
    pub fn rows_range(&self, r0: usize, r1: usize) -> Mat {
        Mat {
            rows: r1 - r0,
            cols: self.cols,
            data: self.data[r0 * self.cols..r1 * self.cols].to_vec(),
        }
    }

    /// Concatenate along columns (all parts have the same rows).
    pub fn hcat(parts: &[Mat]) -> Mat {
        let rows = parts.first().map_or(0, |p| p.rows);
        let cols = parts.iter().map(|p| p.cols).sum();
        let mut m = Mat::zeros(rows, cols);
        for r in 0..rows {
            let mut off = 0;
            for p in parts {
                m.data[r * cols + off..r * cols + off + p.cols].copy_from_slice(p.row(r));
                off += p.cols;
            }
        }
        m
    }

    /// Concatenate along rows (all parts have the same columns).
    pub fn vcat(parts: &[Mat]) -> Mat {
        let cols = parts.first().map_or(0, |p| p.cols);
        let mut data = Vec::new();
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Mat {
            rows: data.len() / cols.max(1),
            cols,
            data,
        }
    }

    /// `self · other` (parallel over rows).
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul inner dims");
        let n = other.cols;
        let mut out = Mat::zeros(self.rows, n);
        out.data
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(r, orow)| {
                for (k, &a) in self.row(r).iter().enumerate() {
                    if a != 0.0 {
                        axpy(orow, a, other.row(k));
                    }
                }
            });
        out
    }

    /// Row vector times matrix: `x · self`.
    pub fn vecmat(&self, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.cols];
        for (k, &a) in x.iter().enumerate() {
            if a != 0.0 {
                axpy(&mut out, a, self.row(k));
            }
        }
        out
    }

    /// Scale row r by s.
    pub fn scale_row(&mut self, r: usize, s: f64) {
        let c = self.cols;
        self.data[r * c..(r + 1) * c]
            .iter_mut()
            .for_each(|v| *v *= s);
    }

    /// Frobenius norm.
    pub fn norm(&self) -> f64 {
        norm(&self.data)
    }

    /// Largest absolute difference to another matrix of the same shape.
    pub fn max_abs_diff(&self, other: &Mat) -> f64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }
}

/// `y += a · x`.
#[inline]
pub fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Dot product.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean norm.
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `|a - b| / |b|` (`|a - b|` when b is zero).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let n = norm(b);
    if n > 0.0 {
        d / n
    } else {
        d
    }
}

/// Cosine similarity (1 when both are zero).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot(a, b) / (na * nb)
}

/// Root mean square with epsilon: `sqrt(mean(x²) + eps)`.
pub fn rms(x: &[f64], eps: f64) -> f64 {
    (dot(x, x) / x.len().max(1) as f64 + eps).sqrt()
}

/// In-place softmax of logits (max-subtracted).
pub fn softmax_in_place(s: &mut [f64]) {
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in s.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    for v in s.iter_mut() {
        *v /= sum;
    }
}

/// RoPE on interleaved pairs (2j, 2j+1) at position `pos`, frequency `theta^(-2j/d)`.
pub fn rope_in_place(x: &mut [f64], pos: usize, theta: f64) {
    let d = x.len();
    for j in 0..d / 2 {
        let freq = theta.powf(-((2 * j) as f64) / d as f64);
        let (s, c) = (pos as f64 * freq).sin_cos();
        let (a, b) = (x[2 * j], x[2 * j + 1]);
        x[2 * j] = a * c - b * s;
        x[2 * j + 1] = a * s + b * c;
    }
}
