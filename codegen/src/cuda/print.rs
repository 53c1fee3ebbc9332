//! Printing pass: nodes to text, the kernel signature and the translation unit.

use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::lower::gemm::wgmma::*;
use crate::cuda::lower::*;
use crate::cuda::memory::*;
use crate::cuda::node::*;
use crate::cuda::tma::{tmap_name, TMA_FNS};
use crate::cuda::util::*;
use crate::cuda::warpspec::*;
use crate::cuda::{CudaSource, PagedInt, PagedPtr, ParamAbi, PRELUDE};
use crate::ir::*;

/// Prints `nodes` at indentation `depth` (4 spaces each); a barrier node prints as `barrier`.
pub(crate) fn print_nodes(nodes: &[Node], depth: usize, barrier: &str, out: &mut String) {
    let pad = "    ".repeat(depth);
    for n in nodes {
        match n {
            Node::Code { text, .. } => {
                for line in text.lines() {
                    if line.is_empty() {
                        continue;
                    }
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Node::Barrier => {
                out.push_str(&pad);
                out.push_str(barrier);
                out.push('\n');
            }
            Node::Scope {
                head, body, tail, ..
            } => {
                for line in head.lines() {
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
                print_nodes(body, depth + 1, barrier, out);
                for line in tail.lines() {
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
}

/// The printing pass: the translation unit (prelude, `wgmma` device functions, the kernel with
/// its signature, warp-geometry constants, shared-memory pointers, declarations and body).
pub(crate) fn print_kernel(lw: &Lower, nodes: &[Node]) -> CudaSource {
    let (k, geo, target) = (lw.k, lw.geo, lw.target);
    // wgmma reads shared memory through the async proxy: every barrier that publishes
    // generic-proxy writes (stores, cp.async) to it carries a proxy fence.
    // Under warp specialisation the body's barriers span the consumer warps only.
    let nt = nt_total(&geo);
    let fence = if lw.decl.wgmma_fns.is_empty() {
        ""
    } else {
        "tpla_fence_proxy_async(); "
    };
    let barrier = match &lw.paging.producer_code {
        Some(_) => format!("{fence}tpla_bar_sync(1, {nt});"),
        None => format!("{fence}__syncthreads();"),
    };
    let mut body = String::new();
    print_nodes(nodes, 1, &barrier, &mut body);
    let mut shared_bytes = smem_bytes(&lw.smem.bufs);
    // The ring's full and empty mbarriers after the buffers.
    let mbar_off = shared_bytes.next_multiple_of(8);
    if let Some((_, st)) = &lw.paging.producer_code {
        shared_bytes = mbar_off + 16 * st;
        if geo.roles_wide > 0 {
            shared_bytes += crate::cuda::lower::roles::HANDOFF_MBAR_BYTES;
        }
        if let Some((g, _)) = &lw.paging.full_groups {
            shared_bytes += 8 * g.extra_mbars();
        }
    }

    // Signature.
    let mut params = Vec::new();
    let mut sig = Vec::new();
    for (i, p) in k.params.iter().enumerate() {
        match &p.kind {
            ParamKind::Tensor {
                dtype, writable, ..
            } => {
                let c = if *writable { "" } else { "const " };
                sig.push(format!(
                    "{c}{}* __restrict__ p{i}",
                    Elem::of_dtype(*dtype).cty()
                ));
                params.push(ParamAbi::Tensor {
                    param: i,
                    dtype: *dtype,
                });
            }
            ParamKind::Paged {
                dtype,
                writable,
                chunked,
                ..
            } => {
                let c = if *writable { "" } else { "const " };
                sig.push(format!(
                    "{c}{}* __restrict__ p{i}_data",
                    Elem::of_dtype(*dtype).cty()
                ));
                sig.push(format!("const int* __restrict__ p{i}_bt"));
                sig.push(format!("const int* __restrict__ p{i}_lens"));
                if *chunked {
                    sig.push(format!("const int* __restrict__ p{i}_chunk"));
                }
                for (n, w) in [
                    ("ps", PagedInt::PageSize),
                    ("pps", PagedInt::PagesPerSeq),
                    ("np", PagedInt::NumPages),
                    ("nb", PagedInt::Batch),
                ] {
                    sig.push(format!("const int p{i}_{n}"));
                    let _ = w;
                }
                params.push(ParamAbi::PagedPtr {
                    param: i,
                    what: PagedPtr::Data,
                });
                params.push(ParamAbi::PagedPtr {
                    param: i,
                    what: PagedPtr::BlockTable,
                });
                params.push(ParamAbi::PagedPtr {
                    param: i,
                    what: PagedPtr::SeqLens,
                });
                if *chunked {
                    params.push(ParamAbi::PagedPtr {
                        param: i,
                        what: PagedPtr::Chunks,
                    });
                }
                for w in [
                    PagedInt::PageSize,
                    PagedInt::PagesPerSeq,
                    PagedInt::NumPages,
                    PagedInt::Batch,
                ] {
                    params.push(ParamAbi::PagedInt { param: i, what: w });
                }
                if let Some((_, rows)) = lw.paging.tma.filter(|(c, _)| *c == i) {
                    sig.push(format!(
                        "const __grid_constant__ tpla_tmap {}",
                        tmap_name(i)
                    ));
                    params.push(ParamAbi::PagedTmap {
                        param: i,
                        box_rows: rows as u32,
                    });
                }
            }
            ParamKind::Scalar { dtype } => {
                let c = if *dtype == DType::I32 { "int" } else { "float" };
                sig.push(format!("const {c} p{i}"));
                params.push(ParamAbi::Scalar {
                    param: i,
                    dtype: *dtype,
                });
            }
        }
    }
    for d in 0..k.dims.len() {
        sig.push(format!("const int d{d}"));
        params.push(ParamAbi::Dim { dim: d });
    }

    let nt_block = nt_launch(&geo);
    let name = format!("tpla_{}", sanitize(&k.name));
    let mut code = String::new();
    code.push_str(PRELUDE);
    if lw.paging.producer_code.is_some() {
        code.push_str(WARPSPEC_FNS);
    }
    if lw.paging.tma.is_some() {
        code.push_str(TMA_FNS);
    }
    for &(n, a, tb) in &lw.decl.wgmma_fns {
        code.push_str(&wgmma_fn(n, a, tb));
    }
    code.push_str(&format!(
        "\n// ---- kernel `{}` [{}]: {} threads, {} bytes of dynamic shared memory\n",
        k.name,
        k.config
            .iter()
            .map(|(a, b)| format!("{a}={b}"))
            .collect::<Vec<_>>()
            .join(","),
        nt_block,
        shared_bytes
    ));
    code.push_str(&format!(
        "extern \"C\" __global__ void __launch_bounds__({nt_block}, 1) {name}(\n    {}) {{\n",
        if sig.is_empty() {
            "void".to_string()
        } else {
            sig.join(",\n    ")
        }
    ));
    code.push_str(&format!(
        "    extern __shared__ __align__({}) unsigned char tpla_smem[];\n",
        if geo.wg { 1024 } else { 128 }
    ));
    // Programmatic dependent launch (prelude): wait for the grids this one depends on before
    // anything reads memory, and let the next grid's blocks start on idle multiprocessors.
    code.push_str("    tpla_grid_dependency_wait();\n    tpla_launch_dependents();\n");
    code.push_str("    const int tid = threadIdx.x, lane = tid & 31, warp = tpla_warp_index(tid);\n    (void)lane; (void)warp;\n");
    for m in &lw.decl.geo_m {
        code.push_str(&format!(
            "    const int wm{m} = warp % {};\n    (void)wm{m};\n",
            geo.wm(*m)
        ));
    }
    for (m, n) in &lw.decl.geo_mn {
        let (wm, wn) = (geo.wm(*m), geo.wn(*m, *n));
        if geo.roles_wide > 0 {
            code.push_str(&crate::cuda::lower::roles::warp_constants(
                *m,
                *n,
                geo.roles_wide,
                (geo.nw - 4) / 4,
            ));
            continue;
        }
        code.push_str(&format!(
            "    const int wn{m}_{n} = (warp / {wm}) % {wn}, wr{m}_{n} = warp / {};\n    (void)wn{m}_{n}; (void)wr{m}_{n};\n",
            wm * wn
        ));
    }
    for b in &lw.smem.bufs {
        if b.tracked {
            code.push_str(&format!(
                "    {cty}* const {n} = ({cty}*)(tpla_smem + {o});\n",
                cty = b.elem.cty(),
                n = b.name,
                o = b.offset
            ));
        }
    }
    if !k.scalars.is_empty() {
        let s: Vec<String> = (0..k.scalars.len()).map(|i| format!("s{i} = 0")).collect();
        code.push_str(&format!("    int {};\n", s.join(", ")));
        for i in 0..k.scalars.len() {
            code.push_str(&format!("    (void)s{i};\n"));
        }
    }
    for d in &lw.decl.lines {
        code.push_str(&format!("    {d}\n"));
    }
    // A balanced schedule's program with no piece leaves before the mbarriers, the producer's
    // split and the query load.
    if let Some(exit) = &lw.paging.early_exit {
        for line in exit.lines() {
            code.push_str(&format!("    {line}\n"));
        }
    }
    if let (Some((_, st)), true) = (&lw.paging.producer_code, geo.roles_wide > 0) {
        code.push_str(&crate::cuda::lower::roles::roles_head(
            *st,
            mbar_off,
            geo.nw,
            lw.paging.full_groups.as_ref().map(|(g, _)| g),
        ));
    } else if let Some((producer, st)) = &lw.paging.producer_code {
        code.push_str(&warpspec_head(
            producer,
            *st,
            mbar_off,
            (
                geo.nw,
                geo.producer_wgs,
                if geo.kv_split { 128 } else { geo.nw * 32 },
            ),
            lw.paging.producer_regs,
            lw.paging.full_groups.as_ref().map(|(g, _)| g),
        ));
    }
    code.push_str(&body);
    code.push_str("}\n");
    CudaSource {
        name,
        code,
        block_threads: nt_block as u32,
        shared_bytes: shared_bytes as u32,
        params,
        stages: lw.paging.used.clone(),
        f32_gemm: target.f32_gemm,
        seesaw: lw.seesaw.is_some(),
        warpgroups: geo.wg,
        kv_split: geo.kv_split,
        score_wg: geo.roles_wide > 0,
        group_waits: lw.paging.k_waits_placed,
        split_release: lw.paging.split_release,
    }
}
