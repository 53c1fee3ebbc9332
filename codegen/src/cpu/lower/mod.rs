//! Lowering of a kernel body to Cranelift IR: function entry, index arithmetic, float scalars
//! and statement dispatch. Tile operations are lowered by op family (the op table's
//! [`Family`](crate::ops::Family)), one module each: `elementwise` (also constants), `reduce`,
//! `memory` (tensors and paged caches) and `gemm`; views alias their source and emit nothing.

mod elementwise;
mod fp8;
mod fuse;
mod gemm;
mod gemm_host;
mod memory;
mod paged;
mod reduce;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, Variable};

use crate::cpu::abi;
use crate::cpu::layout::{Layouts, TileLayout};
use crate::error::IrError;
use crate::ir::*;
use crate::ops::Family;

/// A compile-time constant or a runtime i64 value.
#[derive(Clone, Copy, Debug)]
pub(in crate::cpu) enum Ix {
    /// Known while compiling.
    C(i64),
    /// Computed at run time.
    V(Value),
}

/// Entry-block values describing one parameter.
pub(in crate::cpu) enum ParamVals {
    Tensor {
        ptr: Value,
        dtype: DType,
        dims: Vec<Ix>,
        strides: Vec<Ix>,
    },
    Paged {
        ptr: Value,
        block_table: Value,
        seq_lens: Value,
        page_size: Value,
        pages_per_seq: Value,
        num_pages: Value,
        batch: Value,
        /// The split table (`chunk [batch]`, i32) of a `chunked` cache.
        chunks: Option<Value>,
        dtype: DType,
        row: usize,
        /// How the rows are stored in the pool.
        format: PagedFormat,
    },
    /// The raw slot (f32 bits or i64).
    Scalar { slot: Value },
}

/// Host functions the generated code calls.
pub(in crate::cpu) struct HostFns {
    pub log2: FuncRef,
    /// `prefetch(address, bytes)`, a hint (see `cpu/prefetch.rs`).
    pub prefetch: FuncRef,
    /// `gemm(&GemmCall)` (see `cpu/host_gemm.rs`); `None`: every gemm takes the generated loops.
    pub gemm: Option<FuncRef>,
}

/// State of the lowering of one kernel.
pub(in crate::cpu) struct Lower<'a, 'f> {
    pub k: &'a Kernel,
    pub b: FunctionBuilder<'f>,
    pub lay: &'a Layouts,
    pub scratch: Value,
    pub pids: [Value; 3],
    pub dims: Vec<Value>,
    pub params: Vec<ParamVals>,
    pub vars: Vec<Variable>,
    pub host: HostFns,
    /// Whether the target has fused multiply-add.
    pub fma: bool,
}

/// Flags for every load and store the backend emits: in bounds by construction, possibly
/// unaligned.
pub(in crate::cpu) fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Storage type of one element of a tile of `dtype`.
pub(in crate::cpu) fn elem_ty(dtype: DType) -> Type {
    if dtype.is_float() {
        types::F32
    } else {
        types::I32
    }
}

/// The 4-lane vector of `ty`.
pub(in crate::cpu) fn vec_ty(ty: Type) -> Type {
    if ty == types::F32 {
        types::F32X4
    } else {
        types::I32X4
    }
}

pub(in crate::cpu) fn backend_err(k: &Kernel, message: impl Into<String>) -> IrError {
    IrError::Backend {
        backend: "cpu",
        kernel: k.name.clone(),
        message: message.into(),
    }
}

impl<'a, 'f> Lower<'a, 'f> {
    /// Sets up the entry block: function parameters, argument slots and runtime dims.
    pub(in crate::cpu) fn new(
        k: &'a Kernel,
        mut b: FunctionBuilder<'f>,
        lay: &'a Layouts,
        host: HostFns,
        fma: bool,
    ) -> Self {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let p = b.block_params(entry).to_vec();
        let (args, dims_ptr, scratch) = (p[0], p[1], p[5]);
        let pids = [p[2], p[3], p[4]];
        let flags = MemFlagsData::trusted().with_readonly();
        let dims: Vec<Value> = (0..k.dims.len())
            .map(|d| b.ins().load(types::I64, flags, dims_ptr, (d * 8) as i32))
            .collect();
        let offsets = abi::arg_offsets(k);
        let mut params = Vec::new();
        for (param, &o) in k.params.iter().zip(&offsets) {
            let mut slot = |i: usize| b.ins().load(types::I64, flags, args, ((o + i) * 8) as i32);
            params.push(match &param.kind {
                ParamKind::Tensor {
                    dtype, dims: pd, ..
                } => {
                    let ptr = slot(0);
                    let dv: Vec<Ix> = pd
                        .iter()
                        .enumerate()
                        .map(|(i, d)| match d {
                            ParamDim::Const(c) => Ix::C(*c as i64),
                            ParamDim::Runtime(_) => Ix::V(slot(1 + i)),
                        })
                        .collect();
                    let mut strides = vec![Ix::C(1); dv.len()];
                    for i in (0..dv.len().saturating_sub(1)).rev() {
                        strides[i] = match (strides[i + 1], dv[i + 1]) {
                            (Ix::C(a), Ix::C(c)) => Ix::C(a * c),
                            (x, y) => {
                                let x = ix_value(&mut b, x);
                                let y = ix_value(&mut b, y);
                                Ix::V(b.ins().imul(x, y))
                            }
                        };
                    }
                    ParamVals::Tensor {
                        ptr,
                        dtype: *dtype,
                        dims: dv,
                        strides,
                    }
                }
                ParamKind::Paged {
                    dtype,
                    row,
                    chunked,
                    format,
                    ..
                } => ParamVals::Paged {
                    chunks: chunked.then(|| slot(abi::PAGED_CHUNKS)),
                    ptr: slot(abi::PAGED_DATA),
                    block_table: slot(abi::PAGED_BLOCK_TABLE),
                    seq_lens: slot(abi::PAGED_SEQ_LENS),
                    page_size: slot(abi::PAGED_PAGE_SIZE),
                    pages_per_seq: slot(abi::PAGED_PAGES_PER_SEQ),
                    num_pages: slot(abi::PAGED_NUM_PAGES),
                    batch: slot(abi::PAGED_BATCH),
                    dtype: *dtype,
                    row: *row,
                    format: *format,
                },
                ParamKind::Scalar { .. } => ParamVals::Scalar { slot: slot(0) },
            });
        }
        let vars = (0..k.scalars.len())
            .map(|_| {
                let v = b.declare_var(types::I64);
                let z = b.ins().iconst(types::I64, 0);
                b.def_var(v, z);
                v
            })
            .collect();
        Lower {
            k,
            b,
            lay,
            scratch,
            pids,
            dims,
            params,
            vars,
            host,
            fma,
        }
    }

    /// Lowers the body and returns.
    pub(in crate::cpu) fn finish(mut self, tcfg: TargetFrontendConfig) -> Result<(), IrError> {
        let body = &self.k.body;
        self.stmts(body)?;
        self.b.ins().return_(&[]);
        self.b.finalize(tcfg);
        Ok(())
    }

    /// The value of an [`Ix`].
    pub(in crate::cpu) fn val(&mut self, x: Ix) -> Value {
        ix_value(&mut self.b, x)
    }

    /// `scratch + offset` (bytes).
    pub(in crate::cpu) fn scratch_at(&mut self, offset: usize) -> Value {
        self.b.ins().iadd_imm_s(self.scratch, offset as i64)
    }

    /// Layout of a tile.
    pub(in crate::cpu) fn layout(&self, t: TileId) -> TileLayout {
        self.lay.tiles[t].clone()
    }

    /// i64 constant.
    pub(in crate::cpu) fn i64c(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// Evaluates integer index arithmetic (i64), folding constants.
    pub(in crate::cpu) fn index(&mut self, i: &Index) -> Ix {
        match i {
            Index::Const(c) => Ix::C(*c),
            Index::ProgramId(a) => Ix::V(self.pids[*a as usize]),
            Index::Dim(d) => Ix::V(self.dims[*d]),
            Index::Var(v) => Ix::V(self.b.use_var(self.vars[*v])),
            Index::Bin(op, a, b) => {
                let a = self.index(a);
                let b = self.index(b);
                if let (Ix::C(x), Ix::C(y)) = (a, b) {
                    return Ix::C(op.apply(x, y));
                }
                let a = self.val(a);
                let b = self.val(b);
                Ix::V(self.index_bin(*op, a, b))
            }
            Index::SeqLen { cache, batch } => {
                let bi = self.index(batch);
                let bi = self.val(bi);
                Ix::V(self.seq_len(*cache, bi))
            }
            Index::PageSize(cache) => match &self.params[*cache] {
                ParamVals::Paged { page_size, .. } => Ix::V(*page_size),
                _ => Ix::C(0),
            },
            Index::Load { param, index } => {
                let idx: Vec<Ix> = index.iter().map(|i| self.index(i)).collect();
                let ParamVals::Tensor {
                    ptr, dims, strides, ..
                } = &self.params[*param]
                else {
                    return Ix::C(0);
                };
                let (ptr, dims, strides) = (*ptr, dims.clone(), strides.clone());
                let mut ok = None;
                let mut off = self.i64c(0);
                for ((x, d), s) in idx.iter().zip(&dims).zip(&strides) {
                    let c = self.in_range(*x, *d);
                    ok = Some(match ok {
                        None => c,
                        Some(o) => self.b.ins().band(o, c),
                    });
                    let x = self.val(*x);
                    let s = self.val(*s);
                    let t = self.b.ins().imul(x, s);
                    off = self.b.ins().iadd(off, t);
                }
                let zero = self.b.ins().iconst(types::I32, 0);
                let v = match ok {
                    None => self.b.ins().load(types::I32, mem(), ptr, 0),
                    Some(ok) => self.if_value(
                        ok,
                        types::I32,
                        |s| {
                            let a = s.b.ins().ishl_imm_u(off, 2);
                            let a = s.b.ins().iadd(ptr, a);
                            s.b.ins().load(types::I32, mem(), a, 0)
                        },
                        zero,
                    ),
                };
                Ix::V(self.b.ins().sextend(types::I64, v))
            }
            Index::Scalar(p) => match &self.params[*p] {
                ParamVals::Scalar { slot } => Ix::V(*slot),
                _ => Ix::C(0),
            },
        }
    }

    /// `0 <= x < bound` as an i8 truth value.
    pub(in crate::cpu) fn in_range(&mut self, x: Ix, bound: Ix) -> Value {
        let xv = self.val(x);
        let bv = self.val(bound);
        // Unsigned comparison covers both ends when bound >= 0.
        self.b.ins().icmp(IntCC::UnsignedLessThan, xv, bv)
    }

    /// One index operator on i64 values with the IR's conventions (no traps).
    pub(in crate::cpu) fn index_bin(&mut self, op: IndexOp, a: Value, b: Value) -> Value {
        match op {
            IndexOp::Add => self.b.ins().iadd(a, b),
            IndexOp::Sub => self.b.ins().isub(a, b),
            IndexOp::Mul => self.b.ins().imul(a, b),
            IndexOp::Min => self.b.ins().smin(a, b),
            IndexOp::Max => self.b.ins().smax(a, b),
            IndexOp::Div | IndexOp::Rem => {
                let (bad, safe) = self.safe_divisor(a, b);
                let q = if op == IndexOp::Div {
                    self.b.ins().sdiv(a, safe)
                } else {
                    self.b.ins().srem(a, safe)
                };
                let z = self.i64c(0);
                self.b.ins().select(bad, z, q)
            }
            IndexOp::CeilDiv => {
                // (a + b - 1).div_euclid(b), 0 when b == 0.
                let n = self.b.ins().iadd(a, b);
                let n = self.b.ins().iadd_imm_s(n, -1);
                let (bad, safe) = self.safe_divisor(n, b);
                let q = self.b.ins().sdiv(n, safe);
                let r = self.b.ins().srem(n, safe);
                let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
                let bpos = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, safe, 0);
                let qm = self.b.ins().iadd_imm_s(q, -1);
                let qp = self.b.ins().iadd_imm_s(q, 1);
                let adj = self.b.ins().select(bpos, qm, qp);
                let q = self.b.ins().select(neg, adj, q);
                let z = self.i64c(0);
                self.b.ins().select(bad, z, q)
            }
        }
    }

    /// `(b == 0 || (a == MIN && b == -1), divisor safe to use)`.
    fn safe_divisor(&mut self, a: Value, b: Value) -> (Value, Value) {
        let z = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        let m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let amin = self.b.ins().icmp_imm_s(IntCC::Equal, a, i64::MIN);
        let ov = self.b.ins().band(m1, amin);
        let bad = self.b.ins().bor(z, ov);
        let one = self.i64c(1);
        let safe = self.b.ins().select(bad, one, b);
        (bad, safe)
    }

    /// `seq_lens[batch]` of a paged parameter as i64 (0 when `batch` is out of range).
    pub(in crate::cpu) fn seq_len(&mut self, cache: ParamId, batch: Value) -> Value {
        let ParamVals::Paged {
            seq_lens, batch: n, ..
        } = &self.params[cache]
        else {
            return self.i64c(0);
        };
        let (lens, n) = (*seq_lens, *n);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, batch, n);
        let zero = self.b.ins().iconst(types::I32, 0);
        let v = self.if_value(
            ok,
            types::I32,
            |s| {
                let a = s.b.ins().ishl_imm_u(batch, 2);
                let a = s.b.ins().iadd(lens, a);
                s.b.ins().load(types::I32, mem(), a, 0)
            },
            zero,
        );
        self.b.ins().sextend(types::I64, v)
    }

    /// Evaluates a float scalar expression.
    pub(in crate::cpu) fn fscalar(&mut self, s: &FScalar) -> Value {
        match s {
            FScalar::Lit(x) => self.b.ins().f32const(*x),
            FScalar::Param(p) => match &self.params[*p] {
                ParamVals::Scalar { slot } => {
                    let lo = self.b.ins().ireduce(types::I32, *slot);
                    self.b.ins().bitcast(types::F32, MemFlagsData::new(), lo)
                }
                _ => self.b.ins().f32const(0.0),
            },
            FScalar::FromIndex(i) => {
                let v = self.index(i);
                let v = self.val(v);
                self.b.ins().fcvt_from_sint(types::F32, v)
            }
            FScalar::Bin(op, a, b) => {
                let a = self.fscalar(a);
                let b = self.fscalar(b);
                self.float_binary(*op, a, b, false)
            }
            FScalar::Unary(op, a) => {
                let a = self.fscalar(a);
                self.float_unary(*op, a, false)
            }
        }
    }

    /// Lowers a statement list.
    /// Lowers a statement list; accumulator updates fed by a gemm are fused (see `fuse.rs`).
    pub(in crate::cpu) fn stmts(&mut self, body: &[Stmt]) -> Result<(), IrError> {
        let fused = fuse::plan(self.k, self.lay, body);
        for (i, s) in body.iter().enumerate() {
            match fused.iter().find(|f| f.covers(i)) {
                Some(f) if f.gemm == i => self.gemm_update(f),
                Some(_) => {}
                None => self.stmt(s)?,
            }
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), IrError> {
        match s {
            Stmt::Let { dst, value } => {
                let v = self.index(value);
                let v = self.val(v);
                self.b.def_var(self.vars[*dst], v);
            }
            Stmt::Assign { dst, op } => self.assign(*dst, op)?,
            Stmt::Store { param, index, src } => self.store_tile(*param, index, *src)?,
            Stmt::For {
                var,
                start,
                end,
                body,
            } => {
                let s = self.index(start);
                let s = self.val(s);
                let e = self.index(end);
                let e = self.val(e);
                let mut res = Ok(());
                self.for_dyn(s, e, 1, |l, iv| {
                    l.b.def_var(l.vars[*var], iv);
                    res = l.stmts(body);
                });
                res?;
            }
            Stmt::PagedBlocks {
                cache,
                batch,
                split,
                num_splits,
                block,
                start,
                tile,
                valid,
                body,
                ..
            } => self.paged_blocks(
                *cache, batch, split, num_splits, *block, *start, *tile, *valid, body,
            )?,
            Stmt::PagedStore {
                cache,
                batch,
                start,
                src,
            } => self.paged_store(*cache, batch, start, *src)?,
        }
        Ok(())
    }

    /// Lowers one tile operation in the module of its op family.
    fn assign(&mut self, dst: TileId, op: &TileOp) -> Result<(), IrError> {
        match (op.family(), op) {
            (Family::View, _) => Ok(()),
            (Family::Memory, TileOp::Load { param, index }) => self.load_tile(dst, *param, index),
            (Family::Gemm, TileOp::Gemm { a, b }) => self.gemm(dst, *a, *b),
            (Family::Reduce, TileOp::Reduce { op, src, axis }) => {
                self.reduce(dst, *op, *src, *axis)
            }
            (Family::Constant, TileOp::Iota { axis }) => {
                self.iota(dst, *axis);
                Ok(())
            }
            (Family::Constant | Family::Elementwise, _) => self.elementwise_op(dst, op),
            (family, _) => Err(backend_err(
                self.k,
                format!("`{}` is not a {} tile op", op.def().name, family.name()),
            )),
        }
    }
}

/// The value of an [`Ix`] at the builder's position.
pub(in crate::cpu) fn ix_value(b: &mut FunctionBuilder<'_>, x: Ix) -> Value {
    match x {
        Ix::C(c) => b.ins().iconst(types::I64, c),
        Ix::V(v) => v,
    }
}
