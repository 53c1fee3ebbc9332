//! Scratch layout: where every tile variable lives in the per-thread scratch buffer.
//!
//! Every tile element takes 4 bytes: float tiles (`F32` and `BF16` labels) are stored as f32,
//! `I32` tiles as i32 and `Bool` tiles as i32 holding 0 or 1. A tile that owns storage is dense
//! row-major at a 64-byte aligned offset; a view ([`ViewOp`]) owns nothing and describes its
//! source's storage with its own shape and strides (in elements).

use crate::error::IrError;
use crate::ir::{Kernel, Stmt, TileId, TileOp, ViewOp};

/// Alignment of every storage region, in bytes.
pub const ALIGN: usize = 64;

/// Where the elements of one tile live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileLayout {
    /// Byte offset of element `[0, .., 0]` in scratch.
    pub offset: usize,
    /// Shape (rank 0 to 2).
    pub shape: Vec<usize>,
    /// Stride of each axis in elements (0 for axes of size 1).
    pub strides: Vec<usize>,
    /// The tile that owns the storage (itself unless this is a view).
    pub root: TileId,
}

impl TileLayout {
    /// The shape and strides padded on the left to rank 2 (size 1, stride 0).
    pub fn rank2(&self) -> ([usize; 2], [usize; 2]) {
        match self.shape.len() {
            0 => ([1, 1], [0, 0]),
            1 => ([1, self.shape[0]], [0, self.strides[0]]),
            _ => (
                [self.shape[0], self.shape[1]],
                [self.strides[0], self.strides[1]],
            ),
        }
    }
}

/// The layout of every tile of a kernel plus extra temporaries.
#[derive(Clone, Debug)]
pub struct Layouts {
    /// One entry per tile variable.
    pub tiles: Vec<TileLayout>,
    /// Byte offset of a temporary region big enough for any gemm whose destination overlaps an
    /// operand (`None` when no such gemm exists).
    pub gemm_temp: Option<usize>,
    /// Byte offset of a region holding the left operand of the broadcast (NN) gemm kernel with
    /// every element splat to four lanes, `[m][k]` F32X4 (`None` when no gemm takes that
    /// kernel). See `lower/gemm.rs`.
    pub gemm_splat: Option<usize>,
    /// Total scratch bytes, a multiple of [`ALIGN`].
    pub scratch_bytes: usize,
}

fn round_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn dense_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![0; shape.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        s[i] = if shape[i] == 1 { 0 } else { acc };
        acc *= shape[i];
    }
    s
}

fn collect_views(
    body: &[Stmt],
    out: &mut Vec<(TileId, TileId, ViewOp)>,
    gemms: &mut Vec<(TileId, TileId, TileId)>,
) {
    for s in body {
        match s {
            Stmt::Assign {
                dst,
                op: TileOp::View(src, v),
            } => out.push((*dst, *src, v.clone())),
            Stmt::Assign {
                dst,
                op: TileOp::Gemm { a, b },
            } => gemms.push((*dst, *a, *b)),
            Stmt::For { body, .. } | Stmt::PagedBlocks { body, .. } => {
                collect_views(body, out, gemms)
            }
            _ => {}
        }
    }
}

impl Layouts {
    /// Plans the scratch layout of `k`.
    pub fn plan(k: &Kernel) -> Result<Layouts, IrError> {
        let mut views = Vec::new();
        let mut gemms = Vec::new();
        collect_views(&k.body, &mut views, &mut gemms);
        let is_view: Vec<Option<usize>> = {
            let mut v = vec![None; k.tiles.len()];
            for (i, (dst, _, _)) in views.iter().enumerate() {
                v[*dst] = Some(i);
            }
            v
        };
        let mut offset = 0usize;
        let mut tiles: Vec<Option<TileLayout>> = vec![None; k.tiles.len()];
        for (id, t) in k.tiles.iter().enumerate() {
            if is_view[id].is_some() {
                continue;
            }
            tiles[id] = Some(TileLayout {
                offset,
                shape: t.shape.clone(),
                strides: dense_strides(&t.shape),
                root: id,
            });
            offset += round_up(t.len().max(1) * 4);
        }
        // Resolve views (possibly of views) until a fixed point.
        let mut pending = views.len();
        while pending > 0 {
            let mut progress = false;
            pending = 0;
            for (dst, src, v) in &views {
                if tiles[*dst].is_some() {
                    continue;
                }
                let Some(s) = tiles[*src].clone() else {
                    pending += 1;
                    continue;
                };
                tiles[*dst] = Some(apply_view(&s, v));
                progress = true;
            }
            if pending > 0 && !progress {
                return Err(IrError::Invalid("cyclic tile views".into()));
            }
        }
        let tiles: Vec<TileLayout> = tiles
            .into_iter()
            .map(|t| t.ok_or_else(|| IrError::Invalid("tile without storage".into())))
            .collect::<Result<_, _>>()?;
        let mut temp = 0usize;
        let mut splat = 0usize;
        for (dst, a, b) in gemms {
            let r = tiles[dst].root;
            if tiles[a].root == r || tiles[b].root == r {
                temp = temp.max(k.tiles[dst].len() * 4);
            }
            if let Some(bytes) = nn_splat_bytes(&tiles[a], &tiles[b]) {
                splat = splat.max(bytes);
            }
        }
        let gemm_temp = if temp > 0 {
            let o = offset;
            offset += round_up(temp);
            Some(o)
        } else {
            None
        };
        let gemm_splat = (splat > 0).then(|| {
            let o = offset;
            offset += round_up(splat);
            o
        });
        Ok(Layouts {
            tiles,
            gemm_temp,
            gemm_splat,
            scratch_bytes: offset.max(ALIGN),
        })
    }
}

/// Which register-blocked gemm kernel `a @ b` takes (see `lower/gemm.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// Dot products: `a` rows and `b` columns contiguous along K.
    Nt,
    /// Broadcast: `b` rows contiguous along N.
    Nn,
    /// Scalar triple loop.
    Scalar,
}

/// The stride of axis `i`, 0 where the axis has size 1.
fn axis_stride(t: &TileLayout, i: usize) -> usize {
    if t.shape[i] == 1 {
        0
    } else {
        t.strides[i]
    }
}

/// The kernel a gemm of rank-2 operands `a [m, k]`, `b [k, n]` takes, from their strides.
pub fn gemm_kernel(a: &TileLayout, b: &TileLayout) -> GemmKernel {
    let (k, n) = (a.shape[1], b.shape[1]);
    if axis_stride(a, 1) <= 1 && axis_stride(b, 0) <= 1 && k >= 4 {
        GemmKernel::Nt
    } else if axis_stride(b, 1) <= 1 && n >= 4 {
        GemmKernel::Nn
    } else {
        GemmKernel::Scalar
    }
}

/// Bytes of the splat copy of `a` the NN kernel needs (`m * k` F32X4), `None` for other kernels.
fn nn_splat_bytes(a: &TileLayout, b: &TileLayout) -> Option<usize> {
    (a.shape.len() == 2 && b.shape.len() == 2 && gemm_kernel(a, b) == GemmKernel::Nn)
        .then(|| a.shape[0] * a.shape[1] * 16)
}

fn apply_view(s: &TileLayout, v: &ViewOp) -> TileLayout {
    let mut t = s.clone();
    match v {
        ViewOp::Transpose => {
            t.shape.swap(0, 1);
            t.strides.swap(0, 1);
        }
        ViewOp::Unsqueeze(axis) => {
            t.shape.insert(*axis, 1);
            t.strides.insert(*axis, 0);
        }
        ViewOp::Slice { axis, start, len } => {
            t.offset += start * s.strides[*axis] * 4;
            t.shape[*axis] = *len;
            if *len == 1 {
                t.strides[*axis] = 0;
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_alias_with_strides() {
        let base = TileLayout {
            offset: 128,
            shape: vec![4, 6],
            strides: vec![6, 1],
            root: 0,
        };
        let t = apply_view(&base, &ViewOp::Transpose);
        assert_eq!(
            (t.shape.clone(), t.strides.clone()),
            (vec![6, 4], vec![1, 6])
        );
        let s = apply_view(
            &base,
            &ViewOp::Slice {
                axis: 1,
                start: 2,
                len: 3,
            },
        );
        assert_eq!(
            (s.offset, s.shape, s.strides),
            (136, vec![4, 3], vec![6, 1])
        );
        assert_eq!(dense_strides(&[1, 5]), vec![0, 1]);
    }
}
