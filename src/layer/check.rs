//! The 15 % check of the cost model: each form's measured per-device compute (attention,
//! projections and the element-wise glue kernels of the slowest rank) beside what [`super::cost::layer_cost`] predicts from
//! rooflines measured in the same process ([`measure_rooflines`]: a streaming sum and a matmul
//! on the same executor and gemm), and the ratio. The collective is modelled (NVLink figures
//! stated), never measured, and the JSON says so. [`write_check`] writes it atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tpla_codegen::KernelDef;
use tpla_kernels::{add_rows, copy_rows};
use tpla_model::MlaConfig;
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostTensor, RuntimeError};

use super::cost::{layer_cost_tokens, Hardware};
use super::gemm::{Engine, GemmPath, Proj};
use super::plan::Form;

/// Largest `|measured / predicted − 1|` the check accepts.
pub const TOLERANCE: f64 = 0.15;

/// What [`check.json`](write_check)'s label says.
pub const LABEL: &str = "per-device compute measured; collective modelled";

/// Rooflines measured on one executor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rooflines {
    /// Streaming bandwidth (bytes read + written per second).
    pub mem_bytes_per_s: f64,
    /// Matmul rate (FLOP/s) of the layer's gemm.
    pub flops: f64,
    /// How the bandwidth was measured.
    pub copy: String,
    /// How the matmul rate was measured.
    pub matmul: String,
    /// Time per kernel of a chain of tiny kernels queued back to back, s (the model's
    /// per-kernel floor, [`Hardware::kernel_s`]).
    pub kernel_s: f64,
    /// How the kernel floor was measured.
    pub kernel: String,
}

impl Rooflines {
    /// `base` with the measured bandwidth and matmul rate (collective figures kept).
    pub fn hardware(&self, base: &Hardware) -> Hardware {
        Hardware {
            mem_bytes_per_s: self.mem_bytes_per_s,
            flops: self.flops,
            kernel_s: self.kernel_s,
            ..*base
        }
    }
}

fn median_s<F: FnMut() -> Result<(), RuntimeError>>(
    runs: usize,
    mut f: F,
) -> Result<f64, RuntimeError> {
    f()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Measures the streaming bandwidth (`add_rows` of two `[rows, cols]` f32 tensors: two reads and
/// one write) and the matmul rate (the layer's projection gemm under `gemm`, `[m, k] × [k, n]`
/// bf16 weights) on `exec`, each the median of `runs` synchronised runs after a warm-up.
/// `large` picks GPU sizes (1 GiB per tensor, 8192³ gemm) instead of CPU ones.
pub fn measure_rooflines<X: Executor + 'static>(
    exec: &X,
    gemm: GemmPath,
    large: bool,
    runs: usize,
) -> Result<Rooflines, RuntimeError> {
    let (rows, cols, mk) = if large {
        (1 << 15, 1 << 13, 8192)
    } else {
        (1 << 11, 1 << 12, 384)
    };
    let a = exec.upload(&HostTensor::<f32>::full(&[rows, cols], 1.0))?;
    let b = exec.upload(&HostTensor::<f32>::full(&[rows, cols], 2.0))?;
    let mut out = exec.alloc::<f32>(&[rows, cols])?;
    let cfg = add_rows.default_config(&[("COLS", cols as i64)])?;
    let copy_s = median_s(runs, || {
        add_rows::launch(exec, &cfg, &a, &b, &mut out)?;
        exec.synchronize()
    })?;
    drop((a, b, out));
    let bytes = 3.0 * (rows * cols * 4) as f64;
    let engine = Engine::for_executor(exec, gemm)?;
    let w = HostTensor::from_vec(
        &[1, mk, mk],
        (0..mk * mk)
            .map(|i| bf16::from_f32(((i % 13) as f32 - 6.0) / 64.0))
            .collect(),
    )
    .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    let proj = Proj::new(exec, &w, &engine, false)?;
    let x = exec.upload(&HostTensor::<f32>::full(&[mk, 1, mk], 0.5))?;
    let mm_s = median_s(runs, || {
        proj.apply::<f32, f32>(exec, &x, mk)?;
        exec.synchronize()
    })?;
    // The kernel floor: a chain of tiny copies queued back to back, waited for once.
    const CHAIN: usize = 64;
    let tiny = exec.upload(&HostTensor::<f32>::full(&[1, 128], 1.0))?;
    let mut tiny_out = exec.alloc::<f32>(&[1, 128])?;
    let copy = copy_rows.default_config(&[("COLS", 128)])?;
    let chain_s = median_s(runs, || {
        for _ in 0..CHAIN {
            copy_rows::launch(exec, &copy, &tiny, &mut tiny_out)?;
        }
        exec.synchronize()
    })?;
    Ok(Rooflines {
        kernel_s: chain_s / CHAIN as f64,
        kernel: format!(
            "{CHAIN} copy_rows [1, 128] launches queued back to back, waited for once, median of {runs}"
        ),
        mem_bytes_per_s: bytes / copy_s,
        flops: 2.0 * (mk as f64).powi(3) / mm_s,
        copy: format!("add_rows [{rows}, {cols}] f32 (2 reads + 1 write), median of {runs}"),
        matmul: format!(
            "{mk}x{mk}x{mk} bf16 through {} (activation cast included), median of {runs}",
            engine.describe()
        ),
    })
}

/// One form's measured and predicted per-device time of the timed stack.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FormCheck {
    /// The form's name.
    pub form: String,
    /// Measured attention + projections + glue kernels of the slowest rank, s per step of the
    /// stack.
    pub measured_s: f64,
    /// Measured host work and transfers (the layer input's upload), s; not in the model.
    pub host_s: f64,
    /// Modelled collective time, s.
    pub collective_modelled_s: f64,
    /// Measured collective time of the slowest rank, s, where the ranks ran on their own GPUs
    /// with NCCL (`None`: a stand-in summed them and only the model's figure exists).
    pub collective_measured_s: Option<f64>,
    /// The cost model's attention + projections + glue from the measured rooflines, s.
    pub predicted_s: f64,
    /// `measured_s / predicted_s`.
    pub ratio: f64,
    /// `|ratio − 1| ≤ TOLERANCE`.
    pub within_tolerance: bool,
    /// The same prediction with each rank's attention taken from this device's tune database
    /// (the decode kernel's measured time for the rank's bucket, scaled to the batch and length,
    /// as `--form auto` calibrates it) and the projections and glue still from the rooflines;
    /// `None` where the database lacks a rank's bucket.
    pub tuned_attention: Option<TunedAttention>,
    /// Measured against predicted per phase (attention, projections, glue), where the caller
    /// had the phases (`measured_phases` of [`FormCheck::new`]): which part of the model misses.
    pub phases: Vec<PhaseCheck>,
}

/// One phase of [`FormCheck::phases`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseCheck {
    /// `attention`, `projections` or `glue`.
    pub phase: &'static str,
    /// Measured on the slowest rank, s per step of the stack.
    pub measured_s: f64,
    /// The cost model's figure from the measured rooflines, s per step of the stack.
    pub predicted_s: f64,
    /// `measured_s / predicted_s`.
    pub ratio: f64,
}

/// [`FormCheck::tuned_attention`]: the model with measured decode-kernel times.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TunedAttention {
    /// Predicted attention + projections + glue of the stack, s.
    pub predicted_s: f64,
    /// `measured_s / predicted_s`.
    pub ratio: f64,
    /// `|ratio − 1| ≤ TOLERANCE`.
    pub within_tolerance: bool,
    /// Where the attention figure came from.
    pub source: String,
}

impl FormCheck {
    /// The check of `form` over a stack of `layers` at `batch` sequences of `len` tokens:
    /// `measured_s` against the model on `hw`, and, with the tune database `db`, against the
    /// model whose attention is the database's kernel time ([`FormCheck::tuned_attention`]). A
    /// non-positive or non-finite time is an error. With `query_len` new tokens per sequence
    /// per step (MTP) the multi-token model ([`super::cost::layer_cost_tokens`]) and, for the
    /// tuned attention, the tune bucket of each rank's query rows
    /// ([`super::auto::predict_tokens`]). `measured_phases`, where the caller timed them, is the
    /// stack's attention, projections and glue (s per step, of the rank whose sum is
    /// `measured_s`), checked against the same model phase by phase ([`FormCheck::phases`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &MlaConfig,
        form: Form,
        tp: usize,
        batch: usize,
        query_len: usize,
        len: usize,
        layers: usize,
        hw: &Hardware,
        measured_s: f64,
        measured_phases: Option<[f64; 3]>,
        host_s: f64,
        db: Option<&tpla_runtime::tune::TuneDb>,
    ) -> Result<FormCheck, RuntimeError> {
        let sq = query_len.max(1);
        let m = layer_cost_tokens(cfg, form, tp, batch, sq, len, 2.0, 4.0, hw);
        let n = layers as f64;
        let predicted_s = m.device_s() * n;
        if !(measured_s > 0.0
            && measured_s.is_finite()
            && predicted_s > 0.0
            && predicted_s.is_finite())
        {
            return Err(RuntimeError::InvalidInput(format!(
                "{}: measured {measured_s} s / predicted {predicted_s} s cannot be compared",
                form.name()
            )));
        }
        let verdict = |predicted_s: f64| {
            let ratio = measured_s / predicted_s;
            (ratio, (ratio - 1.0).abs() <= TOLERANCE)
        };
        let tuned_attention = match db {
            Some(db) => {
                let p = super::auto::predict_tokens(cfg, form, tp, batch, sq, len, hw, Some(db))?;
                p.from_tune_db.then(|| {
                    let predicted_s = (p.attn_s + m.proj_s + m.glue_s) * n;
                    let (ratio, within_tolerance) = verdict(predicted_s);
                    TunedAttention {
                        predicted_s,
                        ratio,
                        within_tolerance,
                        source: p.source,
                    }
                })
            }
            None => None,
        };
        let (ratio, within_tolerance) = verdict(predicted_s);
        // Per phase, where the caller timed them: the same model, phase by phase.
        let predicted = [m.attn_s, m.proj_s, m.glue_s].map(|p| p * n);
        let phases: Vec<PhaseCheck> = measured_phases
            .map(|measured| {
                ["attention", "projections", "glue"]
                    .into_iter()
                    .zip(measured.into_iter().zip(predicted))
                    .map(|(phase, (measured_s, predicted_s))| PhaseCheck {
                        phase,
                        measured_s,
                        predicted_s,
                        ratio: measured_s / predicted_s,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(FormCheck {
            form: form.name(),
            measured_s,
            host_s,
            collective_modelled_s: m.coll_s * n,
            collective_measured_s: None,
            predicted_s,
            ratio,
            within_tolerance,
            tuned_attention,
            phases,
        })
    }
}

/// The collective model's figures, as stated in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CollectiveModel {
    /// NVLink bus bandwidth per direction, bytes/s.
    pub bus_bytes_per_s: f64,
    /// Latency per collective, s.
    pub latency_s: f64,
    /// The formulas.
    pub model: &'static str,
}

impl CollectiveModel {
    /// The figures of `hw`.
    pub fn of(hw: &Hardware) -> Self {
        CollectiveModel {
            bus_bytes_per_s: hw.bus_bytes_per_s,
            latency_s: hw.latency_s,
            model: "ring all-reduce latency + 2(R-1)/R * bytes / bus; DCP exchange latency + (R-1)/R * bytes / bus",
        }
    }
}

/// A whole `tpla decode --form` model check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCheck {
    /// [`LABEL`].
    pub label: &'static str,
    /// Device name (or `cpu (N threads)`).
    pub device: String,
    /// Driver version (`None` on the CPU).
    pub driver: Option<i32>,
    /// UTC date.
    pub date: String,
    /// The commit the binary was built from.
    pub commit: String,
    /// Model preset.
    pub preset: String,
    /// Sequences.
    pub batch: usize,
    /// Cached tokens per sequence at the timed steps.
    pub context: usize,
    /// New tokens per sequence per step (1; 2-4 for MTP / speculative verify).
    pub query_len: usize,
    /// Tensor-parallel ranks.
    pub tp: usize,
    /// Layers in the timed stack.
    pub layers: usize,
    /// Which gemm ran the projections.
    pub gemm: String,
    /// How each phase was timed ([`super::clock::PhaseTiming`]; [`super::TpLayer::timing`]).
    pub timing: String,
    /// The same-process rooflines the prediction used.
    pub rooflines: Rooflines,
    /// The collective model.
    pub collective: CollectiveModel,
    /// [`TOLERANCE`].
    pub tolerance: f64,
    /// Per form.
    pub forms: Vec<FormCheck>,
}

impl ModelCheck {
    /// Whether every form is within [`TOLERANCE`].
    pub fn all_within(&self) -> bool {
        self.forms.iter().all(|f| f.within_tolerance)
    }

    /// `layer-check-PRESET-tpTP-bBATCH-cCONTEXT-DATE-COMMIT.json`.
    pub fn file_name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let sq = if self.query_len > 1 {
            format!("-sq{}", self.query_len)
        } else {
            String::new()
        };
        format!(
            "layer-check-{}-tp{}-b{}-c{}{sq}-{}-{}.json",
            clean(&self.preset),
            self.tp,
            self.batch,
            self.context,
            clean(&self.date),
            clean(&self.commit)
        )
    }
}

/// Writes `check` as JSON into `dir` (created if missing) atomically: a failed write leaves any
/// earlier file of that name intact and no partial file. Returns the path.
pub fn write_check(dir: &Path, check: &ModelCheck) -> tpla_model::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| tpla_model::ModelError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let path = dir.join(check.file_name());
    let text = serde_json::to_string_pretty(check).expect("plain values serialise") + "\n";
    tpla_model::fsio::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
