//! `dst = a @ b` on tiles in scratch, accumulating in f32.
//!
//! Three register-blocked kernels, chosen from the operand strides:
//! - **NT** (`a` and `b` both contiguous along K, e.g. `gemm(q, kv.t())`): every output is a dot
//!   product; a 2x4 block of outputs keeps eight F32X4 accumulators in registers across the K
//!   loop and reduces them horizontally at the end.
//! - **NN** (`b` contiguous along N, `a` any strides, e.g. `gemm(p, kv.cols(..))`): a 4x8 output
//!   block keeps eight F32X4 accumulators; each K step broadcasts four `a` scalars against two
//!   `b` vectors.
//! - a scalar triple loop for any other strides and for the edges.
//!
//! A destination that shares storage with an operand is computed in a temporary and copied.
//!
//! Where enabled, NT and NN gemms of at least `HOST_GEMM_MIN_MACS` multiply-adds call the
//! host-compiled gemm instead of these loops (`gemm_host.rs`, `cpu/host_gemm.rs`): 16-lane
//! fused multiply-adds where Cranelift emits 4-lane multiplies and adds. The loops here stay
//! the path for small tiles, other strides, and hosts without the vector kernel.

use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::Variable;

use super::elementwise::Src;
use super::{mem, Lower};
use crate::cpu::layout::{gemm_kernel, GemmKernel};
use crate::error::IrError;
use crate::ir::TileId;

/// Operand geometry: address of element `[0, 0]` and strides in elements.
#[derive(Clone, Copy)]
pub(super) struct Op {
    pub base: Value,
    pub s0: usize,
    pub s1: usize,
}

/// Where the NN kernel's accumulators start (instead of zero): `init[i, j] * col[i]`.
#[derive(Clone, Copy)]
pub(super) struct Init {
    /// Element `[0, 0]` of a dense `[m, n]` f32 tile.
    pub base: Value,
    /// Element `[0, 0]` of the `[m, 1]` column and its row stride in bytes.
    pub col: Option<(Value, usize)>,
}

/// Blocking of the NT kernel (rows x columns of outputs).
const NT_MR: usize = 2;
const NT_NR: usize = 4;
/// Blocking of the NN kernel (rows x F32X4 vectors of outputs).
const NN_MR: usize = 4;
const NN_NV: usize = 2;

impl Lower<'_, '_> {
    pub(in crate::cpu) fn gemm(
        &mut self,
        dst: TileId,
        a: TileId,
        b: TileId,
    ) -> Result<(), IrError> {
        let al = self.layout(a);
        let bl = self.layout(b);
        let dl = self.layout(dst);
        let (m, k, n) = (al.shape[0], al.shape[1], bl.shape[1]);
        let st = |shape: &[usize], strides: &[usize], i: usize| {
            if shape[i] == 1 {
                0
            } else {
                strides[i]
            }
        };
        let abase = self.scratch_at(al.offset);
        let bbase = self.scratch_at(bl.offset);
        let ao = Op {
            base: abase,
            s0: st(&al.shape, &al.strides, 0),
            s1: st(&al.shape, &al.strides, 1),
        };
        let bo = Op {
            base: bbase,
            s0: st(&bl.shape, &bl.strides, 0),
            s1: st(&bl.shape, &bl.strides, 1),
        };
        let alias = dl.root == al.root || dl.root == bl.root;
        let out_off = if alias {
            self.lay.gemm_temp.expect("temp planned for aliasing gemm")
        } else {
            dl.offset
        };
        let out = self.scratch_at(out_off);
        let kernel = gemm_kernel(&al, &bl);
        if self.takes_host_gemm(kernel, m, n, k) {
            self.host_gemm_call(ao, bo, out, m, n, k, None);
        } else {
            self.gemm_loops(kernel, ao, bo, out, (m, n, k));
        }
        if alias {
            let d = self.dst(dst);
            let src = Src::Tile {
                base: out,
                strides: [if m == 1 { 0 } else { n }, if n == 1 { 0 } else { 1 }],
                ty: types::F32,
            };
            self.elementwise(d, &[src], true, &mut |_, v, _| v[0]);
        }
        Ok(())
    }

    /// The generated loops of a gemm of `m x n x k` that takes `kernel`.
    fn gemm_loops(
        &mut self,
        kernel: GemmKernel,
        a: Op,
        b: Op,
        out: Value,
        mnk: (usize, usize, usize),
    ) {
        let (m, n, k) = mnk;
        match kernel {
            GemmKernel::Nt => self.gemm_nt(a, b, out, m, n, k),
            GemmKernel::Nn => self.gemm_nn(a, b, out, m, n, k, None),
            GemmKernel::Scalar => self.gemm_scalar(a, b, out, n, k, (0, m), (0, n)),
        }
    }

    /// `acc + x * y` as a multiply and an add. Cranelift's x64 `fma` always overwrites a
    /// multiplicand (`vfmadd213`/`132`), which costs a register copy per use of a shared operand
    /// plus moves of every accumulator on the loop back edge; AVX's non-destructive
    /// `vmulps`/`vaddps` keep accumulators in place and measured about 1.7x faster here.
    fn madd(&mut self, x: Value, y: Value, acc: Value) -> Value {
        let p = self.b.ins().fmul(x, y);
        self.b.ins().fadd(acc, p)
    }

    /// Plain triple loop over rows `mr` and columns `nr` of the output (dense, row length `n`).
    #[allow(clippy::too_many_arguments)]
    fn gemm_scalar(
        &mut self,
        a: Op,
        b: Op,
        out: Value,
        n: usize,
        k: usize,
        mr: (usize, usize),
        nr: (usize, usize),
    ) {
        self.for_const(mr.0 as i64, mr.1 as i64, 1, |l, i| {
            let ao = l.b.ins().imul_imm_s(i, (a.s0 * 4) as i64);
            let arow = l.b.ins().iadd(a.base, ao);
            let oo = l.b.ins().imul_imm_s(i, (n * 4) as i64);
            let orow = l.b.ins().iadd(out, oo);
            l.for_const(nr.0 as i64, nr.1 as i64, 1, |l, j| {
                let bo = l.b.ins().imul_imm_s(j, (b.s1 * 4) as i64);
                let bcol = l.b.ins().iadd(b.base, bo);
                let var: Variable = l.b.declare_var(types::F32);
                let z = l.f32c(0.0, false);
                l.b.def_var(var, z);
                l.for_const(0, k as i64, 1, |l, kk| {
                    let o = l.b.ins().imul_imm_s(kk, (a.s1 * 4) as i64);
                    let pa = l.b.ins().iadd(arow, o);
                    let x = l.b.ins().load(types::F32, mem(), pa, 0);
                    let o = l.b.ins().imul_imm_s(kk, (b.s0 * 4) as i64);
                    let pb = l.b.ins().iadd(bcol, o);
                    let y = l.b.ins().load(types::F32, mem(), pb, 0);
                    let acc = l.b.use_var(var);
                    let acc = l.madd(x, y, acc);
                    l.b.def_var(var, acc);
                });
                let acc = l.b.use_var(var);
                let o = l.b.ins().imul_imm_s(j, 4);
                let pd = l.b.ins().iadd(orow, o);
                l.b.ins().store(mem(), acc, pd, 0);
            });
        });
    }

    /// Dot-product kernel: `a` rows and `b` columns contiguous along K.
    fn gemm_nt(&mut self, a: Op, b: Op, out: Value, m: usize, n: usize, k: usize) {
        let m_main = m / NT_MR * NT_MR;
        let n_main = n / NT_NR * NT_NR;
        let blocks = [
            (0, m_main, NT_MR, 0, n_main, NT_NR),
            (0, m_main, NT_MR, n_main, n, 1),
            (m_main, m, 1, 0, n_main, NT_NR),
            (m_main, m, 1, n_main, n, 1),
        ];
        for (m0, m1, mr, n0, n1, nr) in blocks {
            if m0 >= m1 || n0 >= n1 {
                continue;
            }
            self.for_const(m0 as i64, m1 as i64, mr as i64, |l, i| {
                l.for_const(n0 as i64, n1 as i64, nr as i64, |l, j| {
                    l.nt_block(a, b, out, n, k, i, j, mr, nr);
                });
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn nt_block(
        &mut self,
        a: Op,
        b: Op,
        out: Value,
        n: usize,
        k: usize,
        i: Value,
        j: Value,
        mr: usize,
        nr: usize,
    ) {
        let ao = self.b.ins().imul_imm_s(i, (a.s0 * 4) as i64);
        let pa0 = self.b.ins().iadd(a.base, ao);
        let bo = self.b.ins().imul_imm_s(j, (b.s1 * 4) as i64);
        let pb0 = self.b.ins().iadd(b.base, bo);
        let k4 = k / 4 * 4;
        let zero = self.f32c(0.0, true);
        let vars: Vec<Variable> = (0..mr * nr)
            .map(|_| {
                let v = self.b.declare_var(types::F32X4);
                self.b.def_var(v, zero);
                v
            })
            .collect();
        // One step: four K elements at byte offset `ko` (+ `extra`).
        let step = |l: &mut Self, ko: Value, extra: usize| {
            let pa = l.b.ins().iadd(pa0, ko);
            let pb = l.b.ins().iadd(pb0, ko);
            let bv: Vec<Value> = (0..nr)
                .map(|c| {
                    l.b.ins()
                        .load(types::F32X4, mem(), pb, (c * b.s1 * 4 + extra) as i32)
                })
                .collect();
            for r in 0..mr {
                let av =
                    l.b.ins()
                        .load(types::F32X4, mem(), pa, (r * a.s0 * 4 + extra) as i32);
                for (c, &bvc) in bv.iter().enumerate() {
                    let acc = l.b.use_var(vars[r * nr + c]);
                    let acc = l.madd(av, bvc, acc);
                    l.b.def_var(vars[r * nr + c], acc);
                }
            }
        };
        // The loop variable is the byte offset along K. No unrolling: Cranelift schedules every
        // load of a block before its arithmetic, so a second step's operands would spill.
        self.for_const(0, (k4 * 4) as i64, 16, |l, ko| step(l, ko, 0));
        let oo = self.b.ins().imul_imm_s(i, (n * 4) as i64);
        let orow = self.b.ins().iadd(out, oo);
        let jo = self.b.ins().imul_imm_s(j, 4);
        let o = self.b.ins().iadd(orow, jo);
        for r in 0..mr {
            for c in 0..nr {
                let v = self.b.use_var(vars[r * nr + c]);
                let l0 = self.b.ins().extractlane(v, 0);
                let l1 = self.b.ins().extractlane(v, 1);
                let l2 = self.b.ins().extractlane(v, 2);
                let l3 = self.b.ins().extractlane(v, 3);
                let p = self.b.ins().fadd(l0, l1);
                let q = self.b.ins().fadd(l2, l3);
                let mut s = self.b.ins().fadd(p, q);
                for kk in k4..k {
                    let x = self
                        .b
                        .ins()
                        .load(types::F32, mem(), pa0, ((r * a.s0 + kk) * 4) as i32);
                    let y = self
                        .b
                        .ins()
                        .load(types::F32, mem(), pb0, ((c * b.s1 + kk) * 4) as i32);
                    s = self.madd(x, y, s);
                }
                self.b.ins().store(mem(), s, o, ((r * n + c) * 4) as i32);
            }
        }
    }

    /// Broadcast kernel: `b` rows contiguous along N.
    ///
    /// `a` is first copied to the planned splat region as `[m][k]` F32X4 vectors, every element
    /// in all four lanes: the inner loop then loads its `a` operands ready-made (a load port)
    /// instead of broadcasting a scalar (`vbroadcastss` from a register runs on a vector ALU
    /// port, the same ports as the multiplies and adds: four of them per eight multiply-adds
    /// made the loop 5 cycles where 4 suffice).
    /// With `init`, the accumulators start at `init` (see [`Init`]) instead of zero.
    #[allow(clippy::too_many_arguments)]
    fn gemm_nn(
        &mut self,
        a: Op,
        b: Op,
        out: Value,
        m: usize,
        n: usize,
        k: usize,
        init: Option<Init>,
    ) {
        let splat_off = self
            .lay
            .gemm_splat
            .expect("splat region planned for the NN gemm kernel");
        let splat = self.scratch_at(splat_off);
        self.for_const(0, m as i64, 1, |l, i| {
            let ao = l.b.ins().imul_imm_s(i, (a.s0 * 4) as i64);
            let arow = l.b.ins().iadd(a.base, ao);
            let so = l.b.ins().imul_imm_s(i, (k * 16) as i64);
            let srow = l.b.ins().iadd(splat, so);
            l.for_const(0, k as i64, 1, |l, kk| {
                let o = l.b.ins().imul_imm_s(kk, (a.s1 * 4) as i64);
                let pa = l.b.ins().iadd(arow, o);
                let x = l.b.ins().load(types::F32, mem(), pa, 0);
                let v = l.b.ins().splat(types::F32X4, x);
                let o = l.b.ins().ishl_imm_u(kk, 4);
                let ps = l.b.ins().iadd(srow, o);
                l.b.ins().store(mem(), v, ps, 0);
            });
        });
        let sa = Op {
            base: splat,
            s0: k * 16,
            s1: 16,
        };
        let m_main = m / NN_MR * NN_MR;
        let w = NN_NV * 4;
        let n_main = n / w * w;
        let n_vec = n / 4 * 4;
        let blocks = [
            (0, m_main, NN_MR, 0, n_main, NN_NV),
            (0, m_main, NN_MR, n_main, n_vec, 1),
            (m_main, m, 1, 0, n_main, NN_NV),
            (m_main, m, 1, n_main, n_vec, 1),
        ];
        for (m0, m1, mr, n0, n1, nv) in blocks {
            if m0 >= m1 || n0 >= n1 {
                continue;
            }
            // Columns outside, rows inside: the `k x 4 nv` strip of `b` stays in L1 across the
            // row blocks (the splat copy of `a`, `m x k` vectors, is small).
            self.for_const(n0 as i64, n1 as i64, (nv * 4) as i64, |l, j| {
                l.for_const(m0 as i64, m1 as i64, mr as i64, |l, i| {
                    l.nn_block(sa, b, out, n, k, i, j, mr, nv, init);
                });
            });
        }
        if n_vec < n {
            debug_assert!(init.is_none(), "fused gemm updates have no column tail");
            self.gemm_scalar(a, b, out, n, k, (0, m), (n_vec, n));
        }
    }

    /// One `mr x (4 nv)` output block of the NN kernel; `a` is the splat copy (strides in
    /// bytes: `s0` per row, `s1` per K step).
    #[allow(clippy::too_many_arguments)]
    fn nn_block(
        &mut self,
        a: Op,
        b: Op,
        out: Value,
        n: usize,
        k: usize,
        i: Value,
        j: Value,
        mr: usize,
        nv: usize,
        init: Option<Init>,
    ) {
        let ao = self.b.ins().imul_imm_s(i, a.s0 as i64);
        let pa0 = self.b.ins().iadd(a.base, ao);
        let bo = self.b.ins().imul_imm_s(j, 4);
        let pb0 = self.b.ins().iadd(b.base, bo);
        let starts = self.nn_starts(init, n, i, j, mr, nv);
        let vars: Vec<Variable> = starts
            .into_iter()
            .map(|s| {
                let v = self.b.declare_var(types::F32X4);
                self.b.def_var(v, s);
                v
            })
            .collect();
        // One K step with `a` at `pa + ea` and `b` at `pb + eb` (bytes).
        let step = |l: &mut Self, pa: Value, pb: Value, ea: usize, eb: usize| {
            let bv: Vec<Value> = (0..nv)
                .map(|c| {
                    l.b.ins()
                        .load(types::F32X4, mem(), pb, (c * 16 + eb) as i32)
                })
                .collect();
            for r in 0..mr {
                let av =
                    l.b.ins()
                        .load(types::F32X4, mem(), pa, (r * a.s0 + ea) as i32);
                for (c, &bvc) in bv.iter().enumerate() {
                    let acc = l.b.use_var(vars[r * nv + c]);
                    let acc = l.madd(av, bvc, acc);
                    l.b.def_var(vars[r * nv + c], acc);
                }
            }
        };
        // `a`'s and `b`'s offsets along K are carried in variables (no multiplication in the
        // loop). No unrolling (see `nt_block`).
        let (sa, sb) = (a.s1, b.s0 * 4);
        let oa: Variable = self.b.declare_var(types::I64);
        let ob: Variable = self.b.declare_var(types::I64);
        let z = self.i64c(0);
        self.b.def_var(oa, z);
        self.b.def_var(ob, z);
        self.for_const(0, k as i64, 1, |l, _| {
            let ca = l.b.use_var(oa);
            let cb = l.b.use_var(ob);
            let pa = l.b.ins().iadd(pa0, ca);
            let pb = l.b.ins().iadd(pb0, cb);
            step(l, pa, pb, 0, 0);
            let na = l.b.ins().iadd_imm_s(ca, sa as i64);
            let nb = l.b.ins().iadd_imm_s(cb, sb as i64);
            l.b.def_var(oa, na);
            l.b.def_var(ob, nb);
        });
        let oo = self.b.ins().imul_imm_s(i, (n * 4) as i64);
        let orow = self.b.ins().iadd(out, oo);
        let jo = self.b.ins().imul_imm_s(j, 4);
        let o = self.b.ins().iadd(orow, jo);
        for r in 0..mr {
            for c in 0..nv {
                let v = self.b.use_var(vars[r * nv + c]);
                self.b
                    .ins()
                    .store(mem(), v, o, ((r * n + c * 4) * 4) as i32);
            }
        }
    }

    /// The starting values of an `mr x (4 nv)` block's accumulators at rows `i`, columns `j`:
    /// zero, or `init[i + r, j + 4c..] * col[i + r]`.
    fn nn_starts(
        &mut self,
        init: Option<Init>,
        n: usize,
        i: Value,
        j: Value,
        mr: usize,
        nv: usize,
    ) -> Vec<Value> {
        let Some(init) = init else {
            let zero = self.f32c(0.0, true);
            return vec![zero; mr * nv];
        };
        let ro = self.b.ins().imul_imm_s(i, (n * 4) as i64);
        let p = self.b.ins().iadd(init.base, ro);
        let co = self.b.ins().imul_imm_s(j, 4);
        let p = self.b.ins().iadd(p, co);
        let mut out = Vec::with_capacity(mr * nv);
        for r in 0..mr {
            let scale = init.col.map(|(cb, cs)| {
                let o = self.b.ins().imul_imm_s(i, cs as i64);
                let pc = self.b.ins().iadd(cb, o);
                let x = self.b.ins().load(types::F32, mem(), pc, (r * cs) as i32);
                self.b.ins().splat(types::F32X4, x)
            });
            for c in 0..nv {
                let v = self
                    .b
                    .ins()
                    .load(types::F32X4, mem(), p, ((r * n + c * 4) * 4) as i32);
                out.push(match scale {
                    Some(s) => self.b.ins().fmul(v, s),
                    None => v,
                });
            }
        }
        out
    }

    /// Lowers a fused accumulator update (see `fuse.rs`): `x = init * col + a @ b` (or
    /// `x = init + a @ b`) through the NN kernel, with no intermediate tile.
    pub(in crate::cpu) fn gemm_update(&mut self, f: &super::fuse::AccUpdate) {
        let (al, bl) = (self.layout(f.a), self.layout(f.b));
        let (m, k, n) = (al.shape[0], al.shape[1], bl.shape[1]);
        let op = |l: &mut Self, t: &crate::cpu::layout::TileLayout| {
            let s = |i: usize| if t.shape[i] == 1 { 0 } else { t.strides[i] };
            Op {
                base: l.scratch_at(t.offset),
                s0: s(0),
                s1: s(1),
            }
        };
        let (ao, bo) = (op(self, &al), op(self, &bl));
        let out = self.scratch_at(self.lay.tiles[f.x].offset);
        let base = self.scratch_at(self.lay.tiles[f.init].offset);
        let col = f.col.map(|c| {
            let cl = self.layout(c);
            let stride = if cl.shape[0] == 1 {
                0
            } else {
                cl.strides[0] * 4
            };
            (self.scratch_at(cl.offset), stride)
        });
        let init = Some(Init { base, col });
        if self.takes_host_gemm(GemmKernel::Nn, m, n, k) {
            self.host_gemm_call(ao, bo, out, m, n, k, init);
        } else {
            self.gemm_nn(ao, bo, out, m, n, k, init);
        }
    }
}
