//! The latent decode over a per-sequence split table (`KV_CHUNKS = 1`, a chunked cache) under
//! host emulation, and the launch checks of split-table loops.

use super::*;

/// The split bounds of a chunked cache (`Stmt::PagedBlocks`): `(c, nsplits)` of a sequence of
/// `len` tokens with table entry `entry`.
fn chunk_rule(len: i64, entry: i32) -> (i64, i64) {
    let c = if entry >= 1 { entry as i64 } else { len.max(1) };
    (c, ((len + c - 1) / c).max(1))
}

/// The latent decode over a per-sequence split table (`KV_CHUNKS = 1`), emulated and on the CPU
/// backend: live splits match the f64 reference of their token range, and programs past a
/// sequence's last split write nothing (their NaN-poisoned outputs stay NaN).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunked_decode_case(
    cxx: &str,
    p: DecodeParams,
    knobs: &[(&str, i64)],
    target: Target,
    heads: usize,
    seq_lens: &[i32],
    chunks: &[i32],
    splits: usize,
    seed: u64,
) {
    let tag = format!(
        "chunked_h{}_n{}_s{}_lat{}_sm{}{}{}",
        p.block_h,
        p.block_n,
        p.stages,
        p.lat,
        target.sm.0,
        target.sm.1,
        knobs
            .iter()
            .map(|(n, v)| format!("_{n}{v}"))
            .collect::<String>()
    );
    let mut all = vec![("KV_CHUNKS", 1)];
    all.extend_from_slice(knobs);
    let k = latent_decode_with(p, &all).unwrap();
    assert!(matches!(
        k.params[1].kind,
        ParamKind::Paged { chunked: true, .. }
    ));
    let d = p.lat + p.rope;
    let batch = seq_lens.len();
    let mut rng = Rng::new(seed);
    let q = bf16_round(&rng.vec(batch * heads * d));
    let mut cache = paged(&mut rng, d, seq_lens, 16, false);
    if let HostArg::Paged { chunks: c, .. } = &mut cache {
        *c = Some(chunks.to_vec());
    }
    let scale = 1.0 / (d as f32).sqrt() * 4.0;
    let args = vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![batch, heads, d],
            data: Bytes::from_bf16(&q),
        },
        cache.clone(),
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads, p.lat],
            data: Bytes::from_f32(&vec![f32::NAN; splits * batch * heads * p.lat]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads],
            data: Bytes::from_f32(&vec![f32::NAN; splits * batch * heads]),
        },
        HostArg::F32(scale),
    ];
    // A program past its sequence's last piece leaves first: before the mbarriers, the
    // producer's split and the query load.
    let code = emit(&k, target).unwrap().code;
    let code = &code[code.find("__global__").unwrap()..];
    let exit = code
        .find(">= (unsigned)ns_) return;")
        .expect("the early exit");
    for later in ["tpla_mbar_init(&", "for (int i_ = tid;", "tpla_setmaxnreg_"] {
        assert!(
            code.find(later).is_none_or(|at| exit < at),
            "{tag}: the early exit comes after {later}"
        );
    }
    let tol = 2e-2;
    let gpu = check_vs_cpu(cxx, &k, target, &args, tol, &tag);
    let (HostArg::Tensor { data: out, .. }, HostArg::Tensor { data: lse, .. }) = (&gpu[2], &gpu[3])
    else {
        unreachable!()
    };
    let (out, lse) = (out.f32s(), lse.f32s());
    let mut worst = 0.0f64;
    for b in 0..batch {
        let len = seq_lens[b] as i64;
        let (c, nsplits) = chunk_rule(len, chunks[b]);
        for s in 0..splits {
            for h in 0..heads {
                let base = ((s * batch + b) * heads + h) * p.lat;
                let gl = lse[(s * batch + b) * heads + h] as f64;
                if s as i64 >= nsplits {
                    assert!(
                        gl.is_nan() && out[base..base + p.lat].iter().all(|x| x.is_nan()),
                        "{tag}: split {s} of sequence {b} (of {nsplits}) was written"
                    );
                    continue;
                }
                let lo = s as i64 * c;
                let (o, l) = decode_ref_range(
                    &q,
                    &cache,
                    b,
                    h,
                    heads,
                    lo,
                    len.min(lo + c),
                    p.lat,
                    d,
                    scale,
                );
                for j in 0..p.lat {
                    worst = worst.max((out[base + j] as f64 - o[j]).abs());
                }
                if l.is_finite() {
                    assert!(
                        (gl - l).abs() <= 1e-2 * l.abs().max(1.0),
                        "{tag}: lse[{s},{b},{h}] = {gl}, reference {l}"
                    );
                } else {
                    assert!(gl < -1e29, "{tag}: empty split lse = {gl}");
                }
            }
        }
    }
    assert!(
        worst <= tol as f64,
        "{tag}: out differs from the f64 reference by {worst}"
    );
    println!("{tag}: ok (max |out - ref| = {worst:.2e})");
}

#[test]
fn emulated_decode_split_table() {
    let Some(cxx) = skip_without_cxx("emulated_decode_split_table") else {
        return;
    };
    let dp = |bh, bn, st, lat| DecodeParams::bf16(lat, bh, bn, st);
    // Very uneven lengths: empty, one token, a chunk that is not a multiple of BLOCK_N, an entry
    // of 0 and one negative (the whole sequence in split 0), a sequence using every split.
    let lens = [0, 1, 17, 300, 45, 90];
    let chunks = [32, 16, 16, 64, 0, 40];
    chunked_decode_case(
        &cxx,
        dp(16, 32, 2, 128),
        &[],
        Target::sm90(),
        21,
        &lens,
        &chunks,
        5,
        31,
    );
    chunked_decode_case(
        &cxx,
        dp(16, 32, 1, 64),
        &[],
        Target::new(7, 5),
        16,
        &lens,
        &[-3, 1, 8, 70, 45, 200],
        5,
        32,
    );
    // Hopper warpgroups with a producer warpgroup: it must leave with the consumers.
    chunked_decode_case(
        &cxx,
        dp(64, 64, 2, 256),
        &[("PRODUCER", 1)],
        Target::sm90(),
        64,
        &lens,
        &chunks,
        5,
        33,
    );
    // The TMA producer feeding two warpgroups on alternate blocks (`WG_KV_SPLIT`).
    chunked_decode_case(
        &cxx,
        dp(64, 32, 3, 128),
        &[("PRODUCER", 1), ("TMA", 1), ("WG_KV_SPLIT", 1)],
        Target::sm90(),
        50,
        &lens,
        &chunks,
        5,
        34,
    );
    // The score warpgroup over TMA at latent 512 (the balanced var-len row of `tpla bench` runs
    // the uniform row's best config with the split table), each value warpgroup refilling its
    // half, with warp stalls; its programs past a sequence's last piece leave with the rest.
    let roles = [
        ("KV_CHUNKS", 1),
        ("PRODUCER", 1),
        ("TMA", 1),
        ("SCORE_WG", 1),
        ("SPLIT_RELEASE", 1),
    ];
    let k = latent_decode_with(dp(64, 64, 2, 512), &roles).unwrap();
    assert!(
        emit(&k, Target::sm90()).unwrap().score_wg,
        "the score warpgroup applies"
    );
    with_stalls(|| {
        chunked_decode_case(
            &cxx,
            dp(64, 64, 2, 512),
            &roles[1..],
            Target::sm90(),
            64,
            &lens,
            &chunks,
            5,
            35,
        )
    });
}

#[test]
fn split_table_loops_must_be_top_level_and_launches_must_agree() {
    let p = DecodeParams {
        lat: 64,
        rope: 64,
        block_h: 16,
        block_n: 32,
        stages: 1,
        q_bf16: true,
        p_bf16: true,
    };
    // A bad knob value names the knob.
    let e = latent_decode_with(p, &[("KV_CHUNKS", 2)]).unwrap_err();
    assert!(e.to_string().contains("KV_CHUNKS"), "{e}");
    // Launching a chunked kernel without a table (and a table on a plain kernel) is refused.
    let k = latent_decode_with(p, &[("KV_CHUNKS", 1)]).unwrap();
    let plain = latent_decode(p).unwrap();
    let mut rng = Rng::new(5);
    let cache = paged(&mut rng, 128, &[20], 16, false);
    let mut with_table = cache.clone();
    if let HostArg::Paged { chunks, .. } = &mut with_table {
        *chunks = Some(vec![16]);
    }
    let args = |c: &HostArg| {
        vec![
            HostArg::Tensor {
                dtype: DType::BF16,
                shape: vec![1, 16, 128],
                data: Bytes::new(16 * 128 * 2),
            },
            c.clone(),
            HostArg::Tensor {
                dtype: DType::F32,
                shape: vec![2, 1, 16, 64],
                data: Bytes::new(2 * 16 * 64 * 4),
            },
            HostArg::Tensor {
                dtype: DType::F32,
                shape: vec![2, 1, 16],
                data: Bytes::new(2 * 16 * 4),
            },
            HostArg::F32(1.0),
        ]
    };
    let (a, b) = (args(&cache), args(&with_table));
    let e = check_launch(&k, &descs(&k, &a)).unwrap_err().to_string();
    assert!(e.contains("needs a split table"), "{e}");
    let e = check_launch(&plain, &descs(&plain, &b))
        .unwrap_err()
        .to_string();
    assert!(e.contains("without KV_CHUNKS"), "{e}");
    assert!(check_launch(&k, &descs(&k, &b)).is_ok());
    // The loop ends its program, so it may not be nested in another loop.
    let mut nested = k.clone();
    let body = std::mem::take(&mut nested.body);
    nested.body = vec![Stmt::For {
        var: 0,
        start: Index::Const(0),
        end: Index::Const(1),
        body,
    }];
    let e = tpla_codegen::validate::validate(&nested)
        .unwrap_err()
        .to_string();
    assert!(e.contains("top level"), "{e}");
}
