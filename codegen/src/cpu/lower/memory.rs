//! Moving tiles between memory and scratch: masked tensor loads and stores (paged caches are in
//! `paged.rs`). Contiguous rows are copied four elements at a time (bf16 is
//! widened with `uload16x4` + shift, and narrowed with round-to-nearest-even + `unarrow`).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use super::{elem_ty, mem, Ix, Lower, ParamVals};
use crate::error::IrError;
use crate::ir::*;

/// A tensor region: base element offset plus per-tile-axis (start, stride, bound) checks.
struct Region {
    ptr: Value,
    dtype: DType,
    /// `(index, dim)` of every `At` slice (all must be in range).
    ats: Vec<(Ix, Ix)>,
    /// Spans in tile order: `(start, tensor stride, tensor dim)`, padded on the left to 2.
    spans: [Option<(Ix, Ix, Ix)>; 2],
    /// Element offset of tile element `[0, 0]` (may be out of range).
    base: Value,
    /// Whether the innermost tile axis is the tensor's last, contiguous dimension.
    inner_contiguous: bool,
}

impl Lower<'_, '_> {
    fn region(&mut self, param: ParamId, index: &[Slice]) -> Result<Region, IrError> {
        let ParamVals::Tensor {
            ptr,
            dtype,
            dims,
            strides,
        } = &self.params[param]
        else {
            return Err(super::backend_err(self.k, "load/store of a non-tensor"));
        };
        let (ptr, dtype, dims, strides) = (*ptr, *dtype, dims.clone(), strides.clone());
        let mut ats = Vec::new();
        let mut spans = Vec::new();
        let mut base = self.i64c(0);
        let n = index.len();
        let mut inner_contiguous = false;
        for (d, s) in index.iter().enumerate() {
            let (i, is_span) = match s {
                Slice::At(i) => (self.index(i), false),
                Slice::Span { start, .. } => (self.index(start), true),
            };
            let iv = self.val(i);
            let sv = self.val(strides[d]);
            let t = self.b.ins().imul(iv, sv);
            base = self.b.ins().iadd(base, t);
            if is_span {
                spans.push((i, strides[d], dims[d]));
                inner_contiguous = d == n - 1;
            } else {
                ats.push((i, dims[d]));
            }
        }
        let spans = match spans.len() {
            0 => [None, None],
            1 => [None, Some(spans[0])],
            _ => [Some(spans[0]), Some(spans[1])],
        };
        Ok(Region {
            ptr,
            dtype,
            ats,
            spans,
            base,
            inner_contiguous,
        })
    }

    /// Truth value (i8) that every `At` index is in range (`None`: no `At` slices).
    fn ats_ok(&mut self, r: &Region) -> Option<Value> {
        let mut ok = None;
        for (i, d) in &r.ats {
            let c = self.in_range(*i, *d);
            ok = Some(match ok {
                None => c,
                Some(o) => self.b.ins().band(o, c),
            });
        }
        ok
    }

    /// Truth value that `start + k` is in range for span `s` (`k` an i64 value).
    /// Whether every column `0..cols` of the region's inner span is in bounds (and the
    /// `ats` condition holds): the test for the contiguous whole-row copy paths.
    fn whole_rows_ok(&mut self, r: &Region, cols: usize, ats: Option<Value>) -> Value {
        let inner = r.spans[1].expect("a contiguous inner span");
        let last = self.i64c(cols as i64 - 1);
        let lo_ok = self.span_ok(inner, last);
        let z = self.i64c(0);
        let hi_ok = self.span_ok(inner, z);
        let all = self.b.ins().band(lo_ok, hi_ok);
        match ats {
            Some(a) => self.b.ins().band(all, a),
            None => all,
        }
    }

    /// Row `i` of the region: whether it is in bounds (`None` when the region has no outer
    /// span) and its element offset.
    fn row_offset(&mut self, r: &Region, i: Value) -> (Option<Value>, Value) {
        let (ok, row) = self.span_offset(r.spans[0], i);
        (ok, self.b.ins().iadd(r.base, row))
    }

    /// Index `k` along one axis of a region: whether it is in range (`None`: the axis has no
    /// span, always in range) and its element offset (`k · stride`, 0 without a span).
    fn span_offset(&mut self, span: Option<(Ix, Ix, Ix)>, k: Value) -> (Option<Value>, Value) {
        match span {
            Some(s) => {
                let ok = self.span_ok(s, k);
                let st = self.val(s.1);
                (Some(ok), self.b.ins().imul(k, st))
            }
            None => (None, self.i64c(0)),
        }
    }

    /// The conjunction of the conditions present (`None` where there are none).
    fn all_of(&mut self, conds: impl IntoIterator<Item = Option<Value>>) -> Option<Value> {
        let mut ok = None;
        for c in conds.into_iter().flatten() {
            ok = Some(match ok {
                None => c,
                Some(o) => self.b.ins().band(o, c),
            });
        }
        ok
    }

    fn span_ok(&mut self, s: (Ix, Ix, Ix), k: Value) -> Value {
        let st = self.val(s.0);
        let x = self.b.ins().iadd(st, k);
        self.in_range(Ix::V(x), s.2)
    }

    /// Address of tensor element at element offset `off` (i64).
    fn elem_addr(&mut self, ptr: Value, dtype: DType, off: Value) -> Value {
        let sh = match dtype.size_bytes() {
            4 => 2,
            2 => 1,
            _ => 0,
        };
        let o = if sh == 0 {
            off
        } else {
            self.b.ins().ishl_imm_u(off, sh)
        };
        self.b.ins().iadd(ptr, o)
    }

    /// Loads one tensor element converted to tile storage (f32 or i32).
    pub(in crate::cpu) fn load_elem(&mut self, dtype: DType, addr: Value, off: i32) -> Value {
        match dtype {
            DType::F32 => self.b.ins().load(types::F32, mem(), addr, off),
            DType::I32 => self.b.ins().load(types::I32, mem(), addr, off),
            DType::BF16 => {
                let x = self.b.ins().uload16(types::I32, mem(), addr, off);
                self.bf16_to_f32(x, false)
            }
            DType::Bool => {
                let x = self.b.ins().uload8(types::I32, mem(), addr, off);
                let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0);
                self.b.ins().uextend(types::I32, c)
            }
        }
    }

    /// Stores one tile element (f32 or i32) into a tensor element of `dtype`.
    pub(in crate::cpu) fn store_elem(&mut self, dtype: DType, v: Value, addr: Value, off: i32) {
        match dtype {
            DType::F32 | DType::I32 => {
                self.b.ins().store(mem(), v, addr, off);
            }
            DType::BF16 => {
                let bits = self.bf16_bits(v, false);
                self.b.ins().istore16(mem(), bits, addr, off);
            }
            DType::Bool => {
                let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0);
                self.b.ins().store(mem(), c, addr, off);
            }
        }
    }

    /// Copies `n` contiguous tensor elements at `src` into dense scratch at `dst`.
    pub(in crate::cpu) fn copy_row_in(&mut self, dtype: DType, src: Value, dst: Value, n: usize) {
        let esz = dtype.size_bytes();
        let vec = matches!(dtype, DType::F32 | DType::I32 | DType::BF16);
        let n4 = if vec { n / 4 * 4 } else { 0 };
        let chunk = |l: &mut Self, s: Value, d: Value, off_s: i32, off_d: i32| {
            let v = match dtype {
                DType::BF16 => {
                    let x = l.b.ins().uload16x4(mem(), s, off_s);
                    l.bf16_to_f32(x, true)
                }
                DType::I32 => l.b.ins().load(types::I32X4, mem(), s, off_s),
                _ => l.b.ins().load(types::F32X4, mem(), s, off_s),
            };
            l.b.ins().store(mem(), v, d, off_d);
        };
        if n4 <= 16 {
            for j in (0..n4).step_by(4) {
                chunk(self, src, dst, (j * esz) as i32, (j * 4) as i32);
            }
        } else {
            // Two chunks per iteration when possible.
            let n8 = n4 / 8 * 8;
            self.for_const(0, n8 as i64, 8, |l, j| {
                let os = l.b.ins().imul_imm_s(j, esz as i64);
                let s = l.b.ins().iadd(src, os);
                let od = l.b.ins().imul_imm_s(j, 4);
                let d = l.b.ins().iadd(dst, od);
                chunk(l, s, d, 0, 0);
                chunk(l, s, d, (4 * esz) as i32, 16);
            });
            if n8 < n4 {
                chunk(self, src, dst, (n8 * esz) as i32, (n8 * 4) as i32);
            }
        }
        let tail = n - n4;
        if tail <= 8 {
            for j in n4..n {
                let v = self.load_elem(dtype, src, (j * esz) as i32);
                self.b.ins().store(mem(), v, dst, (j * 4) as i32);
            }
        } else {
            self.for_const(n4 as i64, n as i64, 1, |l, j| {
                let os = l.b.ins().imul_imm_s(j, esz as i64);
                let s = l.b.ins().iadd(src, os);
                let od = l.b.ins().imul_imm_s(j, 4);
                let d = l.b.ins().iadd(dst, od);
                let v = l.load_elem(dtype, s, 0);
                l.b.ins().store(mem(), v, d, 0);
            });
        }
    }

    /// Copies `n` tile elements at `src` (scratch, stride `stride` elements) into contiguous
    /// tensor elements of `dtype` at `dst`.
    pub(in crate::cpu) fn copy_row_out(
        &mut self,
        src: Value,
        stride: usize,
        tile_ty: DType,
        dtype: DType,
        dst: Value,
        n: usize,
    ) {
        let esz = dtype.size_bytes();
        let ety = elem_ty(tile_ty);
        let vec = stride == 1 && matches!(dtype, DType::F32 | DType::I32 | DType::BF16);
        let step = if dtype == DType::BF16 { 8 } else { 4 };
        let nv = if vec { n / step * step } else { 0 };
        if nv > 0 {
            self.for_const(0, nv as i64, step as i64, |l, j| {
                let od = l.b.ins().imul_imm_s(j, esz as i64);
                let d = l.b.ins().iadd(dst, od);
                let os = l.b.ins().imul_imm_s(j, 4);
                let s = l.b.ins().iadd(src, os);
                if dtype == DType::BF16 {
                    let a = l.b.ins().load(types::F32X4, mem(), s, 0);
                    let b = l.b.ins().load(types::F32X4, mem(), s, 16);
                    let a = l.bf16_bits(a, true);
                    let b = l.bf16_bits(b, true);
                    let h = l.b.ins().unarrow(a, b);
                    l.b.ins().store(mem(), h, d, 0);
                } else {
                    let ty = if dtype == DType::I32 {
                        types::I32X4
                    } else {
                        types::F32X4
                    };
                    let v = l.b.ins().load(ty, mem(), s, 0);
                    l.b.ins().store(mem(), v, d, 0);
                }
            });
        }
        let tail = n - nv;
        if tail <= 8 {
            for j in nv..n {
                let v = self.b.ins().load(ety, mem(), src, (j * stride * 4) as i32);
                self.store_elem(dtype, v, dst, (j * esz) as i32);
            }
        } else {
            self.for_const(nv as i64, n as i64, 1, |l, j| {
                let os = l.b.ins().imul_imm_s(j, (stride * 4) as i64);
                let s = l.b.ins().iadd(src, os);
                let od = l.b.ins().imul_imm_s(j, esz as i64);
                let d = l.b.ins().iadd(dst, od);
                let v = l.b.ins().load(ety, mem(), s, 0);
                l.store_elem(dtype, v, d, 0);
            });
        }
    }

    /// Fills `n` dense scratch elements at `dst` with zero bits.
    pub(in crate::cpu) fn zero_row(&mut self, dst: Value, n: usize) {
        let z = self.i32c(0, true);
        let n4 = n / 4 * 4;
        if n4 <= 32 {
            for j in (0..n4).step_by(4) {
                self.b.ins().store(mem(), z, dst, (j * 4) as i32);
            }
        } else {
            self.for_const(0, n4 as i64, 4, |l, j| {
                let od = l.b.ins().imul_imm_s(j, 4);
                let d = l.b.ins().iadd(dst, od);
                l.b.ins().store(mem(), z, d, 0);
            });
        }
        let zs = self.i32c(0, false);
        for j in n4..n {
            self.b.ins().store(mem(), zs, dst, (j * 4) as i32);
        }
    }

    /// `dst = load(param[index])`, bounds-masked.
    pub(in crate::cpu) fn load_tile(
        &mut self,
        dst: TileId,
        param: ParamId,
        index: &[Slice],
    ) -> Result<(), IrError> {
        let r = self.region(param, index)?;
        let d = self.dst(dst);
        let [rows, cols] = d.shape;
        let ats = self.ats_ok(&r);
        let tile_ty = self.k.tiles[dst].dtype;
        let scalar_path = |l: &mut Self| {
            l.for_const(0, rows as i64, 1, |l, i| {
                let (ook, rbase) = l.row_offset(&r, i);
                let o = l.b.ins().imul_imm_s(i, (d.strides[0] * 4) as i64);
                let drow = l.b.ins().iadd(d.base, o);
                l.for_const(0, cols as i64, 1, |l, j| {
                    let (iok, ioff) = l.span_offset(r.spans[1], j);
                    let ok = l.all_of([ats, ook, iok]);
                    let off = l.b.ins().iadd(rbase, ioff);
                    let addr = l.elem_addr(r.ptr, r.dtype, off);
                    let v = match ok {
                        None => l.load_elem(r.dtype, addr, 0),
                        Some(ok) => {
                            let z = if elem_ty(tile_ty) == types::F32 {
                                l.f32c(0.0, false)
                            } else {
                                l.i32c(0, false)
                            };
                            l.if_value(ok, elem_ty(tile_ty), |l| l.load_elem(r.dtype, addr, 0), z)
                        }
                    };
                    let o = l.b.ins().imul_imm_s(j, (d.strides[1] * 4) as i64);
                    let a = l.b.ins().iadd(drow, o);
                    l.b.ins().store(mem(), v, a, 0);
                });
            });
        };
        if !(r.inner_contiguous && cols >= 4) {
            scalar_path(self);
            return Ok(());
        }
        let all = self.whole_rows_ok(&r, cols, ats);
        self.if_else(
            all,
            |l| {
                l.for_const(0, rows as i64, 1, |l, i| {
                    let (ook, off) = l.row_offset(&r, i);
                    let src = l.elem_addr(r.ptr, r.dtype, off);
                    let o = l.b.ins().imul_imm_s(i, (d.strides[0] * 4) as i64);
                    let drow = l.b.ins().iadd(d.base, o);
                    match ook {
                        None => l.copy_row_in(r.dtype, src, drow, cols),
                        Some(ok) => l.if_else(
                            ok,
                            |l| l.copy_row_in(r.dtype, src, drow, cols),
                            |l| l.zero_row(drow, cols),
                        ),
                    }
                });
            },
            scalar_path,
        );
        Ok(())
    }

    /// `param[index] = src`, skipping elements out of range.
    pub(in crate::cpu) fn store_tile(
        &mut self,
        param: ParamId,
        index: &[Slice],
        src: TileId,
    ) -> Result<(), IrError> {
        let r = self.region(param, index)?;
        let sl = self.layout(src);
        let ([rows, cols], [s0, s1]) = sl.rank2();
        let s1 = if cols == 1 { 0 } else { s1 };
        let sbase = self.scratch_at(sl.offset);
        let tile_ty = self.k.tiles[src].dtype;
        let ety = elem_ty(tile_ty);
        let ats = self.ats_ok(&r);
        let scalar_path = |l: &mut Self| {
            l.for_const(0, rows as i64, 1, |l, i| {
                let (ook, rbase) = l.row_offset(&r, i);
                let o = l.b.ins().imul_imm_s(i, (s0 * 4) as i64);
                let srow = l.b.ins().iadd(sbase, o);
                l.for_const(0, cols as i64, 1, |l, j| {
                    let (iok, ioff) = l.span_offset(r.spans[1], j);
                    let ok = l.all_of([ats, ook, iok]);
                    let off = l.b.ins().iadd(rbase, ioff);
                    let addr = l.elem_addr(r.ptr, r.dtype, off);
                    let o = l.b.ins().imul_imm_s(j, (s1 * 4) as i64);
                    let sa = l.b.ins().iadd(srow, o);
                    let body = |l: &mut Self| {
                        let v = l.b.ins().load(ety, mem(), sa, 0);
                        l.store_elem(r.dtype, v, addr, 0);
                    };
                    match ok {
                        None => body(l),
                        Some(ok) => l.if_then(ok, body),
                    }
                });
            });
        };
        if !(r.inner_contiguous && cols >= 4) {
            scalar_path(self);
            return Ok(());
        }
        let all = self.whole_rows_ok(&r, cols, ats);
        self.if_else(
            all,
            |l| {
                l.for_const(0, rows as i64, 1, |l, i| {
                    let (ook, off) = l.row_offset(&r, i);
                    let dstp = l.elem_addr(r.ptr, r.dtype, off);
                    let o = l.b.ins().imul_imm_s(i, (s0 * 4) as i64);
                    let srow = l.b.ins().iadd(sbase, o);
                    let body =
                        |l: &mut Self| l.copy_row_out(srow, s1, tile_ty, r.dtype, dstp, cols);
                    match ook {
                        None => body(l),
                        Some(ok) => l.if_then(ok, body),
                    }
                });
            },
            scalar_path,
        );
        Ok(())
    }
}
