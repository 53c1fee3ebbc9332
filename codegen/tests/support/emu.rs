//! The CUDA emulation harness shared by the emulation tests (`cuda_emu*.rs`): the C++ build and
//! run of an emitted kernel against `tests/emu/cuda_emu.h`, the check against the CPU backend and
//! the emulated tensor maps; the host buffers, arguments, comparisons and random inputs are in
//! `host_args.rs`, re-exported here. Include it with `#[path = "support/emu.rs"] mod emu;`.
#![allow(dead_code)]
#![allow(clippy::needless_range_loop)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tpla_codegen::cuda::tma::plan_paged_tmap;
use tpla_codegen::cuda::{emit, CudaSource, PagedInt, PagedPtr, ParamAbi, Target};
use tpla_codegen::ir::*;
use tpla_codegen::launch::check_launch;

#[path = "host_args.rs"]
mod host_args;
pub use host_args::*;

// ------------------------------------------------------------------------------------ emulation

pub fn cxx() -> Option<String> {
    let c = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let ok = Command::new(&c)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(c)
}

pub fn skip_without_cxx(test: &str) -> Option<String> {
    match cxx() {
        Some(c) => Some(c),
        None => {
            if std::env::var("TPLA_REQUIRE_CXX").as_deref() == Ok("1") {
                panic!("{test}: no C++ compiler and TPLA_REQUIRE_CXX=1");
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: no C++ compiler (set CXX) to emulate CUDA kernels"
            );
            None
        }
    }
}

pub fn emu_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emu")
}

thread_local! {
    static LAGGARDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LAND_FIFO: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static STALLS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with warp stalls in this thread's emulated kernels (`TPLA_EMU_STALLS=1`): now and
/// then a whole warp sits out 32 to 287 scheduler rounds, so one warpgroup falls a whole ring
/// block behind another between two of its waits (`cuda_emu.h`, `run_block`).
#[allow(dead_code)]
pub fn with_stalls<R>(f: impl FnOnce() -> R) -> R {
    let was = STALLS.with(|l| l.replace(true));
    let r = f();
    STALLS.with(|l| l.set(was));
    r
}

/// Runs `f` with this thread's emulated bulk copies landing in the order they were issued
/// (`TPLA_EMU_LAND_FIFO=1`; by default they land in a pseudo-random order): a kernel that waits
/// for the first of several mbarriers of a block and reads the rest is then caught.
#[allow(dead_code)]
pub fn with_fifo_landing<R>(f: impl FnOnce() -> R) -> R {
    let was = LAND_FIFO.with(|l| l.replace(true));
    let r = f();
    LAND_FIFO.with(|l| l.set(was));
    r
}

/// Runs `f` with the emulator's laggards on for this thread's emulated kernels, even where the
/// environment turned them off (`TPLA_EMU_LAGGARDS=0`; they are on by default): each runnable
/// GPU thread sits out a scheduler round with probability 1/4, so warpgroups drift apart and a
/// missing wait between them shows (`cuda_emu.h`, `run_block`). Warp stalls ([`with_stalls`])
/// come with them: a warpgroup falling a whole ring block behind is the drift that hung the
/// first `SPLIT_RELEASE` on the GPU, which single-round laggards never produce.
#[allow(dead_code)]
pub fn with_laggards<R>(f: impl FnOnce() -> R) -> R {
    let was = LAGGARDS.with(|l| l.replace(true));
    let r = with_stalls(f);
    LAGGARDS.with(|l| l.set(was));
    r
}

/// Compiles `src` with the emulation header and runs it on `args`; returns the args with
/// outputs written, or the compiler / runtime error.
pub fn run_emu(
    cxx: &str,
    k: &Kernel,
    src: &CudaSource,
    args: &[HostArg],
    tag: &str,
) -> Result<Vec<HostArg>, String> {
    let plan = check_launch(k, &descs(k, args)).map_err(|e| e.to_string())?;
    // `TPLA_EMU_DUMP_DIR=dir` (a fresh directory): keep every distinct emulated source of a tag,
    // with its launch facts, as `dir/{tag}.{n}.cu` to `diff -r` the code of two emitter versions.
    if let Ok(out) = std::env::var("TPLA_EMU_DUMP_DIR") {
        let _ = std::fs::create_dir_all(&out);
        let text = format!(
            "// threads {} smem {} stages {:?} f32_gemm {:?}\n{}",
            src.block_threads, src.shared_bytes, src.stages, src.f32_gemm, src.code
        );
        let mut n = 0;
        loop {
            let path = Path::new(&out).join(format!("{tag}.{n}.cu"));
            match std::fs::read_to_string(&path) {
                Ok(old) if old == text => break,
                Ok(_) => n += 1,
                Err(_) => {
                    let _ = std::fs::write(&path, &text);
                    break;
                }
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("tpla-emu-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // Buffers and the call.
    let mut files = Vec::new(); // (var, path, writable)
    let mut call = Vec::new();
    let mut maps = Vec::new(); // statements building the emulated tensor maps
    for slot in &src.params {
        match slot {
            ParamAbi::Tensor { param, dtype } => {
                let HostArg::Tensor { data, .. } = &args[*param] else {
                    unreachable!()
                };
                let var = format!("b{param}");
                if !files
                    .iter()
                    .any(|(v, _, _): &(String, PathBuf, bool)| *v == var)
                {
                    let path = dir.join(format!("{var}.bin"));
                    std::fs::write(&path, data.bytes()).map_err(|e| e.to_string())?;
                    let w = matches!(
                        k.params[*param].kind,
                        ParamKind::Tensor { writable: true, .. }
                    );
                    files.push((var.clone(), path, w));
                }
                call.push(format!("({}*){var}.data()", cty(*dtype)));
            }
            ParamAbi::PagedPtr { param, what } => {
                let HostArg::Paged {
                    dtype,
                    data,
                    block_table,
                    seq_lens,
                    chunks,
                    ..
                } = &args[*param]
                else {
                    unreachable!()
                };
                let (var, bytes, ty, w) = match what {
                    PagedPtr::Chunks => (
                        format!("b{param}c"),
                        Bytes::from_i32(chunks.as_deref().expect("a chunked cache has a table")),
                        "int",
                        false,
                    ),
                    PagedPtr::Data => (
                        format!("b{param}d"),
                        data.clone(),
                        cty(*dtype),
                        matches!(
                            k.params[*param].kind,
                            ParamKind::Paged { writable: true, .. }
                        ),
                    ),
                    PagedPtr::BlockTable => (
                        format!("b{param}t"),
                        Bytes::from_i32(block_table),
                        "int",
                        false,
                    ),
                    PagedPtr::SeqLens => (
                        format!("b{param}l"),
                        Bytes::from_i32(seq_lens),
                        "int",
                        false,
                    ),
                };
                let path = dir.join(format!("{var}.bin"));
                std::fs::write(&path, bytes.bytes()).map_err(|e| e.to_string())?;
                files.push((var.clone(), path, w));
                call.push(format!("({ty}*){var}.data()"));
            }
            ParamAbi::PagedInt { param, what } => {
                let HostArg::Paged {
                    page_size,
                    pages_per_seq,
                    num_pages,
                    seq_lens,
                    ..
                } = &args[*param]
                else {
                    unreachable!()
                };
                call.push(
                    match what {
                        PagedInt::PageSize => *page_size,
                        PagedInt::PagesPerSeq => *pages_per_seq,
                        PagedInt::NumPages => *num_pages,
                        PagedInt::Batch => seq_lens.len(),
                    }
                    .to_string(),
                );
            }
            ParamAbi::Scalar { param, .. } => call.push(match &args[*param] {
                HostArg::F32(v) => format!("__uint_as_float(0x{:08x}u)", v.to_bits()),
                HostArg::I32(v) => format!("({v})"),
                _ => unreachable!(),
            }),
            ParamAbi::Dim { dim } => call.push(plan.dims[*dim].to_string()),
            ParamAbi::PagedTmap { param, box_rows } => {
                maps.push(emu_tmap(k, &args[*param], *param, *box_rows)?);
                call.push(format!("m{param}"));
            }
        }
    }
    let code = ["128", "1024"]
        .iter()
        .fold(src.code.clone(), |code, align| {
            code.replace(
                &format!("extern __shared__ __align__({align}) unsigned char tpla_smem[];"),
                "unsigned char* tpla_smem = emu::B->smem.data();",
            )
        });
    let mut main = String::from("#include \"cuda_emu.h\"\n");
    main.push_str(&code);
    main.push_str(
        "\nint main(int argc, char** argv) {\n    (void)argc;\n    std::string dir = argv[1];\n",
    );
    for (var, path, _) in &files {
        main.push_str(&format!(
            "    auto {var} = emu::load(\"{}\");\n",
            path.display()
        ));
    }
    for m in &maps {
        main.push_str(m);
    }
    main.push_str(&format!(
        "    emu::launch({}, {}, {}, {}, {}, [&]() {{ {}({}); }});\n",
        plan.grid[0],
        plan.grid[1],
        plan.grid[2],
        src.block_threads,
        src.shared_bytes,
        src.name,
        call.join(", ")
    ));
    for (var, path, w) in &files {
        if *w {
            main.push_str(&format!(
                "    emu::save(\"{}.out\", {var});\n",
                path.display()
            ));
        }
    }
    main.push_str("    return 0;\n}\n");
    let cpp = dir.join("main.cpp");
    std::fs::write(&cpp, &main).map_err(|e| e.to_string())?;
    let exe = dir.join("main");
    let out = Command::new(cxx)
        .args(["-std=c++17", "-O1", "-w", "-I"])
        .arg(emu_dir())
        .arg(&cpp)
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "C++ compile of {} failed:\n{}",
            cpp.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut run = Command::new(&exe);
    if LAGGARDS.with(|l| l.get()) {
        run.env("TPLA_EMU_LAGGARDS", "1");
    }
    if LAND_FIFO.with(|l| l.get()) {
        run.env("TPLA_EMU_LAND_FIFO", "1");
    }
    if STALLS.with(|l| l.get()) {
        run.env("TPLA_EMU_STALLS", "1");
    }
    let run = run.arg(&dir).output().map_err(|e| e.to_string())?;
    if !run.status.success() {
        return Err(format!(
            "emulated kernel failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let mut res = args.to_vec();
    for (var, path, w) in &files {
        if !*w {
            continue;
        }
        let bytes = std::fs::read(format!("{}.out", path.display())).map_err(|e| e.to_string())?;
        let param: usize = var[1..].trim_end_matches(['d', 't', 'l']).parse().unwrap();
        match &mut res[param] {
            HostArg::Tensor { data, .. } | HostArg::Paged { data, .. } => {
                data.bytes_mut().copy_from_slice(&bytes)
            }
            _ => unreachable!(),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(res)
}

/// Emulates and compares every writable output with the CPU backend.
pub fn check_vs_cpu(
    cxx: &str,
    k: &Kernel,
    target: Target,
    args: &[HostArg],
    tol: f32,
    tag: &str,
) -> Vec<HostArg> {
    let src = emit(k, target).unwrap_or_else(|e| panic!("{tag}: emit failed: {e}"));
    let gpu = run_emu(cxx, k, &src, args, tag).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let cpu = run_cpu(k, args);
    for (i, p) in k.params.iter().enumerate() {
        let w = matches!(
            p.kind,
            ParamKind::Tensor { writable: true, .. } | ParamKind::Paged { writable: true, .. }
        );
        if w {
            let d = max_diff(&gpu[i], &cpu[i]);
            if d > tol {
                if let (HostArg::Tensor { dtype, data: g, .. }, HostArg::Tensor { data: c, .. }) =
                    (&gpu[i], &cpu[i])
                {
                    let (g, c) = (g.values(*dtype), c.values(*dtype));
                    let bad: Vec<(usize, f32, f32)> = (0..g.len())
                        .filter(|&j| {
                            !(g[j] == c[j] || (g[j].is_nan() && c[j].is_nan()))
                                && ((g[j] - c[j]).abs() > tol || g[j].is_nan() != c[j].is_nan())
                        })
                        .take(8)
                        .map(|j| (j, g[j], c[j]))
                        .collect();
                    eprintln!(
                        "{tag}: `{}` first mismatches (index, emulated, cpu): {bad:?}",
                        p.name
                    );
                }
            }
            assert!(
                d <= tol,
                "{tag}: output `{}` differs from the CPU backend by {d} (tol {tol})",
                p.name
            );
        }
    }
    gpu
}

/// C++ statements building the emulated tensor map `m{param}` of a paged argument (the layout
/// `tpla_emu_tma_load_2d` reads; dims, stride and box from the same plan the runtime encodes).
pub fn emu_tmap(k: &Kernel, arg: &HostArg, param: usize, box_rows: u32) -> Result<String, String> {
    let HostArg::Paged {
        dtype,
        row,
        page_size,
        num_pages,
        ..
    } = arg
    else {
        return Err("a tensor map slot for a non-paged argument".into());
    };
    // The emulated pool's address is only known in the C++ program (checked there).
    let plan = plan_paged_tmap(
        &k.params[param].name,
        0,
        *dtype,
        *num_pages,
        *page_size,
        *row,
        box_rows,
    )
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "    tpla_tmap m{param}{{}};
    m{param}.w[0] = (unsigned long long)b{param}d.data();
    m{param}.w[1] = {}ull; m{param}.w[2] = {}ull; m{param}.w[3] = {}ull;
    m{param}.w[4] = {}ull; m{param}.w[5] = {}ull; m{param}.w[6] = {}ull; m{param}.w[7] = 128ull;
    m{param}.w[8] = 0x74706c61746d6170ull;
",
        plan.dims[0],
        plan.dims[1],
        plan.row_stride_bytes,
        plan.box_dims[0],
        plan.box_dims[1],
        plan.elem_bytes
    ))
}
