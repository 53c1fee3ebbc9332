//! The decode layer's element-wise kernels (`tpla_kernels::glue`, and `copy_rows`) as generated
//! CUDA, run on the host emulation and compared with the CPU backend on the same IR: partial
//! head and column blocks, strided pair loads and stores (RoPE), `i32` position / slot / head
//! arguments, NaN-poisoned outputs. (The CPU backend is checked against the host functions of
//! `tpla::layer::glue` in the `layer` tests.)
//!
//! Needs a C++17 compiler (`$CXX`, else `c++`) for the emulation; without one each test prints
//! SKIP and passes, unless `TPLA_REQUIRE_CXX=1`.

#[path = "support/emu.rs"]
mod emu;

use emu::*;
use tpla_codegen::cuda::Target;
use tpla_codegen::ir::*;
use tpla_codegen::KernelDef;

fn tensor(dtype: DType, shape: &[usize], v: &[f32]) -> HostArg {
    assert_eq!(v.len(), shape.iter().product::<usize>());
    HostArg::Tensor {
        dtype,
        shape: shape.to_vec(),
        data: match dtype {
            DType::BF16 => Bytes::from_bf16(v),
            // (Counts and positions: `2.0` is the integer 2, not its f32 bit pattern.)
            DType::I32 => Bytes::from_i32(&v.iter().map(|&x| x as i32).collect::<Vec<_>>()),
            _ => Bytes::from_f32(v),
        },
    }
}

fn input(rng: &mut Rng, shape: &[usize]) -> HostArg {
    let n = shape.iter().product();
    tensor(DType::F32, shape, &rng.vec(n))
}

fn input_bf16(rng: &mut Rng, shape: &[usize]) -> HostArg {
    let n = shape.iter().product();
    tensor(DType::BF16, shape, &rng.vec(n))
}

fn poisoned(dtype: DType, shape: &[usize]) -> HostArg {
    tensor(dtype, shape, &vec![f32::NAN; shape.iter().product()])
}

/// `[positions, pairs]` cosines or sines of angles `pos · 0.3^j` (any values do for a
/// backend comparison).
fn table(positions: usize, pairs: usize, sin: bool) -> HostArg {
    let v: Vec<f32> = (0..positions * pairs)
        .map(|i| {
            let a = (i / pairs) as f32 * 0.3f32.powi((i % pairs) as i32);
            if sin {
                a.sin()
            } else {
                a.cos()
            }
        })
        .collect();
    tensor(DType::F32, &[positions, pairs], &v)
}

fn check(def: &dyn KernelDef, consts: &[(&str, i64)], args: Vec<HostArg>, tol: f32) {
    let Some(cxx) = skip_without_cxx(def.name()) else {
        return;
    };
    let cfg = def.default_config(consts).unwrap();
    let k = def.build(&cfg).unwrap();
    check_vs_cpu(
        &cxx,
        &k,
        Target::sm90(),
        &args,
        tol,
        &format!("{} [{cfg}]", def.name()),
    );
}

#[test]
fn emulated_norm_kernels_match_cpu() {
    let mut rng = Rng::new(1);
    check(
        &tpla_kernels::rms_norm_rows,
        &[("COLS", 200)],
        vec![
            input(&mut rng, &[5, 200]),
            input(&mut rng, &[200]),
            poisoned(DType::F32, &[5, 200]),
            HostArg::F32(1e-6),
        ],
        1e-5,
    );
    // q_lora 96, latent slice 64, rope 16.
    check(
        &tpla_kernels::down_norms,
        &[("QL", 96), ("W", 64), ("ROPE", 16)],
        vec![
            input(&mut rng, &[3, 176]),
            input(&mut rng, &[96]),
            poisoned(DType::BF16, &[3, 96]),
            poisoned(DType::F32, &[3, 1]),
            HostArg::F32(1e-6),
            HostArg::F32(0.75),
        ],
        1e-5,
    );
}

#[test]
fn emulated_fused_down_row_matches_cpu() {
    let mut rng = Rng::new(5);
    // q_lora 96, latent slice 64, rope 16; one token, then two per sequence.
    for (rows, sq) in [(3, 1), (4, 2)] {
        check(
            &tpla_kernels::down_row,
            &[
                ("QL_PAIRS", 48),
                ("W_PAIRS", 32),
                ("ROPE_PAIRS", 8),
                ("SQ", sq),
            ],
            vec![
                input(&mut rng, &[rows, 88, 2]),
                input(&mut rng, &[48, 2]),
                table(10, 8, false),
                table(10, 8, true),
                poisoned(DType::BF16, &[rows, 48, 2]),
                poisoned(DType::BF16, &[rows, 40, 2]),
                HostArg::I32(7),
                HostArg::F32(1.3),
                HostArg::F32(1.0 / 64.0),
                HostArg::F32(1e-6),
            ],
            1e-5,
        );
    }
}

#[test]
fn emulated_rope_kernels_match_cpu() {
    let mut rng = Rng::new(2);
    let c_sq: Vec<f32> = (0..3).map(|i| 20.0 + i as f32).collect();
    check(
        &tpla_kernels::cache_row,
        &[("QL_PAIRS", 48), ("W_PAIRS", 32), ("ROPE_PAIRS", 8)],
        vec![
            input(&mut rng, &[3, 88, 2]),
            tensor(DType::F32, &[3, 1], &c_sq),
            table(10, 8, false),
            table(10, 8, true),
            poisoned(DType::BF16, &[3, 40, 2]),
            HostArg::I32(7),
            HostArg::F32(1.3),
            HostArg::F32(1.0 / 64.0),
            HostArg::F32(1e-6),
        ],
        1e-5,
    );
    // Two new tokens per sequence: rows at positions 7 and 8 alternately.
    check(
        &tpla_kernels::cache_row,
        &[
            ("QL_PAIRS", 48),
            ("W_PAIRS", 32),
            ("ROPE_PAIRS", 8),
            ("SQ", 2),
        ],
        vec![
            input(&mut rng, &[4, 88, 2]),
            tensor(DType::F32, &[4, 1], &[20.0, 21.0, 22.0, 23.0]),
            table(10, 8, false),
            table(10, 8, true),
            poisoned(DType::BF16, &[4, 40, 2]),
            HostArg::I32(7),
            HostArg::F32(1.3),
            HostArg::F32(1.0 / 64.0),
            HostArg::F32(1e-6),
        ],
        1e-5,
    );
    check(
        &tpla_kernels::query_nope,
        &[("NOPE", 24), ("ROPE", 16)],
        vec![
            input(&mut rng, &[2, 5, 40]),
            poisoned(DType::BF16, &[2, 5, 24]),
        ],
        0.0,
    );
    check(
        &tpla_kernels::assemble_query,
        &[("W_PAIRS", 32), ("NOPE_PAIRS", 12), ("ROPE_PAIRS", 8)],
        vec![
            input_bf16(&mut rng, &[2, 5, 32, 2]),
            input(&mut rng, &[2, 5, 20, 2]),
            table(12, 8, false),
            table(12, 8, true),
            poisoned(DType::BF16, &[2, 5, 40, 2]),
            HostArg::I32(9),
        ],
        1e-5,
    );
    // Three new tokens per sequence (rows at positions 8, 9, 10).
    check(
        &tpla_kernels::assemble_query,
        &[
            ("W_PAIRS", 32),
            ("NOPE_PAIRS", 12),
            ("ROPE_PAIRS", 8),
            ("SQ", 3),
        ],
        vec![
            input_bf16(&mut rng, &[6, 5, 32, 2]),
            input(&mut rng, &[6, 5, 20, 2]),
            table(12, 8, false),
            table(12, 8, true),
            poisoned(DType::BF16, &[6, 5, 40, 2]),
            HostArg::I32(8),
        ],
        1e-5,
    );
}

#[test]
fn emulated_dcp_and_collective_kernels_match_cpu() {
    let mut rng = Rng::new(3);
    check(
        &tpla_kernels::place_state,
        &[("LAT", 40)],
        vec![
            input(&mut rng, &[2, 5, 40]),
            input(&mut rng, &[2, 5]),
            poisoned(DType::F32, &[3, 2, 5, 40]),
            poisoned(DType::F32, &[3, 2, 5]),
            HostArg::I32(1),
        ],
        0.0,
    );
    let mut lse = rng.vec(3 * 2 * 5);
    lse[7] = -6.9e29;
    check(
        &tpla_kernels::merge_heads,
        &[("LAT", 40)],
        vec![
            input(&mut rng, &[3, 2, 5, 40]),
            tensor(DType::F32, &[3, 2, 5], &lse),
            poisoned(DType::F32, &[2, 3, 40]),
            HostArg::I32(2),
        ],
        1e-5,
    );
    check(
        &tpla_kernels::copy_rows,
        &[("COLS", 7)],
        vec![input(&mut rng, &[20, 7]), poisoned(DType::F32, &[20, 7])],
        0.0,
    );
    check(
        &tpla_kernels::widen_f32,
        &[("COLS", 20)],
        vec![
            input_bf16(&mut rng, &[5, 3, 20]),
            poisoned(DType::F32, &[5, 3, 20]),
        ],
        0.0,
    );
    check(
        &tpla_kernels::cast_bf16,
        &[("COLS", 20)],
        vec![
            input(&mut rng, &[5, 3, 20]),
            poisoned(DType::BF16, &[5, 3, 20]),
        ],
        0.0,
    );
    check(
        &tpla_kernels::place_rows,
        &[("COLS", 20)],
        vec![
            input(&mut rng, &[21, 20]),
            poisoned(DType::F32, &[3, 21, 20]),
            HostArg::I32(2),
        ],
        0.0,
    );
    check(
        &tpla_kernels::take_heads,
        &[("DV", 20)],
        vec![
            input(&mut rng, &[6, 7, 20]),
            poisoned(DType::F32, &[3, 4, 20]),
            HostArg::I32(3),
            HostArg::I32(3),
        ],
        0.0,
    );
}

/// The split-KV combines (`combine_splits`, `combine_counted`) and the DCP merge over every tune
/// config, at the shard and MLA widths: a partial head block (20 heads), an empty split's lse
/// (-6.9e29), counts of 2 and 0 (clamped to 1). Where the accumulator tile
/// takes the fragment layout (16- and 32-head blocks), the kernel is all registers: no shared
/// memory, no barrier (`cuda/layout.rs`, `gemmless_accumulators`).
#[test]
fn emulated_split_combines_match_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_split_combines_match_cpu") else {
        return;
    };
    let mut rng = Rng::new(4);
    let (splits, batch, heads) = (3usize, 2usize, 20usize);
    for lat in [256usize, 512] {
        let consts = [("LAT", lat as i64)];
        let mut lse = rng.vec(splits * batch * heads);
        lse[heads + 3] = -6.9e29;
        let part = input(&mut rng, &[splits, batch, heads, lat]);
        let lse = tensor(DType::F32, &[splits, batch, heads], &lse);
        let defs: [(&dyn KernelDef, Vec<HostArg>); 3] = [
            (
                &tpla_kernels::combine_splits,
                vec![
                    part.clone(),
                    lse.clone(),
                    poisoned(DType::F32, &[batch, heads, lat]),
                    poisoned(DType::F32, &[batch, heads]),
                ],
            ),
            (
                &tpla_kernels::combine_counted,
                vec![
                    part.clone(),
                    lse.clone(),
                    tensor(DType::I32, &[batch], &[2.0, 0.0]),
                    poisoned(DType::F32, &[batch, heads, lat]),
                    poisoned(DType::F32, &[batch, heads]),
                ],
            ),
            (
                &tpla_kernels::merge_heads,
                vec![
                    part.clone(),
                    lse.clone(),
                    poisoned(DType::F32, &[batch, heads - 4, lat]),
                    HostArg::I32(3),
                ],
            ),
        ];
        for (i, (def, args)) in defs.into_iter().enumerate() {
            // (At latent 512 the plain combine alone.)
            if lat == 512 && i > 0 {
                continue;
            }
            for cfg in def.tune_space(&consts).unwrap() {
                let k = def.build(&cfg).unwrap();
                let code = tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap();
                if cfg.get("BLOCK_H").ok() != Some(8) {
                    assert_eq!(code.shared_bytes, 0, "{} [{cfg}]: in registers", def.name());
                    assert!(
                        !code.code.contains("__syncthreads();\n"),
                        "{} [{cfg}]",
                        def.name()
                    );
                }
                check_vs_cpu(
                    &cxx,
                    &k,
                    Target::sm90(),
                    &args,
                    1e-5,
                    &format!("{} [{cfg}]", def.name()),
                );
            }
        }
    }
}

/// The balanced split schedule (`split_schedule`) as generated CUDA against the CPU backend:
/// its element-wise chains are computed in registers by the `fusion` pass, so this checks that
/// pass on a kernel whose chains cross a loop (the probing rounds) and loop-carried tiles
/// (`lo`, `hi`). Lengths mixed: 0, negative, short, long, one past a block; outputs poisoned.
#[test]
fn emulated_split_schedule_matches_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_split_schedule_matches_cpu") else {
        return;
    };
    let mut rng = Rng::new(5);
    for (max_b, batch, block_n) in [(32usize, 20usize, 64usize), (256, 200, 16)] {
        let probes = tpla_kernels::ops::schedule_probes(max_b);
        let mut lens: Vec<i32> = rng
            .vec(batch)
            .iter()
            .map(|x| (x.abs() * 20000.0) as i32)
            .collect();
        lens[0] = 0;
        lens[1] = -5;
        lens[2] = 1;
        lens[3] = block_n as i32 + 1;
        lens[4] = 32768;
        let i32s = |v: &[i32]| HostArg::Tensor {
            dtype: DType::I32,
            shape: vec![batch],
            data: Bytes::from_i32(v),
        };
        let poison = vec![-12345; batch];
        let consts = [
            ("BLOCK_N", block_n as i64),
            ("MAX_B", max_b as i64),
            ("PROBES", probes as i64),
        ];
        let rounds = tpla_kernels::ops::schedule_rounds(32768, block_n, probes);
        for (units, max_splits, min_chunk) in [(132, 64, 256), (16, 4, 0)] {
            let cfg = tpla_kernels::split_schedule
                .default_config(&consts)
                .unwrap();
            let k = tpla_kernels::split_schedule.build(&cfg).unwrap();
            let code = tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap();
            check_vs_cpu(
                &cxx,
                &k,
                Target::sm90(),
                &[
                    i32s(&lens),
                    i32s(&poison),
                    i32s(&poison),
                    HostArg::I32(units),
                    HostArg::I32(max_splits),
                    HostArg::I32(min_chunk),
                    HostArg::I32(rounds),
                ],
                0.0,
                &format!("split_schedule [{cfg}] units {units} max_splits {max_splits}"),
            );
            // The fused chains leave one buffer per reduced, loop-carried or reused tile: the
            // `[PROBES, MAX_B]` chain of each round is one loop (two tiles of that size, where
            // unfused it wrote eight), and some 20 `[MAX_B]` tiles remain (of some 60).
            let tile = (probes * max_b * 4) as u32;
            assert!(
                code.shared_bytes < 3 * tile + 32 * 4 * max_b as u32,
                "split_schedule [{cfg}]: {} bytes of shared memory",
                code.shared_bytes
            );
        }
    }
}
