//! Outputs of the accuracy harness: the text table, JSON and the PNG plot of an
//! [`AccuracyReport`], and the μ decision drawn from its rows. Files are written atomically
//! ([`crate::fsio`]); the `*_to` forms write into an [`OutputFile`] prepared before the run.

use super::accuracy::{AccuracyReport, AccuracyRow, Mode, MuDecision, Slicing};
use super::error::Result;
use super::fsio::OutputFile;
use super::kv_cache::KvCache;
use super::plot::{line_plot_png_to, Panel, Series};
use super::reparam::MuConvention;

impl AccuracyReport {
    /// Plain-text table of the summaries.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} ({}), P = {}, N = {}, stride {}, seed {}: rel. error / cosine of y vs exact MLA over steps >= P\n",
            self.config.name, self.layer_source, self.options.prefill_tokens, self.options.decode_tokens, self.options.stride, self.options.seed
        );
        s += &format!(
            "{:<9} {:>2} {:<13} {:<15} {:<12} {:<4} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}\n",
            "transform",
            "g",
            "slicing",
            "mu",
            "mode",
            "kv",
            "rel_mean",
            "rel_last",
            "rel_max",
            "cos_mean",
            "cos_min",
            "vs_bf16"
        );
        for r in &self.rows {
            s += &format!(
                "{:<9} {:>2} {:<13} {:<15} {:<12} {:<4} {:>10.3e} {:>10.3e} {:>10.3e} {:>9.6} {:>9.6} {:>10}\n",
                r.transform.name(),
                r.groups,
                r.slicing.name(),
                r.mu.map_or("-", |m| m.name()),
                r.mode.name(),
                r.kv_cache.name(),
                r.rel_err_mean,
                r.rel_err_last,
                r.rel_err_max,
                r.cosine_mean,
                r.cosine_min,
                r.rel_err_vs_bf16_mean
                    .map_or("-".to_string(), |e| format!("{e:.3e}"))
            );
        }
        if let Some(d) = &self.mu_decision {
            s += &format!(
                "mu decision: favoured {} (wins: 1/e {}, one {}; geo-mean err(1/e)/err(1) = {:.3})\n",
                d.favoured.name(),
                d.wins_inverse_energy,
                d.wins_one,
                d.geo_mean_ratio
            );
        }
        s + &self.kv_table()
    }

    /// TPLA's error and the cache formats' side by side (issue 11 point 2): mean rel. error of y
    /// vs exact f64 MLA for exact MLA and TPLA (`both`, μ = 1 where evaluated) on each cache
    /// format, per transform, g and mode. Empty when only f64 was evaluated.
    pub fn kv_table(&self) -> String {
        let mut kvs: Vec<KvCache> = vec![KvCache::F64];
        for k in &self.options.kv_caches {
            if !kvs.contains(k) {
                kvs.push(*k);
            }
        }
        if kvs.len() == 1 {
            return String::new();
        }
        let mu = if self.options.mu.contains(&MuConvention::One) {
            MuConvention::One
        } else {
            self.options
                .mu
                .first()
                .copied()
                .unwrap_or(MuConvention::One)
        };
        let find = |tr, g, mode, slicing, kv| {
            self.rows.iter().find(|r| {
                r.transform == tr
                    && r.groups == g
                    && r.mode == mode
                    && r.slicing == slicing
                    && r.kv_cache == kv
                    && (slicing == Slicing::Exact || r.mu == Some(mu))
            })
        };
        let mut s = format!(
            "\nKV cache formats beside TPLA: mean rel. error of y vs exact f64 MLA (TPLA = both, mu = {})\n",
            mu.name()
        );
        s += &format!("{:<9} {:>2} {:<12}", "transform", "g", "mode");
        for who in ["MLA", "TPLA"] {
            for k in &kvs {
                s += &format!(" {:>10}", format!("{who} {}", k.name()));
            }
        }
        s += "\n";
        let mut missing_fp8 = Vec::new();
        for &tr in &self.options.transforms {
            for &g in &self.options.groups {
                for mode in [Mode::PdSep, Mode::AllDecoded] {
                    s += &format!("{:<9} {:>2} {:<12}", tr.name(), g, mode.name());
                    for slicing in [Slicing::Exact, Slicing::Both] {
                        for &k in &kvs {
                            let cell = find(tr, g, mode, slicing, k)
                                .map_or("-".to_string(), |r| format!("{:.3e}", r.rel_err_mean));
                            if cell == "-" && k == KvCache::Fp8 && !missing_fp8.contains(&g) {
                                missing_fp8.push(g);
                            }
                            s += &format!(" {cell:>10}");
                        }
                    }
                    s += "\n";
                }
            }
        }
        for g in missing_fp8 {
            s += &format!(
                "fp8 at g = {g}: none (a shard of {} columns is narrower than one 128-column scale group)\n",
                self.config.kv_lora_rank / g
            );
        }
        s
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Write the report as pretty JSON to `path`, atomically.
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        self.write_json_to(OutputFile::prepare(path)?)
    }

    /// Write the report as pretty JSON into a prepared output file.
    pub fn write_json_to(&self, out: OutputFile) -> Result<()> {
        out.commit(self.to_json()?.as_bytes())
    }

    /// PNG of relative error vs decoded tokens: TPLA (slicing both) with μ = `mu`, one panel per
    /// mode, written atomically to `path`.
    pub fn write_png(&self, path: &std::path::Path, mu: MuConvention) -> Result<()> {
        self.write_png_to(OutputFile::prepare(path)?, mu)
    }

    /// [`AccuracyReport::write_png`] into a prepared output file.
    pub fn write_png_to(&self, out: OutputFile, mu: MuConvention) -> Result<()> {
        let mut panels = Vec::new();
        for mode in [Mode::PdSep, Mode::AllDecoded] {
            let mut series = Vec::new();
            for r in self.rows.iter().filter(|r| {
                r.mode == mode
                    && r.slicing == Slicing::Both
                    && r.mu == Some(mu)
                    && r.kv_cache == KvCache::F64
            }) {
                let ti = self
                    .options
                    .transforms
                    .iter()
                    .position(|&t| t == r.transform)
                    .unwrap_or(0);
                let gi = self
                    .options
                    .groups
                    .iter()
                    .position(|&g| g == r.groups)
                    .unwrap_or(0);
                series.push(Series {
                    label: format!("{} g={}", r.transform.name(), r.groups),
                    points: r.curve.iter().map(|&(d, e)| (d as f64, e)).collect(),
                    color: ti * 3 + gi,
                    dashed: false,
                });
            }
            panels.push(Panel {
                title: match mode {
                    Mode::PdSep => format!(
                        "pd sep: {} prefill tokens, then decode (mu={})",
                        self.options.prefill_tokens,
                        mu.name()
                    ),
                    Mode::AllDecoded => format!("all tokens decoded (mu={})", mu.name()),
                },
                x_label: "tokens decoded".into(),
                y_label: "rel. error of y vs MLA".into(),
                series,
            });
        }
        line_plot_png_to(out, &panels, 1400, 600)
    }
}

pub(crate) fn decide_mu(rows: &[AccuracyRow]) -> Option<MuDecision> {
    let (mut wi, mut wo, mut logsum, mut cnt) = (0, 0, 0.0, 0usize);
    for a in rows
        .iter()
        .filter(|r| r.mu == Some(MuConvention::InverseEnergy))
    {
        if let Some(b) = rows.iter().find(|b| {
            b.mu == Some(MuConvention::One)
                && b.transform == a.transform
                && b.groups == a.groups
                && b.slicing == a.slicing
                && b.mode == a.mode
                && b.kv_cache == a.kv_cache
        }) {
            if a.rel_err_mean < b.rel_err_mean {
                wi += 1
            } else {
                wo += 1
            }
            logsum += (a.rel_err_mean / b.rel_err_mean).ln();
            cnt += 1;
        }
    }
    (cnt > 0).then(|| MuDecision {
        favoured: if wi > wo {
            MuConvention::InverseEnergy
        } else {
            MuConvention::One
        },
        wins_inverse_energy: wi,
        wins_one: wo,
        geo_mean_ratio: (logsum / cnt as f64).exp(),
    })
}
