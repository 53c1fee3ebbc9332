//! FlashAttention-3's overlap inside a warpgroup (`SOFTMAX_OVERLAP = 1`): the online-softmax loop
//! rotated so that block `i`'s P·V runs on the tensor cores while block `i + 1`'s softmax is
//! computed.
//!
//! The kernel's loop body reads, per block `i`,
//!
//! ```text
//! s = gemm(q, kv_i.t()) …        (q·kᵀ, then the softmax: m_new, p, alpha, l)
//! scaled = acc * alpha           (the rescale, linear in acc)
//! pb = cast(p)
//! acc = scaled + gemm(pb, v_i)   (P·V)
//! ```
//!
//! and each warpgroup runs it in order: q·kᵀ, wait, softmax, P·V, wait. The rotated loop, per
//! block `i`: issues and waits for block `i`'s q·kᵀ; rescales the accumulator by block `i - 1`'s
//! alpha and issues block `i - 1`'s P·V (P kept in registers from the previous iteration and
//! packed here, V still in its ring slot); computes block `i`'s softmax while that gemm runs;
//! waits for it and releases block `i - 1`'s slot. After the loop the last block's rescale and
//! P·V follow. Because the rescale is linear, `(acc·α_{i-1} + P_{i-1}·V_{i-1})` then `·α_i` is
//! the kernel's own sum in another order: no new math, the same rounding points (P is rounded to
//! bf16 once, as the gemm needed it anyway).
//!
//! Two details are there for ptxas (sm_90a, NVRTC 13.0; `tests/nvrtc_compile.rs` fails on their
//! absence): the accumulator is rescaled only when no gemm is in flight (touching registers a
//! gemm wrote while another is pending makes ptxas inject a wait for all, C7517, so the q·kᵀ is
//! waited for first, not overlapped with the rescale as in FlashAttention-3), and the softmax
//! sits between two syncs of the warpgroup's own named barrier, which keep ptxas from hoisting
//! the P·V's wait above it (without them it did: that first form measured 1.04-1.6x slower than
//! the loop as written on the H200, 2026-12-05, partly for that, partly for the extra ring slot
//! the rotated loop holds; `bench/NOTES-cuda-decode.md`).
//!
//! It applies under the producer warpgroup with two or more ring stages (the consumers hold two
//! slots at once) over a bf16 cache (not an FP8 one: `paged.rs`), where the body is flat assignments, its first non-view statement is a gemm
//! whose A operand the loop never assigns, and its other gemm is fused into `acc = acc·x + P·V`
//! with P a register fragment in wgmma's A layout and V a view of the ring ([`overlap_plan`]);
//! elsewhere the knob changes nothing.

use crate::cuda::lower::gemm::wgmma::{pack_a_regs, WgmmaA};
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::warpspec::MBAR;
use crate::error::IrError;
use crate::ir::*;
use crate::visit::stmt_reads;

/// The first of the named barriers a warpgroup of the rotated loop syncs alone (`5 +` its index:
/// 0 is `__syncthreads`, 1 the consumers', 2 the FP8 producer's, 3 and 4 `PINGPONG`'s).
pub(crate) const OVERLAP_BAR: usize = 5;

/// Where the statements of a loop body that [`SOFTMAX_OVERLAP`](crate::schedule) moves are.
pub(crate) struct OverlapPlan {
    /// The first gemm (q·kᵀ); only views come before it.
    qk: usize,
    /// The P·V gemm, its fused add (`acc = scaled + pv`), the rescale (`scaled = acc · x`) and
    /// the definition of P·V's A operand.
    moved: [usize; 4],
    /// The carried accumulator, P·V's operands (A a register fragment, B a view of the ring).
    acc: TileId,
    a: TileId,
    v: TileId,
    /// The rescale as an in-place op on the accumulator (`acc · x`).
    rescale: TileOp,
}

/// The rotation's plan for `body` (a paged loop's statements whose blocks land in shared-memory
/// buffer `ring`), if the module's pattern matches.
pub(crate) fn overlap_plan(l: &Lower, body: &[Stmt], ring: usize) -> Option<OverlapPlan> {
    if !body.iter().all(|s| matches!(s, Stmt::Assign { .. })) {
        return None;
    }
    let assign = |i: usize| match &body[i] {
        Stmt::Assign { dst, op } => (*dst, op),
        _ => unreachable!(),
    };
    let gemms: Vec<usize> = (0..body.len())
        .filter(|&i| matches!(assign(i).1, TileOp::Gemm { .. }))
        .collect();
    let [qk, pv] = gemms[..] else {
        return None;
    };
    let views_first = (0..qk).all(|i| matches!(assign(i).1, TileOp::View(..)));
    let TileOp::Gemm { a: q, .. } = assign(qk).1 else {
        unreachable!()
    };
    let writes = |i: usize, t: TileId| assign(i).0 == t;
    if !views_first || (0..body.len()).any(|i| writes(i, *q)) {
        return None;
    }
    let f = l
        .find_fusions(body)
        .into_iter()
        .find(|f| f.gemm == assign(pv).0)?;
    let (acc, scaled, a, v) = (f.add_dst, f.init, f.a, f.b);
    let add = (pv + 1..body.len()).find(|&i| writes(i, acc))?;
    let def = |t: TileId| {
        let d: Vec<usize> = (0..body.len()).filter(|&i| writes(i, t)).collect();
        (d.len() == 1).then(|| d[0])
    };
    let (scale, a_def) = (def(scaled)?, def(a)?);
    // The rescale multiplies the accumulator by something that does not depend on it.
    let TileOp::Binary(BinaryOp::Mul, x, y) = assign(scale).1 else {
        return None;
    };
    let other = match (x, y) {
        (Operand::Tile(t), o) | (o, Operand::Tile(t)) if *t == acc => o.clone(),
        _ => return None,
    };
    if matches!(other, Operand::Tile(t) if t == acc) || def(acc) != Some(add) {
        return None;
    }
    // Moving the rescale and P's definition to the end of the body reads the same values: what
    // they read is not assigned after them (the moved statements assign only their own tiles).
    let moved = [pv, add, scale, a_def];
    let stable = |i: usize| {
        let reads = stmt_reads(&body[i]);
        !(i + 1..body.len()).any(|j| !moved.contains(&j) && reads.contains(&assign(j).0))
    };
    if !stable(scale) || !stable(a_def) || a_def > pv || scale > add {
        return None;
    }
    // Nothing else reads what the moved statements produce or the accumulator.
    let private = [acc, scaled, a, assign(pv).0];
    let rest_reads = (qk + 1..body.len())
        .filter(|i| !moved.contains(i))
        .any(|i| stmt_reads(&body[i]).iter().any(|t| private.contains(t)));
    if rest_reads {
        return None;
    }
    // Register operands in wgmma's layout, V in the ring.
    let (m, kd) = (l.k.tiles[a].shape[0], l.k.tiles[a].shape[1]);
    let n = l.k.tiles[v].shape[1];
    let frag = |t: TileId, r: usize, c: usize| matches!(&l.repr[t], Repr::Frag { m: m2, n: n2, .. } if *m2 == r && *n2 == c);
    let ring_view = matches!(&l.repr[v], Repr::Smem { buf, .. } if *buf == ring);
    let scores_in_registers = l.frag_of(&body[qk]).is_some();
    if !frag(a, m, kd)
        || !frag(acc, m, n)
        || !ring_view
        || !scores_in_registers
        || !l.rs_geometry(m, kd)
    {
        return None;
    }
    Some(OverlapPlan {
        qk,
        moved,
        acc,
        a,
        v,
        rescale: TileOp::Binary(BinaryOp::Mul, Operand::Tile(acc), other),
    })
}

/// A rotated loop body and the nodes that follow the loop.
pub(crate) type Rotated = (Vec<Node>, Vec<Node>);

/// The ring names the rotated loop uses: the ring's base pointer, the current block's pointer,
/// the stage count, a stage's size in elements and the block count.
pub(crate) struct RingNames<'n> {
    pub(crate) base: &'n str,
    pub(crate) cur: &'n str,
    pub(crate) st: usize,
    pub(crate) slot: usize,
    pub(crate) nblk: &'n str,
}

impl Lower<'_> {
    /// The P·V gemm of the plan with A from the packed array `packed`, accumulating into the
    /// carried accumulator in place; without its wait where `wait` is false.
    fn overlap_pv(&mut self, p: &OverlapPlan, packed: &str, wait: bool) -> Option<String> {
        let (m, kd) = (self.k.tiles[p.a].shape[0], self.k.tiles[p.a].shape[1]);
        let n = self.k.tiles[p.v].shape[1];
        let Repr::Frag { arr, .. } = self.repr[p.acc].clone() else {
            return None;
        };
        let Repr::Smem { buf, view } = self.repr[p.v].clone() else {
            return None;
        };
        let bb = self.smem.bufs[buf].clone();
        self.decl.geo_m.insert(m);
        self.decl.geo_mn.insert((m, n));
        self.paging.gemm_no_wait = !wait;
        let code = self.wgmma_gemm(m, n, kd, &arr, WgmmaA::Packed(packed), (&bb, &view), false);
        self.paging.gemm_no_wait = false;
        code
    }

    /// The f32 register arrays (and their sizes) of what the rescale and P's definition read,
    /// views followed to their sources, and of P: the softmax's results the next iteration
    /// (or the code after the loop) uses.
    fn softmax_outputs(&self, body: &[Stmt], p: &OverlapPlan) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        let Stmt::Assign { op: a_op, .. } = &body[p.moved[3]] else {
            unreachable!()
        };
        let mut todo = crate::visit::op_tiles(&p.rescale);
        todo.extend(crate::visit::op_tiles(a_op));
        todo.push(p.a);
        while let Some(t) = todo.pop() {
            if t == p.acc {
                continue;
            }
            let view_of = body.iter().find_map(|s| match s {
                Stmt::Assign {
                    dst,
                    op: TileOp::View(src, _),
                } if *dst == t => Some(*src),
                _ => None,
            });
            if let Some(src) = view_of {
                todo.push(src);
                continue;
            }
            if self.k.tiles[t].dtype != DType::F32 {
                continue;
            }
            let arr = match &self.repr[t] {
                Repr::Frag { m, n, arr } => (arr.clone(), self.geo.frag_regs(*m, *n)),
                Repr::Rows { m, arr } => (arr.clone(), self.geo.mt(*m) * 2),
                _ => continue,
            };
            if !out.contains(&arr) {
                out.push(arr);
            }
        }
        out
    }

    /// The rotated body of a producer-fed loop (see the module docs) and the nodes that follow
    /// the loop (the last block's rescale, P·V and slot release), or `None` where the P·V cannot
    /// be issued from registers (the loop is then lowered as written).
    pub(crate) fn lower_overlapped(
        &mut self,
        body: &[Stmt],
        p: &OverlapPlan,
        r: &RingNames,
    ) -> Result<Option<Rotated>, IrError> {
        let RingNames {
            base,
            cur,
            st,
            slot,
            nblk,
        } = *r;
        let kd = self.k.tiles[p.a].shape[1];
        let packed = self.fresh("pprev");
        let (Some(pv), Some(pv_waited)) = (
            self.overlap_pv(p, &packed, false),
            self.overlap_pv(p, &packed, true),
        ) else {
            return Ok(None);
        };
        let Repr::Frag { arr: acc, .. } = self.repr[p.acc].clone() else {
            return Ok(None);
        };
        let Repr::Frag { arr: a_arr, .. } = self.repr[p.a].clone() else {
            return Ok(None);
        };
        let acc_regs = self
            .geo
            .frag_regs(self.k.tiles[p.acc].shape[0], self.k.tiles[p.acc].shape[1]);
        self.decl
            .lines
            .push(format!("unsigned {packed}[{}];", kd / 4));
        let code = |text: String| Node::Code {
            text,
            reads: vec![],
            writes: vec![],
        };
        let fence = |arr: &str, n: usize| {
            format!(
                "#pragma unroll\nfor (int i_ = 0; i_ < {n}; ++i_) tpla_fence_operand({arr}[i_]);\n"
            )
        };
        // Block i - 1's rescale (its alpha and P are still in their registers: block i's softmax
        // has not run yet), P packed for the gemm (registers no gemm is reading: the last P·V
        // was waited for), its P·V.
        let mut previous = Vec::new();
        self.lower_assign(p.acc, &p.rescale, &mut previous)?;
        previous.push(code(pack_a_regs(&a_arr, &packed, kd)));
        let mut after = previous.clone();
        // Block i's q·kᵀ, waited for: no gemm is in flight when the accumulator is rescaled
        // (ptxas waits for every gemm before a register a gemm wrote is touched while another
        // is pending, C7517, which would serialise the loop again).
        let mut nodes = self.lower_block(&body[..=p.qk])?;
        previous.push(code(format!(
            "{cur} = {base} + ((it_ + {st} - 1) % {st}) * {slot};\n{pv}{cur} = {base} + (it_ % {st}) * {slot};\n"
        )));
        nodes.push(Node::Scope {
            head: "if (it_ > 0) {".into(),
            body: previous,
            tail: "}".into(),
            looped: false,
        });
        // Block i's softmax while the P·V runs, and its P (the gemm reads the packed copy).
        // The warpgroup's named barriers around it fence ptxas' scheduling: without them it
        // hoists the P·V's wait above the softmax (H200 build, 2026-12-05).
        let fence_sched = format!("tpla_bar_sync({OVERLAP_BAR} + (warp >> 2), 128);\n");
        nodes.push(code(fence_sched.clone()));
        let rest: Vec<Stmt> = (p.qk + 1..body.len())
            .filter(|i| !p.moved.contains(i))
            .map(|i| body[i].clone())
            .collect();
        nodes.extend(self.lower_block(&rest)?);
        let Stmt::Assign { op: a_op, .. } = &body[p.moved[3]] else {
            unreachable!()
        };
        self.lower_assign(p.a, a_op, &mut nodes)?;
        // What the next iteration reads of the softmax is computed before the wait; then
        // block i - 1's slot is free.
        let mut pinned = String::new();
        for (arr, n) in self.softmax_outputs(body, p) {
            pinned.push_str(&fence(&arr, n));
        }
        nodes.push(code(format!(
            "{pinned}{fence_sched}tpla_wgmma_wait0();
{}{}if (it_ > 0) tpla_mbar_arrive(&{MBAR}[{st} + (it_ + {st} - 1) % {st}]);
",
            fence(&acc, acc_regs),
            fence(&packed, kd / 4),
        )));
        after.push(code(format!(
            "{cur} = {base} + (({nblk} - 1) % {st}) * {slot};\n{pv_waited}tpla_mbar_arrive(&{MBAR}[{st} + ({nblk} - 1) % {st}]);\n"
        )));
        let after = vec![Node::Scope {
            head: format!("if ({nblk} > 0) {{"),
            body: after,
            tail: "}".into(),
            looped: false,
        }];
        Ok(Some((nodes, after)))
    }
}
