//! The full op of a case's best configs (decode plus combine) and the small checks against the
//! CPU backend.

use super::*;

/// The three timings of one config at one split count.
pub(super) struct FullOpTimes {
    /// The decode alone, into preallocated partials.
    pub decode_only: Measurement,
    /// The combine alone (`None` with one split: there is no combine), timed once per split
    /// count of the case, on the partials of the first config run at that count.
    pub combine_only: Option<Measurement>,
    /// The full op: decode, then the combine when there is more than one split.
    pub time: Measurement,
    /// The combine config the full op ran (the fastest of [`COMBINE_CANDIDATES`] alone; `None`
    /// with one split).
    pub combine_config: Option<String>,
    /// Each combine candidate timed alone: config and median ms (empty with one split).
    pub combine_tried: Vec<(String, f64)>,
}

/// The combine configs (`BLOCK_D`, `BLOCK_H`) the bench times alone where a combine follows, the
/// library's default first. With the default the combine moved its bytes at ~1.3 TB/s, 40 % of
/// the copy roofline (H100, 2026-12-07): 2-5 % of every split op. A `BLOCK_H` above the case's
/// heads is skipped.
pub(super) const COMBINE_CANDIDATES: [(i64, i64); 6] = [
    (128, 16),
    (256, 16),
    (128, 32),
    (256, 32),
    (64, 16),
    (128, 8),
];

/// The combine a case runs at one split count: its config, its time alone and every candidate
/// timed (config, median ms).
pub(super) type ChosenCombine = (Config, Measurement, Vec<(String, f64)>);

/// Times each combine candidate alone on the partials `part` / `part_lse` into `out` / `lse`,
/// checks that every candidate writes what the default writes (normwise relative difference at
/// most 1e-5), and returns the fastest config with its measurement and the
/// list of all timed.
fn best_combine(
    exec: &CudaExecutor,
    lat: usize,
    heads: usize,
    part: &CudaTensor<f32>,
    part_lse: &CudaTensor<f32>,
    out: &mut CudaTensor<f32>,
    lse: &mut CudaTensor<f32>,
) -> Result<ChosenCombine, RuntimeError> {
    let mut best: Option<(Config, Measurement)> = None;
    let mut tried = Vec::new();
    let mut reference: Option<Vec<f32>> = None;
    for (bd, bh) in COMBINE_CANDIDATES {
        if bh as usize > heads && best.is_some() {
            continue;
        }
        let c = combine_splits
            .default_config(&[("LAT", lat as i64)])?
            .with("BLOCK_D", bd)
            .with("BLOCK_H", bh);
        let m = match measure(exec, 3, 30, || {
            combine_splits::launch(exec, &c, part, part_lse, out, lse)
        }) {
            Ok(m) => m,
            // The default must run; another candidate that does not build here is left out.
            Err(e) if best.is_none() => return Err(e),
            Err(_) => continue,
        };
        let got = exec.download(out)?.data().to_vec();
        match &reference {
            None => reference = Some(got),
            Some(r) => {
                // Normwise, as the CPU check: the candidates sum the same partials in the same
                // order, but their exp2 and division need not round alike (BLOCK_H = 8 differed
                // by 8.9e-5 in one element, H100 2026-12-07).
                let (num, den) = r.iter().zip(&got).fold((0.0f64, 0.0f64), |(n, d), (a, b)| {
                    (n + ((a - b) as f64).powi(2), d + (*a as f64).powi(2))
                });
                let rel = (num / den.max(1e-30)).sqrt();
                if rel.is_nan() || rel > 1e-5 {
                    return Err(RuntimeError::InvalidInput(format!(
                        "combine [{c}] differs from the default's output (rel diff {rel:.1e})"
                    )));
                }
            }
        }
        tried.push((c.to_string(), m.median_ms));
        if best.as_ref().is_none_or(|b| m.median_ms < b.1.median_ms) {
            best = Some((c, m));
        }
    }
    let (c, m) = best.expect("the default combine ran");
    Ok((c, m, tried))
}

/// Times the decode alone (into preallocated partials), the combine alone and the full op: with
/// one split the decode writes `out` / `lse` directly (as the library's `decode_attention`
/// does), otherwise the combine follows.
#[allow(clippy::too_many_arguments)]
pub(super) fn time_full_op(
    exec: &CudaExecutor,
    cfg: &Config,
    splits: usize,
    bufs: &mut Bufs,
    cache: &CudaPagedCache<bf16>,
    shape: &DecodeShape,
    scale: f32,
) -> Result<FullOpTimes, RuntimeError> {
    let (b, h) = (shape.batch, shape.heads);
    let mut part = exec.alloc::<f32>(&[splits, b, h, shape.lat])?;
    let mut part_lse = exec.alloc::<f32>(&[splits, b, h])?;
    let decode_only = measure(exec, 3, 30, || {
        launch_decode(exec, cfg, &bufs.q, cache, &mut part, &mut part_lse, scale)
    })?;
    let mut combine_only = None;
    let mut combine_config = None;
    let mut combine_tried = Vec::new();
    let time = if splits == 1 {
        bufs.out.reshape(&[1, b, h, shape.lat])?;
        bufs.lse.reshape(&[1, b, h])?;
        let t = measure(exec, 3, 30, || {
            launch_decode(
                exec,
                cfg,
                &bufs.q,
                cache,
                &mut bufs.out,
                &mut bufs.lse,
                scale,
            )
        });
        bufs.out.reshape(&[b, h, shape.lat])?;
        bufs.lse.reshape(&[b, h])?;
        t?
    } else {
        let (ccfg, alone, tried) = match bufs.combines.get(&splits) {
            Some(chosen) => chosen.clone(),
            None => {
                let chosen = best_combine(
                    exec,
                    shape.lat,
                    h,
                    &part,
                    &part_lse,
                    &mut bufs.out,
                    &mut bufs.lse,
                )?;
                bufs.combines.insert(splits, chosen.clone());
                chosen
            }
        };
        combine_only = Some(alone);
        combine_config = Some(ccfg.to_string());
        combine_tried = tried;
        measure(exec, 3, 30, || {
            launch_decode(exec, cfg, &bufs.q, cache, &mut part, &mut part_lse, scale)?;
            combine_splits::launch(exec, &ccfg, &part, &part_lse, &mut bufs.out, &mut bufs.lse)
        })?
    };
    Ok(FullOpTimes {
        decode_only,
        combine_only,
        time,
        combine_config,
        combine_tried,
    })
}

/// GPU vs CPU executor on a small problem with the chosen config (max relative difference).
pub(super) fn check_small(
    exec: &CudaExecutor,
    cfg: &str,
    lat: usize,
    page_size: usize,
) -> Result<f64, RuntimeError> {
    let (b, h, l, d) = (2usize, 16usize, 300usize, lat + 64);
    let cfg = parse_config(cfg).with("BLOCK_H", 16);
    let fp8 = cfg.try_get("KV_FP8").is_some_and(|v| v > 0);
    let width = if fp8 { fp8_carrier_row(lat, 64) } else { d };
    let mut c = HostPagedCache::<bf16>::new(b, l, page_size.min(16), width)?;
    for (i, x) in c.data_mut().iter_mut().enumerate() {
        *x = bf16::from_f32(pattern(i, 11));
    }
    if fp8 {
        for t in 0..l {
            for s in 0..b {
                let v: Vec<f32> = (0..d).map(|j| pattern((s * l + t) * d + j, 11)).collect();
                tpla_kernels::fp8::write_fp8_token(&mut c, s, t, &v, lat)?;
            }
        }
    }
    c.set_seq_lens(&[l, l / 3])?;
    let qv: Vec<f32> = (0..b * h * d).map(|i| pattern(i, 5)).collect();
    let q = HostTensor::<bf16>::from_f32(&[b, h, d], &qv)
        .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    let splits = 3;
    let cpu = CpuExecutor::new(0)?;
    let mut po = HostTensor::<f32>::full(&[splits, b, h, lat], f32::NAN);
    let mut pl = HostTensor::<f32>::full(&[splits, b, h], f32::NAN);
    launch_decode(&cpu, &cfg, &q, &c, &mut po, &mut pl, 0.1)?;
    let gq = exec.upload(&q)?;
    let gc = exec.upload_paged(&c)?;
    let mut go = exec.upload(&HostTensor::<f32>::full(&[splits, b, h, lat], f32::NAN))?;
    let mut gl = exec.upload(&HostTensor::<f32>::full(&[splits, b, h], f32::NAN))?;
    launch_decode(exec, &cfg, &gq, &gc, &mut go, &mut gl, 0.1)?;
    let go = exec.download(&go)?;
    let num: f64 = go
        .data()
        .iter()
        .zip(po.data())
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = po.data().iter().map(|b| (*b as f64).powi(2)).sum();
    Ok((num / den.max(1e-30)).sqrt())
}
