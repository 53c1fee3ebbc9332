//! Emitter unit tests (no GPU, no NVRTC: structure of the generated code). NVRTC compilation of
//! every variant is tested in `tpla-runtime`'s `nvrtc_compile` test.

#[path = "support/samples.rs"]
mod samples;

use samples::{combine_splits, latent_decode, DecodeParams};
use tpla_codegen::cuda::*;
use tpla_codegen::IrError;

fn decode(bh: usize, bn: usize, st: usize, lat: usize, q_bf16: bool, p_bf16: bool) -> DecodeParams {
    DecodeParams {
        lat,
        rope: 64,
        block_h: bh,
        block_n: bn,
        stages: st,
        q_bf16,
        p_bf16,
    }
}

fn dump(name: &str, src: &CudaSource) {
    if let Ok(dir) = std::env::var("TPLA_TEST_DUMP_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(format!("{dir}/{name}.cu"), &src.code);
    }
}

#[test]
fn decode_uses_tensor_cores_and_fits_hopper() {
    for (bh, bn, st) in [(16, 32, 2), (32, 64, 3), (64, 64, 2), (64, 16, 1)] {
        for (qb, pb) in [(true, true), (false, false)] {
            let k = latent_decode(decode(bh, bn, st, 512, qb, pb)).unwrap();
            let src = emit(&k, Target::sm90()).unwrap();
            dump(
                &format!("decode_h{bh}_n{bn}_s{st}_q{}_p{}", qb as u8, pb as u8),
                &src,
            );
            let body = src.code.split("// ---- kernel").nth(1).unwrap();
            // 64-row bf16 gemms go to Hopper's warpgroup wgmma, the rest to mma.sync.
            let wgmma = body.contains("tpla_wgmma_m64n");
            assert!(
                body.contains("tpla_mma_bf16_16816(") || wgmma,
                "no tensor-core gemm for {bh}x{bn}"
            );
            // (f32 operands at 64 rows fall back to bf16 rounding when the hi/lo split does not
            // fit shared memory, and then qualify too.)
            if bh != 64 || (qb && pb) {
                assert_eq!(wgmma, bh == 64, "wgmma use for {bh}x{bn} q{qb} p{pb}");
            }
            if wgmma && !(qb && pb) {
                assert_eq!(src.f32_gemm, F32Gemm::RoundBf16);
            }
            assert!(src.shared_bytes <= Target::sm90().max_shared_bytes);
            assert!(src.code.contains("cp.async") || src.code.contains("tpla_cp_async16"));
            assert_eq!(src.stages.len(), 1);
        }
    }
}

#[test]
fn decode_abi_lists_every_slot() {
    let k = latent_decode(decode(16, 32, 2, 256, true, true)).unwrap();
    let src = emit(&k, Target::sm90()).unwrap();
    // q, 3 paged pointers + 4 ints, out, lse, scale, 3 dims.
    assert_eq!(src.params.len(), 1 + 7 + 1 + 1 + 1 + 3);
    assert_eq!(src.name, "tpla_latent_decode");
    assert!(src.code.contains("extern \"C\" __global__"));
    assert!(!src.code.contains("#include"));
}

#[test]
fn combine_emits_without_gemm() {
    for bd in [64, 128, 256] {
        let k = combine_splits(512, bd).unwrap();
        let src = emit(&k, Target::sm90()).unwrap();
        dump(&format!("combine_{bd}"), &src);
        let body = src.code.split("// ---- kernel").nth(1).unwrap();
        assert!(!body.contains("tpla_mma_bf16_16816("));
    }
}

#[test]
fn pre_ampere_falls_back_to_fma() {
    let k = latent_decode(decode(16, 32, 2, 128, true, true)).unwrap();
    let src = emit(&k, Target::new(7, 5)).unwrap();
    dump("decode_sm75", &src);
    assert!(src.code.contains("fmaf("));
    assert_eq!(src.stages, vec![1]);
}

#[test]
fn f32_operands_fall_back_to_bf16_rounding_when_split_does_not_fit() {
    let k = latent_decode(decode(64, 64, 2, 512, false, false)).unwrap();
    let src = emit(&k, Target::sm90()).unwrap();
    assert_eq!(src.f32_gemm, F32Gemm::RoundBf16);
    let k = latent_decode(decode(16, 64, 2, 512, false, false)).unwrap();
    let src = emit(&k, Target::sm90()).unwrap();
    assert_eq!(src.f32_gemm, F32Gemm::Split);
}

#[test]
fn oversized_tiles_are_a_typed_error() {
    let k = latent_decode(decode(64, 64, 3, 512, false, false)).unwrap();
    match emit(&k, Target::new(7, 5)) {
        Err(IrError::Backend { message, .. }) => assert!(message.contains("shared memory")),
        other => panic!(
            "expected a shared-memory error, got {:?}",
            other.map(|s| s.shared_bytes)
        ),
    }
}

#[test]
fn bad_schedule_knobs_are_typed_errors_naming_the_knob() {
    let with = |knob: &str, v: i64| {
        let mut k = latent_decode(decode(64, 32, 2, 128, true, true)).unwrap();
        k.config.push((knob.into(), v));
        emit(&k, Target::sm90())
    };
    for (knob, v) in [
        ("WARPS", 3),
        ("NUM_WARPS", 0),
        ("WG_SPLIT", 7),
        ("WGMMA", 2),
    ] {
        match with(knob, v) {
            Err(IrError::BadConfig { name, value, .. }) => {
                assert_eq!((name.as_str(), value), (knob, v));
            }
            other => panic!(
                "{knob}={v}: expected BadConfig, got {:?}",
                other.map(|s| s.name)
            ),
        }
    }
    // Valid values steer the schedule.
    assert_eq!(with("WARPS", 8).unwrap().block_threads, 256);
    assert_eq!(with("WARPS", 4).unwrap().block_threads, 128);
    let wg = |src: CudaSource| src.code[PRELUDE.len()..].contains("tpla_wgmma_m64n");
    assert!(wg(with("WGMMA", 1).unwrap()));
    assert!(!wg(with("WGMMA", 0).unwrap()));
}

/// The runtime launches every generated kernel as a programmatic dependent of the kernel before it
/// on sm_90+ (`TPLA_PDL`, runtime `cuda/device/launch.rs`), which is only safe because each one
/// waits for that kernel (`griddepcontrol.wait`) before its first memory access: the wait must
/// be the kernel body's first statement after the shared-memory declaration.
#[test]
fn every_kernel_waits_for_the_grid_it_depends_on_before_touching_memory() {
    let mut sources = vec![
        emit(&combine_splits(512, 128).unwrap(), Target::sm90()).unwrap(),
        emit(
            &latent_decode(decode(64, 64, 2, 512, true, true)).unwrap(),
            Target::sm90(),
        )
        .unwrap(),
        emit(
            &latent_decode(decode(16, 32, 2, 256, true, true)).unwrap(),
            Target::new(8, 0),
        )
        .unwrap(),
    ];
    sources.push(
        emit(
            &latent_decode(decode(16, 32, 2, 128, true, true)).unwrap(),
            Target::new(7, 5),
        )
        .unwrap(),
    );
    for src in &sources {
        let body = src.code.split("__global__").nth(1).unwrap();
        let mut lines = body
            .lines()
            .skip_while(|l| !l.contains("extern __shared__"));
        assert!(
            lines.next().is_some(),
            "{}: no shared-memory declaration",
            src.name
        );
        assert_eq!(
            lines.next().map(str::trim),
            Some("tpla_grid_dependency_wait();"),
            "{}",
            src.name
        );
        assert_eq!(
            lines.next().map(str::trim),
            Some("tpla_launch_dependents();"),
            "{}",
            src.name
        );
    }
    // The PTX itself only on sm_90+, where it exists.
    assert!(PRELUDE.contains("__CUDA_ARCH__ >= 900\n    asm volatile(\"griddepcontrol.wait;\""));
}

/// The query tile's load (outside every loop) goes out as `cp.async` copies, all in flight, then
/// one wait before anything reads it, on sm_80 and later; before sm_80 (no `cp.async`) it is a
/// copy through registers. A load inside a loop never waits for all of a thread's copies (that
/// would also wait for a cp.async pipeline's stages).
#[test]
fn query_load_goes_out_in_flight_from_ampere_on() {
    let k = latent_decode(decode(64, 64, 2, 512, true, true)).unwrap();
    for t in [Target::sm90(), Target::new(8, 0)] {
        let src = emit(&k, t).unwrap();
        let body = src.code.split("// ---- kernel").nth(1).unwrap();
        let copy = body
            .find("tpla_cp_async16(d_, g_ + o_, true);")
            .expect("query load as cp.async");
        let wait = copy
            + body[copy..]
                .find("tpla_cp_async_wait<0>();")
                .expect("a wait");
        let first_gemm = body
            .find("tpla_wgmma_m64n")
            .or_else(|| body.find("tpla_mma_bf16_16816("))
            .expect("a gemm");
        assert!(
            copy < wait && wait < first_gemm,
            "copy, wait, then the first gemm ({t:?})"
        );
        assert!(!body.contains("*(uint4*)d_ = *(const uint4*)(g_ + o_);"));
    }
    // Turned off (`TPLA_CUDA_ASYNC_LOADS=0`): the copy through registers on Hopper too.
    let off = emit(&k, Target::sm90().with_async_tile_loads(false)).unwrap();
    let body = off.code.split("// ---- kernel").nth(1).unwrap();
    assert!(body.contains("*(uint4*)d_ = *(const uint4*)(g_ + o_);"));
    assert!(!body.contains("tpla_cp_async16(d_, g_ + o_, true);"));
    let small = latent_decode(decode(16, 32, 2, 128, true, true)).unwrap();
    let old = emit(&small, Target::new(7, 5)).unwrap();
    let body = old.code.split("// ---- kernel").nth(1).unwrap();
    assert!(body.contains("*(uint4*)d_ = *(const uint4*)(g_ + o_);"));
    assert!(!body.contains("tpla_cp_async16(d_, g_ + o_, true);"));
}

/// In the split combine's second loop the partials' load is printed beside the log-sum-exp's,
/// before the `exp2` that reads the latter (`loads_first.rs`), so a thread waits for memory once
/// per split instead of twice, and the first loop is unrolled; `with_loads_first(false)`
/// (`TPLA_CUDA_LOADS_FIRST=0`) prints both loops as written. The decode kernel (no `for` loop) is the same either way.
#[test]
fn loop_loads_go_first_in_the_combine() {
    let k = combine_splits(512, 128).unwrap();
    // The second loop's body: from its last `for (` to the store after it.
    let second_loop = |code: &str| {
        let body = code.split("// ---- kernel").nth(1).unwrap().to_string();
        let at = body.rfind("for (; ").expect("the splits loop");
        body[at..].to_string()
    };
    // The partials (`p0`) are read element-wise or as vectors through `g_ = p0`.
    let part_load = |code: &str| {
        ["p0[", "= p0;"]
            .iter()
            .filter_map(|m| code.find(m))
            .min()
            .expect("the partials' load")
    };
    let on = second_loop(&emit(&k, Target::sm90()).unwrap().code);
    let (part, exp) = (part_load(&on), on.find("tpla_exp2(").unwrap());
    assert!(
        part < exp,
        "the partials are loaded before the weight is computed"
    );
    let off = second_loop(
        &emit(&k, Target::sm90().with_loads_first(false))
            .unwrap()
            .code,
    );
    let (part, exp) = (part_load(&off), off.find("tpla_exp2(").unwrap());
    assert!(exp < part, "as written without the rewrite");
    // The first loop (a running max of the heads' rows) is unrolled by 4 so four splits' loads
    // go out together; the second, at 512 columns a split, is not (registers).
    let wide = combine_splits(512, 512).unwrap();
    let unrolled = |t: Target| {
        let code = emit(&wide, t).unwrap().code;
        let body = code.split("// ---- kernel").nth(1).unwrap().to_string();
        let loops: Vec<usize> = body.match_indices("for (; ").map(|(i, _)| i).collect();
        assert_eq!(loops.len(), 2, "two loops over the splits");
        loops
            .iter()
            .map(|&i| body[..i].trim_end().ends_with("#pragma unroll 4"))
            .collect::<Vec<_>>()
    };
    assert_eq!(unrolled(Target::sm90()), vec![true, false]);
    assert_eq!(
        unrolled(Target::sm90().with_loads_first(false)),
        vec![false, false]
    );
    let d = latent_decode(decode(64, 64, 2, 512, true, true)).unwrap();
    assert_eq!(
        emit(&d, Target::sm90()).unwrap().code,
        emit(&d, Target::sm90().with_loads_first(false))
            .unwrap()
            .code
    );
}
