//! MLA and TPLA decode attention over paged latent caches, generic over the executor.
//!
//! [`LatentDecoder`] holds one paged cache per latent group: with `groups = 1` it is MLA (rows of
//! `lat + rope`), with `groups = g` it holds the `g` TPLA shards (rows of `lat / g + rope`). Each
//! step appends the new tokens' rows and runs split-KV decode attention per shard. In a
//! tensor-parallel deployment each shard lives on its own device; here they run one after the
//! other on one executor, so the per-shard time is what one device would spend.

use tpla_codegen::{Config, KernelDef};
use tpla_kernels::append_rows;
use tpla_kernels::latent_decode;
use tpla_kernels::ops::{
    decode_attention, decode_attention_balanced, decode_attention_into, shard_width,
    splits_for_occupancy, Balanced, BalancedWorkspace, DecodeParams, SplitPartials, BALANCED_WAVES,
};
use tpla_runtime::half::bf16;
use tpla_runtime::tune::{SplitPolicy, TuneEntry};
use tpla_runtime::{Executor, HostPagedCache, HostTensor, KernelArg, RuntimeError};

/// Static shape of a decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderShape {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Full latent width (512 for the DeepSeek family).
    pub lat: usize,
    /// RoPE width (64).
    pub rope: usize,
    /// Latent groups (1 = MLA).
    pub groups: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// Tokens each sequence can hold.
    pub max_tokens: usize,
    /// KV splits per sequence; 0 balances them per call on the device from the lengths and the
    /// device's occupancy (`tpla_kernels::ops::decode_attention_balanced`).
    pub splits: usize,
    /// The model's softmax scale.
    pub scale: f32,
}

/// One shard's attention output `[batch, heads, w]` and log-sum-exp `[batch, heads]`.
pub type ShardOutput<X> = (<X as Executor>::Tensor<f32>, <X as Executor>::Tensor<f32>);

/// Per-shard caches plus the kernels' configs.
pub struct LatentDecoder<X: Executor> {
    shape: DecoderShape,
    width: usize,
    /// Group index of `shards[0]`: all groups from 0, or the one group a tensor-parallel rank
    /// holds.
    first: usize,
    shards: Vec<X::Paged<bf16>>,
    lens: Vec<usize>,
    params: DecodeParams,
    append: Config,
    /// Program slots of the device for the current (balanced) decode config (queried once per
    /// config).
    slots: std::sync::OnceLock<usize>,
    /// Program slots for the current uniform decode config (queried once per config: the
    /// occupancy query is a driver call a decode step need not repeat).
    uniform_slots: std::sync::OnceLock<usize>,
    /// The balanced schedule's buffers (split table, partials), kept between calls while the
    /// schedule's sizes stay the same: allocating tens of MB of partials per call costs more
    /// than the decode at small batches.
    workspace: std::sync::Mutex<Option<BalancedWorkspace<X>>>,
    /// The uniform schedule's split partials, kept between calls while their sizes fit (for
    /// the same reason; [`SplitPartials`]).
    partials: std::sync::Mutex<Option<SplitPartials<X>>>,
    /// How `splits = 0` splits the tokens (balanced unless the tune database says otherwise).
    policy: SplitPolicy,
    /// The uniform split count the tune database found fastest (`None`: the occupancy rule's).
    uniform_splits: Option<usize>,
}

impl<X: Executor> LatentDecoder<X> {
    /// Empty caches for `shape`, one per latent group, on `exec`.
    pub fn new(exec: &X, shape: DecoderShape) -> Result<Self, RuntimeError> {
        let groups = shape.groups;
        Self::with_groups(exec, shape, 0..groups)
    }

    /// An empty cache for latent group `index` only (of `shape.groups`): what one device of a
    /// tensor-parallel group holds. `append` and `attend` take full-width rows and queries and
    /// keep this group's columns.
    pub fn new_shard(exec: &X, shape: DecoderShape, index: usize) -> Result<Self, RuntimeError> {
        if index >= shape.groups {
            return Err(RuntimeError::InvalidInput(format!(
                "shard {index} of {} groups",
                shape.groups
            )));
        }
        Self::with_groups(exec, shape, index..index + 1)
    }

    fn with_groups(
        exec: &X,
        shape: DecoderShape,
        groups: std::ops::Range<usize>,
    ) -> Result<Self, RuntimeError> {
        let width = shard_width(shape.lat, shape.groups)?;
        // splits = 0 (automatic) is resolved per call from the current lengths.
        let params = DecodeParams::new(
            shape.batch,
            shape.heads,
            width,
            shape.rope,
            shape.splits.max(1),
            shape.scale,
        );
        params.validate()?;
        let host = HostPagedCache::<bf16>::new(
            shape.batch,
            shape.max_tokens,
            shape.page_size,
            width + shape.rope,
        )?;
        let first = groups.start;
        let shards = groups
            .map(|_| exec.upload_paged(&host))
            .collect::<Result<Vec<_>, _>>()?;
        let append = append_rows.default_config(&[("ROW", (width + shape.rope) as i64)])?;
        Ok(LatentDecoder {
            lens: vec![0; shape.batch],
            shape,
            width,
            first,
            shards,
            params,
            append,
            slots: std::sync::OnceLock::new(),
            uniform_slots: std::sync::OnceLock::new(),
            workspace: std::sync::Mutex::new(None),
            partials: std::sync::Mutex::new(None),
            policy: SplitPolicy::Balanced,
            uniform_splits: None,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &DecoderShape {
        &self.shape
    }
    /// Latent width of each shard.
    pub fn shard_width(&self) -> usize {
        self.width
    }
    /// Current sequence lengths.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }
    /// Replaces the decode kernel's tune values (e.g. from the tune database).
    pub fn set_decode_config(&mut self, config: Config) {
        self.params.decode = config;
        self.slots = std::sync::OnceLock::new();
        self.uniform_slots = std::sync::OnceLock::new();
        self.workspace = std::sync::Mutex::new(None);
    }

    /// Query tokens per sequence of every later attend: 1 (decode) to
    /// [`tpla_kernels::ops::MAX_QUERY_LEN`] (MTP, speculative verify). With `sq > 1` the
    /// queries are `[batch, sq · heads, w + rope]` (token-major within a sequence), the `sq` new
    /// tokens are the last `sq` of each cache (append first), token `j` sees the cache up to its
    /// own position, and the outputs are `[batch, sq · heads, w]`. Out of range: a typed error,
    /// nothing changed.
    pub fn set_query_len(&mut self, sq: usize) -> Result<(), RuntimeError> {
        let p = self.params.clone().with_query_len(sq);
        p.validate()?;
        self.params = p;
        self.slots = std::sync::OnceLock::new();
        self.uniform_slots = std::sync::OnceLock::new();
        self.workspace = std::sync::Mutex::new(None);
        Ok(())
    }

    /// Query tokens per sequence ([`Self::set_query_len`]).
    pub fn query_len(&self) -> usize {
        self.params.sq
    }

    /// How a decode with `splits = 0` splits each sequence's tokens: [`SplitPolicy::Balanced`]
    /// (the default: pieces computed on the device from the lengths) or
    /// [`SplitPolicy::Uniform`] (the same split count for every sequence, chosen on the host for
    /// whole waves at the longest length held), e.g. as the tune database stored it. A fixed
    /// `splits` in the shape is kept either way.
    pub fn set_split_policy(&mut self, policy: SplitPolicy) {
        self.policy = policy;
    }

    /// The split count of a uniform decode with `splits = 0` (see [`Self::set_split_policy`]):
    /// `Some(n)` uses `n` splits (at most one per `BLOCK_N` tokens of the longest sequence),
    /// `None` the occupancy rule
    /// ([`tpla_kernels::ops::choose_splits`], the default).
    pub fn set_uniform_splits(&mut self, splits: Option<usize>) {
        self.uniform_splits = splits.map(|n| n.max(1));
    }

    /// Applies a tune database entry: its `config` (from [`TuneDb::get`]) and its split policy
    /// and count, where it stores them. Returns how it splits, for messages (see
    /// [`TuneEntry::split_description`]).
    ///
    /// [`TuneDb::get`]: tpla_runtime::tune::TuneDb::get
    pub fn apply_tuned(&mut self, config: Config, entry: &TuneEntry) -> String {
        self.set_decode_config(config);
        if let Some(p) = entry.split_policy {
            self.set_split_policy(p);
        }
        self.set_uniform_splits(entry.splits);
        entry.split_description()
    }

    /// Appends `rows` (`[batch, n, lat + rope]`, full width) to every shard: shard `i` keeps
    /// latent columns `[i·w, (i+1)·w)` plus the RoPE part. Errors (too long, wrong shape) change
    /// nothing.
    pub fn append(&mut self, exec: &X, rows: &HostTensor<bf16>) -> Result<(), RuntimeError> {
        let s = &self.shape;
        let full = s.lat + s.rope;
        let sh = rows.shape();
        if sh.len() != 3 || sh[0] != s.batch || sh[2] != full || sh[1] == 0 {
            return Err(RuntimeError::InvalidInput(format!(
                "rows must be [{}, n >= 1, {full}], got {sh:?}",
                s.batch
            )));
        }
        let n = sh[1];
        let new_lens: Vec<usize> = self.lens.iter().map(|l| l + n).collect();
        if let Some(&bad) = new_lens.iter().find(|&&l| l > s.max_tokens) {
            return Err(RuntimeError::LengthPastCache {
                len: bad,
                capacity: s.max_tokens,
            });
        }
        for (j, cache) in self.shards.iter_mut().enumerate() {
            let i = self.first + j;
            let slice = shard_rows(rows.data(), s.batch * n, s.lat, s.rope, self.width, i)?;
            let part = exec.upload(
                &HostTensor::from_vec(&[s.batch, n, self.width + s.rope], slice)
                    .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
            )?;
            exec.set_seq_lens(cache, &new_lens)?;
            append_rows::launch(exec, &self.append, &part, cache)?;
        }
        self.lens = new_lens;
        Ok(())
    }

    /// Appends `rows` already on the executor (`[batch, n, w + rope]` bf16 with `w` this
    /// decoder's shard width) to its one shard: the cache rows a device step assembled, with no
    /// transfer but the new lengths. A decoder holding several shards needs [`Self::append`].
    /// Errors (several shards, wrong shape, too long) change nothing.
    pub fn append_device(&mut self, exec: &X, rows: &X::Tensor<bf16>) -> Result<(), RuntimeError> {
        let s = &self.shape;
        let row = self.width + s.rope;
        if self.shards.len() != 1 {
            return Err(RuntimeError::InvalidInput(format!(
                "append_device writes one shard; this decoder holds {}",
                self.shards.len()
            )));
        }
        let n = match X::tensor_arg(rows).tensor_shape() {
            Some(&[b, n, d]) if b == s.batch && d == row && n > 0 => n,
            sh => {
                return Err(RuntimeError::InvalidInput(format!(
                    "rows must be [{}, n >= 1, {row}], got {sh:?}",
                    s.batch
                )))
            }
        };
        let new_lens: Vec<usize> = self.lens.iter().map(|l| l + n).collect();
        if let Some(&bad) = new_lens.iter().find(|&&l| l > s.max_tokens) {
            return Err(RuntimeError::LengthPastCache {
                len: bad,
                capacity: s.max_tokens,
            });
        }
        let cache = &mut self.shards[0];
        exec.set_seq_lens(cache, &new_lens)?;
        append_rows::launch(exec, &self.append, rows, cache)?;
        self.lens = new_lens;
        Ok(())
    }

    /// Appends `rows` (`[n, lat + rope]`, full width) to sequence `b` alone: continuous
    /// batching, where each sequence grows by its own count. Errors (bad sequence, shape, too
    /// long) change nothing.
    pub fn append_seq(
        &mut self,
        exec: &X,
        b: usize,
        rows: &HostTensor<bf16>,
    ) -> Result<(), RuntimeError> {
        let s = &self.shape;
        let full = s.lat + s.rope;
        if b >= s.batch {
            return Err(RuntimeError::InvalidInput(format!(
                "sequence {b} of a batch of {}",
                s.batch
            )));
        }
        let n = match rows.shape() {
            [n, d] if *n > 0 && *d == full => *n,
            sh => {
                return Err(RuntimeError::InvalidInput(format!(
                    "rows must be [n >= 1, {full}], got {sh:?}"
                )))
            }
        };
        let len = self.lens[b] + n;
        if len > s.max_tokens {
            return Err(RuntimeError::LengthPastCache {
                len,
                capacity: s.max_tokens,
            });
        }
        let mut lens = self.lens.clone();
        lens[b] = len;
        let row = self.width + s.rope;
        for (j, cache) in self.shards.iter_mut().enumerate() {
            let i = self.first + j;
            let mut part = Vec::with_capacity(n * row);
            for r in rows.data().chunks(full) {
                part.extend_from_slice(&r[i * self.width..(i + 1) * self.width]);
                part.extend_from_slice(&r[s.lat..]);
            }
            let part = exec.upload(
                &HostTensor::from_vec(&[1, n, row], part)
                    .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
            )?;
            exec.set_seq_lens(cache, &lens)?;
            let seq = match X::paged_arg_mut(cache) {
                KernelArg::Paged(p) => p.sequence(b),
                _ => None,
            }
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!(
                    "{}: its paged cache has no host tables",
                    exec.backend_name()
                ))
            })?;
            exec.launch(
                &append_rows,
                &self.append,
                &[X::tensor_arg(&part), KernelArg::Paged(seq)],
            )?;
        }
        self.lens = lens;
        Ok(())
    }

    /// Empties sequence `b` (freed, or reset for a new request): its length becomes 0 and the
    /// next [`Self::append_seq`] writes from its first page again.
    pub fn reset_seq(&mut self, exec: &X, b: usize) -> Result<(), RuntimeError> {
        if b >= self.shape.batch {
            return Err(RuntimeError::InvalidInput(format!(
                "sequence {b} of a batch of {}",
                self.shape.batch
            )));
        }
        let mut lens = self.lens.clone();
        lens[b] = 0;
        for cache in self.shards.iter_mut() {
            exec.set_seq_lens(cache, &lens)?;
        }
        self.lens = lens;
        Ok(())
    }

    /// Group indices of the shards held (all groups, or one for a tensor-parallel rank).
    pub fn groups_held(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.shards.len()
    }

    /// Decode attention of one query token per sequence against every shard. `q` is
    /// `[batch, heads, lat + rope]` (full width, bf16); returns one `[batch, heads, w]` output and
    /// `[batch, heads]` lse per shard, still on the executor.
    pub fn attend(
        &self,
        exec: &X,
        q: &HostTensor<bf16>,
    ) -> Result<Vec<ShardOutput<X>>, RuntimeError> {
        let s = &self.shape;
        let sh = q.shape();
        if sh != [s.batch, s.heads, s.lat + s.rope] {
            return Err(RuntimeError::InvalidInput(format!(
                "q must be [{}, {}, {}], got {sh:?}",
                s.batch,
                s.heads,
                s.lat + s.rope
            )));
        }
        let queries = self.shard_queries(exec, q)?;
        self.attend_prepared(exec, &queries)
    }

    /// Like [`Self::attend`] with per-shard queries already on the executor (what a timed loop
    /// uses, so uploads stay out of the measurement).
    pub fn attend_prepared(
        &self,
        exec: &X,
        queries: &[X::Tensor<bf16>],
    ) -> Result<Vec<ShardOutput<X>>, RuntimeError> {
        if queries.len() != self.shards.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} shard queries for {} shards",
                queries.len(),
                self.shards.len()
            )));
        }
        let mut outs = Vec::with_capacity(self.shards.len());
        for (cache, q) in self.shards.iter().zip(queries) {
            outs.push(self.attend_shard(exec, cache, q)?);
        }
        Ok(outs)
    }

    /// Decode attention on one shard. Calls share the decoder's kept buffers (the balanced
    /// workspace, the uniform split partials): calls issued on different streams must be
    /// ordered by the caller (one stream, as every caller in this crate uses, needs nothing).
    pub fn attend_shard(
        &self,
        exec: &X,
        cache: &X::Paged<bf16>,
        q: &X::Tensor<bf16>,
    ) -> Result<ShardOutput<X>, RuntimeError> {
        let s = &self.shape;
        let rows = self.params.rows();
        let mut out = exec.alloc::<f32>(&[s.batch, rows, self.width])?;
        let mut lse = exec.alloc::<f32>(&[s.batch, rows])?;
        if s.splits == 0 && self.policy == SplitPolicy::Uniform {
            let mut p = self.params.clone();
            let max_len = self.lens.iter().copied().max().unwrap_or(1);
            p.splits = match self.uniform_splits {
                Some(n) => n.min(max_len.div_ceil(p.block_n())).max(1),
                None => {
                    let slots = program_slots(exec, &self.uniform_slots, &p.decode_config())?;
                    splits_for_occupancy(&p, max_len, slots)
                }
            };
            self.decode_uniform(exec, &p, q, cache, &mut out, &mut lse)?;
        } else if s.splits == 0 {
            // The balanced schedule: pieces computed on the device from the cache's lengths,
            // the grid sized for the longest sequence now held.
            let p = &self.params;
            let slots = program_slots(exec, &self.slots, &p.balanced_decode_config())?;
            let max_len = self.lens.iter().copied().max().unwrap_or(1);
            let sched = Balanced::for_occupancy(p, max_len, slots).with_waves(BALANCED_WAVES);
            // A poisoned lock only means an earlier call panicked mid-decode: the buffers are
            // rewritten by every call, so they are still usable.
            let mut kept = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
            if kept.as_ref().is_none_or(|ws| ws.schedule() != sched) {
                *kept = None; // free the old buffers before allocating the new ones
                *kept = Some(BalancedWorkspace::new(exec, p, sched)?);
            }
            let ws = kept.as_mut().expect("set above");
            decode_attention_balanced(exec, p, ws, q, cache, &mut out, &mut lse)?;
        } else {
            self.decode_uniform(exec, &self.params, q, cache, &mut out, &mut lse)?;
        }
        Ok((out, lse))
    }

    /// The uniform split schedule over the kept partials (allocated on first use and whenever
    /// the sizes change; one split needs none).
    fn decode_uniform(
        &self,
        exec: &X,
        p: &DecodeParams,
        q: &X::Tensor<bf16>,
        cache: &X::Paged<bf16>,
        out: &mut X::Tensor<f32>,
        lse: &mut X::Tensor<f32>,
    ) -> Result<(), RuntimeError> {
        if p.splits == 1 {
            return decode_attention(exec, p, q, cache, out, lse);
        }
        // As for the balanced workspace: a poisoned lock leaves buffers every call rewrites.
        let mut kept = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        if !kept.as_ref().is_some_and(|ws| ws.fits(p)) {
            *kept = None; // free the old partials before allocating the new ones
            *kept = Some(SplitPartials::new(exec, p)?);
        }
        let ws = kept.as_mut().expect("set above");
        decode_attention_into(exec, p, ws, q, cache, out, lse)
    }

    /// The shard caches.
    pub fn shards(&self) -> &[X::Paged<bf16>] {
        &self.shards
    }

    /// Per-shard queries for [`Self::attend_prepared`].
    pub fn shard_queries(
        &self,
        exec: &X,
        q: &HostTensor<bf16>,
    ) -> Result<Vec<X::Tensor<bf16>>, RuntimeError> {
        let s = &self.shape;
        (self.first..self.first + self.shards.len())
            .map(|i| {
                let data = shard_rows(q.data(), s.batch * s.heads, s.lat, s.rope, self.width, i)?;
                exec.upload(
                    &HostTensor::from_vec(&[s.batch, s.heads, self.width + s.rope], data)
                        .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
                )
            })
            .collect()
    }
}

/// Concatenates per-shard outputs (`[batch, heads, w]` each) along the latent axis.
///
/// A part that does not hold exactly `batch_heads · width` values is an
/// [`RuntimeError::InvalidInput`] naming it.
pub fn concat_shards(
    parts: &[Vec<f32>],
    batch_heads: usize,
    width: usize,
) -> Result<Vec<f32>, RuntimeError> {
    let want = batch_heads * width;
    if let Some((i, p)) = parts.iter().enumerate().find(|(_, p)| p.len() != want) {
        return Err(RuntimeError::InvalidInput(format!(
            "shard output {i} has {} values, expected {batch_heads} rows x {width} = {want}",
            p.len()
        )));
    }
    let mut out = Vec::with_capacity(parts.len() * want);
    for r in 0..batch_heads {
        for p in parts {
            out.extend_from_slice(&p[r * width..(r + 1) * width]);
        }
    }
    Ok(out)
}

/// Picks shard `i` of each `[lat + rope]` row: latent columns `[i·w, (i+1)·w)` then the RoPE part.
///
/// `data` must hold exactly `rows · (lat + rope)` values and the shard must lie inside the
/// latent (`(i + 1) · w <= lat`); otherwise an [`RuntimeError::InvalidInput`] says which.
pub fn shard_rows<T: Copy>(
    data: &[T],
    rows: usize,
    lat: usize,
    rope: usize,
    w: usize,
    i: usize,
) -> Result<Vec<T>, RuntimeError> {
    let d = lat + rope;
    if data.len() != rows * d {
        return Err(RuntimeError::InvalidInput(format!(
            "{} values are not {rows} rows of {lat} + {rope}",
            data.len()
        )));
    }
    let end = i.checked_add(1).and_then(|n| n.checked_mul(w));
    if end.is_none_or(|e| e > lat) {
        return Err(RuntimeError::InvalidInput(format!(
            "latent shard {i} of width {w} does not fit in a latent of {lat}"
        )));
    }
    let mut out = Vec::with_capacity(rows * (w + rope));
    for r in 0..rows {
        let row = &data[r * d..(r + 1) * d];
        out.extend_from_slice(&row[i * w..(i + 1) * w]);
        out.extend_from_slice(&row[lat..]);
    }
    Ok(out)
}

/// The device's program slots for decode config `cfg` (compute units × resident programs per
/// unit), from `cache` where an earlier call filled it, else queried from the executor once
/// (a driver call a decode step need not repeat) and kept there.
fn program_slots<X: Executor>(
    exec: &X,
    cache: &std::sync::OnceLock<usize>,
    cfg: &Config,
) -> Result<usize, RuntimeError> {
    if let Some(&n) = cache.get() {
        return Ok(n);
    }
    let per_unit = exec.resident_programs(&latent_decode, cfg)?;
    Ok(*cache.get_or_init(|| exec.compute_units() * per_unit))
}

#[cfg(test)]
mod tests;
