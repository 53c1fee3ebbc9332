//! Elementwise arithmetic on f32 / i32 scalars and 4-lane vectors, and the host functions the
//! generated code calls (`log2`; `exp2` is inline).

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};

use super::lower::Lower;
use crate::ir::{BinaryOp, CmpOp, UnaryOp};

/// `log2(x)` for the generated code (`log2(0) = -inf`).
pub(super) extern "C" fn host_log2(x: f32) -> f32 {
    x.log2()
}

/// Symbol name of [`host_log2`].
pub(super) const LOG2_SYMBOL: &str = "tpla_cpu_log2f";

impl Lower<'_, '_> {
    /// An i32 constant, splatted when `vec`.
    pub(super) fn i32c(&mut self, v: i32, vec: bool) -> Value {
        let c = self.b.ins().iconst(types::I32, v as i64);
        if vec {
            self.b.ins().splat(types::I32X4, c)
        } else {
            c
        }
    }

    /// An f32 constant, splatted when `vec`.
    pub(super) fn f32c(&mut self, v: f32, vec: bool) -> Value {
        let c = self.b.ins().f32const(v);
        if vec {
            self.b.ins().splat(types::F32X4, c)
        } else {
            c
        }
    }

    /// Chooses `a` where the comparison mask `c` is set, else `b` (masks as produced by
    /// `fcmp`/`icmp` on scalars or vectors).
    pub(super) fn choose(&mut self, c: Value, a: Value, b: Value, vec: bool) -> Value {
        if vec {
            let ty = self.b.func.dfg.value_type(a);
            let c = if self.b.func.dfg.value_type(c) != ty {
                self.b.ins().bitcast(ty, MemFlagsData::new(), c)
            } else {
                c
            };
            self.b.ins().bitselect(c, a, b)
        } else {
            self.b.ins().select(c, a, b)
        }
    }

    /// Rust's `f32::max` / `f32::min`: a NaN operand yields the other one.
    fn fminmax(&mut self, max: bool, a: Value, b: Value, vec: bool) -> Value {
        let cc = if max {
            FloatCC::GreaterThanOrEqual
        } else {
            FloatCC::LessThanOrEqual
        };
        let c1 = self.b.ins().fcmp(cc, a, b);
        let c2 = self.b.ins().fcmp(FloatCC::Unordered, b, b);
        let c = self.b.ins().bor(c1, c2);
        self.choose(c, a, b, vec)
    }

    /// Float binary operation.
    pub(super) fn float_binary(&mut self, op: BinaryOp, a: Value, b: Value, vec: bool) -> Value {
        match op {
            BinaryOp::Add => self.b.ins().fadd(a, b),
            BinaryOp::Sub => self.b.ins().fsub(a, b),
            BinaryOp::Mul => self.b.ins().fmul(a, b),
            BinaryOp::Div => self.b.ins().fdiv(a, b),
            BinaryOp::Max => self.fminmax(true, a, b, vec),
            BinaryOp::Min => self.fminmax(false, a, b, vec),
        }
    }

    /// Integer binary operation (i32; division by zero or overflow yields 0). Division is
    /// scalar only.
    pub(super) fn int_binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        match op {
            BinaryOp::Add => self.b.ins().iadd(a, b),
            BinaryOp::Sub => self.b.ins().isub(a, b),
            BinaryOp::Mul => self.b.ins().imul(a, b),
            BinaryOp::Max => self.b.ins().smax(a, b),
            BinaryOp::Min => self.b.ins().smin(a, b),
            BinaryOp::Div => {
                let z = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
                let m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
                let amin = self.b.ins().icmp_imm_s(IntCC::Equal, a, i32::MIN as i64);
                let ov = self.b.ins().band(m1, amin);
                let bad = self.b.ins().bor(z, ov);
                let one = self.b.ins().iconst(types::I32, 1);
                let safe = self.b.ins().select(bad, one, b);
                let q = self.b.ins().sdiv(a, safe);
                let zero = self.b.ins().iconst(types::I32, 0);
                self.b.ins().select(bad, zero, q)
            }
        }
    }

    /// Float unary function.
    pub(super) fn float_unary(&mut self, op: UnaryOp, x: Value, vec: bool) -> Value {
        match op {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Rsqrt => {
                let s = self.b.ins().sqrt(x);
                let one = self.f32c(1.0, vec);
                self.b.ins().fdiv(one, s)
            }
            UnaryOp::Recip => {
                let one = self.f32c(1.0, vec);
                self.b.ins().fdiv(one, x)
            }
            UnaryOp::Exp2 => self.exp2(x, vec),
            UnaryOp::Log2 => {
                let f = self.host.log2;
                if !vec {
                    let call = self.b.ins().call(f, &[x]);
                    return self.b.inst_results(call)[0];
                }
                let mut r = x;
                for lane in 0..4u8 {
                    let e = self.b.ins().extractlane(x, lane);
                    let call = self.b.ins().call(f, &[e]);
                    let y = self.b.inst_results(call)[0];
                    r = self.b.ins().insertlane(r, y, lane);
                }
                r
            }
        }
    }

    /// `2^x` inline: `x = n + f` with `n = nearest(x)`, `2^f` from a degree-6 polynomial on
    /// `[-0.5, 0.5]` (Cephes `exp2f`, about 2 ulp), `2^n` built in exponent bits as two factors.
    /// Inputs are clamped to `[-150, 128]`, so `exp2(-inf) = 0` exactly, subnormal results are
    /// kept and `exp2(x >= 128) = inf`; NaN stays NaN.
    pub(super) fn exp2(&mut self, x: Value, vec: bool) -> Value {
        let hi = self.f32c(128.0, vec);
        let lo = self.f32c(-150.0, vec);
        let xc = self.float_binary(BinaryOp::Min, x, hi, vec);
        let xc = self.float_binary(BinaryOp::Max, xc, lo, vec);
        let n = self.b.ins().nearest(xc);
        let f = self.b.ins().fsub(xc, n);
        const P: [f32; 6] = [
            1.535_336_2e-4,
            1.339_887_4e-3,
            9.618_438e-3,
            5.550_332_5e-2,
            2.402_264_8e-1,
            6.931_472e-1,
        ];
        let mut p = self.f32c(P[0], vec);
        for &c in &P[1..] {
            let cv = self.f32c(c, vec);
            p = self.madd_f(p, f, cv);
        }
        let one = self.f32c(1.0, vec);
        let p = self.madd_f(p, f, one);
        let ity = if vec { types::I32X4 } else { types::I32 };
        let fty = if vec { types::F32X4 } else { types::F32 };
        // 2^n = 2^h * 2^(n-h) with h = n >> 1, both factors normal for n in [-150, 128].
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let h = self.b.ins().sshr_imm_u(ni, 1);
        let rest = self.b.ins().isub(ni, h);
        let mut r = p;
        for e in [h, rest] {
            let bias = self.i32c(127, vec);
            let e = self.b.ins().iadd(e, bias);
            let e = self.b.ins().ishl_imm_u(e, 23);
            let scale = self.b.ins().bitcast(fty, MemFlagsData::new(), e);
            r = self.b.ins().fmul(r, scale);
        }
        let nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.choose(nan, x, r, vec)
    }

    /// `acc * x + c`, fused when the target has FMA.
    pub(super) fn madd_f(&mut self, acc: Value, x: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(acc, x, c)
        } else {
            let m = self.b.ins().fmul(acc, x);
            self.b.ins().fadd(m, c)
        }
    }

    /// Comparison producing 0/1 as i32 (scalar or I32X4).
    pub(super) fn compare(
        &mut self,
        op: CmpOp,
        a: Value,
        b: Value,
        float: bool,
        vec: bool,
    ) -> Value {
        let c = if float {
            let cc = match op {
                CmpOp::Lt => FloatCC::LessThan,
                CmpOp::Le => FloatCC::LessThanOrEqual,
                CmpOp::Gt => FloatCC::GreaterThan,
                CmpOp::Ge => FloatCC::GreaterThanOrEqual,
                CmpOp::Eq => FloatCC::Equal,
                CmpOp::Ne => FloatCC::NotEqual,
            };
            self.b.ins().fcmp(cc, a, b)
        } else {
            let cc = match op {
                CmpOp::Lt => IntCC::SignedLessThan,
                CmpOp::Le => IntCC::SignedLessThanOrEqual,
                CmpOp::Gt => IntCC::SignedGreaterThan,
                CmpOp::Ge => IntCC::SignedGreaterThanOrEqual,
                CmpOp::Eq => IntCC::Equal,
                CmpOp::Ne => IntCC::NotEqual,
            };
            self.b.ins().icmp(cc, a, b)
        };
        self.mask_to_bool(c, vec)
    }

    /// A comparison mask (i8 scalar or I32X4 all-ones lanes) to 0/1 i32 storage.
    pub(super) fn mask_to_bool(&mut self, c: Value, vec: bool) -> Value {
        if vec {
            let one = self.i32c(1, true);
            self.b.ins().band(c, one)
        } else {
            self.b.ins().uextend(types::I32, c)
        }
    }

    /// A 0/1 i32 bool (scalar or vector) to a comparison mask usable by [`Self::choose`].
    pub(super) fn bool_to_mask(&mut self, v: Value, vec: bool) -> Value {
        let z = self.i32c(0, vec);
        self.b.ins().icmp(IntCC::NotEqual, v, z)
    }

    /// f32 (scalar or F32X4) rounded to bf16 bits (round to nearest even, NaN stays NaN), as
    /// i32 lanes holding the 16 bits.
    pub(super) fn bf16_bits(&mut self, x: Value, vec: bool) -> Value {
        let ity = if vec { types::I32X4 } else { types::I32 };
        let bits = self.b.ins().bitcast(ity, MemFlagsData::new(), x);
        let hi = self.b.ins().ushr_imm_u(bits, 16);
        let one = self.i32c(1, vec);
        let lsb = self.b.ins().band(hi, one);
        let bias = self.i32c(0x7fff, vec);
        let bias = self.b.ins().iadd(lsb, bias);
        let r = self.b.ins().iadd(bits, bias);
        let r = self.b.ins().ushr_imm_u(r, 16);
        let q = self.i32c(0x40, vec);
        let nan = self.b.ins().bor(hi, q);
        let is_nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.choose(is_nan, nan, r, vec)
    }

    /// bf16 bits (i32 scalar or I32X4 holding the 16 bits zero-extended) to f32.
    pub(super) fn bf16_to_f32(&mut self, bits: Value, vec: bool) -> Value {
        let s = self.b.ins().ishl_imm_u(bits, 16);
        let fty = if vec { types::F32X4 } else { types::F32 };
        self.b.ins().bitcast(fty, MemFlagsData::new(), s)
    }
}
