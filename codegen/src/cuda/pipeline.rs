//! The pass list from tile IR to CUDA C++.

use crate::cuda::analysis::*;
use crate::cuda::geometry::*;
use crate::cuda::layout::*;
use crate::cuda::lower::kv_split::{barrier_in_split_loop, refused, KV_SPLIT_REFUSED};
use crate::cuda::lower::roles::{barrier_in_value_scope, ROLES_REFUSED};
use crate::cuda::lower::*;
use crate::cuda::print::*;
use crate::cuda::sync::*;
use crate::cuda::util::*;
use crate::cuda::warpspec::producer_applies;
use crate::cuda::{CudaSource, F32Gemm, Target};
use crate::error::IrError;
use crate::ir::*;
use crate::schedule::Schedule;

/// Validates `k`, moves the loads of its `for` bodies first (`loads_first.rs`, where
/// `target.loads_first`), reads its [`Schedule`] once and runs [`PASSES`]; where the result needs more
/// shared memory than `target` has, runs them again with fewer paged-loop stages, then with f32
/// gemm operands rounded to bf16.
pub(super) fn emit(k: &Kernel, target: Target) -> Result<CudaSource, IrError> {
    crate::validate::validate(k)?;
    // The one rewrite of the tile IR before the passes: each `for` body's loads first.
    let rewritten = target
        .loads_first
        .then(|| crate::cuda::loads_first::loads_first(k))
        .flatten();
    let k = rewritten.as_ref().unwrap_or(k);
    let sched = Schedule::from_config(&k.config)?;
    let max_stages = max_stages(&k.body).max(1);
    // Shared memory decides: fewer pipeline stages first, then (for f32 gemm operands) bf16
    // rounding instead of the hi/lo split, which halves the operand tiles.
    let mut policies = vec![target.f32_gemm];
    if target.f32_gemm == F32Gemm::Split && target.has_tensor_cores() {
        policies.push(F32Gemm::RoundBf16);
    }
    let mut smallest = None;
    // The two-consumer schedule holds two blocks per stage; where no stage count fits, the
    // kernel is emitted without it.
    // So does the KV split where its loop body would synchronise its warpgroups.
    let mut schedules = vec![sched];
    if sched.seesaw {
        schedules.push(Schedule {
            seesaw: false,
            ..sched
        });
    }
    if sched.wg_kv_split {
        schedules.push(Schedule {
            wg_kv_split: false,
            ..sched
        });
    }
    // And the score warpgroup where its roles would read each other's tiles otherwise.
    if sched.score_wg {
        schedules.push(Schedule {
            score_wg: false,
            ..sched
        });
    }
    'schedules: for sched in schedules {
        for &policy in &policies {
            let t = target.with_f32_gemm(policy);
            for cap in (1..=max_stages).rev() {
                // A producer-fed FP8 cache's staging rings, best first (one pass without).
                let mut staging = 0;
                loop {
                    let (src, choices) = match emit_with(k, t, sched, cap, staging) {
                        Err(IrError::Backend { ref message, .. })
                            if (sched.seesaw && message.contains(SEESAW_SHARED_TILE))
                                || (sched.wg_kv_split && message.contains(KV_SPLIT_REFUSED))
                                || (sched.score_wg && message.contains(ROLES_REFUSED)) =>
                        {
                            continue 'schedules
                        }
                        r => r?,
                    };
                    if src.shared_bytes <= target.max_shared_bytes {
                        return Ok(src);
                    }
                    smallest =
                        Some(smallest.map_or(src.shared_bytes, |s: u32| s.min(src.shared_bytes)));
                    staging += 1;
                    if staging >= choices {
                        break;
                    }
                }
            }
        }
    }
    Err(backend_err(
        k,
        format!(
            "needs at least {} bytes of shared memory; {} allows {} per block",
            smallest.unwrap_or(0),
            target.arch_name(),
            target.max_shared_bytes
        ),
    ))
}

/// The memory pass's refusal of a two-consumer plan that would share a per-block tile (see
/// [`Lower::seesaw_shares_a_block_tile`]): [`emit`] then emits the kernel without the schedule.
const SEESAW_SHARED_TILE: &str = "the seesaw schedule would share a per-block shared-memory tile";

/// The deepest pipelining hint of any paged loop in `body` (0 without one).
fn max_stages(body: &[Stmt]) -> usize {
    let mut max = 0;
    crate::visit::walk_stmts(body, &mut |s| {
        if let Stmt::PagedBlocks { stages, .. } = s {
            max = max.max(*stages);
        }
    });
    max
}

/// One pass: reads and extends the lowering state.
type Pass = fn(&mut Lower) -> Result<(), IrError>;

/// The passes from tile IR to CUDA C++, in order. `TPLA_DUMP=<name>[,<name>..]` (or `all`)
/// prints the state after the passes named to stderr.
///
/// - `analysis`: per-tile facts (assignments, uses, exact bf16 values, gemm operands);
/// - `layout`: where each tile lives (fragment / row registers, shared memory, inline);
/// - `fusion`: element-wise chains printed inside their last op's loop, in registers
///   (`fusion.rs`);
/// - `geometry`: warps per block, warpgroups, the fragment split of each tile (from the
///   [`Schedule`] and the register budget);
/// - `memory`: shared-memory buffers (swizzle, column blocking, paged rings) and every tile's
///   representation;
/// - `lower`: statements and tile ops to code nodes, by op family (elementwise, reduce, memory /
///   paged, gemm: fma / mma.sync / wgmma);
/// - `sync`: barriers between conflicting shared-memory accesses;
/// - `print`: the translation unit.
pub(crate) const PASSES: [(&str, Pass); 8] = [
    ("analysis", |s| {
        s.info = analyse(s.k);
        Ok(())
    }),
    ("layout", |s| {
        s.lay = layouts(s.k);
        Ok(())
    }),
    ("fusion", |s| {
        s.fused = crate::cuda::fusion::fused_tiles(s.k, &s.info.assigns, &s.info.uses, &s.lay);
        Ok(())
    }),
    ("geometry", |s| {
        s.geo = geometry(&s.sched, &s.info, &s.target);
        // (A forced `WARPS` is the caller's choice and is emitted as asked.)
        if let Some(why) = s
            .sched
            .warps
            .is_none()
            .then(|| registers_exceeded(&s.geo, &s.info))
            .flatten()
        {
            return Err(backend_err(s.k, &why));
        }
        // A producer warpgroup needs Hopper (mbarrier rings, `setmaxnreg`) and consumers of
        // whole warpgroups: the warpgroup (wgmma) geometry, or mma.sync warps in fours.
        let hopper_consumers = s.geo.wg || (s.target.wgmma && s.geo.nw.is_multiple_of(4));
        s.geo.producer = hopper_consumers && s.sched.producer && producer_applies(s.k);
        if let Some((geo, plan)) = s.seesaw_plan() {
            s.geo = geo;
            s.seesaw = Some(plan);
        }
        if let Some((geo, plan)) = s.kv_split_plan() {
            s.geo = geo;
            s.kv_split = Some(plan);
        }
        if let Some((geo, plan)) = s.roles_plan() {
            s.geo = geo;
            s.roles = Some(plan);
        }
        // Two warpgroups convert an FP8 cache beside one consumer warpgroup (`FP8_PRODUCERS`).
        if s.geo.producer
            && s.sched.fp8_producers == 2
            && s.geo.nw == 4
            && !s.geo.kv_split
            && s.geo.roles_wide == 0
            && crate::cuda::lower::fp8_producer::has_fp8_cache(s.k)
        {
            s.geo.producer_wgs = 2;
        }
        Ok(())
    }),
    ("memory", |s| {
        let lay = std::mem::take(&mut s.lay);
        s.resolve(&lay);
        s.lay = lay;
        if s.seesaw_shares_a_block_tile() {
            return Err(backend_err(s.k, SEESAW_SHARED_TILE));
        }
        if s.kv_split_shares_a_block_tile() {
            return Err(refused(s.k));
        }
        Ok(())
    }),
    ("lower", |s| {
        let k = s.k;
        s.nodes = s.lower_block(&k.body)?;
        Ok(())
    }),
    ("sync", |s| {
        s.nodes = insert_barriers(&s.nodes, &mut Hazards::default());
        if s.kv_split.is_some() && barrier_in_split_loop(&s.nodes) {
            return Err(refused(s.k));
        }
        if s.roles.is_some() && barrier_in_value_scope(&s.nodes) {
            return Err(crate::cuda::lower::roles::refused(s.k));
        }
        Ok(())
    }),
    ("print", |s| {
        s.source = Some(print_kernel(s, &s.nodes));
        Ok(())
    }),
];

/// Runs [`PASSES`] on `k` for `target` with paged loops pipelined at most `cap` deep and staging
/// ring choice `staging` (see `lower/fp8_producer.rs`); also returns how many staging choices the
/// kernel has (0 without a staging ring).
pub(crate) fn emit_with(
    k: &Kernel,
    target: Target,
    sched: Schedule,
    cap: usize,
    staging: usize,
) -> Result<(CudaSource, usize), IrError> {
    let dump = crate::dump::DumpStages::from_env()?;
    let mut state = Lower::new(k, target, sched, cap);
    state.paging.staging_choice = staging;
    for (name, pass) in PASSES {
        pass(&mut state)?;
        if dump.wants_pass(name) {
            eprintln!(
                "// ---- TPLA_DUMP after `{name}` ({}):\n{}",
                k.name,
                state.dump(name)
            );
        }
    }
    let choices = state.paging.staging_choices;
    Ok((state.source.expect("the print pass ran"), choices))
}

#[cfg(test)]
mod tests {
    /// `TPLA_DUMP` accepts exactly the names of the pass list.
    #[test]
    fn dump_names_are_the_pass_names() {
        let names: Vec<&str> = super::PASSES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, crate::dump::CUDA_PASSES);
    }
}
