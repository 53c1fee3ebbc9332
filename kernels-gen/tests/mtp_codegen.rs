//! The multi-token decode's generated CUDA (no GPU needed): the causal mask under `SQ > 1` costs
//! arithmetic in registers, never shared memory or a barrier inside the block loop. Until
//! 2026-12-05 the layout analysis left the mask's integer tiles undetermined, so they went
//! through shared memory with two block-wide barriers per KV block (`bench/NOTES-cuda-decode.md`).

use tpla_codegen::cuda::Target;
use tpla_codegen::KernelDef;
use tpla_kernels::latent_decode;

/// The block loop of the decode kernel at `sq` tokens for `knobs`, on `target`.
fn loop_body(sq: i64, lat: i64, knobs: &[(&str, i64)], target: Target) -> String {
    let cfg = latent_decode
        .default_config(&[("LAT", lat), ("ROPE", 64), ("SQ", sq)])
        .unwrap();
    let cfg = knobs.iter().fold(cfg, |c, &(k, v)| c.with(k, v));
    let k = latent_decode.build(&cfg).unwrap();
    let code = tpla_codegen::cuda::emit(&k, target).unwrap().code;
    let at = code.find("for (int it_").expect("a block loop");
    code[at..].to_string()
}

/// Barriers and shared-memory tiles in the loop: the same at two tokens as at one.
#[test]
fn the_causal_mask_adds_no_barrier_or_shared_tile_to_the_loop() {
    let count = |body: &str| {
        (
            body.matches("__syncthreads()").count() + body.matches("tpla_bar_sync(").count(),
            body.matches("sm_t").count(),
        )
    };
    for (lat, knobs, target) in [
        (
            256i64,
            vec![("BLOCK_H", 128i64), ("BLOCK_N", 64)],
            Target::sm90(),
        ),
        (
            256,
            vec![("BLOCK_H", 128), ("PRODUCER", 1), ("TMA", 1)],
            Target::sm90(),
        ),
        (512, vec![("BLOCK_H", 64), ("PRODUCER", 1)], Target::sm90()),
        (512, vec![("BLOCK_H", 32)], Target::sm90()),
        (512, vec![("BLOCK_H", 16)], Target::new(8, 0)),
    ] {
        let one = loop_body(1, lat, &knobs, target);
        let two = loop_body(2, lat, &knobs, target);
        assert!(
            two.contains("tpla_idiv("),
            "{knobs:?}: the mask is in the loop"
        );
        assert_eq!(
            count(&two),
            count(&one),
            "lat {lat} {knobs:?} on {target:?}"
        );
    }
}
