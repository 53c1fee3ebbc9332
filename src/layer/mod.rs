//! One DeepSeek MLA attention layer of decode (one token per sequence) under tensor parallelism,
//! in three forms over `tp` ranks ([`Form`]):
//!
//! - **MLA-TP**: heads split, the whole `[ĉ | k_pe]` cache on every rank, all-reduce after `W_O`;
//! - **TPLA**: `g` latent groups, every head inside a group (`g < tp` splits the heads inside
//!   each group, TPLA.md §2), sliced kv RMSNorm with its correction or the exact norm; the
//!   groups' partial outputs all-reduced after `W_O`, or first reduce-scattered by heads after
//!   `W_UV` so each rank applies `W_O` to `1/g` of its heads ([`ReduceAt`]);
//! - **DCP**: tokens interleaved over the ranks (token `t` on rank `t mod tp`), all heads on
//!   every rank, the partial `(out, lse)` states merged exactly (the combine kernel,
//!   [`tpla_kernels::ops::merge_states`]), then `W_UV`/`W_O` of each rank's head slice.
//!
//! Each rank runs the whole block: the fused down-projection (`W_DQ | W_DKV | W_KR`), q RMSNorm,
//! `W_UQ`, RoPE, absorption of `W_UK` into the latent, the kv RMSNorm, RoPE of `k_pe`, the paged
//! append, split-KV decode attention, `W_UV`, `W_O`, and the all-reduce of `[batch, D]`. Dense
//! projections run through cuBLAS on a CUDA executor and the DSL kernel
//! [`tpla_kernels::head_proj`] (a plain gemm with one "head") on the CPU ([`gemm`]); the
//! element-wise steps are DSL kernels on the same executor ([`tpla_kernels::glue`]; their host
//! references are in [`glue`]), so a step moves no activation through the host but its input
//! and output.
//!
//! [`TpLayer`] is generic over the executor and the collective: CPU ranks with
//! [`tpla_runtime::HostAllReduce`], ranks one after another on one GPU with [`DeviceSum`] (both
//! stand-ins, whose time the cost model gives), or one GPU per rank with NCCL, whose time is
//! measured as each rank's collective phase.
//! [`reference`](mod@reference) holds the f64 references; [`cost`] the roofline model and the largest batches.

pub mod auto;
pub mod budget;
pub mod check;
pub mod clock;
pub mod cost;
pub mod gemm;
pub mod glue;
pub mod maxbatch;
pub mod plan;
pub mod rank;
pub mod reference;
pub mod report;
pub mod sum;
pub mod tp_layer;
pub mod weights;

pub use clock::PhaseTiming;
pub use gemm::GemmPath;
pub use plan::{roles, Form, KvNorm, RankRole, ReduceAt};
pub use rank::RankTimes;
pub use sum::{DeviceSum, Payload};
pub use tp_layer::{DeviceStep, LayerShape, PendingTimes, TpLayer};
pub use weights::prepare;
