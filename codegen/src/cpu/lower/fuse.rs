//! Fusion of an accumulator update into the gemm that feeds it.
//!
//! The online softmax ends each block with `y = acc * col; g = gemm(p, v); x = y + g` (`col` a
//! `[m, 1]` column, `x` usually `acc` itself). Lowered one op at a time that is two extra passes
//! over an `[m, n]` tile and a store of `g`; fused, the NN gemm kernel starts its accumulators
//! at `acc * col` and stores `x` directly. `y = ...; g = gemm(..); x = y + g` with `y` from any
//! other statement fuses without the scale (the accumulators start at `y`).
//!
//! A group is fused only where that cannot change what is computed: `g` and `y` are read
//! nowhere else, the add directly follows the gemm, nothing between the multiply and the gemm
//! writes `acc` or `col` (and no loop sits between them), the gemm takes the NN kernel with no
//! scalar column tail, `x` shares no storage with the gemm's operands or with `col`, and `acc`
//! (or `y`) is dense like `x`.

use crate::cpu::layout::{gemm_kernel, GemmKernel, Layouts};
use crate::ir::{BinaryOp, Kernel, Operand, Stmt, TileId, TileOp};
use crate::visit::{nested_body, stmt_reads, stmt_writes, walk_stmts};

/// One fused group of statements of a body (indices into that body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::cpu) struct AccUpdate {
    /// The `y = acc * col` statement, lowered as part of the gemm (`None`: `y` is read as is).
    pub mul: Option<usize>,
    /// The gemm statement, where the group is lowered.
    pub gemm: usize,
    /// The `x = y + g` statement (`gemm + 1`).
    pub add: usize,
    /// Destination `x`.
    pub x: TileId,
    /// Initial accumulator tile (`acc`, or `y` without the scale).
    pub init: TileId,
    /// The `[m, 1]` column scaling `init` row by row.
    pub col: Option<TileId>,
    /// The gemm operands.
    pub a: TileId,
    pub b: TileId,
}

impl AccUpdate {
    /// Whether statement `i` of the body belongs to this group.
    pub fn covers(&self, i: usize) -> bool {
        i == self.gemm || i == self.add || self.mul == Some(i)
    }
}

fn tile(o: &Operand) -> Option<TileId> {
    match o {
        Operand::Tile(t) => Some(*t),
        _ => None,
    }
}

/// How many times each tile is read in the whole kernel.
fn read_counts(k: &Kernel) -> Vec<usize> {
    let mut n = vec![0; k.tiles.len()];
    walk_stmts(&k.body, &mut |s| {
        for t in stmt_reads(s) {
            n[t] += 1;
        }
    });
    n
}

/// The fusible groups of `body` (not of nested bodies: each body is planned when lowered).
pub(in crate::cpu) fn plan(k: &Kernel, lay: &Layouts, body: &[Stmt]) -> Vec<AccUpdate> {
    let reads = read_counts(k);
    let mut out = Vec::new();
    for gi in 0..body.len().saturating_sub(1) {
        if let Some(f) = group_at(k, lay, body, gi, &reads) {
            out.push(f);
        }
    }
    out
}

fn group_at(
    k: &Kernel,
    lay: &Layouts,
    body: &[Stmt],
    gi: usize,
    reads: &[usize],
) -> Option<AccUpdate> {
    let Stmt::Assign {
        dst: g,
        op: TileOp::Gemm { a, b },
    } = &body[gi]
    else {
        return None;
    };
    let Stmt::Assign {
        dst: x,
        op: TileOp::Binary(BinaryOp::Add, l, r),
    } = &body[gi + 1]
    else {
        return None;
    };
    let (g, x, a, b) = (*g, *x, *a, *b);
    let y = match (tile(l), tile(r)) {
        (Some(y), Some(t)) if t == g && y != g => y,
        (Some(t), Some(y)) if t == g && y != g => y,
        _ => return None,
    };
    let t = &lay.tiles;
    let (al, bl, xl) = (&t[a], &t[b], &t[x]);
    if al.shape.len() != 2 || bl.shape.len() != 2 || gemm_kernel(al, bl) != GemmKernel::Nn {
        return None;
    }
    let (m, n) = (al.shape[0], bl.shape[1]);
    let dense = |id: TileId| {
        let l = &t[id];
        l.shape == [m, n] && l.rank2().1 == [if m == 1 { 0 } else { n }, if n == 1 { 0 } else { 1 }]
    };
    let float = |id: TileId| k.tiles[id].dtype.is_float();
    if n % 4 != 0
        || reads[g] != 1
        || reads[y] != 1
        || !dense(x)
        || t[g].shape != [m, n]
        || ![x, y, g].into_iter().all(float)
        || xl.root == al.root
        || xl.root == bl.root
    {
        return None;
    }
    // `y = acc * col`, earlier in this body, with nothing between it and the gemm writing
    // `acc` or `col` (or `y`).
    let scaled = (0..gi).rev().find_map(|i| match &body[i] {
        Stmt::Assign {
            dst,
            op: TileOp::Binary(BinaryOp::Mul, p, q),
        } if *dst == y => Some((i, tile(p)?, tile(q)?)),
        _ => None,
    });
    let scaled = scaled.and_then(|(mi, p, q)| {
        let is_col = |c: TileId| t[c].shape == [m, 1] && float(c);
        let (acc, col) = if dense(p) && is_col(q) {
            (p, q)
        } else if dense(q) && is_col(p) {
            (q, p)
        } else {
            return None;
        };
        let roots = [t[acc].root, t[col].root, t[y].root];
        let clean = body[mi + 1..gi].iter().all(|s| {
            nested_body(s).is_none() && stmt_writes(s).iter().all(|w| !roots.contains(&t[*w].root))
        });
        (clean && float(acc) && t[col].root != xl.root).then_some((mi, acc, col))
    });
    match scaled {
        Some((mi, acc, col)) => Some(AccUpdate {
            mul: Some(mi),
            gemm: gi,
            add: gi + 1,
            x,
            init: acc,
            col: Some(col),
            a,
            b,
        }),
        None if dense(y) => Some(AccUpdate {
            mul: None,
            gemm: gi,
            add: gi + 1,
            x,
            init: y,
            col: None,
            a,
            b,
        }),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{abi, CpuKernel};
    use crate::ir::{DType, Index, ParamDim, Slice, ViewOp};
    use crate::{Config, KernelBuilder};

    const M: usize = 6;
    const K: usize = 5;
    const N: usize = 12;

    fn span(len: usize) -> Vec<Slice> {
        vec![Slice::Span {
            start: Index::Const(0),
            len,
        }]
    }

    /// `acc = load(acc0); acc = acc * col + p @ v` (in place, as the decode writes it); with
    /// `store_y`, `y = acc * col` is also stored (read twice: must not fuse).
    fn kernel(store_y: bool) -> crate::ir::Kernel {
        let mut b = KernelBuilder::new("fuse", &Config::new());
        let dims = |r: usize, c: usize| vec![ParamDim::Const(r), ParamDim::Const(c)];
        let pacc = b.tensor("acc0", DType::F32, dims(M, N), false);
        let pcol = b.tensor("col", DType::F32, vec![ParamDim::Const(M)], false);
        let pp = b.tensor("p", DType::F32, dims(M, K), false);
        let pv = b.tensor("v", DType::F32, dims(K, N), false);
        let po = b.tensor("o", DType::F32, dims(M, N), true);
        let py = b.tensor("y", DType::F32, dims(M, N), true);
        let two = |r, c| [span(r), span(c)].concat();
        let load = |b: &mut KernelBuilder, name, param, index| {
            b.define(name, TileOp::Load { param, index }).unwrap()
        };
        let acc = load(&mut b, "acc", pacc, two(M, N));
        let col = load(&mut b, "col", pcol, span(M));
        let p = load(&mut b, "p", pp, two(M, K));
        let v = load(&mut b, "v", pv, two(K, N));
        let cu = b
            .define("cu", TileOp::View(col, ViewOp::Unsqueeze(1)))
            .unwrap();
        let y = b
            .define(
                "y",
                TileOp::Binary(BinaryOp::Mul, Operand::Tile(acc), Operand::Tile(cu)),
            )
            .unwrap();
        let g = b.define("g", TileOp::Gemm { a: p, b: v }).unwrap();
        b.assign(
            acc,
            TileOp::Binary(BinaryOp::Add, Operand::Tile(y), Operand::Tile(g)),
        )
        .unwrap();
        b.store(po, two(M, N), acc).unwrap();
        if store_y {
            b.store(py, two(M, N), y).unwrap();
        }
        b.finish().unwrap()
    }

    fn run(store_y: bool) -> (Vec<AccUpdate>, Vec<f32>, Vec<f32>) {
        let k = kernel(store_y);
        let lay = Layouts::plan(&k).unwrap();
        let groups = plan(&k, &lay, &k.body);
        let code = CpuKernel::compile(&k).unwrap();
        let f = |n: usize, s: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32 * 37 + s) % 17) as f32 / 8.0 - 1.0)
                .collect()
        };
        let (acc0, col, p, v) = (f(M * N, 1), f(M, 2), f(M * K, 3), f(K * N, 4));
        let mut o = vec![f32::NAN; M * N];
        let mut yv = vec![f32::NAN; M * N];
        let mut args = Vec::new();
        abi::push_tensor(&mut args, acc0.as_ptr(), &[M, N]);
        abi::push_tensor(&mut args, col.as_ptr(), &[M]);
        abi::push_tensor(&mut args, p.as_ptr(), &[M, K]);
        abi::push_tensor(&mut args, v.as_ptr(), &[K, N]);
        abi::push_tensor(&mut args, o.as_mut_ptr(), &[M, N]);
        abi::push_tensor(&mut args, yv.as_mut_ptr(), &[M, N]);
        #[repr(C, align(64))]
        struct Line([u8; 64]);
        let mut scratch: Vec<Line> = (0..code.scratch_bytes() / 64 + 1)
            .map(|_| Line([0xFF; 64]))
            .collect();
        // SAFETY: 64-byte aligned storage of at least `scratch_bytes()` bytes, alive for the call.
        let s = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), scratch.len() * 64)
        };
        // SAFETY: `args` follows the ABI for the kernel's params, from live buffers of exactly
        // the declared shapes; `o` and `yv` are the only writable ones and alias nothing.
        unsafe { code.run_program(&args, &[], [0, 0, 0], s) };
        let mut want = vec![0.0f32; M * N];
        for i in 0..M {
            for j in 0..N {
                let dot: f64 = (0..K)
                    .map(|kk| p[i * K + kk] as f64 * v[kk * N + j] as f64)
                    .sum();
                want[i * N + j] = (acc0[i * N + j] as f64 * col[i] as f64 + dot) as f32;
            }
        }
        for (i, (g, w)) in o.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "element {i}: {g} vs {w}"
            );
        }
        (groups, o, yv)
    }

    #[test]
    fn scaled_update_fuses_in_place_and_matches() {
        let (groups, _, yv) = run(false);
        assert_eq!(groups.len(), 1, "{groups:?}");
        let g = &groups[0];
        assert!(g.mul.is_some() && g.col.is_some() && g.init == g.x, "{g:?}");
        assert!(yv.iter().all(|x| x.is_nan()), "y was never stored");
    }

    #[test]
    fn a_product_read_twice_is_not_fused() {
        let (groups, o, yv) = run(true);
        assert!(groups.is_empty(), "{groups:?}");
        assert!(yv.iter().all(|x| x.is_finite()) && o.iter().all(|x| x.is_finite()));
    }
}
