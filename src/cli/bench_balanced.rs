//! The balanced split schedule in `tpla bench --backend cuda`: beside each variable-length row
//! (uniform splits, the sweep's best config), a `+bal` row runs the same case with per-sequence
//! pieces computed on the device ([`tpla_kernels::split_schedule`]), timed as the whole op:
//! schedule, decode (`KV_CHUNKS = 1`) and the counted combine. The three fastest configs of the
//! sweep run with pieces of one wave of program slots; the fastest of them again with two, three
//! and four waves ([`Balanced::with_waves`]), and the row reports the best of all.

use tpla_kernels::ops::{
    choose_balanced, decode_attention, decode_attention_balanced, Balanced, BalancedWorkspace,
    DecodeParams,
};
use tpla_kernels::split_schedule;
use tpla_runtime::cuda::bench::{measure, DecodeCaseResult, Measurement, Roofline};
use tpla_runtime::cuda::{CudaExecutor, CudaPagedCache};
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostTensor, RuntimeError};

use super::bench_cuda::parse_config;

/// What the balanced row measured beyond the case result: the schedule kernel alone.
pub struct BalancedRow {
    /// The row, as variant `{variant}+bal`.
    pub result: DecodeCaseResult,
    /// The schedule kernel alone.
    pub schedule: Measurement,
    /// The waves of program slots the reported pieces were sized for.
    pub waves: usize,
}

/// The balanced row of the case whose uniform row is `uniform` (over `cache`): the three fastest
/// decode configs of its sweep, each as the balanced op sized from the device's occupancy; the
/// fastest is reported. `check_rel_diff` is its output's relative difference from the uniform
/// decode with the same config.
pub fn balanced_row(
    exec: &CudaExecutor,
    uniform: &DecodeCaseResult,
    cache: &CudaPagedCache<bf16>,
    roof: &Roofline,
) -> Result<BalancedRow, RuntimeError> {
    let shape = uniform.shape.clone();
    let (b, h, d) = (shape.batch, shape.heads, shape.lat + shape.rope);
    let scale = 1.0 / (d as f32).sqrt();
    let qv: Vec<f32> = (0..b * h * d)
        .map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.5)
        .collect();
    let q = exec.upload(
        &HostTensor::<bf16>::from_f32(&[b, h, d], &qv)
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
    )?;
    let mut out = exec.alloc::<f32>(&[b, h, shape.lat])?;
    let mut lse = exec.alloc::<f32>(&[b, h])?;
    let mut ranked: Vec<&(String, usize, f64)> =
        uniform.tried.iter().filter(|t| t.2.is_finite()).collect();
    ranked.sort_by(|x, y| x.2.total_cmp(&y.2));
    let mut best: Option<(DecodeParams, Balanced, usize, Measurement)> = None;
    let mut tried = Vec::new();
    let mut time_one = |p: &DecodeParams,
                        waves: usize,
                        best: &mut Option<(DecodeParams, Balanced, usize, Measurement)>|
     -> Result<(), RuntimeError> {
        let sched = choose_balanced(exec, p, shape.context)?.with_waves(waves);
        let mut ws = BalancedWorkspace::new(exec, p, sched)?;
        let m = measure(exec, 3, 30, || {
            decode_attention_balanced(exec, p, &mut ws, &q, cache, &mut out, &mut lse)
        })?;
        tried.push((
            format!("{} waves={waves}", p.balanced_decode_config()),
            sched.max_splits,
            m.median_ms,
        ));
        if best.as_ref().is_none_or(|x| m.median_ms < x.3.median_ms) {
            *best = Some((p.clone(), sched, waves, m));
        }
        Ok(())
    };
    for (cfg, _, _) in ranked.into_iter().take(3) {
        let mut p = DecodeParams::new(b, h, shape.lat, shape.rope, 1, scale);
        p.decode = parse_config(cfg);
        time_one(&p, 1, &mut best)?;
    }
    if let Some(p) = best.as_ref().map(|x| x.0.clone()) {
        for waves in 2..=4 {
            time_one(&p, waves, &mut best)?;
        }
    }
    let (p, sched, waves, time) =
        best.ok_or_else(|| RuntimeError::InvalidInput("no config of the sweep ran".into()))?;
    let max_splits = sched.max_splits;
    // The schedule alone, into tables of its own.
    let scfg = tpla_kernels::ops::Balanced::schedule_config(&p)?;
    exec.resident_programs(&split_schedule, &scfg)?;
    let mut chunk = exec.alloc::<i32>(&[b])?;
    let mut nsplits = exec.alloc::<i32>(&[b])?;
    let lens_shape = [b];
    let tpla_runtime::KernelArg::Paged(pa) = CudaExecutor::paged_arg(cache) else {
        return Err(RuntimeError::InvalidInput("the cache is not paged".into()));
    };
    let schedule = measure(exec, 3, 30, || {
        let (tpla_runtime::KernelArg::Tensor(c), tpla_runtime::KernelArg::Tensor(n)) = (
            CudaExecutor::tensor_arg_mut(&mut chunk),
            CudaExecutor::tensor_arg_mut(&mut nsplits),
        ) else {
            unreachable!("device tensors are tensor arguments")
        };
        let g = pa.geometry();
        tpla_kernels::ops::launch_schedule(
            exec,
            &p,
            &sched,
            pa.seq_lens_arg(&lens_shape)?,
            c,
            n,
            g.pages_per_seq * g.page_size,
        )
    })?;
    // Correctness beside the timing: the same config with uniform splits.
    let mut ws = BalancedWorkspace::new(exec, &p, sched)?;
    decode_attention_balanced(exec, &p, &mut ws, &q, cache, &mut out, &mut lse)?;
    let got = exec.download(&out)?;
    let uniform_p = DecodeParams {
        splits: uniform.splits.max(1),
        ..p.clone()
    };
    decode_attention(exec, &uniform_p, &q, cache, &mut out, &mut lse)?;
    let want = exec.download(&out)?;
    let num: f64 = got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.data().iter().map(|x| (*x as f64).powi(2)).sum();
    let gbps = shape.bytes() / (time.median_ms * 1e-3) / 1e9;
    Ok(BalancedRow {
        result: DecodeCaseResult {
            variant: format!("{}+bal", uniform.variant),
            config: p.balanced_decode_config().to_string(),
            splits: max_splits,
            gbps,
            tflops: shape.flops() / (time.median_ms * 1e-3) / 1e12,
            fraction_of_read_roofline: gbps / roof.read_gbps,
            fraction_of_copy_roofline: gbps / roof.copy_gbps,
            decode_only: time.clone(),
            schedule: Some(schedule.clone()),
            combine_only: None,
            combine_config: None,
            combine_tried: Vec::new(),
            time,
            tried,
            check_rel_diff: (num / den.max(1e-30)).sqrt(),
            shape,
        },
        schedule,
        waves,
    })
}
