//! Disaggregated prefill and decode (TPLA.md §4).
//!
//! Prefill runs exact MLA on the reparameterised layer and writes the common record
//! `[ĉU (l) | k_pe (64)]`; decode group i keeps columns `[i·l/g, (i+1)·l/g)` plus k_pe. Tokens
//! produced in decode are normalised with the corrected local RMS ([`NormMode::LocalCorrected`]) or
//! the exact RMS from one scalar all-reduce of Σc² per token ([`NormMode::Exact`]).

use super::layer_ref::{mla_decode, mla_entry, tpla_decode, tpla_entry, NormMode, SoftmaxMode};
use super::reparam::Corrections;
use super::weights::MlaLayer;

/// Exact prefill record `[ĉU | k_pe]` of one projected token on a reparameterised layer.
pub fn prefill_record(layer: &MlaLayer, p: &super::weights::TokenProj) -> Vec<f64> {
    mla_entry(layer, p)
}

/// Group i's columns of a record: `[record[i·w..(i+1)·w] | record[l..]]`.
pub fn decode_slice(record: &[f64], l: usize, g: usize, i: usize) -> Vec<f64> {
    let w = l / g;
    let mut e = record[i * w..(i + 1) * w].to_vec();
    e.extend_from_slice(&record[l..]);
    e
}

/// A prefill-then-decode session over g decode groups (full heads per group; the head split across
/// a group's devices is exact and shown by [`super::shard`]).
pub struct PdSession<'a> {
    layer: &'a MlaLayer,
    corr: &'a Corrections,
    norm: NormMode,
    softmax: SoftmaxMode,
    prefill_cache: Vec<Vec<f64>>,
    caches: Vec<Vec<Vec<f64>>>,
}

impl<'a> PdSession<'a> {
    /// New session on a reparameterised layer.
    pub fn new(
        layer: &'a MlaLayer,
        corr: &'a Corrections,
        norm: NormMode,
        softmax: SoftmaxMode,
    ) -> Self {
        PdSession {
            layer,
            corr,
            norm,
            softmax,
            prefill_cache: Vec::new(),
            caches: vec![Vec::new(); corr.groups],
        }
    }

    /// Prefill the prompt (hidden states, positions 0..): exact MLA outputs y per token; the
    /// records are handed to the decode groups as column slices.
    pub fn prefill(&mut self, xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let l = self.layer.cfg.kv_lora_rank;
        let mut ys = Vec::with_capacity(xs.len());
        for x in xs {
            let pos = self.prefill_cache.len();
            let p = self.layer.project(x, pos);
            let rec = prefill_record(self.layer, &p);
            for (i, c) in self.caches.iter_mut().enumerate() {
                c.push(decode_slice(&rec, l, self.corr.groups, i));
            }
            self.prefill_cache.push(rec);
            ys.push(mla_decode(self.layer, &p, &self.prefill_cache));
        }
        ys
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.caches[0].len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One decode step: append the token's group entries (normalised per [`NormMode`]) and
    /// return the summed TPLA output y.
    pub fn decode(&mut self, x: &[f64]) -> Vec<f64> {
        let pos = self.len();
        let p = self.layer.project(x, pos);
        for (i, c) in self.caches.iter_mut().enumerate() {
            c.push(tpla_entry(self.layer, self.corr, i, self.norm, &p));
        }
        tpla_decode(self.layer, self.corr, self.softmax, &p, &self.caches)
    }

    /// Decode group i's cache.
    pub fn cache(&self, i: usize) -> &[Vec<f64>] {
        &self.caches[i]
    }
}
