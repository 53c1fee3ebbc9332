//! The FP8 latent cache (`KV_FP8`) on the GPU: decode over a carrier pool against the CPU JIT
//! and the f64 reference, and every FP8 kernel variant under compute-sanitizer.

use super::*;

/// FP8 latent cache (`KV_FP8`): decode over a carrier pool on the GPU against the CPU JIT (same
/// pool) and the f64 reference over the dequantised rows, NaN-filled unused pages and poisoned
/// outputs, with the default schedule and fed by the converting producer warpgroup
/// (`PRODUCER = 1` at BLOCK_H 64, BLOCK_N 64 and 32; two of them, `FP8_PRODUCERS = 2`, beside one
/// consumer warpgroup); the append quantising on the GPU gives the CPU JIT's bytes.
#[test]
fn cuda_fp8_cache_agrees_with_cpu_and_reference() {
    use tpla_kernels::fp8::{
        append_rows_fp8, decode_attention_fp8, fp8_carrier_row, read_fp8_token,
    };
    let Some(g) = gpu() else { return };
    let producer_rows =
        |bh: i64, bn: i64| vec![("PRODUCER", 1i64), ("BLOCK_H", bh), ("BLOCK_N", bn)];
    let producer = |bn: i64| producer_rows(64, bn);
    let two_producers = |bh: i64, bn: i64| {
        let mut k = producer_rows(bh, bn);
        k.push(("FP8_PRODUCERS", 2));
        k
    };
    for (lat, heads, splits, lens, knobs) in [
        (512usize, 16usize, 1usize, vec![1usize, 70, 333], vec![]),
        (512, 64, 3, vec![129, 40], vec![]),
        (256, 16, 2, vec![1, 95], vec![]),
        (256, 64, 1, vec![200], vec![]),
        (512, 16, 1, vec![1, 70, 333], producer(64)),
        (512, 64, 3, vec![129, 40], producer(32)),
        (256, 64, 2, vec![1, 95, 200], producer(64)),
        (256, 40, 1, vec![200], producer(32)),
        // The producer feeding mma.sync warps (16- and 32-row blocks).
        (512, 16, 2, vec![1, 70, 333], producer_rows(16, 32)),
        (512, 32, 1, vec![129, 40], producer_rows(32, 32)),
        // Two producer warpgroups converting beside one consumer warpgroup.
        (512, 16, 2, vec![1, 70, 333], two_producers(16, 64)),
        (512, 32, 1, vec![129, 40], two_producers(32, 32)),
        (256, 64, 2, vec![1, 95, 200], two_producers(64, 64)),
    ] {
        let p = Problem::new(5, lens.len(), heads, lat, 64, lens.clone(), 64, 0.1352);
        let carrier = common::fp8::carrier_from_problem(&p);
        let mut params = DecodeParams::new(p.batch, heads, lat, 64, splits, p.scale);
        for (k, v) in &knobs {
            params.decode = params.decode.with(k, *v);
        }
        let run = |x: &dyn Fn() -> (Vec<f32>, Vec<f32>)| x();
        let gpu_out = run(&|| {
            let q = g.upload(&p.q_tensor()).unwrap();
            let c = g.upload_paged(&carrier).unwrap();
            let mut out = g
                .upload(&HostTensor::<f32>::full(&[p.batch, heads, lat], f32::NAN))
                .unwrap();
            let mut lse = g
                .upload(&HostTensor::<f32>::full(&[p.batch, heads], f32::NAN))
                .unwrap();
            decode_attention_fp8(g, &params, &q, &c, &mut out, &mut lse).unwrap();
            (
                g.download(&out).unwrap().data().to_vec(),
                g.download(&lse).unwrap().data().to_vec(),
            )
        });
        let mut out = HostTensor::<f32>::full(&[p.batch, heads, lat], f32::NAN);
        let mut lse = HostTensor::<f32>::full(&[p.batch, heads], f32::NAN);
        decode_attention_fp8(cpu(), &params, &p.q_tensor(), &carrier, &mut out, &mut lse).unwrap();
        let hl = heads * lat;
        for (b, &len) in lens.iter().enumerate() {
            let rows: Vec<f64> = (0..len)
                .flat_map(|t| read_fp8_token(&carrier, b, t, lat, 64).unwrap())
                .map(|x| x as f64)
                .collect();
            let q = f64s(&p.q[b * heads * (lat + 64)..(b + 1) * heads * (lat + 64)]);
            let want = tpla_runtime::reference::latent_attention(
                &q,
                &rows,
                heads,
                lat,
                64,
                p.scale as f64,
            );
            let got = f64s(&gpu_out.0[b * hl..(b + 1) * hl]);
            let what = format!("lat {lat} heads {heads} splits {splits} len {len} {knobs:?}");
            assert!(
                rel_error(&got, &want.out) <= 1e-2,
                "{what}: vs the dequantised reference"
            );
            assert!(
                rel_error(&got, &f64s(&out.data()[b * hl..(b + 1) * hl])) <= 1e-2,
                "{what}: vs cpu"
            );
            let gl = f64s(&gpu_out.1[b * heads..(b + 1) * heads]);
            assert!(rel_error(&gl, &want.lse) <= 1e-2, "{what}: lse");
        }
    }
    // Append: rows quantised on the GPU are the CPU JIT's bytes; nothing else moves.
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for (lat, bt) in [(512usize, 16i64), (256, 1), (128, 64)] {
        let (row, newt, old) = (lat + 64, 37usize, vec![0usize, 17, 64]);
        let mut cache = HostPagedCache::<bf16>::new(3, 128, 16, fp8_carrier_row(lat, 64)).unwrap();
        cache
            .data_mut()
            .iter_mut()
            .for_each(|x| *x = bf16::from_bits(0x7f7f));
        let lens: Vec<usize> = old.iter().map(|l| l + newt).collect();
        cache.set_seq_lens(&lens).unwrap();
        let mut vals: Vec<f32> = (0..3 * newt * row)
            .map(|_| rng.gen_range(-2.0..2.0))
            .collect();
        vals.chunks_mut(row)
            .step_by(3)
            .for_each(|r| r[..128].iter_mut().for_each(|x| *x = 0.0));
        vals.chunks_mut(row)
            .skip(1)
            .step_by(3)
            .for_each(|r| r[9] = 1000.0);
        let rows = HostTensor::<bf16>::from_f32(&[3, newt, row], &vals).unwrap();
        let cfg = tpla_codegen::Config::new().with("BLOCK_T", bt);
        let mut cpu_cache = cache.clone();
        append_rows_fp8(cpu(), &cfg, &rows, &mut cpu_cache, lat, 64).unwrap();
        let grows = g.upload(&rows).unwrap();
        let mut gcache = g.upload_paged(&cache).unwrap();
        append_rows_fp8(g, &cfg, &grows, &mut gcache, lat, 64).unwrap();
        // Bit patterns: the carrier's bf16 view of scale bytes may read as NaN.
        let bits =
            |c: &HostPagedCache<bf16>| c.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let back = g.download_paged(&gcache).unwrap();
        assert!(
            bits(&back) == bits(&cpu_cache),
            "lat {lat} BLOCK_T {bt}: bytes differ"
        );
        assert!(
            bits(&back) != bits(&cache),
            "lat {lat} BLOCK_T {bt}: nothing written"
        );
    }
}

/// The FP8 cache's kernels once each on tiny inputs, for compute-sanitizer (gpu-check.sh runs
/// every test named `sanitizer_smoke_every_kernel*`): the dequantising decode (MLA rows on the
/// warpgroup path, shard rows on one stage, MLA and shard rows converted by the producer
/// warpgroup, `PRODUCER = 1`, for 64-row wgmma and 16- / 32-row mma.sync consumers, and by two,
/// `FP8_PRODUCERS = 2`) and the quantising append.
#[test]
fn sanitizer_smoke_every_kernel_fp8() {
    use tpla_kernels::fp8::{append_rows_fp8, decode_attention_fp8, fp8_carrier_row};
    let Some(g) = gpu() else { return };
    for (lat, bh, bn, st, producer) in [
        (512usize, 64i64, 64i64, 2i64, 0i64),
        (256, 16, 32, 1, 0),
        (512, 16, 16, 3, 0),
        (512, 64, 64, 2, 1),
        (512, 64, 32, 2, 1),
        (512, 64, 32, 3, 1),
        (256, 64, 32, 3, 1),
        (512, 16, 32, 2, 1),
        (512, 32, 32, 3, 1),
        (256, 16, 64, 2, 1),
        // 2: two producer warpgroups (`FP8_PRODUCERS = 2`).
        (512, 16, 64, 3, 2),
        (512, 32, 32, 2, 2),
        (256, 64, 64, 2, 2),
    ] {
        let p = Problem::new(1, 2, 17, lat, 64, vec![70, 33], 16, 0.3);
        let carrier = common::fp8::carrier_from_problem(&p);
        let mut params = DecodeParams::new(2, 17, lat, 64, 2, 0.3);
        params.decode = params
            .decode
            .with("BLOCK_H", bh)
            .with("BLOCK_N", bn)
            .with("STAGES", st);
        if producer > 0 {
            params.decode.set("PRODUCER", 1);
            params.decode.set("FP8_PRODUCERS", producer);
        }
        let q = g.upload(&p.q_tensor()).unwrap();
        let c = g.upload_paged(&carrier).unwrap();
        let mut out = g
            .upload(&HostTensor::<f32>::full(&[2, 17, lat], f32::NAN))
            .unwrap();
        let mut lse = g
            .upload(&HostTensor::<f32>::full(&[2, 17], f32::NAN))
            .unwrap();
        decode_attention_fp8(g, &params, &q, &c, &mut out, &mut lse).unwrap();
        assert!(g
            .download(&out)
            .unwrap()
            .data()
            .iter()
            .all(|x| x.is_finite()));
    }
    let rows = HostTensor::<bf16>::from_f32(&[2, 3, 320], &vec![0.5; 1920]).unwrap();
    let mut cache = HostPagedCache::<bf16>::new(2, 10, 4, fp8_carrier_row(256, 64)).unwrap();
    cache.set_seq_lens(&[3, 10]).unwrap();
    let grows = g.upload(&rows).unwrap();
    let mut gcache = g.upload_paged(&cache).unwrap();
    append_rows_fp8(
        g,
        &tpla_codegen::Config::new(),
        &grows,
        &mut gcache,
        256,
        64,
    )
    .unwrap();
    g.synchronize().unwrap();
}
