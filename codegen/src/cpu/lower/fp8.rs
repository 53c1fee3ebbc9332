//! The FP8 row format of a paged cache ([`PagedFormat::Fp8`], see [`crate::kv_format`]):
//! a block load dequantises a row into the kernel's bf16 tile, a row store quantises.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};

use super::{mem, Lower};
use crate::ir::DType;
use crate::kv_format::{fp8_rope_offset, fp8_row_bytes, E4M3_MAX, FP8_GROUP};

impl Lower<'_, '_> {
    /// Reads the FP8 row at `src` (`lat` quantised columns of a `row`-column row) into dense
    /// f32 scratch at `dst`: `bf16(e4m3 · scale)`, then the bf16 RoPE columns.
    pub(in crate::cpu) fn fp8_row_in(&mut self, lat: usize, src: Value, dst: Value, row: usize) {
        let groups = lat / FP8_GROUP;
        self.for_const(0, groups as i64, 1, |l, g| {
            let so = l.b.ins().imul_imm_s(g, 4);
            let sa = l.b.ins().iadd(src, so);
            let scale = l.b.ins().load(types::F32, mem(), sa, lat as i32);
            let go = l.b.ins().imul_imm_s(g, FP8_GROUP as i64);
            let gsrc = l.b.ins().iadd(src, go);
            let go4 = l.b.ins().imul_imm_s(g, (FP8_GROUP * 4) as i64);
            let gdst = l.b.ins().iadd(dst, go4);
            l.for_const(0, FP8_GROUP as i64, 1, |l, j| {
                let a = l.b.ins().iadd(gsrc, j);
                let byte = l.b.ins().uload8(types::I32, mem(), a, 0);
                let v = l.e4m3_to_f32(byte);
                let v = l.b.ins().fmul(v, scale);
                let bits = l.bf16_bits(v, false);
                let v = l.bf16_to_f32(bits, false);
                let o = l.b.ins().imul_imm_s(j, 4);
                let d = l.b.ins().iadd(gdst, o);
                l.b.ins().store(mem(), v, d, 0);
            });
        });
        let rope = self.b.ins().iadd_imm_s(src, fp8_rope_offset(lat) as i64);
        let rdst = self.b.ins().iadd_imm_s(dst, (lat * 4) as i64);
        self.copy_row_in(DType::BF16, rope, rdst, row - lat);
    }

    /// Writes the `n` tile elements at `src` (f32 scratch, stride `stride` elements) as an FP8
    /// row with `lat` quantised columns at `dst`, padding included (the rule of
    /// [`crate::kv_format`]).
    pub(in crate::cpu) fn fp8_row_out(
        &mut self,
        lat: usize,
        src: Value,
        stride: usize,
        tile_ty: DType,
        dst: Value,
        n: usize,
    ) {
        let groups = lat / FP8_GROUP;
        let st = (stride * 4) as i64;
        self.for_const(0, groups as i64, 1, |l, g| {
            let go = l.b.ins().imul_imm_s(g, FP8_GROUP as i64 * st);
            let gsrc = l.b.ins().iadd(src, go);
            let amax = l.b.declare_var(types::F32);
            let zero = l.f32c(0.0, false);
            l.b.def_var(amax, zero);
            l.for_const(0, FP8_GROUP as i64, 1, |l, j| {
                let o = l.b.ins().imul_imm_s(j, st);
                let a = l.b.ins().iadd(gsrc, o);
                let x = l.b.ins().load(types::F32, mem(), a, 0);
                let x = l.b.ins().fabs(x);
                let m = l.b.use_var(amax);
                // NaN compares false: ignored.
                let gt = l.b.ins().fcmp(FloatCC::GreaterThan, x, m);
                let m = l.b.ins().select(gt, x, m);
                l.b.def_var(amax, m);
            });
            let m = l.b.use_var(amax);
            let c448 = l.f32c(E4M3_MAX, false);
            let s = l.b.ins().fdiv(m, c448);
            let zero = l.f32c(0.0, false);
            let pos = l.b.ins().fcmp(FloatCC::GreaterThan, s, zero);
            let one = l.f32c(1.0, false);
            let s = l.b.ins().select(pos, s, one);
            let so = l.b.ins().imul_imm_s(g, 4);
            let sa = l.b.ins().iadd(dst, so);
            l.b.ins().store(mem(), s, sa, lat as i32);
            let bo = l.b.ins().imul_imm_s(g, FP8_GROUP as i64);
            let gdst = l.b.ins().iadd(dst, bo);
            l.for_const(0, FP8_GROUP as i64, 1, |l, j| {
                let o = l.b.ins().imul_imm_s(j, st);
                let a = l.b.ins().iadd(gsrc, o);
                let x = l.b.ins().load(types::F32, mem(), a, 0);
                let q = l.b.ins().fdiv(x, s);
                let byte = l.e4m3_from_f32(q);
                let d = l.b.ins().iadd(gdst, j);
                l.b.ins().istore8(mem(), byte, d, 0);
            });
        });
        let rope_at = fp8_rope_offset(lat);
        let rsrc = self.b.ins().iadd_imm_s(src, lat as i64 * st);
        let rdst = self.b.ins().iadd_imm_s(dst, rope_at as i64);
        self.copy_row_out(rsrc, stride, tile_ty, DType::BF16, rdst, n - lat);
        let z = self.i32c(0, false);
        let pads =
            (lat + 4 * groups..rope_at).chain(rope_at + 2 * (n - lat)..fp8_row_bytes(lat, n));
        for p in pads {
            self.b.ins().istore8(mem(), z, dst, p as i32);
        }
    }

    /// The value of an e4m3 byte (i32 holding 0..=255) as f32 (see
    /// [`crate::kv_format::e4m3_to_f32`]).
    fn e4m3_to_f32(&mut self, byte: Value) -> Value {
        let m = self.b.ins().band_imm_u(byte, 0x7f);
        let bits = self.b.ins().ishl_imm_u(m, 20);
        let f = self.b.ins().bitcast(types::F32, MemFlagsData::new(), bits);
        let rebias = self.f32c(f32::from_bits((127 + 120) << 23), false);
        let f = self.b.ins().fmul(f, rebias);
        let fb = self.b.ins().bitcast(types::I32, MemFlagsData::new(), f);
        let sign = self.b.ins().band_imm_u(byte, 0x80);
        let sign = self.b.ins().ishl_imm_u(sign, 24);
        let fb = self.b.ins().bor(fb, sign);
        let f = self.b.ins().bitcast(types::F32, MemFlagsData::new(), fb);
        let nan = self.f32c(f32::NAN, false);
        let is_nan = self.b.ins().icmp_imm_s(IntCC::Equal, m, 0x7f);
        self.b.ins().select(is_nan, nan, f)
    }

    /// `x` (f32) as an e4m3 byte in an i32: round to nearest even, saturating to ±448, NaN to
    /// NaN (see [`crate::kv_format::e4m3_from_f32`]).
    fn e4m3_from_f32(&mut self, x: Value) -> Value {
        let bits = self.b.ins().bitcast(types::I32, MemFlagsData::new(), x);
        let sign = self.b.ins().ushr_imm_u(bits, 24);
        let sign = self.b.ins().band_imm_u(sign, 0x80);
        let a = self.b.ins().fabs(x);
        // Subnormal range: steps of 2^-9, rounded to even by adding and removing 2^23.
        let c512 = self.f32c(512.0, false);
        let t = self.b.ins().fmul(a, c512);
        let magic = self.f32c(8_388_608.0, false);
        let t = self.b.ins().fadd(t, magic);
        let t = self.b.ins().fsub(t, magic);
        let sub = self.b.ins().fcvt_to_sint_sat(types::I32, t);
        // Normal range: exponent rebiased to 7, three mantissa bits rounded to even.
        let ab = self.b.ins().bitcast(types::I32, MemFlagsData::new(), a);
        let e = self.b.ins().ushr_imm_u(ab, 23);
        let e = self.b.ins().iadd_imm_s(e, -(127 - 7));
        let e = self.b.ins().ishl_imm_u(e, 3);
        let keep = self.b.ins().ushr_imm_u(ab, 20);
        let keep = self.b.ins().band_imm_u(keep, 7);
        let rem = self.b.ins().band_imm_u(ab, 0xf_ffff);
        let gt = self
            .b
            .ins()
            .icmp_imm_u(IntCC::UnsignedGreaterThan, rem, 0x8_0000);
        let eq = self.b.ins().icmp_imm_s(IntCC::Equal, rem, 0x8_0000);
        let odd = self.b.ins().band_imm_u(keep, 1);
        let odd = self.b.ins().icmp_imm_s(IntCC::NotEqual, odd, 0);
        let tie = self.b.ins().band(eq, odd);
        let up = self.b.ins().bor(gt, tie);
        let up = self.b.ins().uextend(types::I32, up);
        let code = self.b.ins().iadd(e, keep);
        let code = self.b.ins().iadd(code, up);
        let c7e = self.i32c(0x7e, false);
        let normal = self.b.ins().smin(code, c7e);
        let min_normal = self.f32c(f32::from_bits((127 - 6) << 23), false);
        let small = self.b.ins().fcmp(FloatCC::LessThan, a, min_normal);
        let r = self.b.ins().select(small, sub, normal);
        let c448 = self.f32c(E4M3_MAX, false);
        let big = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, a, c448);
        let r = self.b.ins().select(big, c7e, r);
        let is_nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
        let c7f = self.i32c(0x7f, false);
        let r = self.b.ins().select(is_nan, c7f, r);
        self.b.ins().bor(r, sign)
    }
}
