//! Tensor-parallel latent attention: one rank per executor, one all-reduce per layer.
//!
//! [`TpDecoder`] is TPLA across devices: rank `r` holds latent group `r` of the paged cache
//! (`lat / g + rope` per token) for **every** head, runs split-KV decode attention on it, projects
//! its latent output with the matching rows of each head's `W_UV` ([`tpla_kernels::head_proj`]),
//! and the ranks' projections are summed by one all-reduce ([`AllReduce`]: NCCL on GPUs, a host
//! sum on CPU executors). [`HeadParallelMla`] is the baseline it replaces: MLA under tensor
//! parallelism splits the heads, so every rank holds (and reads) the whole `lat + rope` cache.
//!
//! Kernel launches are asynchronous on GPU executors, so the ranks' work overlaps although one
//! host thread issues it.

use std::time::{Duration, Instant};

use tpla_codegen::{Config, KernelDef};
use tpla_kernels::head_proj;
use tpla_runtime::half::bf16;
use tpla_runtime::{AllReduce, Executor, HostTensor, RuntimeError};

use crate::decoder::{DecoderShape, LatentDecoder, ShardOutput};

/// The `[heads, rows, dv]` block of `w` (`[heads, lat, dv]`) holding latent rows `rows` of every
/// head: rank `r`'s share of `W_UV` under TPLA.
pub fn w_rows(w: &HostTensor<bf16>, rows: std::ops::Range<usize>) -> HostTensor<bf16> {
    let (h, lat, dv) = (w.shape()[0], w.shape()[1], w.shape()[2]);
    let mut out = Vec::with_capacity(h * rows.len() * dv);
    for head in 0..h {
        let base = head * lat * dv;
        out.extend_from_slice(&w.data()[base + rows.start * dv..base + rows.end * dv]);
    }
    HostTensor::from_vec(&[h, rows.len(), dv], out).expect("sizes agree by construction")
}

fn check_w(w: &HostTensor<bf16>, heads: usize, lat: usize) -> Result<usize, RuntimeError> {
    match w.shape() {
        [h, l, dv] if *h == heads && *l == lat && *dv > 0 => Ok(*dv),
        s => Err(RuntimeError::InvalidInput(format!(
            "W_UV must be [{heads}, {lat}, dv > 0], got {s:?}"
        ))),
    }
}

/// Where [`TpDecoder::step_until`] stops: for timing the parts of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TpStage {
    /// Decode attention only (each rank's `[batch, heads, lat / g]` latent output).
    Attention,
    /// Attention and each rank's `W_UV` projection (partial sums, not yet reduced).
    Projection,
    /// The whole step: projection summed over the ranks.
    AllReduce,
}

/// One rank's share of a layer: its decoder (a latent group of the cache for every head under
/// TPLA, or a head slice of the whole cache for the MLA baseline) and its `W_UV` block.
///
/// [`TpDecoder`] drives a group of these from one process. An engine that runs one process per
/// GPU builds the one for its rank with [`TpShard::tpla`], calls [`TpShard::step`] and sums the
/// result over the group itself (e.g. `tpla_runtime::cuda::nccl::NcclRank::all_reduce_sum`).
pub struct TpShard<X: Executor> {
    dec: LatentDecoder<X>,
    w: X::Tensor<bf16>,
    proj: Config,
    dv: usize,
}

impl<X: Executor> TpShard<X> {
    /// TPLA rank `rank` of `shape.groups` on `exec`: latent group `rank` of the cache for every
    /// head, and rows `[rank·w, (rank+1)·w)` of each head's `W_UV` (`[heads, lat, dv]`).
    pub fn tpla(
        exec: &X,
        shape: DecoderShape,
        rank: usize,
        w_uv: &HostTensor<bf16>,
    ) -> Result<Self, RuntimeError> {
        let dv = check_w(w_uv, shape.heads, shape.lat)?;
        let dec = LatentDecoder::new_shard(exec, shape, rank)?;
        let width = dec.shard_width();
        let w = exec.upload(&w_rows(w_uv, rank * width..(rank + 1) * width))?;
        let proj = head_proj.default_config(&[("LAT", width as i64), ("DV", dv as i64)])?;
        Ok(TpShard { dec, w, proj, dv })
    }

    /// Replaces the decode kernel's tune values (e.g. from the tune database of this rank's
    /// device).
    pub fn set_decode_config(&mut self, config: Config) {
        self.dec.set_decode_config(config);
    }

    /// Replaces how a decode with `splits = 0` splits the tokens (see
    /// [`LatentDecoder::set_split_policy`]).
    pub fn set_split_policy(&mut self, policy: tpla_runtime::tune::SplitPolicy) {
        self.dec.set_split_policy(policy);
    }

    /// Applies a tune database entry of this rank's device (see
    /// [`LatentDecoder::apply_tuned`]); returns how it splits, for messages.
    pub fn apply_tuned(&mut self, config: Config, entry: &tpla_runtime::tune::TuneEntry) -> String {
        self.dec.apply_tuned(config, entry)
    }

    /// Latent width of this rank's cache rows (without RoPE).
    pub fn width(&self) -> usize {
        self.dec.shard_width()
    }

    /// Heads this rank attends with.
    pub fn heads(&self) -> usize {
        self.dec.shape().heads
    }

    /// Appends full-width rows `[batch, n, lat + rope]`; this rank keeps its part.
    pub fn append(&mut self, exec: &X, rows: &HostTensor<bf16>) -> Result<(), RuntimeError> {
        self.dec.append(exec, rows)
    }

    /// This rank's query from the full-width `q` (`[batch, heads, lat + rope]`).
    pub fn query(&self, exec: &X, q: &HostTensor<bf16>) -> Result<X::Tensor<bf16>, RuntimeError> {
        Ok(self
            .dec
            .shard_queries(exec, q)?
            .pop()
            .expect("one shard per rank"))
    }

    /// This rank's decode attention alone: its latent output `[batch, heads, w]` and log-sum-exp
    /// `[batch, heads]` (natural log), e.g. to merge with prefix or cascade attention
    /// ([`tpla_kernels::ops::merge_states`]) before [`TpShard::project`].
    pub fn attend(&self, exec: &X, q: &X::Tensor<bf16>) -> Result<ShardOutput<X>, RuntimeError> {
        let mut outs = self.dec.attend_prepared(exec, std::slice::from_ref(q))?;
        outs.pop()
            .ok_or_else(|| RuntimeError::InvalidInput("a rank holds one shard".into()))
    }

    /// This rank's `W_UV` projection of a latent output `[batch, heads, w]`: its
    /// `[batch, heads, dv]` partial sum, not yet reduced.
    pub fn project(&self, exec: &X, o: &X::Tensor<f32>) -> Result<X::Tensor<f32>, RuntimeError> {
        let s = self.dec.shape();
        let mut y = exec.alloc::<f32>(&[s.batch, s.heads, self.dv])?;
        head_proj::launch(exec, &self.proj, o, &self.w, &mut y)?;
        Ok(y)
    }

    /// Attention then (unless `stop` is [`TpStage::Attention`]) the `W_UV` projection: this
    /// rank's `[batch, heads, dv]` partial sum (or its latent output), not yet reduced.
    pub fn step(
        &self,
        exec: &X,
        q: &X::Tensor<bf16>,
        stop: TpStage,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let (o, _lse) = self.attend(exec, q)?;
        if stop == TpStage::Attention {
            return Ok(o);
        }
        self.project(exec, &o)
    }
}

/// Wall time of each phase of one step ([`TpDecoder::step_timed`]): every rank finishes a phase
/// before the next starts, so the phases add up to the step and none can be negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Decode attention on every rank.
    pub attention: Duration,
    /// The `W_UV` projection on every rank.
    pub projection: Duration,
    /// The all-reduce of the projections.
    pub all_reduce: Duration,
}

/// The executors of a group and what each rank holds, in rank order.
struct RankSet<X: Executor> {
    execs: Vec<X>,
    ranks: Vec<TpShard<X>>,
}

impl<X: Executor> RankSet<X> {
    /// Appends full-width rows to every rank; the first rank refuses a bad shape or a length
    /// past the cache before anything changes, and every rank checks the same.
    fn append(&mut self, rows: &HostTensor<bf16>) -> Result<(), RuntimeError> {
        for (rank, exec) in self.ranks.iter_mut().zip(&self.execs) {
            rank.append(exec, rows)?;
        }
        Ok(())
    }

    /// Each rank's attention (and projection, unless `stop` is [`TpStage::Attention`]).
    fn run(
        &self,
        queries: &[X::Tensor<bf16>],
        stop: TpStage,
    ) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        if queries.len() != self.ranks.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} queries for {} ranks",
                queries.len(),
                self.ranks.len()
            )));
        }
        self.ranks
            .iter()
            .zip(&self.execs)
            .zip(queries)
            .map(|((rank, exec), q)| rank.step(exec, q, stop))
            .collect()
    }

    /// Each rank's `W_UV` projection of its latent output.
    fn project(&self, outs: &[X::Tensor<f32>]) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        self.ranks
            .iter()
            .zip(&self.execs)
            .zip(outs)
            .map(|((rank, exec), o)| rank.project(exec, o))
            .collect()
    }

    fn synchronize(&self) -> Result<(), RuntimeError> {
        self.execs.iter().try_for_each(|e| e.synchronize())
    }

    fn shards_mut(&mut self) -> impl Iterator<Item = (&X, &mut TpShard<X>)> {
        self.execs.iter().zip(self.ranks.iter_mut())
    }
}

/// A full-width query `[batch, heads, lat + rope]` for `shape`, or a typed error.
fn check_query(shape: &DecoderShape, q: &HostTensor<bf16>) -> Result<(), RuntimeError> {
    let want = [shape.batch, shape.heads, shape.lat + shape.rope];
    if q.shape() != want {
        return Err(RuntimeError::InvalidInput(format!(
            "q must be {want:?}, got {:?}",
            q.shape()
        )));
    }
    Ok(())
}

/// TPLA over `g` executors (see the module docs).
pub struct TpDecoder<X: Executor, C: AllReduce<X>> {
    set: RankSet<X>,
    collective: C,
    shape: DecoderShape,
}

impl<X: Executor, C: AllReduce<X>> TpDecoder<X, C> {
    /// Rank `r` = `execs[r]` holds latent group `r` of `shape.groups` (which must equal the
    /// number of executors and of the collective's ranks). `w_uv` is `[heads, lat, dv]`.
    pub fn new(
        execs: Vec<X>,
        collective: C,
        shape: DecoderShape,
        w_uv: &HostTensor<bf16>,
    ) -> Result<Self, RuntimeError> {
        let g = shape.groups;
        if execs.len() != g || collective.ranks() != g {
            return Err(RuntimeError::InvalidInput(format!(
                "TPLA over {g} latent groups needs {g} executors and a {g}-rank collective, got {} and {}",
                execs.len(),
                collective.ranks()
            )));
        }
        check_w(w_uv, shape.heads, shape.lat)?;
        let ranks = execs
            .iter()
            .enumerate()
            .map(|(r, exec)| TpShard::tpla(exec, shape.clone(), r, w_uv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TpDecoder {
            set: RankSet { execs, ranks },
            collective,
            shape,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &DecoderShape {
        &self.shape
    }
    /// The executors, in rank order.
    pub fn execs(&self) -> &[X] {
        &self.set.execs
    }

    /// The ranks with their executors, e.g. to set tuned kernel configs per device.
    pub fn shards_mut(&mut self) -> impl Iterator<Item = (&X, &mut TpShard<X>)> {
        self.set.shards_mut()
    }

    /// Appends full-width rows `[batch, n, lat + rope]`: every rank keeps its latent group. A
    /// bad shape or a length past the cache is refused before any rank changes.
    pub fn append(&mut self, rows: &HostTensor<bf16>) -> Result<(), RuntimeError> {
        self.set.append(rows)
    }

    /// Each rank's query (`q` is `[batch, heads, lat + rope]`, full width) on its executor.
    pub fn rank_queries(&self, q: &HostTensor<bf16>) -> Result<Vec<X::Tensor<bf16>>, RuntimeError> {
        check_query(&self.shape, q)?;
        let mut out = Vec::with_capacity(self.set.ranks.len());
        for (rank, exec) in self.set.ranks.iter().zip(&self.set.execs) {
            out.push(rank.query(exec, q)?);
        }
        Ok(out)
    }

    /// One decode step from prepared queries: per rank attention and projection, then the
    /// all-reduce. Returns every rank's `[batch, heads, dv]` (all equal: the full projection).
    pub fn step(&self, queries: &[X::Tensor<bf16>]) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        self.step_until(queries, TpStage::AllReduce)
    }

    /// A step up to `stop` (to time its parts): the per-rank tensors at that point.
    pub fn step_until(
        &self,
        queries: &[X::Tensor<bf16>],
        stop: TpStage,
    ) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        let mut parts = self.set.run(queries, stop)?;
        if stop == TpStage::AllReduce {
            self.collective
                .all_reduce_sum(&self.set.execs, &mut parts)?;
        }
        Ok(parts)
    }

    /// One step like [`TpDecoder::step`], with every rank synchronised after each phase
    /// (attention, projection, all-reduce) and the wall time of each phase: for reporting where
    /// a step's time goes. The caller synchronises before, so the attention time is its own.
    pub fn step_timed(
        &self,
        queries: &[X::Tensor<bf16>],
    ) -> Result<(Vec<X::Tensor<f32>>, StepTimes), RuntimeError> {
        let t = Instant::now();
        let outs = self.set.run(queries, TpStage::Attention)?;
        self.set.synchronize()?;
        let attention = t.elapsed();
        let t = Instant::now();
        let mut parts = self.set.project(&outs)?;
        self.set.synchronize()?;
        let projection = t.elapsed();
        let t = Instant::now();
        self.collective
            .all_reduce_sum(&self.set.execs, &mut parts)?;
        self.set.synchronize()?;
        let all_reduce = t.elapsed();
        Ok((
            parts,
            StepTimes {
                attention,
                projection,
                all_reduce,
            },
        ))
    }

    /// Each rank's decode attention with its LSE, before projection: rank `r`'s latent output
    /// `[batch, heads, lat / g]` and log-sum-exp `[batch, heads]`, on its executor. Each rank
    /// has its own softmax (TPLA), so prefix/cascade states merge per rank; then
    /// [`TpDecoder::project_reduce`] finishes the step.
    pub fn attend(&self, queries: &[X::Tensor<bf16>]) -> Result<Vec<ShardOutput<X>>, RuntimeError> {
        if queries.len() != self.set.ranks.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} queries for {} ranks",
                queries.len(),
                self.set.ranks.len()
            )));
        }
        self.set
            .ranks
            .iter()
            .zip(&self.set.execs)
            .zip(queries)
            .map(|((rank, exec), q)| rank.attend(exec, q))
            .collect()
    }

    /// Projects each rank's latent output (`[batch, heads, lat / g]`, e.g. from
    /// [`TpDecoder::attend`] after a merge) and all-reduces: every rank's `[batch, heads, dv]`.
    pub fn project_reduce(
        &self,
        latent: &[X::Tensor<f32>],
    ) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        if latent.len() != self.set.ranks.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} latent outputs for {} ranks",
                latent.len(),
                self.set.ranks.len()
            )));
        }
        let mut parts = self
            .set
            .ranks
            .iter()
            .zip(&self.set.execs)
            .zip(latent)
            .map(|((rank, exec), o)| rank.project(exec, o))
            .collect::<Result<Vec<_>, _>>()?;
        self.collective
            .all_reduce_sum(&self.set.execs, &mut parts)?;
        Ok(parts)
    }

    /// Waits for every rank.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.set.synchronize()
    }
}

/// MLA under tensor parallelism (the baseline): rank `r` holds heads `[r·H/k, (r+1)·H/k)` and
/// the whole `lat + rope` cache; no collective is needed for the attention itself.
pub struct HeadParallelMla<X: Executor> {
    set: RankSet<X>,
    shape: DecoderShape,
}

impl<X: Executor> HeadParallelMla<X> {
    /// `shape` is the full model (`groups` ignored, MLA); `heads` must divide by the ranks.
    pub fn new(
        execs: Vec<X>,
        shape: DecoderShape,
        w_uv: &HostTensor<bf16>,
    ) -> Result<Self, RuntimeError> {
        let k = execs.len();
        if k == 0 || !shape.heads.is_multiple_of(k) {
            return Err(RuntimeError::InvalidInput(format!(
                "{} heads cannot be split over {k} ranks",
                shape.heads
            )));
        }
        let dv = check_w(w_uv, shape.heads, shape.lat)?;
        let hk = shape.heads / k;
        let local = DecoderShape {
            heads: hk,
            groups: 1,
            ..shape.clone()
        };
        let (lat, _) = (shape.lat, dv);
        let mut ranks = Vec::with_capacity(k);
        for (r, exec) in execs.iter().enumerate() {
            let dec = LatentDecoder::new(exec, local.clone())?;
            let wd = &w_uv.data()[r * hk * lat * dv..(r + 1) * hk * lat * dv];
            let w = exec.upload(
                &HostTensor::from_vec(&[hk, lat, dv], wd.to_vec())
                    .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
            )?;
            let proj = head_proj.default_config(&[("LAT", lat as i64), ("DV", dv as i64)])?;
            ranks.push(TpShard { dec, w, proj, dv });
        }
        Ok(HeadParallelMla {
            set: RankSet { execs, ranks },
            shape,
        })
    }

    /// The ranks with their executors, e.g. to set tuned kernel configs per device.
    pub fn shards_mut(&mut self) -> impl Iterator<Item = (&X, &mut TpShard<X>)> {
        self.set.shards_mut()
    }

    /// Appends full rows to every rank (each holds the whole cache).
    pub fn append(&mut self, rows: &HostTensor<bf16>) -> Result<(), RuntimeError> {
        self.set.append(rows)
    }

    /// Each rank's query: its heads of `q` (`[batch, heads, lat + rope]`).
    pub fn rank_queries(&self, q: &HostTensor<bf16>) -> Result<Vec<X::Tensor<bf16>>, RuntimeError> {
        check_query(&self.shape, q)?;
        let s = &self.shape;
        let d = s.lat + s.rope;
        let k = self.set.ranks.len();
        let hk = s.heads / k;
        (0..k)
            .map(|r| {
                let mut part = Vec::with_capacity(s.batch * hk * d);
                for b in 0..s.batch {
                    let base = (b * s.heads + r * hk) * d;
                    part.extend_from_slice(&q.data()[base..base + hk * d]);
                }
                self.set.execs[r].upload(
                    &HostTensor::from_vec(&[s.batch, hk, d], part)
                        .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
                )
            })
            .collect()
    }

    /// One decode step: rank `r`'s `[batch, H/k, dv]` for its heads.
    pub fn step(&self, queries: &[X::Tensor<bf16>]) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        self.set.run(queries, TpStage::Projection)
    }

    /// Waits for every rank.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.set.synchronize()
    }
}
