//! Multi-token queries (s_q = 1..4, causal among the new tokens) on the CPU JIT, against the f64
//! reference: MLA (lat 512) and TPLA shards (lat 256, 128), heads 16 and 64, uneven lengths
//! including `len < s_q`, one split and several (a split boundary inside the causal tail).

mod common;

use common::mtp::Mtp;
use common::Problem;
use tpla_kernels::ops::{decode_attention, DecodeParams};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::tpla_shard_attention_causal;
use tpla_runtime::{CpuExecutor, Executor, HostPagedCache, HostTensor};

fn exec() -> &'static CpuExecutor {
    static EX: std::sync::OnceLock<CpuExecutor> = std::sync::OnceLock::new();
    EX.get_or_init(|| CpuExecutor::new(2).unwrap())
}

fn run(m: &Mtp<'_>, splits: usize, block_n: i64) -> (Vec<f32>, Vec<f32>) {
    m.run(exec(), &m.params(splits, block_n), |e, t| {
        e.download(t).unwrap()
    })
}

#[test]
fn mtp_matches_the_causal_reference_for_mla_and_shards() {
    // Lengths: empty, shorter than s_q, inside one block, and across a split boundary (with
    // BLOCK_N = 16 and 2 splits, 33 tokens split at 32: the tail 29..=32 straddles it).
    let lens = vec![0, 1, 2, 3, 33, 70];
    let mut n = 0;
    for sq in 1..=4usize {
        for (lat, heads) in [(512usize, 16usize), (256, 64), (128, 16), (512, 64)] {
            if lat == 512 && heads == 64 && sq != 2 {
                continue; // one 512 x 64 case keeps the debug-build f64 reference quick
            }
            let p = Problem::new(
                100 + n,
                lens.len(),
                sq * heads,
                lat,
                64,
                lens.clone(),
                16,
                0.1352,
            );
            let m = Mtp { p: &p, sq, heads };
            for (splits, bn) in [(1, 64), (2, 16), (3, 32)] {
                let (out, lse) = run(&m, splits, bn);
                for b in 0..p.batch {
                    let want = m.want(b);
                    let what = format!(
                        "sq {sq} lat {lat} heads {heads} splits {splits} bn {bn} len {}",
                        p.lens[b]
                    );
                    m.check(b, &out, &lse, &want, 1e-5, &what);
                }
            }
            n += 1;
        }
    }
}

#[test]
fn mtp_tpla_shard_of_a_full_width_cache() {
    // The shard kernel (lat 512 / g) on shard i's columns of a full-width cache equals the f64
    // shard reference on the full-width data.
    let (sq, heads, full, rope, g, i) = (3usize, 16usize, 512usize, 64usize, 4usize, 2usize);
    let w = full / g;
    let lens = vec![2usize, 40, 19];
    let p = Problem::new(
        7,
        lens.len(),
        sq * heads,
        full,
        rope,
        lens.clone(),
        16,
        0.1352,
    );
    let pick = |row: &[f32]| -> Vec<f32> {
        let mut v = row[i * w..(i + 1) * w].to_vec();
        v.extend_from_slice(&row[full..]);
        v
    };
    // The shard's problem: the same random draws cut to shard i's columns.
    let mut shard = Problem::new(7, lens.len(), sq * heads, w, rope, lens.clone(), 8, 0.1352);
    shard.q = p.q.chunks(full + rope).flat_map(pick).collect();
    let mut cache = HostPagedCache::<bf16>::new(lens.len(), 40, 8, w + rope).unwrap();
    for (b, r) in p.rows.iter().enumerate() {
        shard.rows[b] = r.chunks(full + rope).flat_map(pick).collect();
        for (t, row) in shard.rows[b].chunks(w + rope).enumerate() {
            let row: Vec<bf16> = row.iter().map(|&x| bf16::from_f32(x)).collect();
            cache.write_token(b, t, &row).unwrap();
        }
    }
    cache.set_seq_lens(&lens).unwrap();
    shard.cache = cache;
    let m = Mtp {
        p: &shard,
        sq,
        heads,
    };
    let (out, lse) = run(&m, 2, 16);
    let full_view = Mtp { p: &p, sq, heads };
    for (b, len) in lens.iter().enumerate() {
        let (q, rows) = full_view.inputs(b);
        let want =
            tpla_shard_attention_causal(&q, &rows, sq, heads, full, rope, p.scale as f64, g, i);
        m.check(
            b,
            &out,
            &lse,
            &want,
            1e-5,
            &format!("shard {i}/{g} len {len}"),
        );
    }
}

#[test]
fn query_len_outside_1_to_4_is_a_typed_error() {
    let p = Problem::new(1, 1, 5 * 16, 128, 64, vec![8], 16, 0.2);
    for sq in [0usize, 5] {
        let params = DecodeParams::new(1, 16, 128, 64, 1, 0.2).with_query_len(sq);
        let mut out = HostTensor::<f32>::full(&[1, 80, 128], f32::NAN);
        let mut lse = HostTensor::<f32>::full(&[1, 80], f32::NAN);
        let e = decode_attention(exec(), &params, &p.q_tensor(), &p.cache, &mut out, &mut lse)
            .unwrap_err();
        assert!(e.to_string().contains("query tokens"), "{e}");
        assert!(out.data().iter().all(|x| x.is_nan()), "nothing written");
    }
}

#[test]
fn q_rows_that_are_not_sq_times_heads_are_rejected() {
    // 2 tokens x 16 heads expected, q has 16 rows.
    let p = Problem::new(2, 1, 16, 128, 64, vec![8], 16, 0.2);
    let params = DecodeParams::new(1, 16, 128, 64, 2, 0.2).with_query_len(2);
    let mut out = HostTensor::<f32>::full(&[1, 32, 128], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[1, 32], f32::NAN);
    assert!(
        decode_attention(exec(), &params, &p.q_tensor(), &p.cache, &mut out, &mut lse).is_err()
    );
}
