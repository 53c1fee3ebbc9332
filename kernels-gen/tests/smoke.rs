use tpla_kernels::ops::{decode_attention, DecodeParams};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention, rel_error};
use tpla_runtime::{CpuExecutor, HostPagedCache, HostTensor};

#[test]
fn smoke() {
    let (b, h, lat, rope, len) = (2, 5, 64, 16, 77);
    let ex = CpuExecutor::new(2).unwrap();
    let mut s = 1u64;
    let mut rnd = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let qv: Vec<f32> = (0..b * h * (lat + rope)).map(|_| rnd()).collect();
    let q = HostTensor::<f32>::from_vec(&[b, h, lat + rope], qv.clone()).unwrap();
    let mut cache = HostPagedCache::<bf16>::new(b, 128, 16, lat + rope).unwrap();
    cache.set_seq_lens(&[len, len - 30]).unwrap();
    let mut rows = vec![vec![]; b];
    for bb in 0..b {
        for t in 0..len {
            let r: Vec<bf16> = (0..lat + rope).map(|_| bf16::from_f32(rnd())).collect();
            rows[bb].extend(r.iter().map(|x| x.to_f32() as f64));
            cache.write_token(bb, t, &r).unwrap();
        }
    }
    let p = DecodeParams::new(b, h, lat, rope, 3, 0.3);
    let mut out = HostTensor::<f32>::full(&[b, h, lat], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[b, h], f32::NAN);
    decode_attention(&ex, &p, &q, &cache, &mut out, &mut lse).unwrap();
    for bb in 0..b {
        let l = if bb == 0 { len } else { len - 30 };
        let qd: Vec<f64> = qv[bb * h * (lat + rope)..(bb + 1) * h * (lat + rope)]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let r = latent_attention(&qd, &rows[bb][..l * (lat + rope)], h, lat, rope, 0.3);
        let got: Vec<f64> = out.data()[bb * h * lat..(bb + 1) * h * lat]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let e = rel_error(&got, &r.out);
        eprintln!("b={bb} rel err {e}");
        assert!(e < 1e-5);
    }
}
