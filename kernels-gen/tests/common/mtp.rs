//! Multi-token decode problems (s_q query tokens per sequence, causal): the kernel's view of a
//! [`Problem`] whose `heads` are `sq · heads` rows, and checks against the f64 reference.

use super::{f64s, Problem};
use tpla_kernels::ops::{decode_attention, DecodeParams};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention_causal, rel_error, AttentionOut};
use tpla_runtime::{Executor, HostTensor};

/// A problem seen as `sq` tokens × `heads` heads per sequence (`p.heads == sq · heads`).
pub struct Mtp<'a> {
    pub p: &'a Problem,
    pub sq: usize,
    pub heads: usize,
}

impl Mtp<'_> {
    /// Decode params for `splits` and `BLOCK_N` (BLOCK_H from the rows).
    pub fn params(&self, splits: usize, block_n: i64) -> DecodeParams {
        let p = self.p;
        assert_eq!(p.heads, self.sq * self.heads);
        let mut params = DecodeParams::new(p.batch, self.heads, p.lat, p.rope, splits, p.scale)
            .with_query_len(self.sq);
        params.decode = params.decode.with("BLOCK_N", block_n);
        params
    }

    /// Runs decode on `exec` with NaN-poisoned outputs; returns out and lse on the host.
    pub fn run<X: Executor>(
        &self,
        exec: &X,
        params: &DecodeParams,
        download: impl Fn(&X, &X::Tensor<f32>) -> HostTensor<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        let p = self.p;
        let q = exec.upload(&p.q_tensor()).unwrap();
        let cache = exec.upload_paged(&p.cache).unwrap();
        let nan = |s: &[usize]| exec.upload(&HostTensor::<f32>::full(s, f32::NAN)).unwrap();
        let mut out = nan(&[p.batch, p.heads, p.lat]);
        let mut lse = nan(&[p.batch, p.heads]);
        decode_attention(exec, params, &q, &cache, &mut out, &mut lse).unwrap();
        (
            download(exec, &out).data().to_vec(),
            download(exec, &lse).data().to_vec(),
        )
    }

    /// The bf16-rounded rows of sequence `b` and its queries, as f64.
    pub fn inputs(&self, b: usize) -> (Vec<f64>, Vec<f64>) {
        let p = self.p;
        let n = p.heads * (p.lat + p.rope);
        let q = f64s(&p.q[b * n..(b + 1) * n]);
        let rows = p.rows[b]
            .iter()
            .map(|&x| bf16::from_f32(x).to_f32() as f64)
            .collect();
        (q, rows)
    }

    /// The causal f64 reference of sequence `b` (on the kernel's bf16 inputs).
    pub fn want(&self, b: usize) -> AttentionOut {
        let p = self.p;
        let (q, rows) = self.inputs(b);
        latent_attention_causal(
            &q,
            &rows,
            self.sq,
            self.heads,
            p.lat,
            p.rope,
            p.scale as f64,
        )
    }

    /// Checks sequence `b` of `(out, lse)` against `want` (`[sq, heads, lat]`, `[sq, heads]`):
    /// rows that see tokens to `tol` (output, relative; lse, relative to max(|lse|, 1)), rows that see none exactly
    /// zero with lse below -1e29.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        b: usize,
        out: &[f32],
        lse: &[f32],
        want: &AttentionOut,
        tol: f64,
        what: &str,
    ) {
        let (rows, lat) = (self.p.heads, self.p.lat);
        let out = &out[b * rows * lat..(b + 1) * rows * lat];
        let lse = &lse[b * rows..(b + 1) * rows];
        for r in 0..rows {
            let got = f64s(&out[r * lat..(r + 1) * lat]);
            if want.lse[r] == f64::NEG_INFINITY {
                assert!(
                    got.iter().all(|&x| x == 0.0),
                    "{what}: row {r} sees nothing, output {:?}..",
                    &got[..4]
                );
                assert!(
                    lse[r] < -1e29,
                    "{what}: row {r} sees nothing, lse {}",
                    lse[r]
                );
            } else {
                let e = rel_error(&got, &want.out[r * lat..(r + 1) * lat]);
                assert!(
                    e <= tol,
                    "{what}: row {r} (token {}) rel error {e}",
                    r / self.heads
                );
                let el = (lse[r] as f64 - want.lse[r]).abs() / want.lse[r].abs().max(1.0);
                assert!(
                    el <= tol,
                    "{what}: row {r} lse {} vs {}",
                    lse[r],
                    want.lse[r]
                );
            }
        }
    }
}
