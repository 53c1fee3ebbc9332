//! The tile-IR rewrite before the CUDA passes: in every `for` loop body, each tile load moves up
//! to the start of its iteration, ahead of the statements it does not depend on.
//!
//! A loop body written as the math reads a value, computes with it, reads the next: the
//! combine's `w = exp2(load(lse) − m)` then `acc + load(part) · w`. Printed in that order NVCC
//! keeps the second load behind the first one's use (each is guarded by its bounds test, and a
//! guarded load is not moved above the instructions before it), so every iteration waits for
//! two round trips to memory one after the other (the split combine, sm_90a SASS, 2026-12-08:
//! `LDG` of the log-sum-exp, `FADD`/`MUFU.EX2` on it, only then the partials' `LDG`s). With the
//! loads first, both go out together and the iteration waits once.
//!
//! A load `dst = load(param[index])` moves above a statement of the same body unless that
//! statement (or a statement nested in it) reads or assigns `dst`, defines a scalar the index
//! reads (a `let` or a loop variable), or stores to `param` or to a tensor the index reads
//! (`Index::Load`). Loads keep their order among themselves. Only `for` bodies are rewritten:
//! the kernel's top level and paged loop bodies stay as written (the decode kernel's source does
//! not change). The other passes run on the rewritten kernel, so the shared-memory plan and
//! the barriers see the new order.
//!
//! Two more rules for `for` loops, so that one iteration's loads need not wait for the last's:
//! - a *short reduction* ([`small_reduction`]: assignments of small tiles only, such as the
//!   combine's running maximum) is printed under `#pragma unroll 4` (`lower/mod.rs`), and NVCC
//!   then issues four iterations' loads together;
//! - in any other loop without a gemm, store or nested loop, the loads at the top of the body
//!   (after the rule above) are *prefetched* one iteration ahead ([`prefetch`]): a `next` tile
//!   per load is loaded before the loop for the first iteration and, in iteration `s`, for
//!   iteration `s + 1` (with every index pushed out of bounds past the loop's end, so the masked
//!   load reads nothing), right after the body has taken its own value from it. The body's
//!   arithmetic then waits only for loads issued one iteration earlier.

use crate::ir::{Index, IndexOp, Kernel, ParamId, ScalarId, Slice, Stmt, TileId, TileInfo, TileOp};
use crate::visit::{stmt_reads, stmt_writes, walk_stmts};

/// `k` with the loads of every `for` body first (see the module docs); `None` where no load
/// moves.
pub(crate) fn loads_first(k: &Kernel) -> Option<Kernel> {
    let mut out = k.clone();
    let moved = reorder_nested(&mut out.body);
    let prefetched = prefetch(&mut out);
    (moved || prefetched).then_some(out)
}

/// Rewrites the `for` bodies inside `body` (at any depth); whether any statement moved.
fn reorder_nested(body: &mut [Stmt]) -> bool {
    let mut moved = false;
    for s in body.iter_mut() {
        match s {
            Stmt::For { body: inner, .. } => {
                moved |= reorder_nested(inner);
                moved |= loads_up(inner);
            }
            Stmt::PagedBlocks { body: inner, .. } => moved |= reorder_nested(inner),
            _ => {}
        }
    }
    moved
}

/// A tile load's facts: what it assigns, reads from and which scalars its index uses.
struct LoadFacts {
    dst: TileId,
    params: Vec<ParamId>,
    scalars: Vec<ScalarId>,
}

fn load_facts(s: &Stmt) -> Option<LoadFacts> {
    let Stmt::Assign {
        dst,
        op: TileOp::Load { param, index },
    } = s
    else {
        return None;
    };
    let mut facts = LoadFacts {
        dst: *dst,
        params: vec![*param],
        scalars: vec![],
    };
    for sl in index {
        match sl {
            Slice::At(i) | Slice::Span { start: i, .. } => index_uses(i, &mut facts),
        }
    }
    Some(facts)
}

/// The scalars and `i32` tensors index `i` reads.
fn index_uses(i: &Index, f: &mut LoadFacts) {
    match i {
        Index::Var(v) => f.scalars.push(*v),
        Index::Bin(_, a, b) => {
            index_uses(a, f);
            index_uses(b, f);
        }
        Index::SeqLen { batch, .. } => index_uses(batch, f),
        Index::Load { param, index } => {
            f.params.push(*param);
            for j in index {
                index_uses(j, f);
            }
        }
        Index::Const(_)
        | Index::ProgramId(_)
        | Index::Dim(_)
        | Index::PageSize(_)
        | Index::Scalar(_) => {}
    }
}

/// Whether load `l` may not move above `s` (or anything nested in it).
fn blocks(s: &Stmt, l: &LoadFacts) -> bool {
    let mut hit = false;
    walk_stmts(std::slice::from_ref(s), &mut |t| {
        hit |= stmt_reads(t).contains(&l.dst) || stmt_writes(t).contains(&l.dst);
        hit |= match t {
            Stmt::Let { dst, .. } | Stmt::For { var: dst, .. } => l.scalars.contains(dst),
            Stmt::PagedBlocks { start, .. } => l.scalars.contains(start),
            Stmt::Store { param, .. } => l.params.contains(param),
            Stmt::PagedStore { cache, .. } => l.params.contains(cache),
            Stmt::Assign { .. } => false,
        };
    });
    hit
}

/// Moves each load of `body` (its top level) above the statements before it that do not
/// [`blocks`] it, behind the loads already moved; whether any moved.
fn loads_up(body: &mut Vec<Stmt>) -> bool {
    let mut out: Vec<Stmt> = Vec::with_capacity(body.len());
    // `out[..floor]`: the loads placed so far and what they had to stay behind.
    let mut floor = 0;
    let mut moved = false;
    for s in body.drain(..) {
        let Some(l) = load_facts(&s) else {
            out.push(s);
            continue;
        };
        let mut at = out.len();
        while at > floor && !blocks(&out[at - 1], &l) {
            at -= 1;
        }
        moved |= at < out.len();
        out.insert(at, s);
        floor = at + 1;
    }
    *body = out;
    moved
}

/// Largest tile (elements) of a loop body [`small_reduction`] unrolls.
const UNROLL_TILE_ELEMS: usize = 256;

/// Whether a `for` body is a short reduction worth `#pragma unroll 4`: only assignments (no
/// store, nested loop or gemm) of tiles of at most [`UNROLL_TILE_ELEMS`] elements, such as the
/// split combine's running maximum of the log-sum-exps. NVCC then issues four iterations' loads
/// before the first `max` (sm_90a SASS, 2026-12-08: 8 loads in flight where the loop as written
/// waited for each pair in turn; 47 registers either way); bodies with large tiles are left to
/// [`prefetch`] (unrolled, the combine's second loop went from 47 to 72 registers, fewer
/// resident programs, and its iterations' loads still waited for each other).
pub(crate) fn small_reduction(k: &Kernel, body: &[Stmt]) -> bool {
    small_reduction_tiles(&k.tiles, body)
}

/// Most elements a prefetched loop keeps in flight (its loads' tiles together): the `next`
/// tiles double them.
const PREFETCH_ELEMS: usize = 4096;

/// Added to an index to push a load past every tensor's extent (extents stay below 2^30).
const OUT_OF_BOUNDS: i64 = 1 << 30;

/// Prefetches the leading loads of every eligible `for` loop of `k` one iteration ahead (see
/// the module docs); whether any loop changed.
fn prefetch(k: &mut Kernel) -> bool {
    let mut tiles = std::mem::take(&mut k.tiles);
    let changed = prefetch_in(&mut k.body, &mut tiles);
    k.tiles = tiles;
    changed
}

fn prefetch_in(body: &mut Vec<Stmt>, tiles: &mut Vec<TileInfo>) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i < body.len() {
        if let Some(inner) = match &mut body[i] {
            Stmt::For { body, .. } | Stmt::PagedBlocks { body, .. } => Some(body),
            _ => None,
        } {
            changed |= prefetch_in(inner, tiles);
        }
        let prologue = match &mut body[i] {
            Stmt::For {
                var,
                start,
                end,
                body: inner,
            } => prefetch_loop(*var, start, end, inner, tiles),
            _ => vec![],
        };
        let n = prologue.len();
        if n > 0 {
            changed = true;
            body.splice(i..i, prologue);
        }
        i += n + 1;
    }
    changed
}

/// Rewrites one loop `for var in start..end { body }` (see [`prefetch`]); returns the
/// statements to put before it (empty: the loop is left as it is).
fn prefetch_loop(
    var: ScalarId,
    start: &Index,
    end: &Index,
    body: &mut Vec<Stmt>,
    tiles: &mut Vec<TileInfo>,
) -> Vec<Stmt> {
    let mut plain = true;
    let mut assigned_scalars = vec![];
    let mut stored = vec![];
    let mut assigns = vec![0usize; tiles.len()];
    walk_stmts(body, &mut |s| match s {
        Stmt::Assign { dst, op } => {
            assigns[*dst] += 1;
            plain &= !matches!(op, TileOp::Gemm { .. });
        }
        Stmt::Let { dst, .. } => assigned_scalars.push(*dst),
        Stmt::Store { param, .. } => {
            stored.push(*param);
            plain = false;
        }
        Stmt::For { .. } | Stmt::PagedBlocks { .. } | Stmt::PagedStore { .. } => plain = false,
    });
    // The body computes the next iteration's guard from `end` again: it must read no memory
    // and no scalar the body assigns (nor may the body assign the loop variable).
    let bound = index_facts(end);
    let end_fixed = bound.params.is_empty()
        && bound.scalars.iter().all(|v| !assigned_scalars.contains(v))
        && !assigned_scalars.contains(&var);
    if !plain || !end_fixed || small_reduction_tiles(tiles, body) {
        return vec![];
    }
    // The leading loads whose index reads only the loop variable and what the body leaves
    // alone, from tensors the body does not write, into tiles assigned nowhere else.
    let lead: Vec<usize> = body
        .iter()
        .map_while(|s| load_facts(s).map(|l| (s, l)))
        .enumerate()
        .filter(|(_, (s, l))| {
            assigns[l.dst] == 1
                && matches!(s, Stmt::Assign { op: TileOp::Load { index, .. }, .. }
                    if prefetchable(index, var))
                && l.params.iter().all(|p| !stored.contains(p))
                && l.scalars.iter().all(|v| !assigned_scalars.contains(v))
        })
        .map(|(i, _)| i)
        .collect();
    let elems: usize = lead
        .iter()
        .map(|&i| match &body[i] {
            Stmt::Assign { dst, .. } => tiles[*dst].shape.iter().product::<usize>(),
            _ => 0,
        })
        .sum();
    if lead.is_empty() || elems > PREFETCH_ELEMS {
        return vec![];
    }
    let mut prologue = vec![];
    let mut refills = vec![];
    for &i in &lead {
        let Stmt::Assign {
            dst,
            op: TileOp::Load { param, index },
        } = body[i].clone()
        else {
            unreachable!("a leading load")
        };
        let next = tiles.len();
        let mut info = tiles[dst].clone();
        info.name = format!("{}_next", info.name);
        tiles.push(info);
        let at = |x: Index| TileOp::Load {
            param,
            index: shifted(&index, var, &guarded(x, end)),
        };
        prologue.push(Stmt::Assign {
            dst: next,
            op: at(start.clone()),
        });
        refills.push(Stmt::Assign {
            dst: next,
            op: at(Index::bin(IndexOp::Add, Index::Var(var), Index::Const(1))),
        });
        body[i] = Stmt::Assign {
            dst,
            op: TileOp::Cast(next),
        };
    }
    let after = lead.last().map_or(0, |l| l + 1);
    body.splice(after..after, refills);
    prologue
}

/// [`small_reduction`] over a tile table (the kernel's, or one being rewritten).
fn small_reduction_tiles(tiles: &[TileInfo], body: &[Stmt]) -> bool {
    body.iter().all(|s| match s {
        Stmt::Assign { dst, op } => {
            !matches!(op, TileOp::Gemm { .. })
                && tiles[*dst].shape.iter().product::<usize>() <= UNROLL_TILE_ELEMS
        }
        Stmt::Let { .. } => true,
        _ => false,
    })
}

/// `x` itself while `x < end`, else `x` pushed past every extent ([`OUT_OF_BOUNDS`]):
/// `x + min(x − min(x, end − 1), 1) · 2^30`.
fn guarded(x: Index, end: &Index) -> Index {
    use IndexOp::{Add, Min, Mul, Sub};
    let last = Index::bin(Sub, end.clone(), Index::Const(1));
    let past = Index::bin(
        Min,
        Index::bin(Sub, x.clone(), Index::bin(Min, x.clone(), last)),
        Index::Const(1),
    );
    Index::bin(Add, x, Index::bin(Mul, past, Index::Const(OUT_OF_BOUNDS)))
}

/// `index` with the loop variable `var` replaced by `at` (its slices that mention `var` are
/// exactly `var`: [`prefetchable`]).
fn shifted(index: &[Slice], var: ScalarId, at: &Index) -> Vec<Slice> {
    index
        .iter()
        .map(|sl| match sl {
            Slice::At(i) => Slice::At(subst(i, var, at)),
            Slice::Span { start, len } => Slice::Span {
                start: subst(start, var, at),
                len: *len,
            },
        })
        .collect()
}

/// Whether a load's `index` may be prefetched over loop variable `var`: some slice is `var`
/// itself, and no other slice reads it (so pushing `var` past the tensor's extent masks the
/// whole load, whatever else the index computes).
fn prefetchable(index: &[Slice], var: ScalarId) -> bool {
    let starts: Vec<&Index> = index
        .iter()
        .map(|sl| match sl {
            Slice::At(i) | Slice::Span { start: i, .. } => i,
        })
        .collect();
    starts.iter().any(|i| **i == Index::Var(var))
        && starts
            .iter()
            .all(|i| **i == Index::Var(var) || !mentions(i, var))
}

/// The scalars and `i32` tensors index `i` reads (a [`LoadFacts`] without a tile).
fn index_facts(i: &Index) -> LoadFacts {
    let mut f = LoadFacts {
        dst: 0,
        params: vec![],
        scalars: vec![],
    };
    index_uses(i, &mut f);
    f
}

/// Whether `i` reads scalar `v`.
fn mentions(i: &Index, v: ScalarId) -> bool {
    index_facts(i).scalars.contains(&v)
}

/// `i` with scalar `v` replaced by `by`.
fn subst(i: &Index, v: ScalarId, by: &Index) -> Index {
    match i {
        Index::Var(x) if *x == v => by.clone(),
        Index::Bin(op, a, b) => Index::bin(*op, subst(a, v, by), subst(b, v, by)),
        Index::SeqLen { cache, batch } => Index::SeqLen {
            cache: *cache,
            batch: Box::new(subst(batch, v, by)),
        },
        Index::Load { param, index } => Index::Load {
            param: *param,
            index: index.iter().map(|j| subst(j, v, by)).collect(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
#[path = "loads_first_tests.rs"]
mod tests;
