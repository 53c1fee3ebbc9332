//! One rank of a layer: its weights and cache on its executor, and the steps of a decode token.

use std::time::{Duration, Instant};

use tpla_model::MlaConfig;
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostTensor, RuntimeError};

use super::gemm::{Engine, GemmPath, Proj};
use super::glue;
use super::plan::RankRole;
use super::weights::RankWeights;
use crate::decoder::{DecoderShape, LatentDecoder, ShardOutput};

/// Where one rank's step time went (each part synchronised, so they add up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RankTimes {
    /// Dense projections on the executor: down, `W_UQ`, absorption, `W_UV`, `W_O`.
    pub projections: Duration,
    /// Decode attention (and, under DCP, the merge of the partial states).
    pub attention: Duration,
    /// The element-wise steps on the host and the transfers around them.
    pub host: Duration,
}

impl RankTimes {
    /// The rank's whole step (without the collectives).
    pub fn total(&self) -> Duration {
        self.projections + self.attention + self.host
    }
}

impl std::ops::AddAssign for RankTimes {
    fn add_assign(&mut self, o: Self) {
        self.projections += o.projections;
        self.attention += o.attention;
        self.host += o.host;
    }
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
    q_norm: Vec<f32>,
    q_lora: usize,
    pub poison: bool,
    cfg: MlaConfig,
    batch: usize,
    pub(crate) engine: Engine,
}

/// A rank's down-projection of the step's token, split on the host.
pub(crate) struct Down {
    /// RMS-normalised query latent `[batch, q_lora]`.
    pub q_a: Vec<f32>,
    /// Raw latent slice `c` `[batch, w]`.
    pub c: Vec<f32>,
    /// RoPE'd `k_pe` `[batch, rope]`.
    pub k_pe: Vec<f32>,
}

fn host<T: tpla_runtime::Element>(
    shape: &[usize],
    v: Vec<T>,
) -> Result<HostTensor<T>, RuntimeError> {
    HostTensor::from_vec(shape, v).map_err(|e| RuntimeError::InvalidInput(e.to_string()))
}

impl<X: Executor + 'static> Rank<X> {
    pub(crate) fn new(
        exec: &X,
        role: RankRole,
        w: &RankWeights,
        cfg: &MlaConfig,
        shape: DecoderShape,
        poison: bool,
        gemm: GemmPath,
    ) -> Result<Self, RuntimeError> {
        let e = Engine::for_executor(exec, gemm)?;
        Ok(Rank {
            poison,
            dec: LatentDecoder::new(exec, shape.clone())?,
            down: Proj::new(exec, &w.down, &e, poison)?,
            uq: Proj::new(exec, &w.uq, &e, poison)?,
            uk: Proj::new(exec, &w.uk, &e, poison)?,
            uv: Proj::new(exec, &w.uv, &e, poison)?,
            o: Proj::new(exec, &w.o, &e, poison)?,
            q_norm: w.q_norm.clone(),
            q_lora: w.q_lora,
            cfg: cfg.clone(),
            batch: shape.batch,
            role,
            engine: e,
        })
    }
}

impl<X: Executor> Rank<X> {
    fn width(&self) -> usize {
        self.role.latent.len()
    }

    /// The fused down-projection of `x` (`[batch, 1, D]` on this executor), then q RMSNorm and
    /// RoPE of `k_pe` at `pos` on the host.
    pub(crate) fn down(
        &self,
        exec: &X,
        x: &X::Tensor<f32>,
        pos: usize,
        t: &mut RankTimes,
    ) -> Result<Down, RuntimeError> {
        let (b, ql, w, rope) = (self.batch, self.q_lora, self.width(), self.cfg.qk_rope);
        let s = Instant::now();
        let y = self.down.apply(exec, x, b)?;
        exec.synchronize()?;
        t.projections += s.elapsed();
        let s = Instant::now();
        let y = exec.download(&y)?;
        let n = ql + w + rope;
        let (mut q_a, mut c, mut k_pe) = (
            Vec::with_capacity(b * ql),
            Vec::with_capacity(b * w),
            Vec::with_capacity(b * rope),
        );
        let eps = self.cfg.rms_eps as f32;
        let rot = glue::Rope::new(pos, self.cfg.rope_theta, rope);
        for row in y.data().chunks(n) {
            let mut q = row[..ql].to_vec();
            glue::rms_norm(&mut q, eps, 1.0);
            q.iter_mut().zip(&self.q_norm).for_each(|(v, g)| *v *= g);
            q_a.extend(q);
            c.extend_from_slice(&row[ql..ql + w]);
            let mut k = row[ql + w..].to_vec();
            rot.apply(&mut k);
            k_pe.extend(k);
        }
        t.host += s.elapsed();
        Ok(Down { q_a, c, k_pe })
    }

    /// The rank's absorbed query `[batch, heads_r, w + rope]` (bf16, on the executor) from the
    /// normalised query latent: `W_UQ`, RoPE of `q_pe`, then `q_nope · μ W_UK[latent]ᵀ`.
    pub(crate) fn query(
        &self,
        exec: &X,
        q_a: &[f32],
        pos: usize,
        t: &mut RankTimes,
    ) -> Result<X::Tensor<bf16>, RuntimeError> {
        let (b, ql, w, rope, nope) = (
            self.batch,
            self.q_lora,
            self.width(),
            self.cfg.qk_rope,
            self.cfg.qk_nope,
        );
        let hr = self.role.attn_heads.len();
        let s = Instant::now();
        let qa = exec.upload(&host(&[b, 1, ql], q_a.to_vec())?)?;
        t.host += s.elapsed();
        let s = Instant::now();
        let q = self.uq.apply(exec, &qa, b)?;
        exec.synchronize()?;
        t.projections += s.elapsed();
        let s = Instant::now();
        let q = exec.download(&q)?;
        let mut q_nope = Vec::with_capacity(b * hr * nope);
        let mut q_pe = Vec::with_capacity(b * hr * rope);
        let rot = glue::Rope::new(pos, self.cfg.rope_theta, rope);
        for head in q.data().chunks(nope + rope) {
            q_nope.extend_from_slice(&head[..nope]);
            let mut p = head[nope..].to_vec();
            rot.apply(&mut p);
            q_pe.extend(p);
        }
        let qn = exec.upload(&host(&[b, hr, nope], q_nope)?)?;
        t.host += s.elapsed();
        let s = Instant::now();
        let abs = self.uk.apply(exec, &qn, b)?;
        exec.synchronize()?;
        t.projections += s.elapsed();
        let s = Instant::now();
        let abs = exec.download(&abs)?;
        let mut full = Vec::with_capacity(b * hr * (w + rope));
        for (a, p) in abs.data().chunks(w).zip(q_pe.chunks(rope)) {
            full.extend(a.iter().chain(p).map(|&v| bf16::from_f32(v)));
        }
        let q = exec.upload(&host(&[b, hr, w + rope], full)?)?;
        t.host += s.elapsed();
        Ok(q)
    }

    /// Appends this step's cache rows (`[batch, w + rope]`, already normalised) to the cache.
    pub(crate) fn append(
        &mut self,
        exec: &X,
        rows: &[f32],
        t: &mut RankTimes,
    ) -> Result<(), RuntimeError> {
        let (b, d) = (self.batch, self.width() + self.cfg.qk_rope);
        let s = Instant::now();
        let rows = host(
            &[b, 1, d],
            rows.iter().map(|&v| bf16::from_f32(v)).collect(),
        )?;
        self.dec.append(exec, &rows)?;
        exec.synchronize()?;
        t.host += s.elapsed();
        Ok(())
    }

    /// Decode attention over this rank's cache.
    pub(crate) fn attend(
        &self,
        exec: &X,
        q: &X::Tensor<bf16>,
        t: &mut RankTimes,
    ) -> Result<ShardOutput<X>, RuntimeError> {
        let s = Instant::now();
        let out = self
            .dec
            .attend_prepared(exec, std::slice::from_ref(q))?
            .pop();
        exec.synchronize()?;
        t.attention += s.elapsed();
        out.ok_or_else(|| RuntimeError::InvalidInput("a rank holds one cache".into()))
    }

    /// `W_UV` then `W_O` of the output heads: latent output `[batch, out_heads, w]` to this
    /// rank's partial `[batch, D]`, not yet reduced.
    pub(crate) fn output(
        &self,
        exec: &X,
        o: &X::Tensor<f32>,
        t: &mut RankTimes,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let (b, dv, d) = (self.batch, self.cfg.v_head, self.cfg.hidden);
        let s = Instant::now();
        let mut v = self.uv.apply(exec, o, b)?;
        X::reshape(&mut v, &[b, 1, self.role.out_heads.len() * dv])?;
        let mut y = self.o.apply(exec, &v, b)?;
        X::reshape(&mut y, &[b, d])?;
        exec.synchronize()?;
        t.projections += s.elapsed();
        Ok(y)
    }
}
