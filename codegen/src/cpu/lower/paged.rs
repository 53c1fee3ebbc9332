//! Paged caches: block streaming over one split of a sequence (uniform splits or a per-sequence
//! split table) and paged row stores.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use super::{mem, Lower, ParamVals};
use crate::error::IrError;
use crate::ir::*;

impl Lower<'_, '_> {
    /// Address of the row of token `t` (i64, known valid) of sequence `batch`, and whether its
    /// page id is in range.
    fn paged_row(&mut self, cache: ParamId, batch: Value, t: Value) -> (Value, Value) {
        let ParamVals::Paged {
            ptr,
            block_table,
            page_size,
            pages_per_seq,
            num_pages,
            dtype,
            row,
            format,
            ..
        } = &self.params[cache]
        else {
            unreachable!("validated paged parameter")
        };
        let (ptr, bt, ps, pps, np) = (*ptr, *block_table, *page_size, *pages_per_seq, *num_pages);
        let row_bytes = format.row_bytes(*dtype, *row);
        let pi = self.index_bin(IndexOp::Div, t, ps);
        let po = self.index_bin(IndexOp::Rem, t, ps);
        let e = self.b.ins().imul(batch, pps);
        let e = self.b.ins().iadd(e, pi);
        let ea = self.b.ins().ishl_imm_u(e, 2);
        let ea = self.b.ins().iadd(bt, ea);
        let page = self.b.ins().sload32(mem(), ea, 0);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, page, np);
        let tok = self.b.ins().imul(page, ps);
        let tok = self.b.ins().iadd(tok, po);
        let off = self.b.ins().imul_imm_s(tok, row_bytes as i64);
        (self.b.ins().iadd(ptr, off), ok)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::cpu) fn paged_blocks(
        &mut self,
        cache: ParamId,
        batch: &Index,
        split: &Index,
        num_splits: &Index,
        block: usize,
        start: ScalarId,
        tile: TileId,
        valid: TileId,
        body: &[Stmt],
    ) -> Result<(), IrError> {
        let ParamVals::Paged {
            dtype, row, format, ..
        } = &self.params[cache]
        else {
            return Err(super::backend_err(
                self.k,
                "paged loop over a non-paged param",
            ));
        };
        let (dtype, row, format) = (*dtype, *row, *format);
        let bi = self.index(batch);
        let bi = self.val(bi);
        let sp = self.index(split);
        let sp = self.val(sp);
        let ns = self.index(num_splits);
        let ns = self.val(ns);
        let len = self.seq_len(cache, bi);
        let (lo, hi) = match self.split_table(cache, bi) {
            None => {
                let per = self.index_bin(IndexOp::CeilDiv, len, ns);
                let blk = self.i64c(block as i64);
                let nb = self.index_bin(IndexOp::CeilDiv, per, blk);
                let chunk = self.b.ins().imul_imm_s(nb, block as i64);
                let lo = self.b.ins().imul(sp, chunk);
                let hi = self.b.ins().iadd(lo, chunk);
                (lo, self.b.ins().smin(hi, len))
            }
            Some(entry) => self.chunked_split(len, entry, sp),
        };
        let tl = self.layout(tile);
        let vl = self.layout(valid);
        let tbase = self.scratch_at(tl.offset);
        let vbase = self.scratch_at(vl.offset);
        let vstride = if block == 1 { 0 } else { 4 };
        let mut res = Ok(());
        self.for_dyn(lo, hi, block as i64, |l, st| {
            l.b.def_var(l.vars[start], st);
            l.for_const(0, block as i64, 1, |l, r| {
                let t = l.b.ins().iadd(st, r);
                let in_hi = l.b.ins().icmp(IntCC::SignedLessThan, t, hi);
                let nonneg = l.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, t, 0);
                let ok = l.b.ins().band(in_hi, nonneg);
                let okv = l.b.ins().uextend(types::I32, ok);
                let vo = l.b.ins().imul_imm_s(r, vstride);
                let va = l.b.ins().iadd(vbase, vo);
                l.b.ins().store(mem(), okv, va, 0);
                let ro = l.b.ins().imul_imm_s(r, (row * 4) as i64);
                let drow = l.b.ins().iadd(tbase, ro);
                l.if_else(
                    ok,
                    |l| {
                        let (src, page_ok) = l.paged_row(cache, bi, t);
                        l.if_else(
                            page_ok,
                            |l| match format {
                                PagedFormat::Plain => l.copy_row_in(dtype, src, drow, row),
                                PagedFormat::Fp8 { lat } => l.fp8_row_in(lat, src, drow, row),
                            },
                            |l| l.zero_row(drow, row),
                        );
                    },
                    |l| l.zero_row(drow, row),
                );
            });
            res = l.stmts(body);
        });
        res
    }

    /// `chunk[batch]` of a `chunked` cache as i64 (1 when `batch` is out of range); `None` for a
    /// cache without a split table.
    fn split_table(&mut self, cache: ParamId, batch: Value) -> Option<Value> {
        let ParamVals::Paged {
            chunks: Some(chunks),
            batch: n,
            ..
        } = &self.params[cache]
        else {
            return None;
        };
        let (chunks, n) = (*chunks, *n);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, batch, n);
        let one = self.b.ins().iconst(types::I32, 1);
        let v = self.if_value(
            ok,
            types::I32,
            |s| {
                let a = s.b.ins().ishl_imm_u(batch, 2);
                let a = s.b.ins().iadd(chunks, a);
                s.b.ins().load(types::I32, mem(), a, 0)
            },
            one,
        );
        Some(self.b.ins().sextend(types::I64, v))
    }

    /// The token range `[lo, hi)` of split `sp` of a sequence of `len` tokens under a split table
    /// entry `entry` (see [`Stmt::PagedBlocks`]); a split past the sequence's last returns from
    /// the program here.
    fn chunked_split(&mut self, len: Value, entry: Value, sp: Value) -> (Value, Value) {
        let one = self.i64c(1);
        let whole = self.b.ins().smax(len, one);
        let has = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, entry, 1);
        let c = self.b.ins().select(has, entry, whole);
        // i64 arithmetic: `len + c - 1` cannot overflow for i32 inputs.
        let n = self.b.ins().iadd(len, c);
        let n = self.b.ins().iadd_imm_s(n, -1);
        let n = self.b.ins().sdiv(n, c);
        let nsplits = self.b.ins().smax(n, one);
        let live = self.b.ins().icmp(IntCC::UnsignedLessThan, sp, nsplits);
        let (cont, dead) = (self.b.create_block(), self.b.create_block());
        self.b.ins().brif(live, cont, &[], dead, &[]);
        self.b.seal_block(dead);
        self.b.switch_to_block(dead);
        self.b.ins().return_(&[]);
        self.b.seal_block(cont);
        self.b.switch_to_block(cont);
        let lo = self.b.ins().imul(sp, c);
        let hi = self.b.ins().iadd(lo, c);
        (lo, self.b.ins().smin(hi, len))
    }

    pub(in crate::cpu) fn paged_store(
        &mut self,
        cache: ParamId,
        batch: &Index,
        start: &Index,
        src: TileId,
    ) -> Result<(), IrError> {
        let ParamVals::Paged { dtype, format, .. } = &self.params[cache] else {
            return Err(super::backend_err(
                self.k,
                "paged store into a non-paged param",
            ));
        };
        let (dtype, format) = (*dtype, *format);
        let bi = self.index(batch);
        let bi = self.val(bi);
        let st = self.index(start);
        let st = self.val(st);
        let len = self.seq_len(cache, bi);
        let sl = self.layout(src);
        let ([n, cols], [s0, s1]) = sl.rank2();
        let s1 = if cols == 1 { 0 } else { s1 };
        if let PagedFormat::Fp8 { lat } = format {
            if cols != row_cols(self, cache) || cols < lat {
                return Err(super::backend_err(
                    self.k,
                    "a store into an FP8 paged cache must write whole rows",
                ));
            }
        }
        let sbase = self.scratch_at(sl.offset);
        let tile_ty = self.k.tiles[src].dtype;
        self.for_const(0, n as i64, 1, |l, r| {
            let t = l.b.ins().iadd(st, r);
            let ok = l.b.ins().icmp(IntCC::UnsignedLessThan, t, len);
            l.if_then(ok, |l| {
                let (dstp, page_ok) = l.paged_row(cache, bi, t);
                let so = l.b.ins().imul_imm_s(r, (s0 * 4) as i64);
                let srow = l.b.ins().iadd(sbase, so);
                l.if_then(page_ok, |l| match format {
                    PagedFormat::Plain => l.copy_row_out(srow, s1, tile_ty, dtype, dstp, cols),
                    PagedFormat::Fp8 { lat } => l.fp8_row_out(lat, srow, s1, tile_ty, dstp, cols),
                });
            });
        });
        Ok(())
    }
}

/// Columns of a paged parameter's rows.
fn row_cols(l: &Lower<'_, '_>, cache: ParamId) -> usize {
    match &l.params[cache] {
        ParamVals::Paged { row, .. } => *row,
        _ => 0,
    }
}
