//! The FP8 latent cache (`KV_FP8`) on the CPU JIT: decode over FP8 rows against the f64
//! reference over the same dequantised rows (isolates the kernel's error), and append
//! quantising byte for byte as the reference rule does.

mod common;

use common::fp8::{decode_fp8, Fp8Pool};
use common::mtp::Mtp;
use common::Problem;
use rand::{Rng, SeedableRng};
use tpla_codegen::kv_format::{fp8_row_bytes, quantise_row};
use tpla_codegen::KernelDef;
use tpla_kernels::append_rows;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::latent_attention_causal;
use tpla_runtime::{CpuExecutor, Executor, HostPagedCache, HostTensor, KernelArg};

fn exec() -> &'static CpuExecutor {
    static EX: std::sync::OnceLock<CpuExecutor> = std::sync::OnceLock::new();
    EX.get_or_init(|| CpuExecutor::new(2).unwrap())
}

#[test]
fn fp8_decode_matches_the_reference_over_the_dequantised_cache() {
    // Lengths: one token, inside a block, a non-multiple of BLOCK_N across splits.
    let lens = vec![1usize, 37, 70];
    for (n, (lat, heads, sq)) in [
        (512usize, 16usize, 1usize),
        (256, 16, 2),
        (256, 64, 1),
        (512, 64, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let p = Problem::new(
            300 + n as u64,
            lens.len(),
            sq * heads,
            lat,
            64,
            lens.clone(),
            16,
            0.1352,
        );
        let mut pool = Fp8Pool::from_problem(&p);
        let m = Mtp { p: &p, sq, heads };
        for (splits, bn) in [(1, 64), (2, 16), (3, 32)] {
            let params = m.params(splits, bn);
            let (out, lse) = decode_fp8(exec(), &params, &p.q_tensor(), &mut pool);
            for b in 0..p.batch {
                let (q, _) = m.inputs(b);
                let want = latent_attention_causal(
                    &q,
                    &pool.dequantised(b),
                    sq,
                    heads,
                    lat,
                    64,
                    p.scale as f64,
                );
                let what = format!("lat {lat} heads {heads} sq {sq} splits {splits} bn {bn} b {b}");
                m.check(b, &out, &lse, &want, 2e-5, &what);
            }
        }
    }
}

#[test]
fn fp8_decode_is_within_bf16_tolerance_of_the_exact_result() {
    let lens = vec![200usize, 45];
    let (heads, lat) = (16usize, 512usize);
    let p = Problem::new(11, lens.len(), heads, lat, 64, lens.clone(), 16, 0.1352);
    let mut pool = Fp8Pool::from_problem(&p);
    let m = Mtp {
        p: &p,
        sq: 1,
        heads,
    };
    let (out, lse) = decode_fp8(exec(), &m.params(2, 32), &p.q_tensor(), &mut pool);
    // e4m3 keeps 3 mantissa bits: each cached latent value is within 2^-4 of itself
    // (relative), which bounds the output's relative error (a convex combination of rows);
    // the bf16 cache's own error is ~2^-9.
    for b in 0..p.batch {
        let exact = p.reference(b, false);
        m.check(b, &out, &lse, &exact, 0.0625, "fp8 vs exact f64");
    }
}

#[test]
fn an_fp8_kernel_refuses_a_bf16_pool_and_a_bf16_kernel_an_fp8_pool() {
    let lens = vec![5usize];
    let p = Problem::new(3, 1, 16, 256, 64, lens, 16, 0.1);
    let m = Mtp {
        p: &p,
        sq: 1,
        heads: 16,
    };
    let params = m.params(1, 16);
    let q = p.q_tensor();
    let mut out = HostTensor::<f32>::full(&[1, 1, 16, 256], 0.0);
    let mut lse = HostTensor::<f32>::full(&[1, 1, 16], 0.0);
    let fp8 = params.decode_config().with("KV_FP8", 256);
    let args = [
        CpuExecutor::tensor_arg(&q),
        CpuExecutor::paged_arg(&p.cache),
        CpuExecutor::tensor_arg_mut(&mut out),
        CpuExecutor::tensor_arg_mut(&mut lse),
        KernelArg::F32(0.1),
    ];
    let e = exec()
        .launch(&tpla_kernels::latent_decode, &fp8, &args)
        .unwrap_err();
    assert!(e.to_string().contains("FP8"), "{e}");
    let mut pool = Fp8Pool::from_problem(&p);
    let args = [
        CpuExecutor::tensor_arg(&q),
        pool.arg(false),
        CpuExecutor::tensor_arg_mut(&mut out),
        CpuExecutor::tensor_arg_mut(&mut lse),
        KernelArg::F32(0.1),
    ];
    let e = exec()
        .launch(&tpla_kernels::latent_decode, &params.decode_config(), &args)
        .unwrap_err();
    assert!(e.to_string().contains("400 bytes"), "{e}");
    // A bad knob value names the knob.
    let bad = params.decode_config().with("KV_FP8", 100);
    let e = exec()
        .launch(&tpla_kernels::latent_decode, &bad, &args)
        .unwrap_err();
    assert!(e.to_string().contains("KV_FP8"), "{e}");
}

#[test]
fn fp8_append_quantises_exactly_as_the_reference_rule() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (lat, rope, block_t) in [(512usize, 64usize, 16i64), (256, 64, 1), (128, 64, 64)] {
        let row = lat + rope;
        let (old, new_tokens) = (vec![0usize, 7, 16], 20usize);
        let batch = old.len();
        // The tables of a bf16 cache of the same geometry (pages handed out in reverse).
        let mut tables = HostPagedCache::<bf16>::new(batch, 40, 16, row).unwrap();
        let mut t = tables.block_table().to_vec();
        t.reverse();
        tables.set_block_table(t).unwrap();
        let lens: Vec<usize> = old.iter().map(|l| l + new_tokens).collect();
        tables.set_seq_lens(&lens).unwrap();
        let p = Problem {
            batch,
            heads: 1,
            lat,
            rope,
            lens: lens.clone(),
            scale: 1.0,
            q: vec![],
            rows: vec![vec![]; batch],
            cache: tables,
        };
        let mut pool = Fp8Pool::from_problem(&p);
        let before = pool.data.clone();
        // Random bf16 rows with an all-zero group, values past 448 and tiny ones.
        let mut vals: Vec<f32> = (0..batch * new_tokens * row)
            .map(|_| bf16::from_f32(rng.gen_range(-3.0..3.0)).to_f32())
            .collect();
        for (i, r) in vals.chunks_mut(row).enumerate() {
            match i % 4 {
                0 => r[..128].iter_mut().for_each(|x| *x = 0.0),
                1 => r[3] = 1000.0,
                2 => r[..128].iter_mut().for_each(|x| *x *= 1e-6),
                _ => {}
            }
            r.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
        }
        let rows = HostTensor::<bf16>::from_f32(&[batch, new_tokens, row], &vals).unwrap();
        let cfg = append_rows
            .default_config(&[("ROW", row as i64)])
            .unwrap()
            .with("BLOCK_T", block_t)
            .with("KV_FP8", lat as i64);
        let args = [CpuExecutor::tensor_arg(&rows), pool.arg(true)];
        exec().launch(&append_rows, &cfg, &args).unwrap();
        let rb = fp8_row_bytes(lat, row);
        let mut untouched = Fp8Pool {
            data: before,
            ..pool_clone_meta(&pool)
        };
        for b in 0..batch {
            for t in old[b]..lens[b] {
                let j = t - old[b];
                let src = &vals[(b * new_tokens + j) * row..(b * new_tokens + j + 1) * row];
                let want = quantise_row(src, lat);
                assert_eq!(pool.token(b, t), &want[..], "lat {lat} b {b} t {t}");
                untouched.token_mut(b, t).copy_from_slice(&want);
            }
        }
        assert_eq!(rb, pool.row_bytes);
        assert!(
            pool.data == untouched.data,
            "lat {lat}: bytes outside the new rows changed"
        );
    }
}

fn pool_clone_meta(p: &Fp8Pool) -> Fp8Pool {
    Fp8Pool {
        data: vec![],
        lat: p.lat,
        row: p.row,
        row_bytes: p.row_bytes,
        page_size: p.page_size,
        num_pages: p.num_pages,
        pages_per_seq: p.pages_per_seq,
        block_table: p.block_table.clone(),
        seq_lens: p.seq_lens.clone(),
    }
}

#[test]
fn the_fp8_front_door_appends_then_decodes_on_a_carrier_pool() {
    use tpla_codegen::kv_format::dequantise_row;
    use tpla_kernels::fp8::{
        append_rows_fp8, decode_attention_fp8, fp8_carrier_row, read_fp8_token,
    };
    use tpla_kernels::ops::DecodeParams;
    let (lat, rope, heads, batch, newt) = (256usize, 64usize, 16usize, 2usize, 40usize);
    let row = lat + rope;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut cache = HostPagedCache::<bf16>::new(batch, 64, 16, fp8_carrier_row(lat, rope)).unwrap();
    assert_eq!(cache.row(), 200);
    cache.set_seq_lens(&[newt, newt - 3]).unwrap();
    let vals: Vec<f32> = (0..batch * newt * row)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)).to_f32())
        .collect();
    let rows = HostTensor::<bf16>::from_f32(&[batch, newt, row], &vals).unwrap();
    let cfg = tpla_codegen::Config::new().with("BLOCK_T", 16);
    append_rows_fp8(exec(), &cfg, &rows, &mut cache, lat, rope).unwrap();
    let lens = [newt, newt - 3];
    for b in 0..batch {
        for t in 0..lens[b] {
            let j = t + newt - lens[b];
            let src = &vals[(b * newt + j) * row..(b * newt + j + 1) * row];
            let want = dequantise_row(&quantise_row(src, lat), lat, row);
            assert_eq!(read_fp8_token(&cache, b, t, lat, rope).unwrap(), want);
        }
    }
    let p = DecodeParams::new(batch, heads, lat, rope, 2, 0.1);
    let qv: Vec<f32> = (0..batch * heads * row)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)).to_f32())
        .collect();
    let q = HostTensor::<bf16>::from_f32(&[batch, heads, row], &qv).unwrap();
    let mut out = HostTensor::<f32>::full(&[batch, heads, lat], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[batch, heads], f32::NAN);
    decode_attention_fp8(exec(), &p, &q, &cache, &mut out, &mut lse).unwrap();
    for b in 0..batch {
        let rows: Vec<f64> = (0..lens[b])
            .flat_map(|t| read_fp8_token(&cache, b, t, lat, rope).unwrap())
            .map(|x| x as f64)
            .collect();
        let qb: Vec<f64> = qv[b * heads * row..(b + 1) * heads * row]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let want = tpla_runtime::reference::latent_attention(&qb, &rows, heads, lat, rope, 0.1);
        let got: Vec<f64> = out.data()[b * heads * lat..(b + 1) * heads * lat]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let e = tpla_runtime::reference::rel_error(&got, &want.out);
        assert!(e < 2e-5, "b {b}: rel error {e}");
    }
    // A plain bf16 cache is not a carrier of FP8 rows: a typed error, nothing launched.
    let plain = HostPagedCache::<bf16>::new(batch, 64, 16, row).unwrap();
    let e = decode_attention_fp8(exec(), &p, &q, &plain, &mut out, &mut lse).unwrap_err();
    assert!(e.to_string().contains("carrier"), "{e}");
}
