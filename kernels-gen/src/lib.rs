//! The tpla kernel library, written only in the `#[kernel]` DSL.
//!
//! - [`latent_decode`]: split-KV latent attention for MLA and TPLA shards;
//! - [`combine_splits`]: log-sum-exp merge of the splits;
//! - [`append_rows`]: paged cache append;
//! - [`head_proj`]: per-head projection of latent outputs (`W_UV`), summed over TPLA devices.

mod append;
mod combine;
mod decode;
pub mod ops;
mod proj;

pub use append::append_rows;
pub use combine::combine_splits;
pub use decode::latent_decode;
pub use proj::head_proj;
