//! The tpla kernel library, written only in the `#[kernel]` DSL.
//!
//! - [`latent_decode`]: split-KV latent attention for MLA and TPLA shards;
//! - [`combine_splits`]: log-sum-exp merge of the splits ([`combine_counted`]: of a per-sequence
//!   count of them);
//! - [`split_schedule`]: the balanced split-KV schedule, computed on the device;
//! - [`append_rows`]: paged cache append;
//! - [`fp8`]: the FP8 latent cache (the decode and the append with the knob `KV_FP8`);
//! - [`head_proj`]: per-head projection of latent outputs (`W_UV`), summed over TPLA devices;
//! - [`add_rows`], [`copy_rows`]: element-wise sum and copy (a one-device stand-in for an
//!   all-reduce);
//! - [`cast_bf16`]: f32 to bf16 (the input of a bf16 library gemm, a bf16 collective payload),
//!   and back ([`widen_f32`]);
//! - [`glue`]: a decode layer's element-wise steps ([`rms_norm_rows`], [`down_norms`],
//!   [`cache_row`], [`query_nope`], [`assemble_query`]) and the context-parallel state exchange
//!   and merge ([`place_state`], [`merge_heads`]), TPLA's reduce-scatter of values by heads
//!   ([`place_rows`], [`take_heads`]).

// `#[kernel]` emits `::tpla::__private::..` paths; inside this crate (which `tpla` depends on)
// `::tpla` is this crate itself, and `__private` below re-exports what those paths need.
extern crate self as tpla;

/// What code emitted by `#[kernel]` names; not an API.
#[doc(hidden)]
pub mod __private {
    pub use tpla_codegen as codegen;
    pub use tpla_runtime as runtime;
}

mod add;
mod append;
mod cast;
mod combine;
mod decode;
pub mod fp8;
pub mod glue;
pub mod ops;
mod proj;
mod schedule;

pub use add::{add_rows, copy_rows};
pub use append::append_rows;
pub use cast::{cast_bf16, widen_f32};
pub use combine::{combine_counted, combine_splits};
pub use decode::latent_decode;
pub use glue::{
    assemble_query, cache_row, down_norms, down_row, merge_heads, place_rows, place_state,
    query_nope, rms_norm_rows, take_heads,
};
pub use proj::head_proj;
pub use schedule::split_schedule;

#[cfg(test)]
mod readme {
    /// The ```rust block of the README's "Writing a kernel" section.
    fn readme_snippet(readme: &str) -> Option<&str> {
        let section = &readme[readme.find("## Writing a kernel")?..];
        let start = section.find("```rust\n")? + "```rust\n".len();
        let len = section[start..].find("```")?;
        Some(&section[start..start + len])
    }

    /// `latent_decode` as written in decode.rs: from its `#[kernel(` attribute to the end.
    fn decode_kernel(src: &str) -> Option<&str> {
        Some(src[src.find("#[kernel(")?..].trim_end())
    }

    #[test]
    fn readme_kernel_snippet_is_decode_rs() {
        let readme = include_str!("../../README.md");
        let snippet = readme_snippet(readme)
            .expect("README.md has a ```rust block under `## Writing a kernel`");
        let kernel = decode_kernel(include_str!("decode.rs")).expect("decode.rs has a #[kernel]");
        if snippet.trim_end() != kernel {
            let line = snippet
                .lines()
                .zip(kernel.lines())
                .position(|(a, b)| a != b)
                .map_or_else(
                    || "a trailing line".to_string(),
                    |i| format!("line {}", i + 1),
                );
            panic!(
                "README.md's kernel snippet differs from kernels-gen/src/decode.rs at {line} of the \
                 kernel: copy `latent_decode` (from `#[kernel(` to its closing brace) into the \
                 README's ```rust block under `## Writing a kernel`"
            );
        }
    }
}
