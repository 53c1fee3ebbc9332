//! `tpla decode --form auto`: each form's predicted per-device time per layer, with attention
//! calibrated by this device's tune database where it holds the rank's decode shape, and the
//! pick with its reason.
//!
//! The tune database (`tpla tune`) stores, per decode bucket (heads, latent width, batch and
//! length rounded to powers of two), the fastest config and its measured time. A rank's
//! attention is then that time scaled by `batch · len / (bucket batch · bucket len)` (decode
//! reads the cache linearly in both); projections and the collective stay modelled. Without an
//! entry the roofline model is used, and the reason says which.

use tpla_codegen::KernelDef;
use tpla_model::MlaConfig;
use tpla_runtime::tune::{decode_bucket, TuneDb};
use tpla_runtime::RuntimeError;

use super::cost::{layer_cost_tokens, Hardware};
use super::plan::{dcp_tokens, roles, Form};

/// One form's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The form.
    pub form: Form,
    /// Attention, s per layer per device (slowest rank).
    pub attn_s: f64,
    /// Projections + glue + collective (modelled), s.
    pub rest_s: f64,
    /// Whether `attn_s` is the tune database's measured kernel time (else the roofline model).
    pub from_tune_db: bool,
    /// Where `attn_s` came from.
    pub source: String,
}

impl Prediction {
    /// Total per layer per device.
    pub fn total_s(&self) -> f64 {
        self.attn_s + self.rest_s
    }
}

/// `(batch, len)` of a bucket name `H..-lat..+..-B{b}-L{l}`.
fn bucket_sizes(bucket: &str) -> Option<(f64, f64)> {
    let mut parts = bucket.rsplit('-');
    let l = parts.next()?.strip_prefix('L')?.parse::<f64>().ok()?;
    let b = parts.next()?.strip_prefix('B')?.parse::<f64>().ok()?;
    Some((b, l))
}

/// Predicts `form` at `batch` sequences of `len` tokens over `tp` ranks on `hw`, with attention
/// from `db` where it holds every rank's bucket.
pub fn predict(
    cfg: &MlaConfig,
    form: Form,
    tp: usize,
    batch: usize,
    len: usize,
    hw: &Hardware,
    db: Option<&TuneDb>,
) -> Result<Prediction, RuntimeError> {
    predict_tokens(cfg, form, tp, batch, 1, len, hw, db)
}

/// [`predict`] with `query_len` new tokens per sequence per step (MTP, speculative verify): the
/// model's query rows, projections, glue and collectives scale with `batch · query_len`
/// ([`layer_cost_tokens`]), and a rank's attention is calibrated by the tune bucket of its query
/// rows (heads × `query_len`, the rows `latent_decode` packs into its blocks and the bucket
/// [`super::TpLayer::apply_tuned`] takes the config from).
#[allow(clippy::too_many_arguments)]
pub fn predict_tokens(
    cfg: &MlaConfig,
    form: Form,
    tp: usize,
    batch: usize,
    query_len: usize,
    len: usize,
    hw: &Hardware,
    db: Option<&TuneDb>,
) -> Result<Prediction, RuntimeError> {
    let sq = query_len.max(1);
    let m = layer_cost_tokens(cfg, form, tp, batch, sq, len, 2.0, 4.0, hw);
    let rest_s = m.proj_s + m.glue_s + m.coll_s;
    let modelled = Prediction {
        form,
        attn_s: m.attn_s,
        rest_s,
        from_tune_db: false,
        source: "roofline model".into(),
    };
    let Some(db) = db else {
        return Ok(modelled);
    };
    let name = tpla_kernels::latent_decode.name();
    let mut worst: Option<(f64, String)> = None;
    for role in roles(form, tp, cfg.heads, cfg.kv_lora_rank)? {
        let len_r = match role.tokens {
            Some((r, n)) => dcp_tokens(len, r, n).max(1),
            None => len,
        };
        let bucket = decode_bucket(
            batch,
            role.attn_heads.len() * sq,
            role.latent.len(),
            cfg.qk_rope,
            len_r,
        );
        let (Some(e), Some((bb, bl))) = (db.entry(name, &bucket), bucket_sizes(&bucket)) else {
            return Ok(Prediction {
                source: format!("roofline model (tune database has no {bucket})"),
                ..modelled
            });
        };
        let t = e.time_us * 1e-6 * (batch as f64 * len_r as f64) / (bb * bl);
        if worst.as_ref().is_none_or(|w| t > w.0) {
            worst = Some((t, format!("{bucket} {:.0} µs", e.time_us)));
        }
    }
    let Some((attn_s, what)) = worst else {
        return Ok(modelled);
    };
    Ok(Prediction {
        form,
        attn_s,
        rest_s,
        from_tune_db: true,
        source: format!("tune database ({what}, scaled to batch {batch}, len {len})"),
    })
}

/// The fastest of `preds` among those `allowed`, with the reason in words.
pub fn pick(preds: &[Prediction], allowed: &dyn Fn(&Form) -> bool) -> Option<(Form, String)> {
    let best = preds
        .iter()
        .filter(|p| allowed(&p.form))
        .min_by(|a, b| a.total_s().total_cmp(&b.total_s()))?;
    let others: Vec<String> = preds
        .iter()
        .filter(|p| p.form != best.form)
        .map(|p| {
            format!(
                "{} {:.3} ms{}",
                p.form.name(),
                p.total_s() * 1e3,
                if allowed(&p.form) { "" } else { " (excluded)" }
            )
        })
        .collect();
    Some((
        best.form,
        format!(
            "{} is fastest at {:.3} ms per layer per device (attention from {}) against {}",
            best.form.name(),
            best.total_s() * 1e3,
            best.source,
            others.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpla_model::Preset;

    fn scratch() -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("tpla-auto-{}-{nanos}", std::process::id()))
    }

    #[test]
    fn bucket_names_parse() {
        assert_eq!(
            bucket_sizes("H64-lat512+64-B64-L32768"),
            Some((64.0, 32768.0))
        );
        assert_eq!(bucket_sizes("nonsense"), None);
    }

    /// A tune entry makes the calibrated attention replace the model's, scaled by size; a form
    /// whose bucket is absent stays modelled and says so; the pick follows the figures.
    #[test]
    fn the_tune_database_calibrates_attention_and_decides_the_pick() {
        let cfg = Preset::KimiK2.config();
        let hw = Hardware::h200();
        let dir = scratch();
        let name = tpla_kernels::latent_decode.name();
        let (mut db, _) = TuneDb::open(&dir, "test-device", &[&tpla_kernels::latent_decode]);
        // MLA-TP at tp 2: 32 heads, the whole latent; batch 64, 32K.
        let bucket = decode_bucket(64, 32, 512, 64, 32768);
        let cfg_mla = tpla_kernels::ops::DecodeParams::new(64, 32, 512, 64, 1, 0.1).decode_config();
        db.put(name, &bucket, &cfg_mla, 9000.0, "2026-12-03");
        let mla = predict(&cfg, Form::MlaTp, 2, 64, 32768, &hw, Some(&db)).unwrap();
        assert!((mla.attn_s - 9e-3).abs() < 1e-12, "{mla:?}");
        assert!(mla.source.contains("tune database"), "{}", mla.source);
        // Half the batch: same bucket rounding (B32 is its own bucket, absent): modelled.
        let half = predict(&cfg, Form::MlaTp, 2, 32, 32768, &hw, Some(&db)).unwrap();
        assert!(
            half.source.contains("no H32-lat512+64-B32"),
            "{}",
            half.source
        );
        // 40000 tokens round to the 32K bucket: scaled by 40000 / 32768.
        let long = predict(&cfg, Form::MlaTp, 2, 64, 40000, &hw, Some(&db)).unwrap();
        assert!(
            (long.attn_s - 9e-3 * 40000.0 / 32768.0).abs() < 1e-12,
            "{long:?}"
        );
        let model = predict(&cfg, Form::MlaTp, 2, 64, 32768, &hw, None).unwrap();
        assert_eq!(model.source, "roofline model");
        let tpla = Form::Tpla {
            groups: 2,
            norm: super::super::KvNorm::Sliced,
            reduce: super::super::ReduceAt::Wo,
        };
        let t = predict(&cfg, tpla, 2, 64, 32768, &hw, Some(&db)).unwrap();
        // The slow tuned MLA-TP time (9 ms) loses to the modelled TPLA; without the database
        // the model alone decides.
        let (f, why) = pick(&[mla.clone(), t.clone()], &|_| true).unwrap();
        assert_eq!(f, tpla, "{why}");
        assert!(why.contains("mla-tp"), "{why}");
        let fast = Prediction {
            attn_s: 1e-6,
            ..mla
        };
        let (f, _) = pick(&[fast.clone(), t.clone()], &|_| true).unwrap();
        assert_eq!(f, Form::MlaTp);
        // Excluded forms are never picked.
        let (f, why) = pick(&[fast, t], &|f| f.exact()).unwrap();
        assert_eq!(f, Form::MlaTp);
        assert!(why.contains("(excluded)"), "{why}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// With two new tokens per sequence a rank's attention comes from the bucket of its query
    /// rows (MLA-TP's 32 heads x 2 = 64 rows at tp 2), and the rest of the layer is costed at
    /// twice the rows.
    #[test]
    fn multi_token_predictions_take_the_query_rows_bucket() {
        let cfg = Preset::KimiK2.config();
        let hw = Hardware::h200();
        let dir = scratch();
        let name = tpla_kernels::latent_decode.name();
        let (mut db, _) = TuneDb::open(&dir, "test-device", &[&tpla_kernels::latent_decode]);
        let rows = decode_bucket(64, 64, 512, 64, 32768);
        let c = tpla_kernels::ops::DecodeParams::new(64, 64, 512, 64, 1, 0.1).decode_config();
        db.put(name, &rows, &c, 800.0, "2026-12-06");
        let two = predict_tokens(&cfg, Form::MlaTp, 2, 64, 2, 32768, &hw, Some(&db)).unwrap();
        assert!((two.attn_s - 800e-6).abs() < 1e-12, "{two:?}");
        assert!(two.source.contains("H64-lat512"), "{}", two.source);
        // One token per sequence: the 32-row bucket, absent here, so the model.
        let one = predict(&cfg, Form::MlaTp, 2, 64, 32768, &hw, Some(&db)).unwrap();
        assert!(one.source.contains("no H32-lat512"), "{}", one.source);
        assert!(two.rest_s > one.rest_s, "{two:?} {one:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
