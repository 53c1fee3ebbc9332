//! The f64 oracle: absorbed MLA decode attention and one TPLA shard, in plain Rust
//! (../shared/TPLA.md §1-2). Every backend is checked against these functions.
//!
//! Kernel view: MQA with one kv head. A query row per head is `[q_lat (lat) | q_pe (rope)]`; a
//! cache row per token is `[ĉ (lat) | k_pe (rope)]`; the value is the first `lat` columns of the
//! cache row.

/// Output of one sequence's attention.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionOut {
    /// `[heads, lat]`: `Σ_t softmax(s)_t ĉ_t` per head.
    pub out: Vec<f64>,
    /// `[heads]`: natural-log log-sum-exp of the scaled scores (`-inf` for an empty sequence).
    pub lse: Vec<f64>,
}

/// Absorbed MLA decode for one sequence and one query token.
///
/// `q` is `[heads, lat + rope]`, `rows` is `[len, lat + rope]`; `scale` multiplies the full
/// dot product (take the model's scale, e.g. ≈0.1352 for DeepSeek-V3). An empty sequence gives a
/// zero output and `lse = -inf`.
pub fn latent_attention(
    q: &[f64],
    rows: &[f64],
    heads: usize,
    lat: usize,
    rope: usize,
    scale: f64,
) -> AttentionOut {
    let d = lat + rope;
    assert_eq!(q.len(), heads * d, "q must be [heads, lat + rope]");
    assert_eq!(rows.len() % d, 0, "rows must be [len, lat + rope]");
    let len = rows.len() / d;
    let mut out = vec![0.0; heads * lat];
    let mut lse = vec![f64::NEG_INFINITY; heads];
    for h in 0..heads {
        let qh = &q[h * d..(h + 1) * d];
        let scores: Vec<f64> = (0..len)
            .map(|t| scale * dot(qh, &rows[t * d..(t + 1) * d]))
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if len == 0 {
            continue;
        }
        let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let total: f64 = weights.iter().sum();
        for (t, w) in weights.iter().enumerate() {
            let p = w / total;
            for c in 0..lat {
                out[h * lat + c] += p * rows[t * d + c];
            }
        }
        lse[h] = m + total.ln();
    }
    AttentionOut { out, lse }
}

/// One TPLA shard (§2): latent columns `[i·lat/g, (i+1)·lat/g)` of the query and the cache plus
/// the full RoPE part, attended with the shard's own softmax. Returns `[heads, lat/g]`.
///
/// Inputs are full-width (`lat + rope` per row) so the same data can be fed to MLA; `g` must
/// divide `lat` and `i < g`.
#[allow(clippy::too_many_arguments)]
pub fn tpla_shard_attention(
    q: &[f64],
    rows: &[f64],
    heads: usize,
    lat: usize,
    rope: usize,
    scale: f64,
    g: usize,
    i: usize,
) -> AttentionOut {
    // One query token: the causal form sees every row, exactly as `latent_attention`.
    tpla_shard_attention_causal(q, rows, 1, heads, lat, rope, scale, g, i)
}

/// TPLA decode of one sequence with `g` shards: the concatenation of the shard outputs along the
/// latent axis (`[heads, lat]`). Multiplying by `W_UV` and `W_O` and all-reducing is linear, so
/// comparing this with [`latent_attention`]'s output measures exactly what TPLA changes in
/// attention. With `g = 1` it equals MLA.
pub fn tpla_attention(
    q: &[f64],
    rows: &[f64],
    heads: usize,
    lat: usize,
    rope: usize,
    scale: f64,
    g: usize,
) -> Vec<f64> {
    let w = lat / g;
    let mut out = vec![0.0; heads * lat];
    for i in 0..g {
        let shard = tpla_shard_attention(q, rows, heads, lat, rope, scale, g, i);
        for h in 0..heads {
            out[h * lat + i * w..h * lat + (i + 1) * w]
                .copy_from_slice(&shard.out[h * w..(h + 1) * w]);
        }
    }
    out
}

/// Multi-token (MTP / speculative-verify) decode of one sequence: `s_q` query tokens, the last
/// `s_q` tokens of the sequence, attended causally.
///
/// `q` is `[s_q, heads, lat + rope]` and `rows` the whole cache `[len, lat + rope]`, new tokens
/// included. Query token `j` sees cache tokens `0 ..= len - s_q + j`; where that range is empty
/// (`len < s_q - j`) its rows get a zero output and `lse = -inf`. Returns out `[s_q, heads, lat]`
/// and lse `[s_q, heads]`. `s_q = 1` is [`latent_attention`].
pub fn latent_attention_causal(
    q: &[f64],
    rows: &[f64],
    s_q: usize,
    heads: usize,
    lat: usize,
    rope: usize,
    scale: f64,
) -> AttentionOut {
    let d = lat + rope;
    assert_eq!(
        q.len(),
        s_q * heads * d,
        "q must be [s_q, heads, lat + rope]"
    );
    assert_eq!(rows.len() % d, 0, "rows must be [len, lat + rope]");
    let len = rows.len() / d;
    let mut out = AttentionOut {
        out: Vec::with_capacity(s_q * heads * lat),
        lse: Vec::with_capacity(s_q * heads),
    };
    for j in 0..s_q {
        // Tokens 0 ..= len - s_q + j: a prefix of `len + 1 + j - s_q` rows (none if negative).
        let seen = (len + 1 + j).saturating_sub(s_q).min(len);
        let qj = &q[j * heads * d..(j + 1) * heads * d];
        let r = latent_attention(qj, &rows[..seen * d], heads, lat, rope, scale);
        out.out.extend(r.out);
        out.lse.extend(r.lse);
    }
    out
}

/// [`latent_attention_causal`] for one TPLA shard `i` of `g` (as [`tpla_shard_attention`]):
/// out `[s_q, heads, lat/g]`, lse `[s_q, heads]`.
#[allow(clippy::too_many_arguments)]
pub fn tpla_shard_attention_causal(
    q: &[f64],
    rows: &[f64],
    s_q: usize,
    heads: usize,
    lat: usize,
    rope: usize,
    scale: f64,
    g: usize,
    i: usize,
) -> AttentionOut {
    assert!(
        g > 0 && lat.is_multiple_of(g) && i < g,
        "g must divide lat and i < g"
    );
    let d = lat + rope;
    let w = lat / g;
    let pick = |row: &[f64]| -> Vec<f64> {
        let mut v = row[i * w..(i + 1) * w].to_vec();
        v.extend_from_slice(&row[lat..d]);
        v
    };
    let qs: Vec<f64> = q.chunks(d).flat_map(pick).collect();
    let rs: Vec<f64> = rows.chunks(d).flat_map(pick).collect();
    latent_attention_causal(&qs, &rs, s_q, heads, w, rope, scale)
}

/// Relative error `‖a − b‖₂ / ‖b‖₂` (NaN anywhere gives +inf).
pub fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (x, y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn tpla_with_one_group_equals_mla() {
        let (h, lat, rope, len) = (3, 16, 4, 9);
        let q = lcg(h * (lat + rope), 1);
        let rows = lcg(len * (lat + rope), 2);
        let mla = latent_attention(&q, &rows, h, lat, rope, 0.3);
        let tpla = tpla_attention(&q, &rows, h, lat, rope, 0.3, 1);
        assert_eq!(mla.out, tpla);
    }

    #[test]
    fn tpla_with_two_groups_differs_but_stays_close() {
        let (h, lat, rope, len) = (2, 16, 4, 12);
        let q = lcg(h * (lat + rope), 3);
        let rows = lcg(len * (lat + rope), 4);
        let mla = latent_attention(&q, &rows, h, lat, rope, 0.3);
        let tpla = tpla_attention(&q, &rows, h, lat, rope, 0.3, 2);
        let e = rel_error(&tpla, &mla.out);
        assert!(e > 1e-6 && e < 1.0, "e = {e}");
    }

    #[test]
    fn causal_token_j_sees_the_prefix_up_to_its_own_position() {
        let (sq, h, lat, rope, len) = (3, 2, 8, 4, 7);
        let d = lat + rope;
        let q = lcg(sq * h * d, 7);
        let rows = lcg(len * d, 8);
        let c = latent_attention_causal(&q, &rows, sq, h, lat, rope, 0.4);
        for j in 0..sq {
            let seen = len - sq + j + 1;
            let r = latent_attention(
                &q[j * h * d..(j + 1) * h * d],
                &rows[..seen * d],
                h,
                lat,
                rope,
                0.4,
            );
            assert_eq!(&c.out[j * h * lat..(j + 1) * h * lat], &r.out[..]);
            assert_eq!(&c.lse[j * h..(j + 1) * h], &r.lse[..]);
        }
        // The last token sees everything: s_q = 1 on its own query is the same result.
        let last = latent_attention(&q[(sq - 1) * h * d..], &rows, h, lat, rope, 0.4);
        assert_eq!(&c.out[(sq - 1) * h * lat..], &last.out[..]);
        // The first token does not see the last two rows: changing them leaves it alone.
        let mut rows2 = rows.clone();
        rows2[(len - 1) * d..].iter_mut().for_each(|x| *x += 1.0);
        let c2 = latent_attention_causal(&q, &rows2, sq, h, lat, rope, 0.4);
        assert_eq!(c.out[..h * lat], c2.out[..h * lat]);
        assert_ne!(c.out[(sq - 1) * h * lat..], c2.out[(sq - 1) * h * lat..]);
    }

    #[test]
    fn causal_rows_with_nothing_visible_are_zero_with_lse_minus_inf() {
        let (sq, h, lat, rope, len) = (4, 2, 4, 2, 2);
        let d = lat + rope;
        let c = latent_attention_causal(
            &lcg(sq * h * d, 9),
            &lcg(len * d, 10),
            sq,
            h,
            lat,
            rope,
            1.0,
        );
        // len - sq + j < 0 for j < 2: tokens 0 and 1 see nothing.
        assert!(c.out[..2 * h * lat].iter().all(|&x| x == 0.0));
        assert!(c.lse[..2 * h].iter().all(|&x| x == f64::NEG_INFINITY));
        assert!(c.lse[2 * h..].iter().all(|x| x.is_finite()));
        let s = tpla_shard_attention_causal(
            &lcg(sq * h * d, 9),
            &lcg(len * d, 10),
            sq,
            h,
            lat,
            rope,
            1.0,
            2,
            1,
        );
        assert_eq!(s.out.len(), sq * h * lat / 2);
        assert!(s.lse[2 * h..].iter().all(|x| x.is_finite()));
    }

    #[test]
    fn softmax_weights_sum_to_one_on_constant_values() {
        // Every cache row has the same latent: the output must equal it whatever the scores.
        let (h, lat, rope, len) = (2, 4, 2, 5);
        let q = lcg(h * (lat + rope), 5);
        let mut rows = lcg(len * (lat + rope), 6);
        for t in 0..len {
            for c in 0..lat {
                rows[t * (lat + rope) + c] = c as f64 + 1.0;
            }
        }
        let r = latent_attention(&q, &rows, h, lat, rope, 1.0);
        for hh in 0..h {
            for c in 0..lat {
                assert!((r.out[hh * lat + c] - (c as f64 + 1.0)).abs() < 1e-12);
            }
        }
    }
}
