//! The largest-batch sweep written out: JSON with the modelled figures and the paper's beside
//! them, and a PNG of tokens/s against context (both written atomically).

use std::path::{Path, PathBuf};

use serde_json::json;
use tpla_model::plot::{line_plot_png, Panel, Series};

use super::cost::{
    Hardware, COLLECTIVE_LATENCY_S, MATMUL_EFFICIENCY, MEM_EFFICIENCY, NVLINK_BUS_BYTES_PER_S,
    RESERVE_BYTES,
};
use super::maxbatch::{tpla_speedup, Budget, MaxBatchRow, DEPLOYED_WEIGHT_BYTES, PAPER};

/// The JSON document of a sweep.
pub fn max_batch_json(rows: &[MaxBatchRow], hw: &Hardware) -> serde_json::Value {
    let mut ratios = Vec::new();
    for (model, paper) in PAPER {
        for budget in [Budget::AttentionOnly, Budget::FullModel] {
            for tp in [2, 4, 8] {
                ratios.push(json!({
                    "model": model, "budget": budget, "tp": tp, "context": 32768,
                    "tpla_g2_over_mla_tp": tpla_speedup(rows, model, budget, tp, 32768),
                    "paper_tp2_h800": paper,
                }));
            }
        }
    }
    json!({
        "label": "modelled: roofline cost model (tpla::layer::cost), not measured",
        "hardware": hw,
        "assumptions": {
            "mem_efficiency": MEM_EFFICIENCY, "matmul_efficiency": MATMUL_EFFICIENCY,
            "nvlink_bus_bytes_per_s": NVLINK_BUS_BYTES_PER_S, "collective_latency_s": COLLECTIVE_LATENCY_S,
            "reserve_bytes": RESERVE_BYTES, "weight_bytes_per_param": DEPLOYED_WEIGHT_BYTES,
            "kv_cache": "bf16",
            "budgets": {
                "attention-only": "attention blocks + embeddings on the GPU; step = attention blocks",
                "full-model": "1/tp of every weight; step adds modelled MoE/FFN/LM-head weight reads"
            }
        },
        "tpla_vs_mla_at_32k": ratios,
        "rows": rows,
    })
}

/// Writes `max_batch.json` and `max_batch.png` into `dir`; returns their paths.
pub fn write_max_batch(
    dir: &Path,
    rows: &[MaxBatchRow],
    hw: &Hardware,
) -> tpla_model::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(|e| tpla_model::ModelError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let json_path = dir.join("max_batch.json");
    let text =
        serde_json::to_string_pretty(&max_batch_json(rows, hw)).expect("plain values serialise");
    tpla_model::fsio::write_atomic(&json_path, text.as_bytes())?;
    let mut panels = Vec::new();
    for (model, paper) in PAPER {
        let mut series = Vec::new();
        for (ci, form) in ["mla-tp", "tpla-g2", "dcp"].iter().enumerate() {
            for (ti, tp) in [2, 8].into_iter().enumerate() {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| {
                        r.model == model
                            && r.budget == Budget::AttentionOnly
                            && r.tp == tp
                            && r.form == *form
                            && r.tokens_per_s > 0.0
                    })
                    .map(|r| (r.context as f64 / 1024.0, r.tokens_per_s))
                    .collect();
                series.push(Series {
                    label: format!("{form} TP{tp}"),
                    points,
                    color: 2 * ci + ti,
                    dashed: false,
                });
            }
        }
        let ours = tpla_speedup(rows, model, Budget::AttentionOnly, 2, 32768).unwrap_or(0.0);
        panels.push(Panel {
            title: format!("{model} (modelled H200, attention-only): TPLA/MLA TP2 32K {ours:.2}x, paper {paper}x"),
            x_label: "context (K tokens)".into(),
            y_label: "tokens/s at largest batch".into(),
            series,
        });
    }
    let png_path = dir.join("max_batch.png");
    line_plot_png(&png_path, &panels, 1600, 600)?;
    Ok((json_path, png_path))
}
