//! One rank of a layer: its weights and cache on its executor, and the steps of a decode token,
//! every one of them a kernel on the executor.

use std::time::Duration;

use tpla_codegen::{Config, KernelDef};
use tpla_kernels::{assemble_query, cache_row, down_norms, down_row, query_nope, take_heads};
use tpla_model::MlaConfig;
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostTensor, RuntimeError};

use super::clock::{Clock, Phase, PhaseTiming, StepTimer};
use super::gemm::{out_buf, out_buf_bf16, Activation, Engine, GemmPath, Proj};
use super::glue::RopeTable;
use super::plan::RankRole;
use super::weights::RankWeights;
use crate::decoder::{DecoderShape, LatentDecoder, ShardOutput};

/// Where one rank's step time went: each phase timed as [`super::clock::PhaseTiming`] says
/// (device events by default), so the parts add up to the rank's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RankTimes {
    /// Dense projections on the executor: down, `W_UQ`, absorption, `W_UV`, `W_O`.
    pub projections: Duration,
    /// Decode attention on the executor.
    pub attention: Duration,
    /// The element-wise kernels on the executor: the down-projection's norms, the cache row
    /// (kv norm + RoPE of `k_pe`) and its append, the query's split and assembly (RoPE of
    /// `q_pe`), and under DCP the merge of the partial states.
    pub glue: Duration,
    /// Host work and transfers: the upload of the layer input (the CLI's stack feeds each layer
    /// from the host).
    pub host: Duration,
    /// The collectives, measured on the rank's stream where they cross devices (NCCL; the wait
    /// for the slowest rank included); zero where a stand-in sums the ranks (a host sum, or a
    /// sum on the one device they share), whose time is modelled instead.
    pub collective: Duration,
}

impl RankTimes {
    /// The rank's whole step: its work, host transfers and the measured collectives (zero when
    /// they are modelled).
    pub fn total(&self) -> Duration {
        self.projections + self.attention + self.glue + self.host + self.collective
    }
    /// The work on the executor: projections, attention and glue.
    pub fn device(&self) -> Duration {
        self.projections + self.attention + self.glue
    }
}

impl std::ops::AddAssign for RankTimes {
    fn add_assign(&mut self, o: Self) {
        self.projections += o.projections;
        self.attention += o.attention;
        self.glue += o.glue;
        self.host += o.host;
        self.collective += o.collective;
    }
}

/// How a rank's kv RMSNorm scales its latent slice `c`: `c · gain / sqrt(c_sq · inv_n + eps)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct KvScale {
    /// TPLA's sliced-norm gain of the rank's group (1 elsewhere).
    pub gain: f32,
    /// `1 / n`: `n` the latent entries the mean runs over (the slice, or the whole latent).
    pub inv_n: f32,
    /// Whether `c_sq` is summed over the ranks first (TPLA's exact norm).
    pub summed: bool,
    /// Weight of this rank's `Σ c²` in that sum: 1 for the first rank of each latent group, 0
    /// for the others (ranks of one group hold the same slice).
    pub share: f32,
}

/// The kernel configs of a rank's element-wise steps.
struct GlueConfigs {
    norms: Config,
    row: Config,
    /// [`down_row`]: the two above in one kernel, where the kv norm needs no sum over ranks.
    fused: Config,
    nope: Config,
    query: Config,
}

/// One rank's share of the layer on its executor.
pub(crate) struct Rank<X: Executor> {
    pub role: RankRole,
    pub dec: LatentDecoder<X>,
    down: Proj<X>,
    uq: Proj<X>,
    uk: Proj<X>,
    uv: Proj<X>,
    o: Proj<X>,
    /// q RMSNorm `γ`: `[q_lora / 2, 2]` (pairs, as [`down_row`] reads it) where the kv norm
    /// needs no sum over the ranks, else `[q_lora]` (as [`down_norms`] reads it).
    q_gain: X::Tensor<f32>,
    /// RoPE cosines and sines `[positions, rope / 2]`.
    cos: X::Tensor<f32>,
    sin: X::Tensor<f32>,
    positions: usize,
    pub kv: KvScale,
    glue: GlueConfigs,
    q_lora: usize,
    pub poison: bool,
    cfg: MlaConfig,
    /// Sequences.
    batch: usize,
    /// Query tokens per sequence per step (1, or 2-4 for MTP / speculative verify).
    pub(crate) sq: usize,
    /// Activation rows per step: `batch · sq`, sequence-major (token `j` of sequence `s` is row
    /// `s · sq + j`).
    rows: usize,
    pub(crate) engine: Engine,
    /// How this rank's phases are timed.
    pub(crate) clock: Clock,
}

/// A rank's down-projection of the step's token, on its executor.
pub(crate) struct Down<X: Executor> {
    /// `[q_a | c | k_pe]` rows, `[batch, q_lora + w + rope]`.
    y: X::Tensor<f32>,
    /// RMS-normalised query latent (γ applied) `[batch, q_lora]`, bf16 (the `W_UQ` gemm's
    /// input).
    q_a: X::Tensor<bf16>,
    /// The step's cache rows `[batch, (w + rope) / 2, 2]` (bf16), where the kv norm needs no
    /// sum over the ranks and [`down_row`] wrote them beside `q_a`; `None` under the exact norm
    /// ([`cache_row`] writes them once `Σ c²` is summed).
    row: Option<X::Tensor<bf16>>,
}

/// What [`Rank::down`] gives: the down-projection and, under TPLA's exact norm, the slice's
/// `share · Σ c²` to sum over the ranks.
pub(crate) type DownStep<X> = (Down<X>, Option<<X as Executor>::Tensor<f32>>);

fn host<T: tpla_runtime::Element>(
    shape: &[usize],
    v: Vec<T>,
) -> Result<HostTensor<T>, RuntimeError> {
    HostTensor::from_vec(shape, v).map_err(|e| RuntimeError::InvalidInput(e.to_string()))
}

/// `config` with `kernel`'s `BLOCK_H` (its grid is `(rows, cdiv(heads, BLOCK_H))`) as
/// [`heads_block_for`] picks it for `exec`'s compute units; `config` as it is where the kernel
/// has no `BLOCK_H`.
fn heads_block<X: Executor>(
    exec: &X,
    kernel: &dyn KernelDef,
    config: Config,
    rows: usize,
    heads: usize,
) -> Result<Config, RuntimeError> {
    let candidates = kernel
        .tune_params()
        .iter()
        .find(|t| t.name == "BLOCK_H")
        .map_or(&[][..], |t| t.candidates);
    Ok(
        match heads_block_for(candidates, rows, heads, exec.compute_units()) {
            Some(h) => config.with("BLOCK_H", h),
            None => config,
        },
    )
}

/// The largest of `candidates` whose grid `(rows, cdiv(heads, BLOCK_H))` still gives each of
/// `units` compute units two programs, else the smallest (`None` without candidates): a GPU
/// gets enough blocks in flight to hide memory latency (an H100 at 32 heads and batch 64 takes
/// 4, 512 blocks, where 16 left 128 blocks for 132 SMs and the absorbed query's assembly took
/// 9.5 us instead of 7.0), a CPU of a few threads keeps its tiles coarse.
fn heads_block_for(candidates: &[i64], rows: usize, heads: usize, units: usize) -> Option<i64> {
    let want = 2 * units.max(1);
    let programs = |h: i64| rows * heads.div_ceil(h.max(1) as usize);
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable();
    sorted
        .iter()
        .rev()
        .find(|&&h| programs(h) >= want)
        .or(sorted.first())
        .copied()
}

fn even(what: &str, v: usize) -> Result<i64, RuntimeError> {
    if !v.is_multiple_of(2) {
        return Err(RuntimeError::InvalidInput(format!(
            "{what} = {v} must be even (RoPE and the cache rows are handled as pairs)"
        )));
    }
    Ok((v / 2) as i64)
}

impl<X: Executor + 'static> Rank<X> {
    /// The rank on `exec`; `positions` is how many token positions its RoPE table covers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        exec: &X,
        role: RankRole,
        w: &RankWeights,
        cfg: &MlaConfig,
        shape: DecoderShape,
        positions: usize,
        kv: KvScale,
        poison: bool,
        gemm: GemmPath,
        timing: PhaseTiming,
        sq: usize,
    ) -> Result<Self, RuntimeError> {
        let e = Engine::for_executor(exec, gemm)?;
        let mut dec = LatentDecoder::new(exec, shape.clone())?;
        dec.set_query_len(sq)?;
        let sq_c = sq as i64;
        let (ql, wd, rope, nope) = (w.q_lora, role.latent.len(), cfg.qk_rope, cfg.qk_nope);
        let (qp, wp, rp, np) = (
            even("q_lora", ql)?,
            even("the latent slice", wd)?,
            even("qk_rope", rope)?,
            even("qk_nope", nope)?,
        );
        let glue = GlueConfigs {
            norms: down_norms.default_config(&[
                ("QL", ql as i64),
                ("W", wd as i64),
                ("ROPE", rope as i64),
            ])?,
            row: cache_row.default_config(&[
                ("QL_PAIRS", qp),
                ("W_PAIRS", wp),
                ("ROPE_PAIRS", rp),
                ("SQ", sq_c),
            ])?,
            fused: down_row.default_config(&[
                ("QL_PAIRS", qp),
                ("W_PAIRS", wp),
                ("ROPE_PAIRS", rp),
                ("SQ", sq_c),
            ])?,
            nope: heads_block(
                exec,
                &query_nope,
                query_nope.default_config(&[("NOPE", nope as i64), ("ROPE", rope as i64)])?,
                shape.batch * sq,
                role.attn_heads.len(),
            )?,
            query: heads_block(
                exec,
                &assemble_query,
                assemble_query.default_config(&[
                    ("W_PAIRS", wp),
                    ("NOPE_PAIRS", np),
                    ("ROPE_PAIRS", rp),
                    ("SQ", sq_c),
                ])?,
                shape.batch * sq,
                role.attn_heads.len(),
            )?,
        };
        let gain_shape = if kv.summed { vec![ql] } else { vec![ql / 2, 2] };
        let positions = positions.max(1);
        let table = RopeTable::new(positions, cfg.rope_theta, rope);
        let pairs = table.pairs;
        Ok(Rank {
            poison,
            dec,
            down: Proj::new(exec, &w.down, &e, poison)?,
            uq: Proj::new(exec, &w.uq, &e, poison)?,
            uk: Proj::new(exec, &w.uk, &e, poison)?,
            uv: Proj::new(exec, &w.uv, &e, poison)?,
            o: Proj::new(exec, &w.o, &e, poison)?,
            q_gain: exec.upload(&host(&gain_shape, w.q_norm.clone())?)?,
            cos: exec.upload(&host(&[positions, pairs], table.cos)?)?,
            sin: exec.upload(&host(&[positions, pairs], table.sin)?)?,
            positions,
            kv,
            glue,
            q_lora: ql,
            cfg: cfg.clone(),
            batch: shape.batch,
            sq,
            rows: shape.batch * sq,
            role,
            engine: e,
            clock: Clock::for_executor(exec, timing),
        })
    }
}

impl<X: Executor> Rank<X> {
    fn width(&self) -> usize {
        self.role.latent.len()
    }

    /// The first new token's position, checked with the step's last (`pos + sq − 1`) against
    /// the RoPE table.
    fn position(&self, pos: usize) -> Result<i32, RuntimeError> {
        if pos + self.sq > self.positions {
            return Err(RuntimeError::LengthPastCache {
                len: pos + self.sq,
                capacity: self.positions,
            });
        }
        i32::try_from(pos).map_err(|_| RuntimeError::InvalidInput(format!("position {pos}")))
    }

    /// The fused down-projection of `x` (`[batch, 1, D]` on this executor), then its norms on
    /// the executor. Where the kv norm needs no sum over the ranks, one kernel ([`down_row`])
    /// writes the normalised query latent and the step's cache rows (RoPE at `pos`), and no
    /// `Σ c²` is returned; under the exact norm [`down_norms`] writes the query latent and the
    /// slice's `share · Σ c²` (`[batch, 1]`, returned apart: the caller sums it over the ranks
    /// before [`Self::append`] builds the rows).
    pub(crate) fn down(
        &self,
        exec: &X,
        x: &X::Tensor<f32>,
        pos: usize,
        t: &mut StepTimer,
    ) -> Result<DownStep<X>, RuntimeError> {
        let (b, ql, w, rope) = (self.rows, self.q_lora, self.width(), self.cfg.qk_rope);
        let mut y = t.time(exec, Phase::Projections, || {
            self.down.apply::<f32, f32>(exec, x, b)
        })?;
        let eps = self.cfg.rms_eps as f32;
        if !self.kv.summed {
            let p = self.position(pos)?;
            X::reshape(&mut y, &[b, (ql + w + rope) / 2, 2])?;
            let mut q_a = out_buf_bf16(exec, &[b, ql / 2, 2], self.poison)?;
            let mut row = out_buf_bf16(exec, &[b, (w + rope) / 2, 2], self.poison)?;
            let kv = self.kv;
            t.time(exec, Phase::Glue, || {
                down_row::launch(
                    exec,
                    &self.glue.fused,
                    &y,
                    &self.q_gain,
                    &self.cos,
                    &self.sin,
                    &mut q_a,
                    &mut row,
                    p,
                    kv.gain,
                    kv.inv_n,
                    eps,
                )
            })?;
            X::reshape(&mut y, &[b, ql + w + rope])?;
            X::reshape(&mut q_a, &[b, ql])?;
            return Ok((
                Down {
                    y,
                    q_a,
                    row: Some(row),
                },
                None,
            ));
        }
        X::reshape(&mut y, &[b, ql + w + rope])?;
        let mut q_a = out_buf_bf16(exec, &[b, ql], self.poison)?;
        let mut c_sq = out_buf(exec, &[b, 1], self.poison)?;
        t.time(exec, Phase::Glue, || {
            down_norms::launch(
                exec,
                &self.glue.norms,
                &y,
                &self.q_gain,
                &mut q_a,
                &mut c_sq,
                eps,
                self.kv.share,
            )
        })?;
        Ok((Down { y, q_a, row: None }, Some(c_sq)))
    }

    /// The rank's absorbed query `[batch, heads_r, w + rope]` (bf16) from the normalised query
    /// latent: `W_UQ`, the `q_nope` split, `q_nope · μ W_UK[latent]ᵀ`, then the assembly with
    /// RoPE of `q_pe` at `pos`.
    pub(crate) fn query(
        &self,
        exec: &X,
        down: &mut Down<X>,
        pos: usize,
        t: &mut StepTimer,
    ) -> Result<X::Tensor<bf16>, RuntimeError> {
        let (b, ql, w, rope, nope) = (
            self.rows,
            self.q_lora,
            self.width(),
            self.cfg.qk_rope,
            self.cfg.qk_nope,
        );
        let hr = self.role.attn_heads.len();
        let p = self.position(pos)?;
        X::reshape(&mut down.q_a, &[b, 1, ql])?;
        let q = t.time(exec, Phase::Projections, || {
            self.uq.apply::<bf16, f32>(exec, &down.q_a, b)
        });
        X::reshape(&mut down.q_a, &[b, ql])?;
        let mut q = q?;
        X::reshape(&mut q, &[b, hr, nope + rope])?;
        let mut qn = out_buf_bf16(exec, &[b, hr, nope], self.poison)?;
        t.time(exec, Phase::Glue, || {
            query_nope::launch(exec, &self.glue.nope, &q, &mut qn)
        })?;
        let mut abs = t.time(exec, Phase::Projections, || {
            self.uk.apply::<bf16, bf16>(exec, &qn, b)
        })?;
        X::reshape(&mut abs, &[b, hr, w / 2, 2])?;
        X::reshape(&mut q, &[b, hr, (nope + rope) / 2, 2])?;
        let mut out = out_buf_bf16(exec, &[b, hr, (w + rope) / 2, 2], self.poison)?;
        t.time(exec, Phase::Glue, || {
            assemble_query::launch(
                exec,
                &self.glue.query,
                &abs,
                &q,
                &self.cos,
                &self.sin,
                &mut out,
                p,
            )
        })?;
        // Sequence-major rows are the attention's `[batch, sq · heads, w + rope]`.
        X::reshape(&mut out, &[self.batch, self.sq * hr, w + rope])?;
        Ok(out)
    }

    /// Appends this step's cache rows to the cache: `[c · gain / sqrt(mean c² + eps) |
    /// RoPE(k_pe)]` in bf16, as [`Self::down`] wrote them, or (under the exact norm) assembled
    /// here from the down-projection and `c_sq` (summed over the ranks), then the paged append.
    pub(crate) fn append(
        &mut self,
        exec: &X,
        down: &mut Down<X>,
        c_sq: Option<&X::Tensor<f32>>,
        pos: usize,
        t: &mut StepTimer,
    ) -> Result<(), RuntimeError> {
        let (b, ql, w, rope) = (self.rows, self.q_lora, self.width(), self.cfg.qk_rope);
        if let Some(rows) = down.row.as_mut() {
            // The rows `down_row` wrote with the query latent.
            X::reshape(rows, &[self.batch, self.sq, w + rope])?;
            let appended = t.time(exec, Phase::Glue, || self.dec.append_device(exec, rows));
            X::reshape(rows, &[b, (w + rope) / 2, 2])?;
            return appended;
        }
        let c_sq = c_sq.ok_or_else(|| {
            RuntimeError::InvalidInput("the cache rows need the step's sum of squares".into())
        })?;
        let p = self.position(pos)?;
        let eps = self.cfg.rms_eps as f32;
        X::reshape(&mut down.y, &[b, (ql + w + rope) / 2, 2])?;
        let mut rows = out_buf_bf16(exec, &[b, (w + rope) / 2, 2], self.poison)?;
        let kv = self.kv;
        // One timed phase (one synchronisation) for the row and its append.
        let appended = t.time(exec, Phase::Glue, || {
            cache_row::launch(
                exec,
                &self.glue.row,
                &down.y,
                c_sq,
                &self.cos,
                &self.sin,
                &mut rows,
                p,
                kv.gain,
                kv.inv_n,
                eps,
            )?;
            X::reshape(&mut rows, &[self.batch, self.sq, w + rope])?;
            self.dec.append_device(exec, &rows)
        });
        X::reshape(&mut down.y, &[b, ql + w + rope])?;
        appended
    }

    /// Decode attention over this rank's cache.
    pub(crate) fn attend(
        &self,
        exec: &X,
        q: &X::Tensor<bf16>,
        t: &mut StepTimer,
    ) -> Result<ShardOutput<X>, RuntimeError> {
        let (mut o, mut lse) = t
            .time(exec, Phase::Attention, || {
                self.dec.attend_prepared(exec, std::slice::from_ref(q))
            })?
            .pop()
            .ok_or_else(|| RuntimeError::InvalidInput("a rank holds one cache".into()))?;
        // `[batch, sq · heads, w]` is `[rows, heads, w]`, sequence-major.
        let hr = self.role.attn_heads.len();
        X::reshape(&mut o, &[self.rows, hr, self.width()])?;
        X::reshape(&mut lse, &[self.rows, hr])?;
        Ok((o, lse))
    }

    /// `W_UV` then `W_O` of the output heads (the rank does not reduce its values first):
    /// latent output `[batch, heads, w]` to this rank's partial `[batch, D]`, not yet reduced.
    /// The values pass between the two gemms in bf16, written so by the first.
    pub(crate) fn output(
        &self,
        exec: &X,
        o: &X::Tensor<f32>,
        t: &mut StepTimer,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let mut v = t.time(exec, Phase::Projections, || {
            self.uv.apply::<f32, bf16>(exec, o, self.rows)
        })?;
        self.project_out(exec, &mut v, t)
    }

    /// `W_UV` of the rank's value heads: latent output `[batch, uv_heads, w]` to its values
    /// `[batch, uv_heads, v_head]` (partial over the latent groups under TPLA).
    pub(crate) fn values(
        &self,
        exec: &X,
        o: &X::Tensor<f32>,
        t: &mut StepTimer,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        t.time(exec, Phase::Projections, || {
            self.uv.apply::<f32, f32>(exec, o, self.rows)
        })
    }

    /// `W_O` of the output heads: values `[batch, out_heads, v_head]` (f32, or bf16 as `W_UV`
    /// wrote them) to this rank's partial
    /// `[batch, D]`, not yet reduced.
    pub(crate) fn project_out<A: Activation>(
        &self,
        exec: &X,
        v: &mut X::Tensor<A>,
        t: &mut StepTimer,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let (b, dv, d) = (self.rows, self.cfg.v_head, self.cfg.hidden);
        X::reshape(v, &[b, 1, self.role.out_heads.len() * dv])?;
        let mut y = t.time(exec, Phase::Projections, || {
            self.o.apply::<A, f32>(exec, v, b)
        })?;
        X::reshape(&mut y, &[b, d])?;
        Ok(y)
    }

    /// The rank's output heads out of the reduced values `[slots · batch, uv_heads, v_head]`
    /// (slot `slot`): `[batch, out_heads, v_head]`, timed as glue.
    pub(crate) fn take_out_heads(
        &self,
        exec: &X,
        reduced: &X::Tensor<f32>,
        slot: usize,
        t: &mut StepTimer,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let (b, dv) = (self.rows, self.cfg.v_head);
        let (uv, out) = (&self.role.uv_heads, &self.role.out_heads);
        let cfg = take_heads.default_config(&[("DV", dv as i64)])?;
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| RuntimeError::InvalidInput(format!("index {v}")))
        };
        let (row0, first) = (int(slot * b)?, int(out.start - uv.start)?);
        let mut v = out_buf(exec, &[b, out.len(), dv], self.poison)?;
        t.time(exec, Phase::Glue, || {
            take_heads::launch(exec, &cfg, reduced, &mut v, row0, first)
        })?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::heads_block_for;

    #[test]
    fn the_heads_block_fills_the_device_and_stays_coarse_on_few_units() {
        let c = [16, 4, 64];
        // H100, batch 64: 32 heads need BLOCK_H 4 (512 programs) for 264; 16 gives only 128.
        assert_eq!(heads_block_for(&c, 64, 32, 132), Some(4));
        // 64 heads at batch 128: 16 gives 512 programs, enough.
        assert_eq!(heads_block_for(&c, 128, 64, 132), Some(16));
        // Two CPU threads: the coarsest tile that still gives four programs.
        assert_eq!(heads_block_for(&c, 64, 32, 2), Some(64));
        assert_eq!(heads_block_for(&c, 1, 32, 2), Some(4));
        // Too few rows for any: the smallest block, the most programs.
        assert_eq!(heads_block_for(&c, 1, 4, 132), Some(4));
        assert_eq!(heads_block_for(&[], 64, 32, 132), None);
    }
}
