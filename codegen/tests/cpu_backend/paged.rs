//! Paged KV cache access: block streaming over splits and row stores at token positions.

use super::helpers::*;
use half::bf16;
use tpla_codegen::cpu::abi;
use tpla_codegen::ir::*;
use tpla_codegen::KernelBuilder;

struct PagedCache {
    data: Vec<bf16>,
    table: Vec<i32>,
    lens: Vec<i32>,
    page: usize,
    pps: usize,
    pages: usize,
}

fn paged_cache(rng: &mut Rng, row: usize, page: usize, lens: &[i32]) -> PagedCache {
    let pps = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(page))
        .max()
        .unwrap_or(0)
        .max(1)
        + 1;
    let pages = lens.len() * pps + 3;
    // A random permutation of pages for the table.
    let mut perm: Vec<i32> = (0..pages as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let table = perm[..lens.len() * pps].to_vec();
    let data = rng
        .vec(pages * page * row)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    PagedCache {
        data,
        table,
        lens: lens.to_vec(),
        page,
        pps,
        pages,
    }
}

impl PagedCache {
    fn row(&self, b: usize, tok: usize, row: usize) -> &[bf16] {
        let p = self.table[b * self.pps + tok / self.page] as usize;
        let o = (p * self.page + tok % self.page) * row;
        &self.data[o..o + row]
    }
    fn push(&mut self, args: &mut Vec<u64>) {
        abi::push_paged(
            args,
            self.data.as_mut_ptr(),
            self.table.as_ptr(),
            self.lens.as_ptr(),
            self.page,
            self.pps,
            self.pages,
            self.lens.len(),
        );
    }
}

/// Streams the blocks of every split; checks row sums, valid counts, block starts and that rows
/// past the range are zero.
#[test]
fn paged_blocks_splits() {
    let row = 20usize;
    let block = 16usize;
    for page in [1usize, 16, 64] {
        for splits in [1i64, 3] {
            let mut b = KernelBuilder::new("pb", &cfg());
            let cache = b.paged("kv", DType::BF16, row as i64, false).unwrap();
            let ns = b.scalar("num_splits", DType::I32);
            let bd = b.dim("B");
            let sd = b.dim("S");
            let po = b.tensor(
                "o",
                DType::F32,
                vec![
                    ParamDim::Runtime(bd),
                    ParamDim::Runtime(sd),
                    ParamDim::Const(row + 2),
                ],
                true,
            );
            let acc = b
                .define_typed("acc", DType::F32, &[row as i64], TileOp::Full(lit(0.0)))
                .unwrap();
            let cnt = b
                .define_typed("cnt", DType::F32, &[], TileOp::Full(lit(0.0)))
                .unwrap();
            let starts = b
                .define_typed("starts", DType::F32, &[], TileOp::Full(lit(0.0)))
                .unwrap();
            let (st, kv, valid) = b
                .begin_paged_blocks(
                    "kv",
                    cache,
                    pid(0),
                    pid(1),
                    Index::Scalar(ns),
                    block as i64,
                    2,
                )
                .unwrap();
            let rs = b
                .define(
                    "rs",
                    TileOp::Reduce {
                        op: ReduceOp::Sum,
                        src: kv,
                        axis: 0,
                    },
                )
                .unwrap();
            b.assign(acc, TileOp::Binary(BinaryOp::Add, t(acc), t(rs)))
                .unwrap();
            let vf = b
                .define_typed("vf", DType::F32, &[block as i64], TileOp::Cast(valid))
                .unwrap();
            let vs = b
                .define(
                    "vs",
                    TileOp::Reduce {
                        op: ReduceOp::Sum,
                        src: vf,
                        axis: 0,
                    },
                )
                .unwrap();
            b.assign(cnt, TileOp::Binary(BinaryOp::Add, t(cnt), t(vs)))
                .unwrap();
            b.assign(
                starts,
                TileOp::Binary(
                    BinaryOp::Add,
                    t(starts),
                    Operand::Scalar(FScalar::FromIndex(st)),
                ),
            )
            .unwrap();
            b.end_loop().unwrap();
            b.store(
                po,
                vec![Slice::At(pid(0)), Slice::At(pid(1)), span(c(0), row)],
                acc,
            )
            .unwrap();
            b.store(
                po,
                vec![
                    Slice::At(pid(0)),
                    Slice::At(pid(1)),
                    Slice::At(c(row as i64)),
                ],
                cnt,
            )
            .unwrap();
            b.store(
                po,
                vec![
                    Slice::At(pid(0)),
                    Slice::At(pid(1)),
                    Slice::At(c(row as i64 + 1)),
                ],
                starts,
            )
            .unwrap();
            let k = b.finish().unwrap();
            let code = compile(&k);
            let mut rng = Rng::new(page as u64 * 7 + splits as u64);
            let lens = [37, 100, 0, 16];
            let mut pc = paged_cache(&mut rng, row, page, &lens);
            let nb = lens.len();
            let mut o = vec![f32::NAN; nb * splits as usize * (row + 2)];
            let mut args = Vec::new();
            pc.push(&mut args);
            abi::push_i32(&mut args, splits as i32);
            abi::push_tensor(&mut args, o.as_mut_ptr(), &[nb, splits as usize, row + 2]);
            run(
                &k,
                &code,
                &args,
                &[nb as i64, splits],
                [nb as i64, splits, 1],
            );
            for (bi, &len) in lens.iter().enumerate() {
                let len = len as i64;
                let per = IndexOp::CeilDiv.apply(len, splits);
                let chunk = IndexOp::CeilDiv.apply(per, block as i64) * block as i64;
                for s in 0..splits {
                    let lo = s * chunk;
                    let hi = (lo + chunk).min(len);
                    let mut want = vec![0.0f32; row + 2];
                    let mut blk = lo;
                    while blk < hi {
                        want[row + 1] += blk as f32;
                        blk += block as i64;
                    }
                    for tok in lo..hi.max(lo) {
                        for (j, x) in pc.row(bi, tok as usize, row).iter().enumerate() {
                            want[j] += x.to_f32();
                        }
                        want[row] += 1.0;
                    }
                    let at = (bi * splits as usize + s as usize) * (row + 2);
                    assert_close(
                        &o[at..at + row + 2],
                        &want,
                        1e-5,
                        &format!("page {page} splits {splits} b {bi} s {s}"),
                    );
                }
            }
        }
    }
}

/// Writes rows at token positions, skipping those outside `[0, seq_len)`.
#[test]
fn paged_store_rows() {
    let row = 12usize;
    let n = 5usize;
    for page in [1usize, 4, 16] {
        let mut b = KernelBuilder::new("ps", &cfg());
        let cache = b.paged("kv", DType::BF16, row as i64, true).unwrap();
        let px = b.tensor(
            "x",
            DType::F32,
            vec![ParamDim::Const(n), ParamDim::Const(row)],
            false,
        );
        let pst = b.tensor("start", DType::I32, vec![ParamDim::Const(3)], false);
        let x = b
            .define(
                "x",
                TileOp::Load {
                    param: px,
                    index: vec![span(c(0), n), span(c(0), row)],
                },
            )
            .unwrap();
        let x = b
            .define_typed("xb", DType::BF16, &[n as i64, row as i64], TileOp::Cast(x))
            .unwrap();
        b.paged_store(
            cache,
            pid(0),
            Index::Load {
                param: pst,
                index: vec![pid(0)],
            },
            x,
        )
        .unwrap();
        let k = b.finish().unwrap();
        let code = compile(&k);
        let mut rng = Rng::new(21 + page as u64);
        let lens = [9, 3, 20];
        let starts = [6i32, -2, 0];
        let mut pc = paged_cache(&mut rng, row, page, &lens);
        let before = pc.data.clone();
        let xs = rng.vec(n * row);
        let mut args = Vec::new();
        pc.push(&mut args);
        abi::push_tensor(&mut args, xs.as_ptr(), &[n, row]);
        abi::push_tensor(&mut args, starts.as_ptr(), &[3]);
        run(&k, &code, &args, &[], [3, 1, 1]);
        let mut want = before.clone();
        for bi in 0..3 {
            for r in 0..n {
                let tok = starts[bi] as i64 + r as i64;
                if tok >= 0 && tok < lens[bi] as i64 {
                    let p = pc.table[bi * pc.pps + tok as usize / page] as usize;
                    let o = (p * page + tok as usize % page) * row;
                    for j in 0..row {
                        want[o + j] = bf16::from_f32(xs[r * row + j]);
                    }
                }
            }
        }
        assert!(
            pc.data
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "paged store, page {page}"
        );
    }
}
