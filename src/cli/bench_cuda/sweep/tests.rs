//! Tests of the CUDA bench's config sweep (`sweep.rs`).

use super::*;
use tpla_codegen::cuda::Target;

fn shape(heads: usize, lat: usize, page: usize) -> DecodeShape {
    DecodeShape::equal(64, heads, 32768, lat, 64, page)
}

#[test]
fn sweeps_list_distinct_configs_with_the_knobs_that_apply() {
    let t = Target::sm90();
    let full = sweep_configs("mla", &shape(64, 512, 64), Sweep::Full, false, 1, t, None);
    let texts: std::collections::HashSet<String> = full.iter().map(|c| c.to_string()).collect();
    assert_eq!(texts.len(), full.len(), "a config listed twice");
    assert!(full.iter().all(|c| c.get("LAT").ok() == Some(512)));
    for (k, v) in [
        ("BLOCK_N", 32),
        ("STAGES", 4),
        ("WARPS", 8),
        ("TMA", 1),
        ("WG_SPLIT", 32),
    ] {
        assert!(full.iter().any(|c| c.get(k).ok() == Some(v)), "no {k}={v}");
    }
    // At 16 heads the 64-row block is not tried; FP8 rows add it (their producer needs it),
    // never with TMA or SEESAW.
    let h16 = sweep_configs("mla", &shape(16, 512, 64), Sweep::Full, false, 1, t, None);
    assert!(h16.iter().all(|c| c.get("BLOCK_H").ok() != Some(64)));
    let fp8 = sweep_configs(
        "mla-fp8",
        &shape(16, 512, 64),
        Sweep::Narrow,
        false,
        1,
        t,
        None,
    );
    assert!(fp8.iter().any(|c| c.get("BLOCK_H").ok() == Some(64)));
    assert!(fp8.iter().any(|c| c.get("BLOCK_N").ok() == Some(32)));
    let bf16 = sweep_configs("mla", &shape(16, 512, 64), Sweep::Narrow, false, 1, t, None);
    assert!(bf16.iter().all(|c| c.get("BLOCK_N").ok() == Some(64)));
    assert!(fp8.iter().all(|c| c.get("KV_FP8").ok() == Some(512)
        && c.get("TMA").is_err()
        && c.get("SEESAW").is_err()));
    // Two converting producer warpgroups beside one consumer warpgroup (16- / 32-row
    // blocks at latent 512), never beside two (64-row blocks there); `--config
    // FP8_PRODUCERS=2` selects only them.
    let two = |c: &Config| c.get("FP8_PRODUCERS").ok() == Some(2);
    assert!(fp8
        .iter()
        .any(|c| two(c) && c.get("BLOCK_H").ok() == Some(16)));
    assert!(fp8
        .iter()
        .filter(|c| two(c))
        .all(|c| c.get("BLOCK_H").ok() != Some(64) && c.get("PRODUCER").ok() == Some(1)));
    let only_two = sweep_configs(
        "mla-fp8",
        &shape(16, 512, 64),
        Sweep::Narrow,
        false,
        1,
        t,
        Some("FP8_PRODUCERS=2"),
    );
    assert!(!only_two.is_empty() && only_two.iter().all(two));
    // --quick: BLOCK_N 64, two stages; `want` keeps only the matching configs; SQ is set.
    let quick = sweep_configs("mla", &shape(64, 512, 64), Sweep::Full, true, 1, t, None);
    assert!(quick.len() < full.len() / 4);
    assert!(quick
        .iter()
        .all(|c| c.get("BLOCK_N").ok() == Some(64) && c.get("STAGES").ok() == Some(2)));
    let some = sweep_configs(
        "mla-sq2",
        &shape(128, 512, 64),
        Sweep::Narrow,
        false,
        2,
        t,
        Some("BLOCK_H=64,PRODUCER=1"),
    );
    assert!(!some.is_empty());
    assert!(some.iter().all(|c| c.get("BLOCK_H").ok() == Some(64)
        && c.get("PRODUCER").ok() == Some(1)
        && c.get("SQ").ok() == Some(2)));
}

#[test]
fn a_knob_the_sweep_does_not_vary_is_pinned_not_filtered() {
    let t = Target::sm90();
    let want = Some("BLOCK_N=32,PRODUCER=1,TMA=1,QK_AHEAD=1");
    let ahead = sweep_configs("mla", &shape(64, 512, 64), Sweep::Full, false, 1, t, want);
    assert!(!ahead.is_empty());
    assert!(ahead.iter().all(|c| c.get("QK_AHEAD").ok() == Some(1)
        && c.get("BLOCK_N").ok() == Some(32)
        && c.get("TMA").ok() == Some(1)));
    // A zero is a default, never pinned; swept knobs still filter.
    assert!(ahead.iter().all(|c| c.get("SOFTMAX_OVERLAP").is_err()));
    let plain = sweep_configs("mla", &shape(64, 512, 64), Sweep::Full, false, 1, t, None);
    let deep = |c: &Config| {
        c.get("BLOCK_N").ok() == Some(64)
            && c.get("STAGES").ok() == Some(4)
            && c.get("BLOCK_H").ok() == Some(64)
    };
    let shard = sweep_configs(
        "tpla-shard",
        &shape(64, 256, 64),
        Sweep::Full,
        false,
        1,
        t,
        None,
    );
    assert!(shard.iter().any(deep) && !plain.iter().any(deep));
    assert!(plain
        .iter()
        .any(|c| c.get("SOFTMAX_OVERLAP").ok() == Some(1)
            && c.get("STAGES").ok() >= Some(2)
            && c.get("PRODUCER").ok() == Some(1)));
    // The KV split on the shard's 64-row tiles only (latent 512 needs both warpgroups),
    // never on an odd stage count; `--config WG_KV_SPLIT=1` sweeps only split configs.
    let split = |c: &Config| c.get("WG_KV_SPLIT").ok() == Some(1);
    assert!(shard
        .iter()
        .any(|c| split(c) && c.get("BLOCK_H").ok() == Some(64)));
    assert!(shard
        .iter()
        .filter(|c| split(c))
        .all(|c| c.get("STAGES").unwrap_or(0) % 2 == 0));
    assert!(!plain.iter().any(split));
    let asked = |lat| {
        sweep_configs(
            "tpla-shard",
            &shape(64, lat, 64),
            Sweep::Full,
            false,
            1,
            t,
            Some("WG_KV_SPLIT=1"),
        )
    };
    let shard_split = asked(256);
    assert!(shard_split.iter().all(split) && !shard_split.is_empty());
    assert!(shard_split
        .iter()
        .all(|c| c.get("BLOCK_H").ok() == Some(64) && c.get("STAGES").unwrap_or(0) % 2 == 0));
    assert!(asked(512).is_empty());
    // The score warpgroup on 64-row tiles over bf16 rows at latent 512 (not the shard's),
    // only fed by a producer, with the emitter's warps.
    let roles = |c: &Config| c.get("SCORE_WG").ok() == Some(1);
    assert!(plain.iter().any(roles) && !shard.iter().any(roles));
    assert!(plain.iter().filter(|c| roles(c)).all(|c| {
        c.get("BLOCK_H").ok() == Some(64)
            && c.get("PRODUCER").ok() == Some(1)
            && c.get("WARPS").is_err()
            && c.get("WG_SPLIT").ok() == Some(128)
    }));
    // Each value warpgroup refilling its half (`SPLIT_RELEASE`): under the score warpgroup over
    // TMA, at latent 512 only.
    let split_release = |c: &Config| c.get("SPLIT_RELEASE").ok() == Some(1);
    assert!(plain.iter().any(split_release) && !shard.iter().any(split_release));
    assert!(plain
        .iter()
        .filter(|c| split_release(c))
        .all(|c| roles(c) && c.get("TMA").ok() == Some(1)));
    assert!(pinned_knobs(Some("QK_AHEAD=0,SEESAW=1")).is_empty());
    assert_eq!(
        pinned_knobs(Some("BLOCK_H=64,QK_AHEAD=1")),
        vec![("QK_AHEAD".to_string(), 1)]
    );
}

#[test]
fn a_whole_config_the_sweep_does_not_list_is_timed_as_given() {
    let t = Target::sm90();
    // A `tpla tune` winner at the shard width (H100, 2026-12-07): the bench sweeps SCORE_WG at
    // latent 512 only, so the filter alone selected nothing.
    let tuned = "BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SCORE_WG=1,STAGES=4,TMA=1,WG_SPLIT=128";
    let shard = shape(64, 256, 64);
    let got = sweep_configs("tpla-shard", &shard, Sweep::Full, false, 1, t, Some(tuned));
    assert_eq!(got.len(), 1, "{got:?}");
    let cfg = &got[0];
    assert!(config_selected(cfg, Some(tuned)));
    assert_eq!(cfg.get("LAT").ok(), Some(256));
    assert_eq!(cfg.get("ROPE").ok(), Some(64));
    // Not whole (no BLOCK_N), or contradicting the case (another LAT): still nothing.
    let part = Some("BLOCK_H=64,SCORE_WG=1,STAGES=4");
    assert!(sweep_configs("tpla-shard", &shard, Sweep::Full, false, 1, t, part).is_empty());
    let other = Some("BLOCK_H=64,BLOCK_N=64,LAT=512,PRODUCER=1,SCORE_WG=1,STAGES=4,TMA=1");
    assert!(sweep_configs("tpla-shard", &shard, Sweep::Full, false, 1, t, other).is_empty());
    // A config the sweep lists is not duplicated by the fallback.
    let listed = "BLOCK_H=64,BLOCK_N=64,PRODUCER=1,STAGES=4,TMA=1,WG_KV_SPLIT=1,WG_SPLIT=128";
    let got = sweep_configs("tpla-shard", &shard, Sweep::Full, false, 1, t, Some(listed));
    assert_eq!(got.len(), 1, "{got:?}");
}
