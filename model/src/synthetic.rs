//! Seeded synthetic layers and hidden states with the structure real MLA layers show.
//!
//! Nothing here is tuned toward a TPLA result: every scale is a plain fan-in init or a round
//! number fixed before any accuracy was measured, and every variant of the accuracy harness sees
//! the same layer and the same tokens.
//!
//! Layer ([`synthetic_layer`]):
//! - `W_DKV = G · diag(σ) · R / sqrt(D)`: G Gaussian `[D, 512]`, σ_j = (j+1)^-0.5 (a decaying latent
//!   spectrum), R a random orthogonal `512x512` (the spectrum is not axis-aligned), then
//!   4 random latent channels scaled by 8 (outlier channels).
//! - `kv_a_layernorm` γ and `q_a_layernorm` γ: log-normal, σ = 0.3 and 0.2.
//! - Every other projection: Gaussian with variance 1/fan_in (W_UK, W_UV, W_O, W_KR, query path).
//!
//! Hidden states ([`synthetic_hidden`]): `x_t = γ_in ⊙ RMSNorm(m + Σ_k a_tk b_k + 0.5 n_t)` with a
//! fixed mean direction m (real hidden states are uncentered), 16 topic directions b_k whose weights
//! a_tk follow an AR(1) process (ρ = 0.9, so nearby tokens are related), iid noise n_t, and an
//! input-norm γ_in that is log-normal (σ = 0.2) with 4 channels ×20 (massive activations).

use super::config::MlaConfig;
use super::error::Result;
use super::linalg::{dot, rms, Mat};
use super::weights::{MlaLayer, QPath};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeded Gaussian source (Box–Muller over ChaCha8).
pub struct Gauss {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

impl Gauss {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Gauss {
            rng: ChaCha8Rng::seed_from_u64(seed),
            spare: None,
        }
    }

    /// One N(0, 1) sample.
    pub fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1: f64 = 1.0 - self.rng.gen::<f64>();
        let u2: f64 = self.rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    /// Matrix of N(0, std²).
    pub fn mat(&mut self, rows: usize, cols: usize, std: f64) -> Mat {
        let mut m = Mat::zeros(rows, cols);
        m.data.iter_mut().for_each(|v| *v = self.sample() * std);
        m
    }

    /// Log-normal vector exp(N(0, s²)).
    pub fn lognormal(&mut self, n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|_| (self.sample() * s).exp()).collect()
    }

    /// Uniform index in [0, n).
    pub fn index(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// Random ±1.
    pub fn sign(&mut self) -> f64 {
        if self.rng.gen::<bool>() {
            1.0
        } else {
            -1.0
        }
    }
}

/// Random orthogonal n×n matrix (modified Gram–Schmidt on a Gaussian matrix, twice for accuracy).
pub fn random_orthogonal(n: usize, g: &mut Gauss) -> Mat {
    let mut m = g.mat(n, n, 1.0);
    for _pass in 0..2 {
        for i in 0..n {
            for j in 0..i {
                let (ri, rj) = (i * n, j * n);
                let p = dot(&m.data[ri..ri + n], &m.data[rj..rj + n]);
                for k in 0..n {
                    m.data[ri + k] -= p * m.data[rj + k];
                }
            }
            let nr = dot(&m.data[i * n..(i + 1) * n], &m.data[i * n..(i + 1) * n]).sqrt();
            m.data[i * n..(i + 1) * n].iter_mut().for_each(|v| *v /= nr);
        }
    }
    m
}

/// Seeded synthetic MLA layer with the structure described in the module docs.
pub fn synthetic_layer(cfg: &MlaConfig, seed: u64) -> Result<MlaLayer> {
    cfg.validate()?;
    let mut g = Gauss::new(seed);
    let (d, l, h) = (cfg.hidden, cfg.kv_lora_rank, cfg.heads);
    let qh = cfg.q_head();
    let q = match cfg.q_lora_rank {
        Some(ql) => QPath::Lora {
            w_dq: g.mat(d, ql, (d as f64).powf(-0.5)),
            q_norm: g.lognormal(ql, 0.2),
            w_uq: g.mat(ql, h * qh, (ql as f64).powf(-0.5)),
        },
        None => QPath::Direct {
            w_q: g.mat(d, h * qh, (d as f64).powf(-0.5)),
        },
    };
    let mut gm = g.mat(d, l, (d as f64).powf(-0.5));
    for r in 0..d {
        for j in 0..l {
            *gm.at_mut(r, j) *= ((j + 1) as f64).powf(-0.5);
        }
    }
    let rot = random_orthogonal(l, &mut g);
    let mut w_dkv = gm.matmul(&rot);
    for _ in 0..4 {
        let ch = g.index(l);
        for r in 0..d {
            *w_dkv.at_mut(r, ch) *= 8.0;
        }
    }
    let w_kr = g.mat(d, cfg.qk_rope, (d as f64).powf(-0.5));
    let kv_norm = g.lognormal(l, 0.3);
    let w_uk = (0..h)
        .map(|_| g.mat(l, cfg.qk_nope, (cfg.qk_nope as f64).powf(-0.5)))
        .collect();
    let w_uv = (0..h)
        .map(|_| g.mat(l, cfg.v_head, (l as f64).powf(-0.5)))
        .collect();
    let w_o = g.mat(h * cfg.v_head, d, ((h * cfg.v_head) as f64).powf(-0.5));
    Ok(MlaLayer {
        cfg: cfg.clone(),
        q,
        w_dkv,
        w_kr,
        kv_norm,
        w_uk,
        w_uv,
        w_o,
    })
}

/// Seeded synthetic hidden states `[n, D]` (inputs of the attention layer), as in the module docs.
/// The input-norm γ_in depends on `model_seed` (a property of the model); the token stream on
/// `stream_seed` (use different stream seeds for calibration and evaluation).
pub fn synthetic_hidden(d: usize, n: usize, model_seed: u64, stream_seed: u64) -> Mat {
    const TOPICS: usize = 16;
    let mut gm = Gauss::new(model_seed ^ 0x5eed_0001);
    let mut gamma = gm.lognormal(d, 0.2);
    for _ in 0..4 {
        let ch = gm.index(d);
        gamma[ch] *= 20.0;
    }
    let mean: Vec<f64> = (0..d).map(|_| gm.sample()).collect();
    let topics = gm.mat(TOPICS, d, 1.0);
    let mut gs = Gauss::new(stream_seed ^ 0x5eed_0002);
    let rho: f64 = 0.9;
    let mut a: Vec<f64> = (0..TOPICS).map(|_| gs.sample()).collect();
    let mut x = Mat::zeros(n, d);
    for t in 0..n {
        for ak in a.iter_mut() {
            *ak = rho * *ak + (1.0 - rho * rho).sqrt() * gs.sample();
        }
        let row = &mut x.data[t * d..(t + 1) * d];
        for (j, v) in row.iter_mut().enumerate() {
            *v = mean[j] + 0.5 * gs.sample();
        }
        for (k, &ak) in a.iter().enumerate() {
            super::linalg::axpy(row, ak, topics.row(k));
        }
        let r = rms(row, 1e-6);
        for (j, v) in row.iter_mut().enumerate() {
            *v = gamma[j] * *v / r;
        }
    }
    x
}
