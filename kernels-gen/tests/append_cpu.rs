//! Paged cache append on the CPU JIT: rows land where the block table says, nothing else moves.

use rand::{Rng, SeedableRng};
use tpla_codegen::KernelDef;
use tpla_kernels::append_rows;
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, HostPagedCache, HostTensor};

fn check(page_size: usize, block_t: i64, new_tokens: usize, old_lens: &[usize], seed: u64) {
    let ex = CpuExecutor::new(2).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (batch, row) = (old_lens.len(), 80);
    let cap = old_lens.iter().max().unwrap() + new_tokens;
    let mut cache = HostPagedCache::<bf16>::new(batch, cap, page_size, row).unwrap();
    let mut table = cache.block_table().to_vec();
    table.reverse();
    cache.set_block_table(table).unwrap();
    cache
        .data_mut()
        .iter_mut()
        .for_each(|x| *x = bf16::from_f32(rng.gen_range(1.0..2.0)));
    let before = cache.clone();
    let new_lens: Vec<usize> = old_lens.iter().map(|l| l + new_tokens).collect();
    cache.set_seq_lens(&new_lens).unwrap();
    let vals: Vec<f32> = (0..batch * new_tokens * row)
        .map(|_| rng.gen_range(-1.0..-0.5))
        .collect();
    let rows = HostTensor::<bf16>::from_f32(&[batch, new_tokens, row], &vals).unwrap();
    let cfg = append_rows
        .default_config(&[("ROW", row as i64)])
        .unwrap()
        .with("BLOCK_T", block_t);
    append_rows::launch(&ex, &cfg, &rows, &mut cache).unwrap();
    for b in 0..batch {
        for t in 0..cap {
            let got = cache.token(b, t).unwrap();
            if t >= old_lens[b] && t < new_lens[b] {
                let j = t - old_lens[b];
                let want = &rows.data()[(b * new_tokens + j) * row..(b * new_tokens + j + 1) * row];
                assert_eq!(got, want, "b {b} t {t}");
            } else {
                assert_eq!(
                    got,
                    before.token(b, t).unwrap(),
                    "b {b} t {t} must be untouched"
                );
            }
        }
    }
}

#[test]
fn append_one_decode_token() {
    for ps in [1, 16, 64] {
        check(ps, 16, 1, &[0, 5, 63, 64], ps as u64);
    }
}

#[test]
fn append_prefill_chunk() {
    for (ps, bt) in [(1, 1), (16, 16), (64, 64), (16, 64)] {
        check(ps, bt, 100, &[0, 17, 3], 7 + ps as u64);
    }
}
