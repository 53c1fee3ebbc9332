//! Decode attention on named tensors (what `tpla run` does between reading and writing a
//! safetensors file), as a library function: [`read_inputs`] then [`run_decode`].
//!
//! Inputs (names, dtypes, shapes):
//! - `q`: bf16 or f32 `[batch, heads, lat + rope]`, or `[batch, s_q, heads, lat + rope]` for
//!   `s_q` (1 to 4) query tokens per sequence (MTP, speculative verify): the last `s_q` tokens of
//!   each sequence, attended causally (token `j` sees the cache up to position
//!   `len - s_q + j`). **f32 is rounded to bf16** before the kernels (they take bf16 queries, as
//!   FlashMLA does).
//! - `cache`: bf16 `[num_pages, page_size, lat + rope]` (the page pool)
//! - `block_table`: i32 `[batch, pages_per_seq]` (page ids below `num_pages`)
//! - `seq_lens`: i32 `[batch]` (each at most `pages_per_seq * page_size`)
//! - `scale`: f32 `[]` or `[1]`
//!
//! The cache is given as bf16 values; [`run_decode_as`] with [`KvDtype::Fp8`] (`tpla run
//! --kv-dtype fp8`) stores it as the FP8 latent cache first (each shard's rows quantised as an
//! engine's FP8 append would), so the outputs show what that cache format costs.
//!
//! Outputs (f32): `out [batch, heads, lat]`, `lse [batch, heads]` (natural log); with
//! `groups g > 1` also `out_tpla [batch, heads, lat]` (the g shard outputs side by side) and
//! `lse_tpla [g, batch, heads]`. A rank-4 `q` gives `[batch, s_q, heads, ..]` in place of
//! `[batch, heads, ..]` in each.
//!
//! Edge cases, defined as the f64 reference (and torch) define them:
//! - an **empty sequence** (`seq_lens[b] == 0`) gives `out[b, h, :] = 0` and
//!   `lse[b, h] = -inf` for every head; so does a query token that sees no cache row
//!   (`seq_lens[b] < s_q - j`);
//! - a **non-finite value** (NaN or ±Inf) in `q[b, h, :]`, or in a cache row of sequence `b`
//!   inside its length, makes `out[b, h, :]` and `lse[b, h]` NaN (a cache row: every head of
//!   `b`, and with `s_q > 1` every token that sees the row). For a TPLA shard only the shard's columns (its latent slice and the RoPE part) count.
//!   Rows past a sequence's length are never read. [`RunOutputs::non_finite`] counts the
//!   (sequence, head) pairs affected.

use safetensors::{Dtype, SafeTensors};
use tpla_kernels::fp8::{decode_attention_fp8, fp8_carrier_values};
use tpla_kernels::ops::{decode_attention, shard_width, DecodeParams, MAX_QUERY_LEN};
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostPagedCache, HostTensor, RuntimeError};

use crate::decoder::{concat_shards, shard_rows};
use crate::engine::KvDtype;

/// Largest latent width accepted.
pub const MAX_LAT: usize = 1 << 14;
/// Largest RoPE width accepted.
pub const MAX_ROPE: usize = 1 << 10;
/// Largest page size accepted.
pub const MAX_PAGE_SIZE: usize = 1 << 16;
/// Most KV splits per sequence.
pub const MAX_SPLITS: usize = 1024;

/// Why a run's inputs were refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// From the runtime (bad shapes, page ids, lengths, launch errors...).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Not a safetensors file.
    #[error("not a safetensors file: {0}")]
    Format(String),
    /// A named input tensor is missing.
    #[error("input file has no tensor named `{0}`")]
    MissingTensor(String),
    /// A named input tensor has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A named input tensor has the wrong dtype.
    #[error("tensor `{name}` has dtype {got}, expected {expected}")]
    TensorDType {
        /// Tensor name.
        name: String,
        /// Its dtype.
        got: String,
        /// What was expected.
        expected: String,
    },
    /// A bad value (negative length, size past a limit, bad option).
    #[error("{0}")]
    Invalid(String),
}

/// Decoded, validated inputs of a run.
#[derive(Clone, Debug)]
pub struct RunInputs {
    /// `[batch, heads, lat + rope]` or `[batch, s_q, heads, lat + rope]`, rounded to bf16.
    pub q: HostTensor<bf16>,
    /// The paged cache (pool, block table, lengths).
    pub cache: HostPagedCache<bf16>,
    /// Softmax scale.
    pub scale: f32,
    /// Latent width.
    pub lat: usize,
    /// RoPE width.
    pub rope: usize,
}

impl RunInputs {
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.q.shape()[0]
    }
    /// Heads.
    pub fn heads(&self) -> usize {
        let s = self.q.shape();
        s[s.len() - 2]
    }
    /// Query tokens per sequence (1 for a rank-3 `q`).
    pub fn query_len(&self) -> usize {
        match self.q.shape() {
            [_, sq, _, _] => *sq,
            _ => 1,
        }
    }
    /// The leading output axes: `[batch, heads]`, or `[batch, s_q, heads]` for a rank-4 `q`.
    fn rows_shape(&self) -> Vec<usize> {
        let s = self.q.shape();
        s[..s.len() - 1].to_vec()
    }
}

fn tensor<'a>(
    st: &'a SafeTensors<'a>,
    name: &str,
) -> Result<safetensors::tensor::TensorView<'a>, RunError> {
    st.tensor(name)
        .map_err(|_| RunError::MissingTensor(name.to_string()))
}

fn shape_err(name: &str, got: &[usize], expected: &str) -> RunError {
    RunError::TensorShape {
        name: name.into(),
        got: got.to_vec(),
        expected: expected.into(),
    }
}

fn dtype_err(name: &str, got: Dtype, expected: &str) -> RunError {
    RunError::TensorDType {
        name: name.into(),
        got: format!("{got:?}"),
        expected: expected.into(),
    }
}

fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

fn bounded(what: &str, v: usize, max: usize) -> Result<(), RunError> {
    if v > max {
        return Err(RunError::Invalid(format!(
            "{what} {v} is past the limit of {max}"
        )));
    }
    Ok(())
}

/// Parses and validates a safetensors file's bytes (see the module docs); `rope` is the RoPE
/// width at the end of each row.
pub fn read_inputs(bytes: &[u8], rope: usize) -> Result<RunInputs, RunError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| RunError::Format(e.to_string()))?;
    bounded("--rope", rope, MAX_ROPE)?;

    let q = tensor(&st, "q")?;
    let qshape = q.shape().to_vec();
    let sq_ok =
        qshape.len() == 3 || (qshape.len() == 4 && (1..=MAX_QUERY_LEN).contains(&qshape[1]));
    if !sq_ok || qshape[qshape.len() - 1] <= rope {
        return Err(shape_err(
            "q",
            q.shape(),
            &format!("[batch, heads, lat + {rope}] or [batch, s_q (1 to {MAX_QUERY_LEN}), heads, lat + {rope}]"),
        ));
    }
    let (batch, row) = (qshape[0], qshape[qshape.len() - 1]);
    bounded("latent width of `q`", row - rope, MAX_LAT)?;
    let qv: Vec<f32> = match q.dtype() {
        Dtype::F32 => words::<4>(q.data()).map(f32::from_le_bytes).collect(),
        Dtype::BF16 => words::<2>(q.data())
            .map(|w| bf16::from_bits(u16::from_le_bytes(w)).to_f32())
            .collect(),
        d => return Err(dtype_err("q", d, "F32 or BF16")),
    };
    let q =
        HostTensor::<bf16>::from_f32(&qshape, &qv).map_err(|e| RunError::Invalid(e.to_string()))?;

    let cache = tensor(&st, "cache")?;
    if cache.dtype() != Dtype::BF16 {
        return Err(dtype_err("cache", cache.dtype(), "BF16"));
    }
    if cache.shape().len() != 3 || cache.shape()[2] != row || cache.shape()[1] == 0 {
        return Err(shape_err(
            "cache",
            cache.shape(),
            &format!("[num_pages, page_size >= 1, {row}]"),
        ));
    }
    let page_size = cache.shape()[1];
    bounded("page size of `cache`", page_size, MAX_PAGE_SIZE)?;
    let pool: Vec<bf16> = words::<2>(cache.data())
        .map(|w| bf16::from_bits(u16::from_le_bytes(w)))
        .collect();

    let bt = tensor(&st, "block_table")?;
    if bt.dtype() != Dtype::I32 {
        return Err(dtype_err("block_table", bt.dtype(), "I32"));
    }
    if bt.shape().len() != 2 || bt.shape()[0] != batch {
        return Err(shape_err(
            "block_table",
            bt.shape(),
            &format!("[{batch}, pages_per_seq]"),
        ));
    }
    let table: Vec<i32> = words::<4>(bt.data()).map(i32::from_le_bytes).collect();

    let sl = tensor(&st, "seq_lens")?;
    if sl.dtype() != Dtype::I32 {
        return Err(dtype_err("seq_lens", sl.dtype(), "I32"));
    }
    if sl.shape() != [batch] {
        return Err(shape_err("seq_lens", sl.shape(), &format!("[{batch}]")));
    }
    let lens: Vec<i32> = words::<4>(sl.data()).map(i32::from_le_bytes).collect();
    if let Some(bad) = lens.iter().find(|&&l| l < 0) {
        return Err(RunError::Invalid(format!(
            "seq_lens holds a negative length {bad}"
        )));
    }
    let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();

    let sc = tensor(&st, "scale")?;
    if sc.dtype() != Dtype::F32 {
        return Err(dtype_err("scale", sc.dtype(), "F32"));
    }
    if sc.data().len() != 4 || sc.shape().len() > 1 {
        return Err(shape_err("scale", sc.shape(), "[] or [1]"));
    }
    let scale = f32::from_le_bytes(sc.data().try_into().expect("4 bytes"));

    let cache = HostPagedCache::from_parts(pool, page_size, row, table, &lens)?;
    Ok(RunInputs {
        q,
        cache,
        scale,
        lat: row - rope,
        rope,
    })
}

/// What [`run_decode`] returns (f32, row-major; see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutputs {
    /// MLA output `[batch, heads, lat]`.
    pub out: Vec<f32>,
    /// MLA log-sum-exp `[batch, heads]`.
    pub lse: Vec<f32>,
    /// With `groups > 1`: TPLA `out_tpla [batch, heads, lat]` and `lse_tpla [g, batch, heads]`.
    pub tpla: Option<(Vec<f32>, Vec<f32>)>,
    /// (sequence, head) pairs whose MLA output is NaN because of a non-finite input.
    pub non_finite: usize,
}

impl RunOutputs {
    /// The named output tensors with their shapes, in file order.
    pub fn tensors(&self, inputs: &RunInputs) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let rows = inputs.rows_shape();
        let with = |pre: &[usize], post: &[usize]| [pre, &rows, post].concat();
        let mut v = vec![
            ("out", with(&[], &[inputs.lat]), self.out.as_slice()),
            ("lse", rows.clone(), self.lse.as_slice()),
        ];
        if let Some((o, l)) = &self.tpla {
            let g = l.len() / rows.iter().product::<usize>().max(1);
            v.push(("out_tpla", with(&[], &[inputs.lat]), o.as_slice()));
            v.push(("lse_tpla", with(&[g], &[]), l.as_slice()));
        }
        v
    }
}

/// Peak bytes a run of `inputs` holds besides the inputs (outputs, split partials, the
/// per-shard copies), for a memory check before [`run_decode`]. Saturates.
pub fn run_memory(inputs: &RunInputs, splits: usize) -> u128 {
    let (b, h, lat) = (
        inputs.batch() as u128,
        (inputs.query_len() * inputs.heads()) as u128,
        inputs.lat as u128,
    );
    let row = (inputs.lat + inputs.rope) as u128;
    let pool = inputs.cache.data().len() as u128;
    let q = b * h * row;
    // Per pass: shard copies of q and the pool (twice: host and executor), partials, outputs.
    let pass = (q + pool)
        .saturating_mul(4)
        .saturating_add((splits as u128 + 3).saturating_mul(b * h * (lat + 1) * 4));
    let outs = (b * h * (lat + 1) * 4).saturating_mul(2);
    pass.saturating_mul(2).saturating_add(outs)
}

/// Decode attention of `inputs` on `exec`: MLA, and with `groups > 1` TPLA over `groups`
/// latent groups, each with `splits` KV splits per sequence. Empty sequences and non-finite
/// inputs give what the module docs define.
pub fn run_decode<X: Executor>(
    exec: &X,
    inputs: &RunInputs,
    groups: usize,
    splits: usize,
) -> Result<RunOutputs, RunError> {
    run_decode_as(exec, inputs, groups, splits, KvDtype::Bf16)
}

/// [`run_decode`] with the cache stored as `kv`: with [`KvDtype::Fp8`] every shard's pool rows
/// are quantised to FP8 rows first (what an engine's FP8 append stores; a TPLA shard's scales
/// are its slice of the full row's) and the kernels read them back, so the outputs carry the
/// FP8 cache's error. FP8 needs each shard's latent width to be a multiple of 128.
pub fn run_decode_as<X: Executor>(
    exec: &X,
    inputs: &RunInputs,
    groups: usize,
    splits: usize,
    kv: KvDtype,
) -> Result<RunOutputs, RunError> {
    let w = shard_width(inputs.lat, groups)?;
    kv.pool_row(w, inputs.rope)?;
    if splits == 0 || splits > MAX_SPLITS {
        return Err(RunError::Invalid(format!(
            "splits = {splits} must lie in 1..={MAX_SPLITS}"
        )));
    }
    let (mla_out, mla_lse, non_finite) = pass(exec, inputs, 1, splits, kv)?;
    let tpla = if groups > 1 {
        let (o, l, _) = pass(exec, inputs, groups, splits, kv)?;
        Some((o, l))
    } else {
        None
    };
    Ok(RunOutputs {
        out: mla_out,
        lse: mla_lse,
        tpla,
        non_finite,
    })
}

/// One pass over `g` latent groups: the concatenated outputs, the shards' LSEs `[g, b, h]`, and
/// the (sequence, head) pairs made NaN (counted once over the shards).
fn pass<X: Executor>(
    exec: &X,
    inputs: &RunInputs,
    g: usize,
    splits: usize,
    kv: KvDtype,
) -> Result<(Vec<f32>, Vec<f32>, usize), RunError> {
    let (batch, lat, rope) = (inputs.batch(), inputs.lat, inputs.rope);
    let sq = inputs.query_len();
    // The kernel's rows: s_q tokens × heads per sequence, row j · heads + h.
    let heads = sq * inputs.heads();
    let w = shard_width(lat, g)?;
    let p =
        DecodeParams::new(batch, inputs.heads(), w, rope, splits, inputs.scale).with_query_len(sq);
    let lens: Vec<usize> = inputs
        .cache
        .seq_lens()
        .iter()
        .map(|&l| l as usize)
        .collect();
    let rows = inputs.cache.data().len() / (lat + rope);
    let mut poisoned = vec![false; batch * heads];
    let (mut outs, mut lses) = (Vec::with_capacity(g), Vec::with_capacity(g * batch * heads));
    for i in 0..g {
        let qs = shard_rows(inputs.q.data(), batch * heads, lat, rope, w, i)?;
        let pool = shard_rows(inputs.cache.data(), rows, lat, rope, w, i)?;
        let bad = non_finite_pairs(&qs, &pool, &inputs.cache, batch, heads, sq, w + rope);
        let q = HostTensor::from_vec(&[batch, heads, w + rope], qs)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        let prow = kv.pool_row(w, rope)?;
        let pool = match kv {
            KvDtype::Bf16 => pool,
            KvDtype::Fp8 => fp8_rows(&pool, w, rope),
        };
        let cache = HostPagedCache::from_parts(
            pool,
            inputs.cache.page_size(),
            prow,
            inputs.cache.block_table().to_vec(),
            &lens,
        )?;
        let (q, cache) = (exec.upload(&q)?, exec.upload_paged(&cache)?);
        let mut out = exec.alloc::<f32>(&[batch, heads, w])?;
        let mut lse = exec.alloc::<f32>(&[batch, heads])?;
        match kv {
            KvDtype::Bf16 => decode_attention(exec, &p, &q, &cache, &mut out, &mut lse)?,
            KvDtype::Fp8 => decode_attention_fp8(exec, &p, &q, &cache, &mut out, &mut lse)?,
        }
        let mut out = exec.download(&out)?.into_vec();
        let mut lse = exec.download(&lse)?.into_vec();
        for (bh, &is_bad) in bad.iter().enumerate() {
            let o = &mut out[bh * w..(bh + 1) * w];
            // Token j = (bh % heads) / (heads / sq) sees tokens 0..=len - sq + j: none if len
            // + j < sq (an empty sequence for every token).
            let j = (bh % heads) / inputs.heads();
            if lens[bh / heads] + j < sq {
                o.fill(0.0);
                lse[bh] = f32::NEG_INFINITY;
            } else if is_bad {
                o.fill(f32::NAN);
                lse[bh] = f32::NAN;
                poisoned[bh] = true;
            }
        }
        outs.push(out);
        lses.extend(lse);
    }
    let n = poisoned.iter().filter(|&&p| p).count();
    Ok((concat_shards(&outs, batch * heads, w)?, lses, n))
}

/// Every `lat + rope`-column bf16 row of `pool` as an FP8 row, in bf16 carrier elements.
fn fp8_rows(pool: &[bf16], lat: usize, rope: usize) -> Vec<bf16> {
    let mut vals = vec![0f32; lat + rope];
    pool.chunks_exact(lat + rope)
        .flat_map(|r| {
            for (v, x) in vals.iter_mut().zip(r) {
                *v = x.to_f32();
            }
            fp8_carrier_values(&vals, lat)
        })
        .collect()
}

/// For each (sequence, query row): whether the query row or a cache row that it sees holds a
/// non-finite value. `q` is `[batch, heads, row]` with `heads = sq · model heads` (row
/// `j · heads / sq + h` is token `j`, which sees cache tokens `0..=len - sq + j`), `pool` the
/// page pool with rows of `row` values laid out as `cache`'s.
fn non_finite_pairs(
    q: &[bf16],
    pool: &[bf16],
    cache: &HostPagedCache<bf16>,
    batch: usize,
    heads: usize,
    sq: usize,
    row: usize,
) -> Vec<bool> {
    let bad = |v: &[bf16]| v.iter().any(|x| !x.is_finite());
    let (ps, pps) = (cache.page_size(), cache.pages_per_seq());
    let table = cache.block_table();
    let mut out = vec![false; batch * heads];
    for (b, &len) in cache.seq_lens().iter().enumerate() {
        // The first bad cache row: token j sees it when first_bad <= len - sq + j.
        let first_bad = (0..len as usize).find(|&t| {
            let page = table[b * pps + t / ps] as usize;
            let r = page * ps + t % ps;
            bad(&pool[r * row..(r + 1) * row])
        });
        for h in 0..heads {
            let bh = b * heads + h;
            let j = h / (heads / sq);
            let sees_bad = first_bad.is_some_and(|t| t + sq <= len as usize + j);
            out[bh] = sees_bad || bad(&q[bh * row..(bh + 1) * row]);
        }
    }
    out
}
