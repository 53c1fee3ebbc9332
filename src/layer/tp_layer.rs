//! [`TpLayer`]: one attention layer of decode over the ranks of a tensor-parallel group, in one
//! of the three [`Form`]s.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use tpla_model::{Corrections, MlaLayer, MuConvention};
use tpla_runtime::half::bf16;
use tpla_runtime::{AllReduce, Executor, HostTensor, RuntimeError};

use super::clock::{serialise, Clock, PhaseTiming, StepTimer};
use super::gemm::GemmPath;
use super::plan::{dcp_tokens, roles, Form, KvNorm, RankRole};
use super::rank::{Down, KvScale, Rank, RankTimes};
use super::sum::Payload;
use super::weights::rank_weights;
use crate::decoder::DecoderShape;

/// The step's collectives (a second `impl` block of [`TpLayer`]).
#[path = "exchange.rs"]
mod exchange;

/// Sizes of a layer's decode batch and cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerShape {
    /// Sequences (one token each per step).
    pub batch: usize,
    /// Tokens each sequence can hold.
    pub max_tokens: usize,
    /// Tokens per cache page.
    pub page_size: usize,
    /// KV splits (0: chosen per call).
    pub splits: usize,
    /// Fill every output buffer with NaN before a kernel writes it (tests: an element no kernel
    /// writes shows up as NaN instead of a stale zero).
    pub poison: bool,
    /// Which gemm runs the dense projections ([`GemmPath::Auto`]: cuBLAS on a CUDA executor).
    pub gemm: GemmPath,
    /// How each rank's phases are timed ([`PhaseTiming::Events`]: device events, one
    /// synchronisation per step).
    pub timing: PhaseTiming,
    /// The element type of the output collectives ([`Payload::F32`] by default).
    pub payload: Payload,
    /// New tokens per sequence per step: 1 (decode), or 2 to 4 (MTP, speculative verify; token
    /// `j` sees the cache up to its own position). Not with DCP, whose ranks hold interleaved
    /// tokens (the kernel's causal mask takes the last `sq` cache rows as the new tokens).
    pub query_len: usize,
}

impl LayerShape {
    /// Activation rows per step: `batch · query_len`.
    pub fn rows(&self) -> usize {
        self.batch * self.query_len
    }
}

/// What [`TpLayer::step_device`] returns: every rank's all-reduced output `[batch, D]` (on its
/// executor) and every rank's time.
pub type DeviceStep<X> = (Vec<<X as Executor>::Tensor<f32>>, Vec<RankTimes>);

/// Every rank's phase times of a queued layer step ([`TpLayer::step_queued`]).
pub struct PendingTimes(Vec<StepTimer>);

impl PendingTimes {
    /// Waits for the step's work and returns every rank's times, in rank order.
    pub fn finish(self) -> Result<Vec<RankTimes>, RuntimeError> {
        self.0.into_iter().map(StepTimer::finish).collect()
    }
}

/// One attention layer over `tp` ranks (see [`Form`]). The layer's weights must come from
/// [`super::weights::prepare`] (γ folded, bf16).
pub struct TpLayer<X: Executor, C: AllReduce<X>> {
    form: Form,
    execs: Vec<X>,
    ranks: Vec<Rank<X>>,
    collective: C,
    batch: usize,
    hidden: usize,
    len: usize,
    max_tokens: usize,
    payload: Payload,
    /// New tokens per sequence per step.
    sq: usize,
    /// Ranks in the whole group (`ranks` holds this process's share).
    world: usize,
}

fn host<T: tpla_runtime::Element>(
    shape: &[usize],
    v: Vec<T>,
) -> Result<HostTensor<T>, RuntimeError> {
    HostTensor::from_vec(shape, v).map_err(|e| RuntimeError::InvalidInput(e.to_string()))
}

impl<X: Executor + 'static, C: AllReduce<X>> TpLayer<X, C> {
    /// Rank `r` runs on `execs[r]`. `corr` gives TPLA's corrections (`None`: uniform energy,
    /// μ = 1); other forms ignore it.
    pub fn new(
        execs: Vec<X>,
        collective: C,
        layer: &MlaLayer,
        form: Form,
        shape: LayerShape,
        corr: Option<Corrections>,
    ) -> Result<Self, RuntimeError> {
        // The group has `tp` ranks; this process drives `local` of them from `first` on.
        let (tp, local, first) = (
            collective.world(),
            collective.ranks(),
            collective.first_rank(),
        );
        if execs.len() != local || local == 0 || first + local > tp {
            return Err(RuntimeError::InvalidInput(format!(
                "{} executors for a collective over ranks {first}..{} of {tp}",
                execs.len(),
                first + local
            )));
        }
        if !(1..=tpla_kernels::ops::MAX_QUERY_LEN).contains(&shape.query_len) {
            return Err(RuntimeError::InvalidInput(format!(
                "{} query tokens per sequence, expected 1 to {}",
                shape.query_len,
                tpla_kernels::ops::MAX_QUERY_LEN
            )));
        }
        if form == Form::Dcp && shape.query_len > 1 {
            return Err(RuntimeError::InvalidInput(format!(
                "DCP with {} query tokens per sequence: its ranks hold interleaved tokens, and the decode kernel's causal mask takes the last query-length cache rows as the new tokens (use 1, or MLA-TP / TPLA)",
                shape.query_len
            )));
        }
        let cfg = &layer.cfg;
        let corr = match form {
            Form::Tpla { groups, .. } => {
                Some(corr.unwrap_or_else(|| Corrections::uniform(groups, MuConvention::One)))
            }
            _ => None,
        };
        let roles = roles(form, tp, cfg.heads, cfg.kv_lora_rank)?;
        let mut ranks = Vec::with_capacity(local);
        for ((i, role), exec) in roles.iter().enumerate().skip(first).zip(&execs) {
            let w = rank_weights(layer, form, role, corr.as_ref())?;
            let max_tokens = match role.tokens {
                Some((r, n)) => dcp_tokens(shape.max_tokens, r, n).max(1),
                None => shape.max_tokens,
            };
            let dshape = DecoderShape {
                batch: shape.batch,
                heads: role.attn_heads.len(),
                lat: role.latent.len(),
                rope: cfg.qk_rope,
                groups: 1,
                page_size: shape.page_size,
                max_tokens,
                splits: shape.splits,
                scale: cfg.scale as f32,
            };
            let kv = kv_scale(form, corr.as_ref(), &roles, i, cfg.kv_lora_rank);
            ranks.push(Rank::new(
                exec,
                role.clone(),
                &w,
                cfg,
                dshape,
                shape.max_tokens,
                kv,
                shape.poison,
                shape.gemm,
                shape.timing,
                shape.query_len,
            )?);
        }
        Ok(TpLayer {
            form,
            execs,
            ranks,
            collective,
            batch: shape.batch,
            hidden: cfg.hidden,
            len: 0,
            max_tokens: shape.max_tokens,
            payload: shape.payload,
            sq: shape.query_len,
            world: tp,
        })
    }
}

impl<X: Executor, C: AllReduce<X>> TpLayer<X, C> {
    /// Gives every rank's decode kernel the config the tune database `db` holds for its shape
    /// (`tpla tune` writes it; the same buckets as `tpla decode`), and the split policy it was
    /// timed with (uniform splits chosen on the host, or the balanced schedule computed on the
    /// device: `tpla tune` stores the faster); returns `(rank, bucket, config and policy,
    /// measured µs)` for each rank that found one. Ranks without an entry keep the defaults.
    ///
    /// With `query_len > 1` the kernel's rows are the rank's heads times the new tokens
    /// (`latent_decode` packs them into its row blocks), so the bucket is the one of that many
    /// rows: Kimi-K2's TPLA shard at two tokens (64 heads, 128 rows) runs the 128-row config
    /// `tpla tune` found for DeepSeek-V3's shard, not the 64-row one (which split the rows into
    /// two 64-row blocks, each reading the whole cache).
    pub fn apply_tuned(
        &mut self,
        db: &tpla_runtime::tune::TuneDb,
    ) -> Vec<(usize, String, String, f64)> {
        use tpla_codegen::KernelDef;
        let mut found = Vec::new();
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            let s = rank.dec.shape();
            let bucket = tpla_runtime::tune::decode_bucket(
                s.batch,
                s.heads * rank.sq,
                rank.dec.shard_width(),
                s.rope,
                s.max_tokens,
            );
            let name = tpla_kernels::latent_decode.name();
            if let (Some(c), Some(e)) = (db.get(name, &bucket), db.entry(name, &bucket)) {
                let shown = c.to_string();
                let how = rank.dec.apply_tuned(c, e);
                found.push((r, bucket, format!("{shown}{how}"), e.time_us));
            }
        }
        found
    }

    /// Which gemm runs the projections (rank 0's; every rank of one executor kind has the same).
    pub fn gemm(&self) -> String {
        self.ranks
            .first()
            .map(|r| r.engine.describe())
            .unwrap_or_default()
    }

    /// How the ranks' phases are timed (rank 0's clock), for reports.
    pub fn timing(&self) -> &'static str {
        self.ranks.first().map_or("", |r| r.clock.describe())
    }

    /// The layer's form.
    pub fn form(&self) -> Form {
        self.form
    }
    /// New tokens per sequence per step ([`LayerShape::query_len`]).
    pub fn query_len(&self) -> usize {
        self.sq
    }
    /// Tokens every sequence holds.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no token has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The roles of the ranks, in rank order.
    pub fn roles(&self) -> Vec<RankRole> {
        self.ranks.iter().map(|r| r.role.clone()).collect()
    }
    /// The executors, in rank order.
    pub fn execs(&self) -> &[X] {
        &self.execs
    }

    /// Fills every sequence's cache with `context` random rows (values in ±1, bf16; one random
    /// block of 512 tokens repeated): the cache a long prefix leaves, for timing. Not comparable
    /// with a reference.
    pub fn fill_random(&mut self, context: usize, seed: u64) -> Result<(), RuntimeError> {
        if self.len + context > self.max_tokens {
            return Err(RuntimeError::LengthPastCache {
                len: self.len + context,
                capacity: self.max_tokens,
            });
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        const CHUNK: usize = 512;
        for (rank, exec) in self.ranks.iter_mut().zip(&self.execs) {
            let d = rank.role.latent.len() + rank.dec.shape().rope;
            let mut n = match rank.role.tokens {
                Some((r, k)) => dcp_tokens(self.len + context, r, k) - dcp_tokens(self.len, r, k),
                None => context,
            };
            // One random chunk per rank, appended as often as needed: timing does not depend
            // on the values, and drawing every value of a 32K cache would dominate the run.
            let chunk: Vec<bf16> = (0..self.batch * CHUNK.min(n) * d)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect();
            while n > 0 {
                let m = n.min(CHUNK);
                rank.dec.append(
                    exec,
                    &host(&[self.batch, m, d], chunk[..self.batch * m * d].to_vec())?,
                )?;
                n -= m;
            }
            exec.synchronize()?;
        }
        self.len += context;
        Ok(())
    }

    /// One decode step: `x` `[batch · query_len, D]` (hidden states of the new tokens,
    /// sequence-major: token `j` of sequence `s` is row `s · query_len + j`, at position
    /// `len() + j`) to the layer output of the same shape, with every rank's time. The tokens
    /// are appended to the cache first (append-then-attend). `x` is uploaded to every rank
    /// (timed as [`RankTimes::host`]) and rank 0's output downloaded; [`Self::step_device`]
    /// does neither.
    pub fn step(
        &mut self,
        x: &HostTensor<f32>,
    ) -> Result<(HostTensor<f32>, Vec<RankTimes>), RuntimeError> {
        let (b, d) = (self.batch * self.sq, self.hidden);
        if x.shape() != [b, d] {
            return Err(RuntimeError::InvalidInput(format!(
                "x must be [{b}, {d}], got {:?}",
                x.shape()
            )));
        }
        let mut host_s = Vec::with_capacity(self.execs.len());
        let mut xs = Vec::with_capacity(self.execs.len());
        for exec in &self.execs {
            let s = Instant::now();
            xs.push(exec.upload(x)?);
            host_s.push(s.elapsed());
        }
        let (ys, mut times) = self.step_device(xs)?;
        for (t, h) in times.iter_mut().zip(host_s) {
            t.host += h;
        }
        let y = self.execs[0].download(&ys[0])?;
        Ok((y, times))
    }

    /// [`Self::step`] on tensors already on the ranks' executors: `xs[r]` (`[batch, D]`, on
    /// `execs()[r]`) holds the step's hidden states; returns every rank's copy of the
    /// all-reduced output `[batch, D]` (on its executor), what a tensor-parallel model feeds its
    /// next block. Nothing of the step moves through the host but the sequence lengths the
    /// append sets.
    pub fn step_device(&mut self, xs: Vec<X::Tensor<f32>>) -> Result<DeviceStep<X>, RuntimeError> {
        let (ys, pending) = self.step_queued(xs)?;
        // A collective across processes waits within its bound before the blocking reads.
        self.collective.settle(&self.execs)?;
        Ok((ys, pending.finish()?))
    }

    /// Ranks in the whole group; [`Self::roles`] and [`Self::execs`] hold this process's share.
    pub fn world(&self) -> usize {
        self.world
    }

    /// [`Self::step_device`] without waiting for the device: the step's work is queued (on a
    /// GPU the host returns while it runs) and its times are read by [`PendingTimes::finish`],
    /// so a stack of layers can be queued back to back as an engine queues a decode step.
    pub fn step_queued(
        &mut self,
        mut xs: Vec<X::Tensor<f32>>,
    ) -> Result<(Vec<X::Tensor<f32>>, PendingTimes), RuntimeError> {
        let (b, d) = (self.batch * self.sq, self.hidden);
        let tp = self.ranks.len();
        if xs.len() != tp {
            return Err(RuntimeError::InvalidInput(format!(
                "{} inputs for {tp} ranks",
                xs.len()
            )));
        }
        if let Some(bad) = xs
            .iter()
            .map(|x| X::tensor_arg(x).tensor_shape().map(<[usize]>::to_vec))
            .find(|s| s.as_deref() != Some(&[b, d][..]))
        {
            return Err(RuntimeError::InvalidInput(format!(
                "x must be [{b}, {d}] on every rank, got {bad:?}"
            )));
        }
        if self.len + self.sq > self.max_tokens {
            return Err(RuntimeError::LengthPastCache {
                len: self.len + self.sq,
                capacity: self.max_tokens,
            });
        }
        let pos = self.len;
        let clocks: Vec<Clock> = self.ranks.iter().map(|r| r.clock.clone()).collect();
        let mut times: Vec<StepTimer> = clocks.iter().map(StepTimer::new).collect();
        let mut downs: Vec<Down<X>> = Vec::with_capacity(tp);
        // Each rank's `Σ c²` where the exact norm sums it over the ranks (else empty).
        let mut c_sq: Vec<X::Tensor<f32>> = Vec::with_capacity(tp);
        for (r, (((rank, exec), t), x)) in self
            .ranks
            .iter()
            .zip(&self.execs)
            .zip(&mut times)
            .zip(xs.iter_mut())
            .enumerate()
        {
            serialise(&clocks, r)?;
            X::reshape(x, &[b, 1, d])?;
            let (dn, sq) = rank.down(exec, x, pos, t)?;
            downs.push(dn);
            c_sq.extend(sq);
        }
        if !c_sq.is_empty() {
            // TPLA's exact norm: Σ c² over the whole latent, one `[batch, 1]` all-reduce.
            self.all_reduce(&mut c_sq, &mut times)?;
        }
        let mut outs = Vec::with_capacity(tp);
        for (r, ((rank, exec), (t, dn))) in self
            .ranks
            .iter_mut()
            .zip(&self.execs)
            .zip(times.iter_mut().zip(downs.iter_mut()))
            .enumerate()
        {
            serialise(&clocks, r)?;
            let q = rank.query(exec, dn, pos, t)?;
            if rank.role.tokens.is_none_or(|(r, n)| pos % n == r) {
                rank.append(exec, dn, c_sq.get(r), pos, t)?;
            }
            outs.push(rank.attend(exec, &q, t)?);
        }
        let latent = match self.form {
            Form::Dcp => self.dcp_merge(outs, &clocks, &mut times)?,
            _ => outs.into_iter().map(|(o, _)| o).collect(),
        };
        let mut parts = if self.ranks.iter().any(|r| r.role.reduces_values()) {
            let values = self.each_rank(&clocks, &mut times, &latent, |rank, exec, t, o| {
                rank.values(exec, o, t)
            })?;
            let mut values = self.reduce_scatter_values(values, &clocks, &mut times)?;
            self.each_rank(
                &clocks,
                &mut times,
                values.iter_mut(),
                |rank, exec, t, v| rank.project_out(exec, v, t),
            )?
        } else {
            self.each_rank(&clocks, &mut times, &latent, |rank, exec, t, o| {
                rank.output(exec, o, t)
            })?
        };
        self.reduce_output(&mut parts, &mut times)?;
        self.len += self.sq;
        Ok((parts, PendingTimes(times)))
    }

    /// `f(rank, its executor, its timer, item)` for every rank in order, with the rank's work
    /// ordered after the other ranks' queued work on its device ([`serialise`]); the results in
    /// rank order.
    fn each_rank<I, T>(
        &self,
        clocks: &[Clock],
        times: &mut [StepTimer],
        items: impl IntoIterator<Item = I>,
        mut f: impl FnMut(&Rank<X>, &X, &mut StepTimer, I) -> Result<T, RuntimeError>,
    ) -> Result<Vec<T>, RuntimeError> {
        let mut out = Vec::with_capacity(self.ranks.len());
        for (r, (((rank, exec), t), item)) in self
            .ranks
            .iter()
            .zip(&self.execs)
            .zip(times.iter_mut())
            .zip(items)
            .enumerate()
        {
            serialise(clocks, r)?;
            out.push(f(rank, exec, t, item)?);
        }
        Ok(out)
    }

    /// Whether the collective's time is measured (it crosses devices) rather than modelled.
    pub fn collective_measured(&self) -> bool {
        self.collective.crosses_devices()
    }
}

/// How rank `i` of `roles` normalises its kv latent slice under `form`.
fn kv_scale(
    form: Form,
    corr: Option<&Corrections>,
    roles: &[RankRole],
    i: usize,
    lat: usize,
) -> KvScale {
    let role = &roles[i];
    let w = role.latent.len();
    let own = |gain: f32| KvScale {
        gain,
        inv_n: 1.0 / w as f32,
        summed: false,
        share: 1.0,
    };
    match form {
        Form::Tpla {
            norm: KvNorm::Sliced,
            ..
        } => own(corr.map_or(1.0, |c| c.norm_gain(role.group)) as f32),
        Form::Tpla {
            norm: KvNorm::Exact,
            ..
        } => {
            let first = roles.iter().position(|r| r.group == role.group) == Some(i);
            KvScale {
                gain: 1.0,
                inv_n: 1.0 / lat as f32,
                summed: true,
                share: if first { 1.0 } else { 0.0 },
            }
        }
        _ => own(1.0),
    }
}
