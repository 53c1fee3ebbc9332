//! Tile representations: views of buffers, inline tiles, register arrays.

use crate::ir::*;

/// A view of a buffer: logical axis `i` indexes physical axis `axes[i]` (0 = rows, 1 = cols,
/// `None` for a unit axis), offset by `off`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct View {
    pub(crate) axes: Vec<Option<u8>>,
    pub(crate) off: [usize; 2],
}

impl View {
    pub(crate) fn base(rank: usize) -> View {
        View {
            axes: match rank {
                0 => vec![],
                1 => vec![Some(1)],
                _ => vec![Some(0), Some(1)],
            },
            off: [0, 0],
        }
    }
    pub(crate) fn apply(&self, v: &ViewOp) -> View {
        let mut out = self.clone();
        match v {
            ViewOp::Transpose => out.axes.swap(0, 1),
            ViewOp::Unsqueeze(a) => out.axes.insert(*a, None),
            ViewOp::Slice { axis, start, .. } => {
                if let Some(p) = out.axes[*axis] {
                    out.off[p as usize] += start;
                }
            }
        }
        out
    }
    /// Physical `(row, col)` of logical coordinates.
    pub(crate) fn phys(&self, coords: &[String]) -> (String, String) {
        let mut rc = [self.off[0].to_string(), self.off[1].to_string()];
        for (i, a) in self.axes.iter().enumerate() {
            if let Some(p) = a {
                let c = &coords[i];
                if c != "0" {
                    let p = *p as usize;
                    rc[p] = if rc[p] == "0" {
                        c.clone()
                    } else {
                        format!("({} + {})", rc[p], c)
                    };
                }
            }
        }
        let [r, c] = rc;
        (r, c)
    }
}

#[derive(Clone, Debug)]
pub(crate) enum InlineKind {
    Value(String),
    Iota(Option<u8>),
    /// The validity mask of a paged loop's block: column `c` is valid where `start + c < hi`;
    /// `block` is the block's token count (every column valid where `start + block <= hi`).
    Valid {
        start: String,
        hi: String,
        block: usize,
    },
    /// Computed inside its single consumer's loop (the `fusion` pass): no buffer, no loop.
    Fused,
    /// A fused tile's value at the consumer's element, of value type `vt`.
    Expr {
        text: String,
        vt: crate::cuda::elem::Vt,
    },
}

#[derive(Clone, Debug)]
pub(crate) enum Repr {
    None,
    Frag { m: usize, n: usize, arr: String },
    Rows { m: usize, arr: String },
    Smem { buf: usize, view: View },
    Inline { kind: InlineKind, view: View },
}
