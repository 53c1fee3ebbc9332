//! A paged loop over a per-sequence split table (`KV_CHUNKS = 1`, the balanced schedule): the
//! split bounds of a program and the early exit of a program past its sequence's last piece
//! (code text used by `paged.rs`).

use crate::ir::ParamId;

/// The split bounds `lo`, `hi` of a `chunked` cache (see [`Stmt::PagedBlocks`]): split `sp` of
/// sequence `bvar` in pieces of `chunk[bvar]` tokens (`len_` is in scope). A program whose split
/// is past the sequence's last returns here: the split and sequence are per program, so every
/// thread of the block returns together, after its committed asynchronous copies have landed.
pub(crate) fn chunked_bounds(
    cache: ParamId,
    bvar: &str,
    nb: &str,
    sp: &str,
    lo: &str,
    hi: &str,
) -> String {
    format!(
        "{}    if ((unsigned)({sp}) >= (unsigned)ns_) {{ tpla_cp_async_commit(); tpla_cp_async_wait<0>(); return; }}
    {lo} = {sp} * c_;
    {hi} = {lo} + tpla_imin(c_, len_ - {lo});
",
        chunked_pieces(cache, bvar, nb)
    )
}

/// The piece length `c_` and piece count `ns_` of sequence `bvar` of a `chunked` cache (`len_`
/// in scope): [`chunked_bounds`] and the early exit ([`chunked_early_exit`]) share them.
fn chunked_pieces(cache: ParamId, bvar: &str, nb: &str) -> String {
    format!(
        "    const int ce_ = (unsigned){bvar} < (unsigned){nb} ? p{cache}_chunk[{bvar}] : 1;
    const int c_ = ce_ >= 1 ? ce_ : tpla_imax(len_, 1);
    const int ns_ = len_ > 0 ? (len_ - 1) / c_ + 1 : 1;
"
    )
}

/// The kernel's first statement where a program past its sequence's last piece can leave before
/// anything else (`lets`: the top-level scalars the indices need; `b`, `sp`: the loop's sequence
/// and split): such a program of the balanced schedule writes nothing, so it need not initialise
/// mbarriers, load its query tile or rebalance registers first (most of a balanced grid's
/// programs are such; `Paging::early_exit`).
pub(crate) fn chunked_early_exit(
    cache: ParamId,
    lets: &str,
    (b, sp): (&str, &str),
    (lens, nb): (&str, &str),
) -> String {
    format!(
        "{{
{lets}const int eb_ = {b};
const int len_ = tpla_ld_i32({lens}, eb_, {nb});
{}if ((unsigned)({sp}) >= (unsigned)ns_) return;
}}
",
        chunked_pieces(cache, "eb_", nb)
            .lines()
            .map(|l| format!("{}\n", l.trim_start()))
            .collect::<String>()
    )
}
