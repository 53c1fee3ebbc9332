//! The CPU backend's two gemm paths on the same random inputs: the host-compiled gemm
//! (`CpuOptions { host_gemm: true }`, `cpu/host_gemm.rs`: AVX-512 or AVX2 + FMA where the host
//! has them, a portable loop elsewhere) and the generated Cranelift loops (`host_gemm: false`), each
//! against an f64 reference, plus which of them the Cranelift IR calls.

#![allow(clippy::needless_range_loop)]

use half::bf16;
use tpla_codegen::cpu::host_gemm::{host_gemm_available, vector_kernel, HOST_GEMM_MIN_MACS};
use tpla_codegen::cpu::{abi, CpuKernel, CpuOptions};
use tpla_codegen::ir::*;
use tpla_codegen::{Config, KernelBuilder};

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1), never exactly zero.
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let x = (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if x == 0.0 {
            0.25
        } else {
            x
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn c(i: i64) -> Index {
    Index::Const(i)
}
fn span(len: usize) -> Slice {
    Slice::Span { start: c(0), len }
}
fn dims(d: &[usize]) -> Vec<ParamDim> {
    d.iter().map(|&x| ParamDim::Const(x)).collect()
}

/// Whether the Cranelift IR calls the host gemm (its import is declared with the symbol as a
/// comment, see `name_host_calls`).
fn calls_host_gemm(clif: &str) -> bool {
    let Some(decl) = clif.lines().find(|l| l.ends_with("; tpla_cpu_gemm")) else {
        return false;
    };
    let fref = decl.split_whitespace().next().unwrap_or_default();
    clif.contains(&format!("call {fref}("))
}

/// Both paths' options, host gemm first.
fn both() -> [(CpuOptions, &'static str); 2] {
    [
        (CpuOptions { host_gemm: true }, "host gemm"),
        (CpuOptions { host_gemm: false }, "generated loops"),
    ]
}

/// Runs program (0, 0, 0) with a poisoned scratch buffer.
fn run(code: &CpuKernel, args: &[u64]) {
    let n = code.scratch_bytes();
    let mut buf = vec![0xFFu8; n + 64]; // NaN bits
    let off = buf.as_ptr().align_offset(64);
    // SAFETY: `args` follows the ABI from live buffers of exactly the declared shapes; the
    // only writable one aliases nothing; scratch is 64-byte aligned and large enough.
    unsafe { code.run_program(args, &[], [0, 0, 0], &mut buf[off..off + n]) };
}

fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
    assert_eq!(got.len(), want.len());
    let tol = 1e-5 * (k as f64).sqrt();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

/// How `b` is presented to the gemm.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// `a @ b.t()` with `b` a `[n, k]` tile (the `q @ kv.t()` form).
    Nt,
    /// `a @ b[:, 3..3 + n]` of a `[k, n + 5]` tile (the `p @ kv.cols(..)` form).
    NnSliced,
    /// `a.t() @ b` with `a` a `[k, m]` tile (strided left operand).
    TransA,
}

/// `o = a @ b` in the given form, on both paths.
fn gemm_case(m: usize, k: usize, n: usize, form: Form) {
    let (ar, ac) = if form == Form::TransA { (k, m) } else { (m, k) };
    let (br, bc) = match form {
        Form::Nt => (n, k),
        Form::NnSliced => (k, n + 5),
        Form::TransA => (k, n),
    };
    let mut b = KernelBuilder::new("gemm", &Config::new());
    let pa = b.tensor("a", DType::F32, dims(&[ar, ac]), false);
    let pb = b.tensor("b", DType::BF16, dims(&[br, bc]), false);
    let po = b.tensor("o", DType::F32, dims(&[m, n]), true);
    let load = |b: &mut KernelBuilder, name, param, r, cc| {
        b.define(
            name,
            TileOp::Load {
                param,
                index: vec![span(r), span(cc)],
            },
        )
        .unwrap()
    };
    let at = load(&mut b, "at", pa, ar, ac);
    let bt = load(&mut b, "bt", pb, br, bc);
    let av = match form {
        Form::TransA => b.define("av", TileOp::View(at, ViewOp::Transpose)).unwrap(),
        _ => at,
    };
    let bv = match form {
        Form::Nt => b.define("bv", TileOp::View(bt, ViewOp::Transpose)).unwrap(),
        Form::NnSliced => {
            let s = ViewOp::Slice {
                axis: 1,
                start: 3,
                len: n,
            };
            b.define("bv", TileOp::View(bt, s)).unwrap()
        }
        Form::TransA => bt,
    };
    let s = b.define("s", TileOp::Gemm { a: av, b: bv }).unwrap();
    b.store(po, vec![span(m), span(n)], s).unwrap();
    let kern = b.finish().unwrap();

    let mut rng = Rng::new((m * 7919 + k * 31 + n) as u64);
    let a_host = rng.vec(ar * ac);
    let b_host: Vec<bf16> = rng.vec(br * bc).into_iter().map(bf16::from_f32).collect();
    let a_at = |i: usize, kk: usize| match form {
        Form::TransA => a_host[kk * ac + i],
        _ => a_host[i * ac + kk],
    };
    let b_at = |kk: usize, j: usize| {
        match form {
            Form::Nt => b_host[j * bc + kk],
            Form::NnSliced => b_host[kk * bc + 3 + j],
            Form::TransA => b_host[kk * bc + j],
        }
        .to_f32()
    };
    let mut want = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|kk| a_at(i, kk) as f64 * b_at(kk, j) as f64)
                .sum();
        }
    }
    let big = m * n * k >= HOST_GEMM_MIN_MACS;
    for (opts, path) in both() {
        let what = format!("gemm {m}x{k}x{n} {form:?}, {path}");
        let code = CpuKernel::compile_with(&kern, &opts).unwrap();
        assert_eq!(
            calls_host_gemm(code.clif()),
            opts.host_gemm && big,
            "{what}: which path the code takes"
        );
        let mut o = vec![f32::NAN; m * n];
        let mut args = Vec::new();
        abi::push_tensor(&mut args, a_host.as_ptr(), &[ar, ac]);
        abi::push_tensor(&mut args, b_host.as_ptr(), &[br, bc]);
        abi::push_tensor(&mut args, o.as_mut_ptr(), &[m, n]);
        run(&code, &args);
        assert_close(&o, &want, k, &what);
    }
}

#[test]
fn both_paths_match_f64_on_decode_shapes() {
    // The latent decode's tiles at BLOCK_H 16, BLOCK_N 64, latent 512 + rope 64.
    gemm_case(16, 576, 64, Form::Nt);
    gemm_case(16, 64, 512, Form::NnSliced);
}

#[test]
fn both_paths_match_f64_on_edges_and_strides() {
    // Rows, columns and K off every block and vector size; a strided left operand.
    for (m, k, n) in [(13, 45, 37), (5, 100, 17), (17, 19, 33), (1, 300, 70)] {
        for form in [Form::Nt, Form::NnSliced, Form::TransA] {
            gemm_case(m, k, n, form);
        }
    }
}

#[test]
fn small_gemms_keep_the_generated_loops() {
    gemm_case(4, 8, 8, Form::Nt);
    gemm_case(7, 13, 17, Form::NnSliced);
}

/// `acc = acc * col + p @ v` (the online softmax's accumulator update, fused into the gemm), `v`
/// a column slice of a wider tile, on both paths.
#[test]
fn both_paths_match_f64_on_the_fused_update() {
    for (m, k, n) in [(16, 64, 512), (6, 37, 44)] {
        let w = n + 7;
        let mut b = KernelBuilder::new("update", &Config::new());
        let pacc = b.tensor("acc0", DType::F32, dims(&[m, n]), false);
        let pcol = b.tensor("col", DType::F32, dims(&[m]), false);
        let pp = b.tensor("p", DType::F32, dims(&[m, k]), false);
        let pv = b.tensor("v", DType::BF16, dims(&[k, w]), false);
        let po = b.tensor("o", DType::F32, dims(&[m, n]), true);
        let load = |b: &mut KernelBuilder, name, param, index| {
            b.define(name, TileOp::Load { param, index }).unwrap()
        };
        let acc = load(&mut b, "acc", pacc, vec![span(m), span(n)]);
        let col = load(&mut b, "col", pcol, vec![span(m)]);
        let p = load(&mut b, "p", pp, vec![span(m), span(k)]);
        let vt = load(&mut b, "vt", pv, vec![span(k), span(w)]);
        let slice = ViewOp::Slice {
            axis: 1,
            start: 2,
            len: n,
        };
        let v = b.define("v", TileOp::View(vt, slice)).unwrap();
        let cu = b
            .define("cu", TileOp::View(col, ViewOp::Unsqueeze(1)))
            .unwrap();
        let (ta, tc) = (Operand::Tile(acc), Operand::Tile(cu));
        let y = b
            .define("y", TileOp::Binary(BinaryOp::Mul, ta, tc))
            .unwrap();
        let g = b.define("g", TileOp::Gemm { a: p, b: v }).unwrap();
        let (ty, tg) = (Operand::Tile(y), Operand::Tile(g));
        b.assign(acc, TileOp::Binary(BinaryOp::Add, ty, tg))
            .unwrap();
        b.store(po, vec![span(m), span(n)], acc).unwrap();
        let kern = b.finish().unwrap();

        let mut rng = Rng::new((m * 131 + k * 7 + n) as u64);
        let (acc0, colv, ph) = (rng.vec(m * n), rng.vec(m), rng.vec(m * k));
        let vh: Vec<bf16> = rng.vec(k * w).into_iter().map(bf16::from_f32).collect();
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|kk| ph[i * k + kk] as f64 * vh[kk * w + 2 + j].to_f64())
                    .sum();
                want[i * n + j] = acc0[i * n + j] as f64 * colv[i] as f64 + dot;
            }
        }
        for (opts, path) in both() {
            let what = format!("update {m}x{k}x{n}, {path}");
            let code = CpuKernel::compile_with(&kern, &opts).unwrap();
            assert_eq!(calls_host_gemm(code.clif()), opts.host_gemm, "{what}");
            let mut o = vec![f32::NAN; m * n];
            let mut args = Vec::new();
            abi::push_tensor(&mut args, acc0.as_ptr(), &[m, n]);
            abi::push_tensor(&mut args, colv.as_ptr(), &[m]);
            abi::push_tensor(&mut args, ph.as_ptr(), &[m, k]);
            abi::push_tensor(&mut args, vh.as_ptr(), &[k, w]);
            abi::push_tensor(&mut args, o.as_mut_ptr(), &[m, n]);
            run(&code, &args);
            assert_close(&o, &want, k, &what);
        }
    }
}

/// The default options take the host gemm exactly where it has its vector kernel (and
/// `TPLA_CPU_HOST_GEMM` is not `0`).
#[test]
fn default_options_follow_the_host() {
    let off = std::env::var_os(CpuOptions::HOST_GEMM_VAR).is_some_and(|v| v == "0");
    assert_eq!(
        CpuOptions::default().host_gemm,
        host_gemm_available() && !off
    );
    match vector_kernel() {
        Some(k) => eprintln!("note: the host gemm ran its {k:?} kernel in these tests"),
        None => eprintln!(
            "note: neither AVX-512F nor AVX2 + FMA here: the host gemm ran its portable loop"
        ),
    }
}
