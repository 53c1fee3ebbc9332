//! The call to the host gemm (`cpu/host_gemm.rs`) that replaces the generated gemm loops for
//! tiles of at least [`HOST_GEMM_MIN_MACS`] multiply-adds, where enabled
//! ([`CpuOptions::host_gemm`](crate::cpu::CpuOptions)). The choice is made in `gemm.rs`.

use cranelift_codegen::ir::{types, InstBuilder, StackSlotData, StackSlotKind, Value};

use super::gemm::{Init, Op};
use super::{mem, Lower};
use crate::cpu::host_gemm::{GemmCall, HOST_GEMM_MIN_MACS};
use crate::cpu::layout::GemmKernel;

impl Lower<'_, '_> {
    /// Whether a gemm of `m x n x k` that would take `kernel` calls the host gemm instead.
    pub(super) fn takes_host_gemm(&self, kernel: GemmKernel, m: usize, n: usize, k: usize) -> bool {
        self.host.gemm.is_some()
            && kernel != GemmKernel::Scalar
            && m.saturating_mul(n).saturating_mul(k) >= HOST_GEMM_MIN_MACS
    }

    /// Fills a [`GemmCall`] in a stack slot and calls the host gemm: `out` (dense, row stride
    /// `n`) `= start + a @ b`, the start given by `init` (row stride `n`) or zero.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn host_gemm_call(
        &mut self,
        a: Op,
        b: Op,
        out: Value,
        m: usize,
        n: usize,
        k: usize,
        init: Option<Init>,
    ) {
        let f = self.host.gemm.expect("host gemm declared when chosen");
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            GemmCall::BYTES,
            3,
        ));
        let rec = self.b.ins().stack_addr(types::I64, slot, 0);
        let null = self.i64c(0);
        let (init_base, col, col_s) = match init {
            None => (null, null, 0),
            Some(Init { base, col: None }) => (base, null, 0),
            Some(Init {
                base,
                col: Some((c, stride)),
            }) => (base, c, stride / 4),
        };
        let ptrs = [
            ("a", a.base),
            ("b", b.base),
            ("out", out),
            ("init", init_base),
            ("col", col),
        ];
        for (field, v) in ptrs {
            self.b.ins().store(mem(), v, rec, GemmCall::offset(field));
        }
        let ints = [
            ("m", m),
            ("n", n),
            ("k", k),
            ("a_s0", a.s0),
            ("a_s1", a.s1),
            ("b_s0", b.s0),
            ("b_s1", b.s1),
            ("ldo", n),
            ("col_s", col_s),
        ];
        for (field, x) in ints {
            let v = self.i64c(x as i64);
            self.b.ins().store(mem(), v, rec, GemmCall::offset(field));
        }
        self.b.ins().call(f, &[rec]);
    }
}
