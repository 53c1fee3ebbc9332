//! Shared helpers: a small deterministic RNG, index/operand shorthands, a program-by-program
//! runner and float comparisons.

use tpla_codegen::cpu::{abi, CpuKernel};
use tpla_codegen::ir::*;
use tpla_codegen::Config;

/// A small deterministic xorshift generator, so every run sees the same inputs.
pub(crate) struct Rng(u64);
impl Rng {
    /// A generator seeded from `seed` (any value, zero included).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next raw 64-bit value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1), never exactly zero.
    pub(crate) fn f(&mut self) -> f32 {
        let x = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if x == 0.0 {
            0.25
        } else {
            x
        }
    }
    /// `n` values from [`Rng::f`].
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    /// Uniform in `[0, n)`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The default compiler configuration.
pub(crate) fn cfg() -> Config {
    Config::new()
}

/// A constant index.
pub(crate) fn c(i: i64) -> Index {
    Index::Const(i)
}
/// The program id along axis `a`.
pub(crate) fn pid(a: u8) -> Index {
    Index::ProgramId(a)
}
/// `a + b` as an index expression.
pub(crate) fn add(a: Index, b: Index) -> Index {
    Index::bin(IndexOp::Add, a, b)
}
/// `a * b` as an index expression.
pub(crate) fn mul(a: Index, b: Index) -> Index {
    Index::bin(IndexOp::Mul, a, b)
}
/// The slice `start .. start + len`.
pub(crate) fn span(start: Index, len: usize) -> Slice {
    Slice::Span { start, len }
}
/// A tile operand.
pub(crate) fn t(id: TileId) -> Operand {
    Operand::Tile(id)
}
/// A literal float scalar operand.
pub(crate) fn lit(x: f32) -> Operand {
    Operand::Scalar(FScalar::Lit(x))
}

/// Runs every program of `grid` with a fresh (poisoned) scratch buffer.
pub(crate) fn run(k: &Kernel, code: &CpuKernel, args: &[u64], dims: &[i64], grid: [i64; 3]) {
    let n = code.scratch_bytes();
    let mut buf = vec![0xFFu8; n + 64];
    let off = buf.as_ptr().align_offset(64);
    assert_eq!(abi::total_slots(k), args.len());
    for z in 0..grid[2] {
        for y in 0..grid[1] {
            for x in 0..grid[0] {
                let scratch = &mut buf[off..off + n];
                scratch.fill(0xFF); // NaN bits
                                    // SAFETY: the test builds `args` per the ABI from live buffers sized for the shapes.
                unsafe { code.run_program(args, dims, [x, y, z], scratch) };
            }
        }
    }
}

/// JIT-compiles `k`, panicking with the error if it fails.
pub(crate) fn compile(k: &Kernel) -> CpuKernel {
    CpuKernel::compile(k).unwrap_or_else(|e| panic!("compile failed: {e}"))
}

/// Whether `got` matches `want` within relative tolerance `tol`; NaN and infinities must match
/// exactly.
pub(crate) fn close(got: f32, want: f32, tol: f32) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol * (1.0 + want.abs())
}

/// Asserts [`close`] element by element, naming `what` and the first failing element.
pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, tol), "{what}: element {i}: got {g}, want {w}");
    }
}
