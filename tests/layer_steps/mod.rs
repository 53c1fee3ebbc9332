//! A layer step's shape and configuration: the tune database's configs and split policy per
//! rank, and several new tokens per sequence per step (MTP, speculative verify).

use super::*;

/// MLA-TP at tp 2 of the small layer (4 heads per rank over the whole 512 + 64 cache) on CPU
/// ranks, `sq` new tokens per sequence, with a scratch tune database holding the default config
/// timed at `us` for each `(query rows, us)` of `entries` (batch 2, 8 tokens), uniform splits.
fn mla_tp_with_tune_entries(
    tag: &str,
    sq: usize,
    entries: &[(usize, f64)],
) -> (
    TpLayer<CpuExecutor, HostAllReduce>,
    tpla_runtime::tune::TuneDb,
    std::path::PathBuf,
) {
    use tpla_codegen::KernelDef;
    use tpla_runtime::tune::{decode_bucket, SplitPolicy, TuneDb};
    let dir = std::env::temp_dir().join(format!("tpla-layer-tune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let execs = cpu(2);
    let (mut db, _) = TuneDb::open(
        &dir,
        &execs[0].device_identity(),
        &[&tpla_kernels::latent_decode],
    );
    let cfg = tpla_kernels::latent_decode
        .default_config(&[("LAT", 512), ("ROPE", 64)])
        .unwrap();
    for &(rows, us) in entries {
        db.put_with_policy(
            tpla_kernels::latent_decode.name(),
            &decode_bucket(2, rows, 512, 64, 8),
            &cfg,
            Some(SplitPolicy::Uniform),
            us,
            "2026-12-06",
        );
    }
    let l = TpLayer::new(
        execs,
        HostAllReduce { ranks: 2 },
        &layer,
        Form::MlaTp,
        layer_shape(2, 8, 0, sq),
        None,
    )
    .unwrap();
    (l, db, dir)
}

/// `apply_tuned` gives each rank the tune database's config for its decode bucket and the split
/// policy it was timed with; the step still matches the reference.
#[test]
fn the_tune_database_sets_each_ranks_config_and_split_policy() {
    let (mut l, db, dir) = mla_tp_with_tune_entries("one", 1, &[(4, 12.5)]);
    let bucket = tpla_runtime::tune::decode_bucket(2, 4, 512, 64, 8);
    let found = l.apply_tuned(&db);
    assert_eq!(found.len(), 2, "{found:?}");
    for (r, (rank, b, what, us)) in found.iter().enumerate() {
        assert_eq!((*rank, b.as_str(), *us), (r, bucket.as_str(), 12.5));
        assert!(what.ends_with(", uniform splits"), "{what}");
    }
    let hidden = small().hidden;
    let (y, _) = l.step(&HostTensor::full(&[2, hidden], 0.3f32)).unwrap();
    assert!(y.data().iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With two new tokens per sequence the kernel's rows are the rank's heads times two: the tune
/// database's entry for that many rows is the one applied, not the heads' own.
#[test]
fn a_multi_token_layer_takes_the_tuned_config_of_its_query_rows() {
    // The one-token bucket (4 rows) and the two-token one (8 rows).
    let (mut l, db, dir) = mla_tp_with_tune_entries("sq", 2, &[(4, 99.0), (8, 12.5)]);
    let rows = tpla_runtime::tune::decode_bucket(2, 8, 512, 64, 8);
    let found = l.apply_tuned(&db);
    assert_eq!(found.len(), 2, "{found:?}");
    for (r, (rank, b, _, us)) in found.iter().enumerate() {
        assert_eq!((*rank, b.as_str(), *us), (r, rows.as_str(), 12.5));
    }
    let hidden = small().hidden;
    let (y, _) = l.step(&HostTensor::full(&[2 * 2, hidden], 0.3f32)).unwrap();
    assert!(y.data().iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `tokens / sq` steps of `sq` new tokens per sequence and returns the worst relative error
/// of any token's output against the reference's one-token decode at its position (token `j`
/// of a step sees the cache up to itself, so the two are the same computation).
pub(crate) fn worst_error_multi_token<X: Executor + 'static, C: AllReduce<X>>(
    execs: Vec<X>,
    coll: C,
    form: Form,
    corr: Option<Corrections>,
    sq: usize,
    tokens: usize,
) -> f64 {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let xs = hidden_tokens(d, tokens);
    let shape = layer_shape(BATCH, tokens + 1, 0, sq);
    let mut l = TpLayer::new(execs, coll, &layer, form, shape, corr.clone()).unwrap();
    let run = run_against_reference(&mut l, &layer, corr.as_ref(), &xs).unwrap();
    for (k, y) in run.outputs.iter().enumerate() {
        assert_eq!(y.len(), BATCH * sq * d, "step {k}");
        assert!(y.iter().all(|v| v.is_finite()), "step {k}");
    }
    assert_eq!(l.len(), tokens / sq * sq);
    run.worst
}

/// MTP / speculative verify: 2-4 new tokens per sequence per step, MLA-TP and TPLA (both reduce
/// points) at TP 2 and 4, each token against the reference; DCP and 5 tokens are typed errors.
#[test]
fn several_query_tokens_per_step_match_the_reference() {
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wuv,
    };
    for (tp, sq) in [(2, 2), (2, 4), (4, 3)] {
        for (form, corr) in [
            (Form::MlaTp, None),
            (Form::tpla(2), Some(corr2())),
            (wuv, Some(corr2())),
        ] {
            let e =
                worst_error_multi_token(cpu(tp), HostAllReduce { ranks: tp }, form, corr, sq, 12);
            eprintln!("tp {tp} sq {sq} {}: worst rel err {e:.2e}", form.name());
            assert!(e <= 1e-2, "tp {tp} sq {sq} {}: {e:.3e}", form.name());
        }
    }
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let shape = |query_len| LayerShape {
        batch: 1,
        max_tokens: 8,
        page_size: 4,
        splits: 0,
        poison: false,
        gemm: GemmPath::Auto,
        timing: PhaseTiming::Events,
        payload: Payload::F32,
        query_len,
    };
    for (form, sq, want) in [
        (Form::Dcp, 2, "DCP with 2 query tokens"),
        (Form::MlaTp, 5, "5 query tokens"),
        (Form::MlaTp, 0, "0 query tokens"),
    ] {
        let e = cpu_layer(2, &layer, form, shape(sq))
            .err()
            .expect("refused");
        assert!(e.to_string().contains(want), "{e}");
    }
    // A step whose tokens would pass the cache is refused whole.
    let mut l = cpu_layer(2, &layer, Form::MlaTp, shape(3)).unwrap();
    let x = HostTensor::full(&[3, layer.cfg.hidden], 0.2f32);
    l.step(&x).unwrap();
    l.step(&x).unwrap();
    assert!(l.step(&x).is_err(), "6 + 3 tokens past 8");
    assert_eq!(l.len(), 6);
    assert!(
        l.step(&HostTensor::full(&[1, layer.cfg.hidden], 0.2f32))
            .is_err(),
        "one row for three tokens"
    );
}
