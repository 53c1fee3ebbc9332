//! Structured control flow on top of Cranelift blocks: counted loops and conditionals.
//!
//! Every helper seals the blocks it creates as soon as their predecessors are known, so SSA
//! construction for [`Variable`](cranelift_frontend::Variable)s stays cheap.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use super::lower::Lower;

impl Lower<'_, '_> {
    /// `for iv in (start..end).step_by(step)` with compile-time bounds; `body` gets `iv` (i64).
    /// Emits nothing for an empty range and no loop for a single iteration.
    pub(super) fn for_const(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) {
        if start >= end {
            return;
        }
        if start + step >= end {
            let iv = self.b.ins().iconst(types::I64, start);
            body(self, iv);
            return;
        }
        let s = self.b.ins().iconst(types::I64, start);
        let e = self.b.ins().iconst(types::I64, end);
        self.do_while(s, e, step, body);
    }

    /// `for iv in (start..end).step_by(step)` with runtime bounds (i64 values).
    pub(super) fn for_dyn(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        body: impl FnMut(&mut Self, Value),
    ) {
        let enter = self.b.create_block();
        let exit = self.b.create_block();
        let c = self.b.ins().icmp(IntCC::SignedLessThan, start, end);
        self.b.ins().brif(c, enter, &[], exit, &[]);
        self.b.seal_block(enter);
        self.b.switch_to_block(enter);
        self.do_while(start, end, step, body);
        self.b.ins().jump(exit, &[]);
        self.b.seal_block(exit);
        self.b.switch_to_block(exit);
    }

    /// A loop whose first iteration is known to run.
    fn do_while(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) {
        let hdr = self.b.create_block();
        let iv = self.b.append_block_param(hdr, types::I64);
        let exit = self.b.create_block();
        self.b.ins().jump(hdr, &[start.into()]);
        self.b.switch_to_block(hdr);
        body(self, iv);
        let next = self.b.ins().iadd_imm_s(iv, step);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, next, end);
        self.b.ins().brif(c, hdr, &[next.into()], exit, &[]);
        self.b.seal_block(hdr);
        self.b.seal_block(exit);
        self.b.switch_to_block(exit);
    }

    /// `if cond { then() }` where `cond` is an integer value (non-zero is true).
    pub(super) fn if_then(&mut self, cond: Value, then: impl FnOnce(&mut Self)) {
        let t = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, t, &[], done, &[]);
        self.b.seal_block(t);
        self.b.switch_to_block(t);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.seal_block(done);
        self.b.switch_to_block(done);
    }

    /// `if cond { then() } else { other() }`.
    pub(super) fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self),
        other: impl FnOnce(&mut Self),
    ) {
        let t = self.b.create_block();
        let e = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, t, &[], e, &[]);
        self.b.seal_block(t);
        self.b.seal_block(e);
        self.b.switch_to_block(t);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(e);
        other(self);
        self.b.ins().jump(done, &[]);
        self.b.seal_block(done);
        self.b.switch_to_block(done);
    }

    /// `cond ? then() : zero` for a value of type `ty` computed only when `cond` holds.
    pub(super) fn if_value(
        &mut self,
        cond: Value,
        ty: cranelift_codegen::ir::Type,
        then: impl FnOnce(&mut Self) -> Value,
        zero: Value,
    ) -> Value {
        let t = self.b.create_block();
        let done = self.b.create_block();
        let r = self.b.append_block_param(done, ty);
        self.b.ins().brif(cond, t, &[], done, &[zero.into()]);
        self.b.seal_block(t);
        self.b.switch_to_block(t);
        let v = then(self);
        self.b.ins().jump(done, &[v.into()]);
        self.b.seal_block(done);
        self.b.switch_to_block(done);
        r
    }
}
