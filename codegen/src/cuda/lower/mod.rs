//! Lowering pass: statements and tile ops to code nodes, one module per op family.

pub(crate) mod consumer_loop;
pub(crate) mod elementwise;
pub(crate) mod expr;
pub(crate) mod first_gemm;
pub(crate) mod fp8;
pub(crate) mod fp8_producer;
pub(crate) mod gemm;
pub(crate) mod iter;
pub(crate) mod k_waits;
pub(crate) mod kv_split;
pub(crate) mod memory;
pub(crate) mod paged;
pub(crate) mod paged_store;
pub(crate) mod partial_sum;
pub(crate) mod reduce;
pub(crate) mod roles;
pub(crate) mod roles_pattern;
pub(crate) mod seesaw;
pub(crate) mod softmax_overlap;
pub(crate) mod split_release;
pub(crate) mod split_table;

use std::collections::{BTreeSet, HashMap};

use crate::cuda::analysis::*;
use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::layout::*;
use crate::cuda::lower::gemm::wgmma::*;
use crate::cuda::memory::*;
use crate::cuda::node::*;
use crate::cuda::print::*;
use crate::cuda::repr::*;
use crate::cuda::{CudaSource, Target};
use crate::error::IrError;
use crate::ir::*;
use crate::schedule::Schedule;

/// The lowering state, filled in by the passes of [`crate::cuda::pipeline::PASSES`] in order.
pub(crate) struct Lower<'a> {
    pub(crate) k: &'a Kernel,
    pub(crate) target: Target,
    /// The validated schedule knobs.
    pub(crate) sched: Schedule,
    /// Layout of every tile (the `layout` pass).
    pub(crate) lay: Vec<Lay>,
    /// Tiles computed inside their single consumer's loop (the `fusion` pass).
    pub(crate) fused: Vec<bool>,
    /// The lowered body (the `lower` pass; barriers added by `sync`).
    pub(crate) nodes: Vec<Node>,
    /// The translation unit (the `print` pass).
    pub(crate) source: Option<CudaSource>,
    /// Warp geometry (the `geometry` pass).
    pub(crate) geo: Geo,
    /// Per-tile facts (the `analysis` pass).
    pub(crate) info: Info,
    /// Every tile's representation (the `memory` pass).
    pub(crate) repr: Vec<Repr>,
    /// Shared-memory buffers.
    pub(crate) smem: Smem,
    /// What the printer declares at function scope.
    pub(crate) decl: Decls,
    /// Paged-loop pipelining.
    pub(crate) paging: Paging,
    /// Counter for fresh C names.
    pub(crate) uniq: usize,
    /// Nesting depth of the block being lowered.
    pub(crate) depth: usize,
    /// Affinity tags of flat element-to-thread mappings, by shape (see [`conflict`]).
    pub(crate) affinity: HashMap<Vec<usize>, usize>,
    /// The two-consumer schedule's plan where it applies (the `geometry` pass, `lower/seesaw/`).
    pub(crate) seesaw: Option<seesaw::Seesaw>,
    /// The two warpgroups' split of the loop's blocks where it applies (the `geometry` pass,
    /// `lower/kv_split.rs`).
    pub(crate) kv_split: Option<kv_split::KvSplit>,
    /// The score / value warpgroups' split of the loop where it applies (the `geometry` pass,
    /// `lower/roles.rs`).
    pub(crate) roles: Option<roles::Roles>,
}

/// The shared-memory buffers of a kernel, in placement order (see [`place`]).
#[derive(Default)]
pub(crate) struct Smem {
    /// The buffers; an index into it is a hazard resource id.
    pub(crate) bufs: Vec<Buf>,
    /// Shadow copies of register tiles, by tile and storage type.
    pub(crate) shadows: HashMap<(TileId, Elem), usize>,
}

/// Declarations the lowering asks the printer for.
#[derive(Default)]
pub(crate) struct Decls {
    /// Declarations at function scope (register arrays, loop state).
    pub(crate) lines: Vec<String>,
    /// Warp-geometry constants needed: `wm{m}`, and `wn{m}_{n}` / `wr{m}_{n}`.
    pub(crate) geo_m: BTreeSet<usize>,
    pub(crate) geo_mn: BTreeSet<(usize, usize)>,
    /// `wgmma` instruction variants used: `(n, A form, B N-major)`.
    pub(crate) wgmma_fns: BTreeSet<(usize, WgmmaForm, bool)>,
}

/// Pipelining state of paged block loops.
#[derive(Default)]
pub(crate) struct Paging {
    /// The most stages a loop may use.
    pub(crate) cap: usize,
    /// Stages used by each loop, in program order.
    pub(crate) used: Vec<usize>,
    /// Per paged loop (keyed by its `tile`): ring buffer, name prefix, stages.
    pub(crate) loops: HashMap<TileId, (usize, String, usize)>,
    /// A paged loop's next-block copy waiting for the first warpgroup gemm at the given depth
    /// (the loop body's own level) to issue it while the tensor cores run.
    pub(crate) deferred_prefetch: Option<(String, usize)>,
    /// What replaces that gemm's wait where the deferred code commits a group of its own (the
    /// next block's q·kᵀ, `first_gemm.rs`): wait for this gemm only.
    pub(crate) deferred_wait: Option<String>,
    /// Lower `wgmma` gemms without their wait (the caller waits; `first_gemm.rs`).
    pub(crate) gemm_no_wait: bool,
    /// `PINGPONG = 1` inside the consumers' loop under warp specialisation: row-stacked
    /// warpgroups take turns issuing their gemms (`gemm/wgmma.rs`); `pingponged` records that a
    /// gemm did, so the loop adds the first turn and the last wait.
    pub(crate) pingpong: bool,
    pub(crate) pingponged: bool,
    /// Under warp specialisation: the producer warpgroup's code and the ring's stage count.
    pub(crate) producer_code: Option<(String, usize)>,
    /// Under `TMA = 1`: the streamed cache whose tensor map the kernel takes, and the box rows.
    pub(crate) tma: Option<(ParamId, usize)>,
    /// Row sums of the top-level paged loop that may stay per-warpgroup partials, with the
    /// carried sum each accumulates into (`partial_sum.rs`).
    pub(crate) partial_sums: Vec<(TileId, TileId)>,
    /// Carried sums kept as partials, to combine after the loop: `(l, m, n, wn)`.
    pub(crate) pending_sums: Vec<(TileId, usize, usize, usize)>,
    /// Registers the producer warpgroup keeps (`setmaxnreg.dec`); 0 for the default
    /// ([`crate::cuda::warpspec::PRODUCER_REGS`]).
    pub(crate) producer_regs: usize,
    /// An FP8 cache fed by the producer (`lower/fp8_producer.rs`): the loop's block and raw row
    /// bytes, noted by the memory pass until its staging ring is placed (after every other
    /// buffer of the pass).
    pub(crate) fp8_pending: Option<(usize, usize)>,
    /// That staging ring: its buffer and plan.
    pub(crate) fp8_staging: Option<(usize, fp8_producer::Staging)>,
    /// Which of the staging rings worth trying ([`fp8_producer::staging_choices`], best first)
    /// the memory pass takes (the emitter tries them in order until the kernel fits), and how
    /// many there were (0: no staging ring).
    pub(crate) staging_choice: usize,
    pub(crate) staging_choices: usize,
    /// A paged loop over a split table (`KV_CHUNKS = 1`) at the kernel's top level: the code
    /// with which a program past its sequence's last piece leaves at the kernel's start,
    /// printed before anything else (`paged.rs`).
    pub(crate) early_exit: Option<String>,
    /// `FULL_GROUPS` under the score warpgroup: the ring's full mbarriers per column group and
    /// the ring buffer's name (`full_groups.rs`; set by `paged.rs` where they apply).
    pub(crate) full_groups: Option<(crate::cuda::full_groups::FullGroups, String)>,
    /// Waits the next `wgmma` gemm over that ring places inside its k loop, taken by it
    /// (`gemm/wgmma.rs`), and whether one did.
    pub(crate) k_waits: Option<crate::cuda::full_groups::KWaits>,
    pub(crate) k_waits_placed: bool,
    /// Whether a paged loop's value warpgroups refill their own halves of its ring
    /// (`SPLIT_RELEASE` applied, `split_release.rs`; set by `paged.rs`).
    pub(crate) split_release: bool,
    /// Under `SPLIT_RELEASE`, the value warpgroups' check of block `it_ + STAGES`'s TMA path at
    /// the head of their iteration (`tma::tma_check_ahead`; set by `paged.rs`).
    pub(crate) tma_check_ahead: Option<String>,
}

pub(crate) struct Fusion {
    pub(crate) gemm: TileId,
    pub(crate) add_dst: TileId,
    pub(crate) a: TileId,
    pub(crate) b: TileId,
    pub(crate) init: TileId,
}

/// Whether `s` (its nested bodies included) assigns any of `tiles`.
pub(crate) fn assigns_any(s: &Stmt, tiles: &[TileId]) -> bool {
    crate::visit::any_stmt(std::slice::from_ref(s), &mut |s| {
        crate::visit::stmt_writes(s)
            .iter()
            .any(|t| tiles.contains(t))
    })
}

impl<'a> Lower<'a> {
    /// The state before the first pass.
    pub(crate) fn new(k: &'a Kernel, target: Target, sched: Schedule, stages_cap: usize) -> Self {
        Lower {
            k,
            target,
            sched,
            lay: Vec::new(),
            fused: Vec::new(),
            nodes: Vec::new(),
            source: None,
            geo: Geo::default(),
            info: Info::default(),
            repr: Vec::new(),
            smem: Smem::default(),
            decl: Decls::default(),
            paging: Paging {
                cap: stages_cap,
                ..Paging::default()
            },
            uniq: 0,
            depth: 0,
            affinity: HashMap::new(),
            seesaw: None,
            kv_split: None,
            roles: None,
        }
    }

    /// A readable summary of what pass `name` produced (for `TPLA_DUMP`).
    pub(crate) fn dump(&self, name: &str) -> String {
        match name {
            "analysis" => format!(
                "gemms {:?}, split f32 gemm {}, assigns {:?}",
                self.info.gemms, self.info.split_gemm, self.info.assigns
            ),
            "layout" => format!("{:?}", self.lay),
            "fusion" => format!(
                "fused {:?}",
                (0..self.fused.len())
                    .filter(|&t| self.fused[t])
                    .map(|t| &self.k.tiles[t].name)
                    .collect::<Vec<_>>()
            ),
            "geometry" => format!("{:?} under {:?}", self.geo, self.sched),
            "memory" => self
                .smem
                .bufs
                .iter()
                .map(|b| {
                    format!(
                        "{} {:?} {} rows, stride {}, {} slot(s), at byte {}\n",
                        b.name, b.elem, b.rows, b.stride, b.slots, b.offset
                    )
                })
                .collect(),
            "lower" | "sync" => {
                let mut s = String::new();
                print_nodes(&self.nodes, 0, "__syncthreads();", &mut s);
                s
            }
            _ => self
                .source
                .as_ref()
                .map(|s| s.code.clone())
                .unwrap_or_default(),
        }
    }
    pub(crate) fn fresh(&mut self, p: &str) -> String {
        self.uniq += 1;
        format!("{p}{}", self.uniq)
    }

    pub(crate) fn tile_vt(&self, t: TileId) -> Vt {
        Vt::of(self.k.tiles[t].dtype)
    }

    pub(crate) fn shape(&self, t: TileId) -> Vec<usize> {
        self.k.tiles[t].shape.clone()
    }

    pub(crate) fn norm(shape: &[usize]) -> (usize, usize) {
        match shape.len() {
            0 => (1, 1),
            1 => (1, shape[0]),
            _ => (shape[0], shape[1]),
        }
    }

    pub(crate) fn add_buf(
        &mut self,
        prefix: &str,
        elem: Elem,
        shape: &[usize],
        slots: usize,
        tracked: bool,
    ) -> usize {
        let (r, c) = Self::norm(shape);
        let name = self.fresh(prefix);
        // The column-blocked, 128-byte-swizzled layout: what wgmma reads and TMA boxes write.
        let blocked_ok = self.geo.wg || self.geo.producer;
        let buf = new_buf(name, elem, (r, c), slots, tracked, blocked_ok);
        place(&mut self.smem.bufs, buf)
    }

    // -------------------------------------------------------------- representation resolution

    pub(crate) fn lower_block(&mut self, body: &[Stmt]) -> Result<Vec<Node>, IrError> {
        self.depth += 1;
        let r = self.lower_block_at_depth(body);
        self.depth -= 1;
        r
    }

    pub(crate) fn lower_block_at_depth(&mut self, body: &[Stmt]) -> Result<Vec<Node>, IrError> {
        let mut out = Vec::new();
        let fused = self.find_fusions(body);
        for s in body {
            // Under `SCORE_WG` the kernel's top-level statements that read the accumulator run in
            // the value warpgroups only (`roles.rs`).
            let value_guard = self.depth == 1
                && self
                    .roles
                    .as_ref()
                    .is_some_and(|p| roles::is_value_stmt(p, s));
            let first = out.len();
            'stmt: {
                match s {
                    Stmt::Let { dst, value } => out.push(Node::Code {
                        text: format!("s{dst} = {};\n", self.idx(value)),
                        reads: self.index_reads(value),
                        writes: vec![],
                    }),
                    Stmt::Assign { dst, op } => {
                        if let TileOp::Gemm { .. } = op {
                            if fused.iter().any(|f| f.gemm == *dst) {
                                break 'stmt;
                            }
                        }
                        if let Some(f) = fused.iter().find(|f| {
                            f.add_dst == *dst
                                && matches!(op, TileOp::Binary(BinaryOp::Add, ..))
                                && operand_tiles(op).contains(&f.gemm)
                        }) {
                            let (a, b, x) = (f.a, f.b, f.init);
                            self.lower_gemm(*dst, a, b, Some(x), &mut out)?;
                            break 'stmt;
                        }
                        self.lower_assign(*dst, op, &mut out)?;
                    }
                    Stmt::Store { param, index, src } => {
                        self.lower_store(*param, index, *src, &mut out)?
                    }
                    Stmt::For {
                        var,
                        start,
                        end,
                        body,
                    } => {
                        let inner = self.lower_block(body)?;
                        let e = self.fresh("e");
                        let i = self.fresh("i");
                        let mut reads = self.index_reads(start);
                        reads.extend(self.index_reads(end));
                        out.push(Node::Code {
                            text: format!(
                                "const int {e} = {};\nint {i} = {};\n",
                                self.idx(end),
                                self.idx(start)
                            ),
                            reads,
                            writes: vec![],
                        });
                        let unroll = if self.target.loads_first
                            && crate::cuda::loads_first::small_reduction(self.k, body)
                        {
                            "#pragma unroll 4\n"
                        } else {
                            ""
                        };
                        out.push(Node::Scope {
                            head: format!(
                                "{unroll}for (; {i} < {e}; {i} = tpla_iadd({i}, 1)) {{\n    s{var} = {i};"
                            ),
                            body: inner,
                            tail: "}".into(),
                            looped: true,
                        });
                    }
                    Stmt::PagedBlocks { .. } => {
                        self.lower_paged_blocks(s, &mut out)?;
                        self.combine_partial_sums(&mut out);
                    }
                    Stmt::PagedStore {
                        cache,
                        batch,
                        start,
                        src,
                    } => self.lower_paged_store(*cache, batch, start, *src, &mut out)?,
                }
            }
            if value_guard && out.len() > first {
                let body: Vec<Node> = out.drain(first..).collect();
                out.push(Node::Scope {
                    head: roles::VALUE_GUARD.into(),
                    body,
                    tail: "}".into(),
                    looped: false,
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn index_reads(&self, i: &Index) -> Vec<usize> {
        let mut v = Vec::new();
        fn walk(i: &Index, v: &mut Vec<usize>) {
            match i {
                Index::Load { param, index } => {
                    v.push(GLOBAL_RES + *param);
                    index.iter().for_each(|x| walk(x, v));
                }
                Index::Bin(_, a, b) => {
                    walk(a, v);
                    walk(b, v);
                }
                Index::SeqLen { batch, .. } => walk(batch, v),
                _ => {}
            }
        }
        walk(i, &mut v);
        v
    }

    pub(crate) fn find_fusions(&self, body: &[Stmt]) -> Vec<Fusion> {
        let mut out = Vec::new();
        for (i, s) in body.iter().enumerate() {
            let Stmt::Assign {
                dst: g,
                op: TileOp::Gemm { a, b },
            } = s
            else {
                continue;
            };
            if self.info.assigns[*g] != 1 || self.info.uses[*g] != 1 {
                continue;
            }
            for (j, s2) in body.iter().enumerate().skip(i + 1) {
                if let Stmt::Assign {
                    dst,
                    op: TileOp::Binary(BinaryOp::Add, x, y),
                } = s2
                {
                    let other = match (x, y) {
                        (Operand::Tile(p), Operand::Tile(q)) if p == g && q != g => Some(*q),
                        (Operand::Tile(p), Operand::Tile(q)) if q == g && p != g => Some(*p),
                        _ => None,
                    };
                    let Some(other) = other else { continue };
                    let (m, n) = (self.k.tiles[*a].shape[0], self.k.tiles[*b].shape[1]);
                    let dst_ok = matches!(self.repr[*dst], Repr::Frag { m: m2, n: n2, .. } if m2 == m && n2 == n)
                        && self.k.tiles[other].shape == [m, n];
                    let untouched = !body[i + 1..j].iter().any(|s| assigns_any(s, &[*a, *b, *g]));
                    if dst_ok && untouched {
                        out.push(Fusion {
                            gemm: *g,
                            add_dst: *dst,
                            a: *a,
                            b: *b,
                            init: other,
                        });
                    }
                    break;
                }
            }
        }
        out
    }

    pub(crate) fn lower_assign(
        &mut self,
        dst: TileId,
        op: &TileOp,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        match op {
            TileOp::View(src, _) => {
                // Views alias; a view of a register tile reads its shadow, refreshed here.
                if matches!(self.repr[*src], Repr::Frag { .. } | Repr::Rows { .. })
                    && matches!(self.repr[dst], Repr::Smem { .. })
                {
                    let elem = self.shadow_elem(*src, false);
                    self.materialize(*src, elem, out);
                }
                Ok(())
            }
            TileOp::Load { param, index } => self.lower_load(dst, *param, index, out),
            TileOp::Gemm { a, b } => self.lower_gemm(dst, *a, *b, None, out),
            TileOp::Reduce { op: rop, src, axis } => {
                self.lower_reduce(dst, *rop, *src, *axis, out)?;
                self.seesaw_combine(dst, *rop, out);
                Ok(())
            }
            _ => {
                if matches!(self.repr[dst], Repr::Inline { .. } | Repr::None) {
                    return Ok(());
                }
                self.lower_elementwise(dst, op, out);
                Ok(())
            }
        }
    }
}
