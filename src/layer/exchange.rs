//! The collectives of a [`TpLayer`] step: the all-reduces (timed where they cross devices), the
//! output collectives in the layer's payload, TPLA's values reduce-scattered by heads after
//! `W_UV`, and DCP's exchange and exact merge of the partial attention states.

use tpla_codegen::KernelDef;
use tpla_kernels::{merge_heads, place_rows, place_state};
use tpla_runtime::half::bf16;
use tpla_runtime::{AllReduce, Executor, RuntimeError};

use super::super::clock::{Clock, Phase, StepTimer};
use super::super::gemm::out_buf;
use super::super::plan::Form;
use super::super::sum::{round_rows, widen_rows, Payload};
use super::TpLayer;

impl<X: Executor, C: AllReduce<X>> TpLayer<X, C> {
    /// Sums `parts` over the ranks with the collective. Where it crosses devices (NCCL) it is
    /// timed as every rank's [`Phase::Collective`]; a stand-in's time (a host sum, a sum on the
    /// one shared device) is left out, as the cost model gives it instead.
    pub(super) fn all_reduce(
        &self,
        parts: &mut [X::Tensor<f32>],
        times: &mut [StepTimer],
    ) -> Result<(), RuntimeError> {
        self.timed_collective(times, || self.collective.all_reduce_sum(&self.execs, parts))
    }

    /// Runs `f` (a collective call), timed as every rank's [`Phase::Collective`] where the
    /// collective crosses devices.
    pub(super) fn timed_collective(
        &self,
        times: &mut [StepTimer],
        f: impl FnOnce() -> Result<(), RuntimeError>,
    ) -> Result<(), RuntimeError> {
        if self.collective.crosses_devices() {
            StepTimer::time_all(times, &self.execs, Phase::Collective, f)
        } else {
            f()
        }
    }

    /// [`Self::all_reduce`] of output parts `[rows, cols]` in the layer's [`Payload`]: with bf16
    /// each rank's part is rounded to bf16 on its executor (timed as glue), summed in bf16 by
    /// the collective, and widened back (glue).
    pub(super) fn reduce_output(
        &self,
        parts: &mut [X::Tensor<f32>],
        times: &mut [StepTimer],
    ) -> Result<(), RuntimeError> {
        if self.payload == Payload::F32 {
            return self.all_reduce(parts, times);
        }
        let shape = X::tensor_arg(&parts[0])
            .tensor_shape()
            .map(<[usize]>::to_vec)
            .unwrap_or_default();
        let [rows, cols] = shape[..] else {
            return Err(RuntimeError::InvalidInput(format!(
                "an output collective takes [rows, cols] parts, got {shape:?}"
            )));
        };
        let mut narrow = Vec::with_capacity(parts.len());
        for ((p, exec), t) in parts.iter_mut().zip(&self.execs).zip(times.iter_mut()) {
            let mut b = exec.alloc::<bf16>(&[rows, cols])?;
            t.time(exec, Phase::Glue, || round_rows(exec, p, &mut b))?;
            narrow.push(b);
        }
        self.timed_collective(times, || {
            self.collective
                .all_reduce_sum_bf16(&self.execs, &mut narrow)
        })?;
        for (((p, mut b), exec), t) in parts
            .iter_mut()
            .zip(narrow)
            .zip(&self.execs)
            .zip(times.iter_mut())
        {
            t.time(exec, Phase::Glue, || widen_rows(exec, &mut b, p))?;
        }
        Ok(())
    }

    /// TPLA reduced after `W_UV`: every rank's values `[batch, uv_heads, v_head]` are partial
    /// sums over the latent groups; the ranks holding the same heads (one per group) sum them,
    /// and each keeps its `out_heads`. Written as an all-reduce of slots (the ranks of a group
    /// hold different heads, so each places its values in the slot of its head slice,
    /// [`place_rows`], when a group has more than one rank) followed by [`take_heads`]: a
    /// reduce-scatter in a deployment. Placing and summing belong to the collective (untimed,
    /// modelled); taking the heads is timed as glue.
    pub(super) fn reduce_scatter_values(
        &self,
        values: Vec<X::Tensor<f32>>,
        clocks: &[Clock],
        times: &mut [StepTimer],
    ) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        let (b, tp) = (self.batch * self.sq, self.world);
        let groups = match self.form {
            Form::Tpla { groups, .. } => groups,
            _ => 1,
        };
        // Ranks per latent group, each holding its own head slice: the slots.
        let slots = tp / groups;
        let (hv, dv) = match X::tensor_arg(&values[0]).tensor_shape() {
            Some(&[vb, hv, dv]) if vb == b => (hv, dv),
            s => {
                return Err(RuntimeError::InvalidInput(format!(
                    "values must be [batch, heads, v_head], got {s:?}"
                )))
            }
        };
        let poison = self.ranks[0].poison;
        let mut parts = Vec::with_capacity(self.ranks.len());
        for ((rank, exec), mut v) in self.ranks.iter().zip(&self.execs).zip(values) {
            X::reshape(&mut v, &[b * hv, dv])?;
            if slots == 1 {
                parts.push(v);
                continue;
            }
            let place = place_rows.default_config(&[("COLS", dv as i64)])?;
            let mut p = out_buf(exec, &[slots, b * hv, dv], poison)?;
            let slot = (rank.role.rank % slots) as i32;
            place_rows::launch(exec, &place, &v, &mut p, slot)?;
            X::reshape(&mut p, &[slots * b * hv, dv])?;
            parts.push(p);
        }
        self.reduce_output(&mut parts, times)?;
        self.each_rank(clocks, times, parts, |rank, exec, t, mut p| {
            X::reshape(&mut p, &[slots * b, hv, dv])?;
            rank.take_out_heads(exec, &p, rank.role.rank % slots, t)
        })
    }

    /// DCP: every rank's partial state `(out, lse)` (all heads, its tokens) goes to every rank
    /// (each places its own in its slot of zeroed `[tp, ..]` buffers, and the collective sums
    /// them: an all-gather written as an all-reduce; an all-to-all of head slices in a
    /// deployment), then rank `r` merges its output heads exactly on its executor
    /// ([`merge_heads`]). Placing and exchanging belong to the collective (untimed, modelled);
    /// the merge is timed as glue.
    pub(super) fn dcp_merge(
        &self,
        outs: Vec<(X::Tensor<f32>, X::Tensor<f32>)>,
        clocks: &[Clock],
        times: &mut [StepTimer],
    ) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        let tp = self.world;
        let (b, h, lat) = match X::tensor_arg(&outs[0].0).tensor_shape() {
            Some(&[b, h, lat]) => (b, h, lat),
            s => {
                return Err(RuntimeError::InvalidInput(format!(
                    "DCP: a partial output must be [batch, heads, lat], got {s:?}"
                )))
            }
        };
        let place = place_state.default_config(&[("LAT", lat as i64)])?;
        let merge = merge_heads.default_config(&[("LAT", lat as i64)])?;
        let poison = self.ranks[0].poison;
        let (mut parts, mut lses) = (Vec::with_capacity(tp), Vec::with_capacity(tp));
        for ((rank, (o, l)), exec) in self.ranks.iter().zip(&outs).zip(&self.execs) {
            let mut p = out_buf(exec, &[tp, b, h, lat], poison)?;
            let mut s = out_buf(exec, &[tp, b, h], poison)?;
            let slot = rank.role.rank as i32;
            place_state::launch(exec, &place, o, l, &mut p, &mut s, slot)?;
            X::reshape(&mut p, &[tp * b * h, lat])?;
            X::reshape(&mut s, &[tp * b, h])?;
            parts.push(p);
            lses.push(s);
        }
        self.all_reduce(&mut parts, times)?;
        self.all_reduce(&mut lses, times)?;
        self.each_rank(
            clocks,
            times,
            parts.into_iter().zip(lses),
            |rank, exec, t, (mut p, mut s)| {
                X::reshape(&mut p, &[tp, b, h, lat])?;
                X::reshape(&mut s, &[tp, b, h])?;
                let hs = rank.role.out_heads.clone();
                let mut out = out_buf(exec, &[b, hs.len(), lat], poison)?;
                let first = i32::try_from(hs.start)
                    .map_err(|_| RuntimeError::InvalidInput(format!("head {}", hs.start)))?;
                t.time(exec, Phase::Glue, || {
                    merge_heads::launch(exec, &merge, &p, &s, &mut out, first)
                })?;
                Ok(out)
            },
        )
    }
}
