//! The layer's element-wise DSL kernels (`tpla_kernels::glue`) against the host functions of
//! `tpla::layer::glue`: random inputs, NaN-poisoned outputs, on the CPU executor and (skipping
//! visibly without one) on a GPU; and their CUDA source at the DeepSeek-V3 / Kimi-K2 shapes
//! compiles with NVRTC.

use rand::{Rng, SeedableRng};
use tpla::layer::glue::{self, RopeTable};
use tpla_codegen::KernelDef;
use tpla_kernels::{
    assemble_query, cache_row, down_norms, down_row, merge_heads, place_rows, place_state,
    query_nope, rms_norm_rows, take_heads,
};
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, Element, Executor, HostTensor};

const THETA: f64 = 10000.0;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn up<X: Executor, T: Element>(exec: &X, shape: &[usize], v: Vec<T>) -> X::Tensor<T> {
    exec.upload(&HostTensor::from_vec(shape, v).unwrap())
        .unwrap()
}

fn poisoned<X: Executor>(exec: &X, shape: &[usize]) -> X::Tensor<f32> {
    exec.upload(&HostTensor::full(shape, f32::NAN)).unwrap()
}

fn poisoned_bf16<X: Executor>(exec: &X, shape: &[usize]) -> X::Tensor<bf16> {
    exec.upload(&HostTensor::full(shape, bf16::NAN)).unwrap()
}

/// `|got − want| ≤ tol · (|want| + floor)` everywhere (NaN fails); `floor` is the scale of
/// the inputs where a result may cancel to near zero.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32, floor: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * (w.abs() + floor);
        assert!(ok, "{what}[{i}]: got {g}, want {w}");
    }
}

/// bf16 outputs against the host value rounded to bf16: within one bf16 step (the kernel
/// rounds its f32 value, the host its f64-derived f32).
fn assert_bf16(what: &str, got: &[bf16], want: &[f32]) {
    let g: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
    let w: Vec<f32> = want.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_close(what, &g, &w, 1.0 / 128.0, 1e-3);
}

/// `rms_norm_rows` = `glue::rms_norm` of every row, then the gain.
pub fn rms_norm_rows_matches_the_host<X: Executor>(exec: &X) {
    let (rows, cols, eps) = (5, 200, 1e-6f32);
    let x = random(rows * cols, 30);
    let gain = random(cols, 31);
    let cfg = rms_norm_rows
        .default_config(&[("COLS", cols as i64)])
        .unwrap();
    let (xd, gd) = (
        up(exec, &[rows, cols], x.clone()),
        up(exec, &[cols], gain.clone()),
    );
    let mut out = poisoned(exec, &[rows, cols]);
    rms_norm_rows::launch(exec, &cfg, &xd, &gd, &mut out, eps).unwrap();
    let mut want = Vec::new();
    for row in x.chunks(cols) {
        let mut r = row.to_vec();
        glue::rms_norm(&mut r, eps, 1.0);
        want.extend(r.iter().zip(&gain).map(|(v, g)| v * g));
    }
    assert_close(
        "rows",
        exec.download(&out).unwrap().data(),
        &want,
        1e-5,
        1e-3,
    );
}

/// `down_norms` = the q RMSNorm (`glue::rms_norm`, then γ; in bf16) and `share · Σ c²`.
pub fn down_norms_matches_the_host<X: Executor>(exec: &X) {
    let (b, ql, w, rope, eps, share) = (3, 96, 64, 16, 1e-6f32, 0.75f32);
    let n = ql + w + rope;
    let y = random(b * n, 1);
    let gain = random(ql, 2);
    let cfg = down_norms
        .default_config(&[("QL", ql as i64), ("W", w as i64), ("ROPE", rope as i64)])
        .unwrap();
    let (yd, gd) = (up(exec, &[b, n], y.clone()), up(exec, &[ql], gain.clone()));
    let (mut q, mut sq) = (poisoned_bf16(exec, &[b, ql]), poisoned(exec, &[b, 1]));
    down_norms::launch(exec, &cfg, &yd, &gd, &mut q, &mut sq, eps, share).unwrap();
    let (mut want_q, mut want_sq) = (Vec::new(), Vec::new());
    for row in y.chunks(n) {
        let mut x = row[..ql].to_vec();
        glue::rms_norm(&mut x, eps, 1.0);
        want_q.extend(x.iter().zip(&gain).map(|(v, g)| v * g));
        let ss: f64 = row[ql..ql + w].iter().map(|v| f64::from(*v).powi(2)).sum();
        want_sq.push((ss * f64::from(share)) as f32);
    }
    // q_a is written in bf16 (the W_UQ gemm's input).
    assert_bf16("q_a", exec.download(&q).unwrap().data(), &want_q);
    assert_close(
        "c_sq",
        exec.download(&sq).unwrap().data(),
        &want_sq,
        1e-5,
        1e-3,
    );
}

/// `cache_row` = `c · gain / glue::rms(c)` and `glue::rope(k_pe, pos)`, in bf16.
pub fn cache_row_matches_the_host<X: Executor>(exec: &X) {
    let (b, ql, w, rope, eps, gain, pos) = (3, 96, 64, 16, 1e-6f32, 1.3f32, 7usize);
    let n = ql + w + rope;
    let y = random(b * n, 3);
    let c_sq: Vec<f32> = y
        .chunks(n)
        .map(|r| r[ql..ql + w].iter().map(|v| v * v).sum())
        .collect();
    let table = RopeTable::new(10, THETA, rope);
    let cfg = cache_row
        .default_config(&[
            ("QL_PAIRS", (ql / 2) as i64),
            ("W_PAIRS", (w / 2) as i64),
            ("ROPE_PAIRS", (rope / 2) as i64),
        ])
        .unwrap();
    let yd = up(exec, &[b, n / 2, 2], y.clone());
    let sq = up(exec, &[b, 1], c_sq);
    let cos = up(exec, &[10, rope / 2], table.cos);
    let sin = up(exec, &[10, rope / 2], table.sin);
    let mut row = poisoned_bf16(exec, &[b, (w + rope) / 2, 2]);
    let inv_n = 1.0 / w as f32;
    cache_row::launch(
        exec, &cfg, &yd, &sq, &cos, &sin, &mut row, pos as i32, gain, inv_n, eps,
    )
    .unwrap();
    let mut want = Vec::new();
    for r in y.chunks(n) {
        let c = &r[ql..ql + w];
        let f = gain / glue::rms(c, eps);
        want.extend(c.iter().map(|v| v * f));
        let mut k = r[ql + w..].to_vec();
        glue::rope(&mut k, pos, THETA);
        want.extend(k);
    }
    assert_bf16("cache row", exec.download(&row).unwrap().data(), &want);
}

/// `down_row` = `down_norms`'s query latent and `cache_row`'s row (with `Σ c²` of the row's own
/// slice) in one kernel: against the same host functions, one token and then two per sequence.
pub fn down_row_matches_the_host<X: Executor>(exec: &X) {
    let (ql, w, rope, eps, gain, pos) = (96, 64, 16, 1e-6f32, 1.3f32, 7usize);
    let n = ql + w + rope;
    let q_gain = random(ql, 5);
    let table = RopeTable::new(10, THETA, rope);
    for (b, sq) in [(3usize, 1usize), (4, 2)] {
        let y = random(b * n, 4 + sq as u64);
        let cfg = down_row
            .default_config(&[
                ("QL_PAIRS", (ql / 2) as i64),
                ("W_PAIRS", (w / 2) as i64),
                ("ROPE_PAIRS", (rope / 2) as i64),
                ("SQ", sq as i64),
            ])
            .unwrap();
        let yd = up(exec, &[b, n / 2, 2], y.clone());
        let gd = up(exec, &[ql / 2, 2], q_gain.clone());
        let cos = up(exec, &[10, rope / 2], table.cos.clone());
        let sin = up(exec, &[10, rope / 2], table.sin.clone());
        let mut q = poisoned_bf16(exec, &[b, ql / 2, 2]);
        let mut row = poisoned_bf16(exec, &[b, (w + rope) / 2, 2]);
        let inv_n = 1.0 / w as f32;
        down_row::launch(
            exec, &cfg, &yd, &gd, &cos, &sin, &mut q, &mut row, pos as i32, gain, inv_n, eps,
        )
        .unwrap();
        let (mut want_q, mut want_row) = (Vec::new(), Vec::new());
        for (i, r) in y.chunks(n).enumerate() {
            let mut x = r[..ql].to_vec();
            glue::rms_norm(&mut x, eps, 1.0);
            want_q.extend(x.iter().zip(&q_gain).map(|(v, g)| v * g));
            let c = &r[ql..ql + w];
            let f = gain / glue::rms(c, eps);
            want_row.extend(c.iter().map(|v| v * f));
            let mut k = r[ql + w..].to_vec();
            glue::rope(&mut k, pos + i % sq, THETA);
            want_row.extend(k);
        }
        assert_bf16("down_row q_a", exec.download(&q).unwrap().data(), &want_q);
        assert_bf16(
            "down_row row",
            exec.download(&row).unwrap().data(),
            &want_row,
        );
    }
}

/// `query_nope` copies the first `nope` columns of every head in bf16; `assemble_query` = bf16 of the
/// absorbed latent and of `glue::rope(q_pe, pos)`.
pub fn query_kernels_match_the_host<X: Executor>(exec: &X) {
    let (b, h, nope, rope, w, pos) = (2, 5, 24, 16, 64, 9usize);
    let q = random(b * h * (nope + rope), 4);
    let abs = random(b * h * w, 5);
    let nope_cfg = query_nope
        .default_config(&[("NOPE", nope as i64), ("ROPE", rope as i64)])
        .unwrap();
    let qd = up(exec, &[b, h, nope + rope], q.clone());
    let mut qn = poisoned_bf16(exec, &[b, h, nope]);
    query_nope::launch(exec, &nope_cfg, &qd, &mut qn).unwrap();
    // Rounded to bf16 (the absorption gemm's input), exactly as `bf16::from_f32`.
    let want_nope: Vec<bf16> = q
        .chunks(nope + rope)
        .flat_map(|hd| {
            hd[..nope]
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(exec.download(&qn).unwrap().data(), &want_nope[..]);

    let table = RopeTable::new(12, THETA, rope);
    let cfg = assemble_query
        .default_config(&[
            ("W_PAIRS", (w / 2) as i64),
            ("NOPE_PAIRS", (nope / 2) as i64),
            ("ROPE_PAIRS", (rope / 2) as i64),
        ])
        .unwrap();
    let qp = up(exec, &[b, h, (nope + rope) / 2, 2], q.clone());
    // The absorbed latent comes from the gemm in bf16.
    let abs: Vec<f32> = abs.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    let ad = up(
        exec,
        &[b, h, w / 2, 2],
        abs.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(),
    );
    let cos = up(exec, &[12, rope / 2], table.cos);
    let sin = up(exec, &[12, rope / 2], table.sin);
    let mut out = poisoned_bf16(exec, &[b, h, (w + rope) / 2, 2]);
    assemble_query::launch(exec, &cfg, &ad, &qp, &cos, &sin, &mut out, pos as i32).unwrap();
    let mut want = Vec::new();
    for (a, hd) in abs.chunks(w).zip(q.chunks(nope + rope)) {
        want.extend_from_slice(a);
        let mut p = hd[nope..].to_vec();
        glue::rope(&mut p, pos, THETA);
        want.extend(p);
    }
    assert_bf16("query", exec.download(&out).unwrap().data(), &want);
}

/// `place_state` puts a rank's state in its slot and zeros elsewhere; the slots summed over the
/// ranks, `merge_heads` of a head range = `glue::merge` of every rank's state of each head
/// (one rank's state empty: the very negative LSE decode writes).
pub fn dcp_kernels_match_the_host<X: Executor>(exec: &X) {
    let (tp, b, h, lat) = (3usize, 2usize, 5usize, 40usize);
    let outs: Vec<Vec<f32>> = (0..tp)
        .map(|r| random(b * h * lat, 10 + r as u64))
        .collect();
    let mut lses: Vec<Vec<f32>> = (0..tp)
        .map(|r| {
            random(b * h, 20 + r as u64)
                .iter()
                .map(|v| 3.0 * v)
                .collect()
        })
        .collect();
    lses[1][3] = -6.9e29;
    let place = place_state.default_config(&[("LAT", lat as i64)]).unwrap();
    let (mut sum_p, mut sum_l) = (vec![0.0f32; tp * b * h * lat], vec![0.0f32; tp * b * h]);
    for r in 0..tp {
        let o = up(exec, &[b, h, lat], outs[r].clone());
        let l = up(exec, &[b, h], lses[r].clone());
        let (mut p, mut s) = (
            poisoned(exec, &[tp, b, h, lat]),
            poisoned(exec, &[tp, b, h]),
        );
        place_state::launch(exec, &place, &o, &l, &mut p, &mut s, r as i32).unwrap();
        let (p, s) = (exec.download(&p).unwrap(), exec.download(&s).unwrap());
        for slot in 0..tp {
            let (ps, ls) = (b * h * lat, b * h);
            let want_p = if slot == r {
                outs[r].clone()
            } else {
                vec![0.0; ps]
            };
            let want_l = if slot == r {
                lses[r].clone()
            } else {
                vec![0.0; ls]
            };
            assert_eq!(
                &p.data()[slot * ps..(slot + 1) * ps],
                &want_p[..],
                "rank {r} slot {slot}"
            );
            assert_eq!(
                &s.data()[slot * ls..(slot + 1) * ls],
                &want_l[..],
                "rank {r} slot {slot}"
            );
        }
        sum_p.iter_mut().zip(p.data()).for_each(|(a, v)| *a += v);
        sum_l.iter_mut().zip(s.data()).for_each(|(a, v)| *a += v);
    }
    let (first, heads_out) = (2usize, 3usize);
    let merge = merge_heads.default_config(&[("LAT", lat as i64)]).unwrap();
    let pd = up(exec, &[tp, b, h, lat], sum_p);
    let ld = up(exec, &[tp, b, h], sum_l);
    let mut out = poisoned(exec, &[b, heads_out, lat]);
    merge_heads::launch(exec, &merge, &pd, &ld, &mut out, first as i32).unwrap();
    let mut want = Vec::new();
    for bi in 0..b {
        for hh in first..first + heads_out {
            let at = (bi * h + hh) * lat;
            let parts: Vec<&[f32]> = outs.iter().map(|o| &o[at..at + lat]).collect();
            let ls: Vec<f32> = lses.iter().map(|l| l[bi * h + hh]).collect();
            want.extend(glue::merge(&parts, &ls).0);
        }
    }
    // Inputs in ±1: a merged value may cancel towards 0, so the bound is relative to 1.
    assert_close(
        "merged",
        exec.download(&out).unwrap().data(),
        &want,
        1e-5,
        1.0,
    );
}

/// TPLA reduced after `W_UV`: `place_rows` puts a rank's values in its slot and zeros elsewhere;
/// `take_heads` copies a head range of one slot's rows. Ragged shapes (partial row and head
/// blocks), a head range that does not start at 0.
pub fn value_kernels_match_the_host<X: Executor>(exec: &X) {
    let (slots, b, h, dv) = (3usize, 3usize, 7usize, 20usize);
    let x = random(b * h * dv, 50);
    let place = place_rows.default_config(&[("COLS", dv as i64)]).unwrap();
    let xt = up(exec, &[b * h, dv], x.clone());
    let mut p = poisoned(exec, &[slots, b * h, dv]);
    place_rows::launch(exec, &place, &xt, &mut p, 1).unwrap();
    let got = exec.download(&p).unwrap();
    let n = b * h * dv;
    for s in 0..slots {
        let want = if s == 1 { x.clone() } else { vec![0.0; n] };
        assert_eq!(&got.data()[s * n..(s + 1) * n], &want[..], "slot {s}");
    }
    let take = take_heads.default_config(&[("DV", dv as i64)]).unwrap();
    let values = random(slots * b * h * dv, 51);
    let vt = up(exec, &[slots * b, h, dv], values.clone());
    let (slot, first, count) = (2usize, 3usize, 4usize);
    let mut out = poisoned(exec, &[b, count, dv]);
    take_heads::launch(exec, &take, &vt, &mut out, (slot * b) as i32, first as i32).unwrap();
    let mut want = Vec::new();
    for bi in 0..b {
        for hh in first..first + count {
            let at = (((slot * b) + bi) * h + hh) * dv;
            want.extend_from_slice(&values[at..at + dv]);
        }
    }
    assert_eq!(exec.download(&out).unwrap().data(), &want[..]);
}

/// `append_device` of device rows writes the same cache as `append` of those rows from the host;
/// a wrong shape, a cache overrun or a decoder of several shards is a typed error that changes
/// nothing.
pub fn append_device_writes_what_append_writes<X: Executor>(exec: &X) {
    use tpla::decoder::{DecoderShape, LatentDecoder};
    let shape = DecoderShape {
        batch: 2,
        heads: 4,
        lat: 32,
        rope: 16,
        groups: 1,
        page_size: 4,
        max_tokens: 6,
        splits: 1,
        scale: 0.1,
    };
    let row = 48;
    let rows: Vec<bf16> = random(2 * 3 * row, 40)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let host_rows = HostTensor::from_vec(&[2, 3, row], rows.clone()).unwrap();
    let mut a = LatentDecoder::new(exec, shape.clone()).unwrap();
    let mut b = LatentDecoder::new(exec, shape.clone()).unwrap();
    a.append(exec, &host_rows).unwrap();
    let dev = up(exec, &[2, 3, row], rows);
    b.append_device(exec, &dev).unwrap();
    assert_eq!(a.lens(), b.lens());
    let (ca, cb) = (
        exec.download_paged(&a.shards()[0]).unwrap(),
        exec.download_paged(&b.shards()[0]).unwrap(),
    );
    assert_eq!(ca.data(), cb.data());
    let wrong = up(exec, &[2, 1, row + 2], vec![bf16::ONE; 2 * (row + 2)]);
    assert!(b.append_device(exec, &wrong).is_err(), "wrong width");
    let long = up(exec, &[2, 4, row], vec![bf16::ONE; 2 * 4 * row]);
    assert!(b.append_device(exec, &long).is_err(), "past the cache");
    assert_eq!(b.lens(), &[3, 3], "unchanged after errors");
    let mut two = LatentDecoder::new(exec, DecoderShape { groups: 2, ..shape }).unwrap();
    let half = up(exec, &[2, 1, 32], vec![bf16::ONE; 64]);
    assert!(two.append_device(exec, &half).is_err(), "two shards");
}

fn cpu() -> CpuExecutor {
    CpuExecutor::new(1).unwrap()
}

#[test]
fn append_device_writes_what_append_writes_on_cpu() {
    append_device_writes_what_append_writes(&cpu());
}

#[test]
fn rms_norm_rows_matches_the_host_on_cpu() {
    rms_norm_rows_matches_the_host(&cpu());
}

#[test]
fn down_norms_matches_the_host_on_cpu() {
    down_norms_matches_the_host(&cpu());
}

#[test]
fn down_row_matches_the_host_on_cpu() {
    down_row_matches_the_host(&cpu());
}

#[test]
fn cache_row_matches_the_host_on_cpu() {
    cache_row_matches_the_host(&cpu());
}

#[test]
fn query_kernels_match_the_host_on_cpu() {
    query_kernels_match_the_host(&cpu());
}

#[test]
fn dcp_kernels_match_the_host_on_cpu() {
    dcp_kernels_match_the_host(&cpu());
}

#[test]
fn value_kernels_match_the_host_on_cpu() {
    value_kernels_match_the_host(&cpu());
}

/// The same checks (and the device append) on the GPU (skips visibly without one; fails with `TPLA_REQUIRE_GPU=1`).
#[test]
fn gpu_glue_kernels_match_the_host() {
    let Some(g) = tpla_runtime::cuda::device::executor_or_skip("gpu_glue_kernels_match_the_host")
    else {
        return;
    };
    rms_norm_rows_matches_the_host(&g);
    down_norms_matches_the_host(&g);
    cache_row_matches_the_host(&g);
    down_row_matches_the_host(&g);
    query_kernels_match_the_host(&g);
    dcp_kernels_match_the_host(&g);
    value_kernels_match_the_host(&g);
    append_device_writes_what_append_writes(&g);
}

/// The glue kernels at the DeepSeek-V3 and Kimi-K2 TP2 shapes (hidden 7168; q_lora 1536;
/// latent 512, 256; nope 128, rope 64) compile with NVRTC for sm_90a (no GPU needed; skips without libnvrtc
/// unless `TPLA_REQUIRE_NVRTC=1`), with no register spills where ptxas reports.
#[test]
fn glue_kernels_compile_with_nvrtc() {
    use tpla_runtime::cuda::nvrtc::{compile, default_options, nvrtc};
    use tpla_runtime::cuda::Target;
    if let Err(e) = nvrtc() {
        assert!(
            std::env::var("TPLA_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "TPLA_REQUIRE_NVRTC=1: {e}"
        );
        eprintln!("SKIP glue_kernels_compile_with_nvrtc: NVRTC unavailable ({e})");
        return;
    }
    let opts = default_options(&Target::sm90().arch_name());
    let build = |def: &dyn KernelDef, consts: &[(&str, i64)]| {
        let cfg = def.default_config(consts).unwrap();
        let k = def.build(&cfg).unwrap();
        let src = tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap();
        let c = compile(&src.name, &src.code, &opts)
            .unwrap_or_else(|e| panic!("{} [{cfg}]: {e}", def.name()));
        if let Some(r) = &c.report {
            eprintln!(
                "{} [{cfg}]: {} registers, {} B static shared, spill-free {}",
                def.name(),
                r.registers,
                r.static_shared_bytes,
                r.spill_free()
            );
            assert!(r.spill_free(), "{} [{cfg}] spills: {r:?}", def.name());
        }
    };
    for w in [512i64, 256] {
        build(&down_norms, &[("QL", 1536), ("W", w), ("ROPE", 64)]);
        build(
            &cache_row,
            &[("QL_PAIRS", 768), ("W_PAIRS", w / 2), ("ROPE_PAIRS", 32)],
        );
        build(
            &down_row,
            &[("QL_PAIRS", 768), ("W_PAIRS", w / 2), ("ROPE_PAIRS", 32)],
        );
        build(
            &assemble_query,
            &[("W_PAIRS", w / 2), ("NOPE_PAIRS", 64), ("ROPE_PAIRS", 32)],
        );
        // Two new tokens per sequence (MTP).
        build(
            &assemble_query,
            &[
                ("W_PAIRS", w / 2),
                ("NOPE_PAIRS", 64),
                ("ROPE_PAIRS", 32),
                ("SQ", 2),
            ],
        );
        build(
            &cache_row,
            &[
                ("QL_PAIRS", 768),
                ("W_PAIRS", w / 2),
                ("ROPE_PAIRS", 32),
                ("SQ", 2),
            ],
        );
    }
    build(&query_nope, &[("NOPE", 128), ("ROPE", 64)]);
    build(&rms_norm_rows, &[("COLS", 7168)]);
    build(&place_state, &[("LAT", 512)]);
    build(&merge_heads, &[("LAT", 512)]);
    build(&place_rows, &[("COLS", 128)]);
    build(&take_heads, &[("DV", 128)]);
    // The bf16 payload's round trip at the output collectives' widths.
    for cols in [7168i64, 128] {
        build(&tpla_kernels::cast_bf16, &[("COLS", cols)]);
        build(&tpla_kernels::widen_f32, &[("COLS", cols)]);
    }
    // The collective stand-in at the layer's shapes: `[B, D]` outputs, the exact norm's
    // `[B, 1]` sums, DCP's `[.., heads]` LSE and `[.., lat]` state slots.
    for cols in [7168i64, 1, 64, 128, 512] {
        build(&tpla_kernels::add_rows, &[("COLS", cols)]);
        build(&tpla_kernels::copy_rows, &[("COLS", cols)]);
    }
}
