//! Memory planning: shared-memory buffers (swizzle, column blocking, paged rings) and the
//! resolution of every tile to its representation.

use crate::cuda::elem::*;
use crate::cuda::layout::*;
use crate::cuda::lower::fp8_producer::staging_choices;
use crate::cuda::lower::*;
use crate::cuda::repr::*;
use crate::cuda::F32Gemm;
use crate::ir::*;
use crate::kv_format::fp8_row_bytes;

/// A shared-memory buffer.
#[derive(Clone, Debug)]
pub(crate) struct Buf {
    /// C pointer name (for rings: the current slot's pointer).
    pub(crate) name: String,
    pub(crate) elem: Elem,
    pub(crate) rows: usize,
    /// Elements between rows.
    pub(crate) stride: usize,
    /// XOR swizzle of `chunk` elements (16 bytes) by `row & 7`; 0 when not swizzled.
    pub(crate) chunk: usize,
    /// Column-blocked layout for `wgmma` operands (bf16, rows a multiple of 8, columns of 64):
    /// element `(r, c)` lives in block `c / 64`, a `[rows][64]` tile of 128-byte rows whose
    /// 16-byte chunks are XOR-swizzled by `r & 7`: the hardware's 128-byte swizzle when the block
    /// starts on a 1024-byte boundary.
    pub(crate) blocked: bool,
    /// Ring slots (stages) for paged loops, 1 otherwise.
    pub(crate) slots: usize,
    /// Whether the hazard analysis tracks it (rings manage their own barriers).
    pub(crate) tracked: bool,
    /// Byte offset in dynamic shared memory (assigned at the end).
    pub(crate) offset: usize,
}

impl Buf {
    pub(crate) fn slot_elems(&self) -> usize {
        self.rows * self.stride
    }
    pub(crate) fn bytes(&self) -> usize {
        (self.slot_elems() * self.elem.size() * self.slots).div_ceil(128) * 128
    }
    /// Element index of `(r, c)` (C expressions).
    pub(crate) fn addr(&self, r: &str, c: &str) -> String {
        if self.rows == 1 {
            return format!("({c})");
        }
        if self.blocked {
            return format!(
                "(((((unsigned)({c})) >> 6) * {blk}u) + ({r}) * 64 + ((((((unsigned)({c})) >> 3) & 7u) ^ (((unsigned)({r})) & 7u)) << 3) + (({c}) & 7))",
                blk = self.rows * 64
            );
        }
        if self.chunk > 0 {
            let sh = self.chunk.trailing_zeros();
            format!(
                "(({r}) * {} + (((((unsigned)({c})) >> {sh}) ^ (((unsigned)({r})) & 7u)) << {sh}) + (({c}) & {}))",
                self.stride,
                self.chunk - 1
            )
        } else {
            format!("(({r}) * {} + ({c}))", self.stride)
        }
    }
    /// Byte offset (C expression) of `(r, c)` in a blocked buffer where `r % 8 == 0`: the
    /// unswizzled position `wgmma` descriptors start from (a column offset inside a block adds
    /// its bytes, as the hardware applies the swizzle to the final address).
    pub(crate) fn blocked_bytes(&self, r: &str, c: &str) -> String {
        format!(
            "((((unsigned)({c})) >> 6) * {blk}u + (unsigned)({r}) * 128u + (((unsigned)({c})) & 63u) * 2u)",
            blk = self.rows * 128
        )
    }
}

pub(crate) fn new_buf(
    name: String,
    elem: Elem,
    (rows, cols): (usize, usize),
    slots: usize,
    tracked: bool,
    blocked_ok: bool,
) -> Buf {
    let blocked = blocked_ok && elem == Elem::Bf16 && rows > 1 && rows % 8 == 0 && cols % 64 == 0;
    let chunk = 16 / elem.size();
    let (stride, chunk) = if elem != Elem::U8 && rows >= 8 && cols % (8 * chunk) == 0 {
        (cols, chunk)
    } else if elem == Elem::Bf16 && rows >= 8 && cols % 8 == 0 {
        (cols + 8, 0)
    } else {
        (cols, 0)
    };
    Buf {
        name,
        elem,
        rows,
        stride,
        chunk,
        blocked,
        slots,
        tracked,
        offset: 0,
    }
}

/// Memory planning: appends `buf` to the dynamic shared memory laid out so far, at the next
/// 128-byte boundary (its size is a multiple of 128), or the next 1024-byte boundary for a
/// column-blocked buffer (the 128-byte swizzle repeats every 1024 bytes). Returns its index.
pub(crate) fn place(bufs: &mut Vec<Buf>, mut buf: Buf) -> usize {
    let end = smem_bytes(bufs);
    buf.offset = if buf.blocked {
        end.next_multiple_of(1024)
    } else {
        end
    };
    bufs.push(buf);
    bufs.len() - 1
}

/// Dynamic shared memory needed by the buffers placed so far, in bytes.
pub(crate) fn smem_bytes(bufs: &[Buf]) -> usize {
    bufs.last().map_or(0, |b| b.offset + b.bytes())
}

impl<'a> Lower<'a> {
    /// The memory pass: every tile's representation from its layout, creating (and placing)
    /// the shared-memory buffers, paged rings and register arrays it needs.
    pub(crate) fn resolve(&mut self, lay: &[Lay]) {
        let n = self.k.tiles.len();
        self.repr = vec![Repr::None; n];
        // Program order guarantees view sources are resolved first when walking statements.
        let body = self.k.body.clone();
        let mut done = vec![false; n];
        self.resolve_block(&body, lay, &mut done);
        self.place_fp8_staging();
    }

    /// The staging ring of raw FP8 rows of a producer-fed FP8 cache (`lower/fp8_producer.rs`),
    /// placed after every other buffer of the pass: choice number `paging.staging_choice` of
    /// [`staging_choices`] (best first). A plan that does not fit the target is refused by the
    /// emitter, which tries the next choice, then fewer ring stages (see `pipeline::emit`).
    fn place_fp8_staging(&mut self) {
        let Some((block, row_bytes)) = self.paging.fp8_pending.take() else {
            return;
        };
        let choices = staging_choices(block, row_bytes);
        self.paging.staging_choices = choices.len();
        let Some(&plan) = choices.get(self.paging.staging_choice).or(choices.last()) else {
            return;
        };
        let name = self.fresh("fp8stg");
        let buf = new_buf(
            name,
            Elem::U8,
            (plan.rows, plan.row_bytes),
            plan.slots,
            false,
            false,
        );
        let at = place(&mut self.smem.bufs, buf);
        self.paging.fp8_staging = Some((at, plan));
    }

    pub(crate) fn resolve_block(&mut self, body: &[Stmt], lay: &[Lay], done: &mut [bool]) {
        for s in body {
            match s {
                Stmt::Assign { dst, op } if !done[*dst] => {
                    done[*dst] = true;
                    self.resolve_tile(*dst, op, lay);
                }
                Stmt::For { body, .. } => self.resolve_block(body, lay, done),
                Stmt::PagedBlocks {
                    cache,
                    block,
                    stages,
                    start,
                    tile,
                    valid,
                    body,
                    ..
                } => {
                    done[*tile] = true;
                    done[*valid] = true;
                    if let ParamKind::Paged {
                        dtype, row, format, ..
                    } = self.k.params[*cache].kind
                    {
                        let elem = Elem::of_dtype(dtype);
                        let vec_ok = self.target.has_tensor_cores()
                            && (row * elem.size()).is_multiple_of(16);
                        let st = if vec_ok {
                            (*stages).clamp(1, self.paging.cap.max(1))
                        } else {
                            1
                        };
                        let id = self.fresh("pb");
                        // The two-consumer schedule holds a pair of blocks per stage.
                        let slots = if self.seesaw.is_some() { 2 * st } else { st };
                        let ring =
                            self.add_buf(&format!("{id}_ring"), elem, &[*block, row], slots, false);
                        let cur = format!("{id}_cur");
                        self.smem.bufs[ring].name = cur.clone();
                        let hi = format!("{id}_hi");
                        self.decl.lines.push(format!(
                            "int {id}_lo = 0, {hi} = 0, {id}_n = 0, {id}_b = 0; {cty}* {cur} = nullptr; (void){cur};",
                            cty = elem.cty()
                        ));
                        self.repr[*tile] = Repr::Smem {
                            buf: ring,
                            view: View::base(2),
                        };
                        self.repr[*valid] = Repr::Inline {
                            kind: InlineKind::Valid {
                                start: format!("s{start}"),
                                hi,
                                block: *block,
                            },
                            view: View::base(1),
                        };
                        self.paging.loops.insert(*tile, (ring, id, st));
                        let lat = format.fp8_cols();
                        if lat > 0 && self.geo.producer && self.seesaw.is_none() {
                            self.paging.fp8_pending = Some((*block, fp8_row_bytes(lat, row)));
                        }
                    }
                    self.resolve_block(body, lay, done)
                }
                _ => {}
            }
        }
    }

    pub(crate) fn resolve_tile(&mut self, t: TileId, op: &TileOp, lay: &[Lay]) {
        let info = &self.k.tiles[t];
        let rank = info.shape.len();
        if self.info.assigns[t] == 1 {
            if let TileOp::View(src, v) = op {
                let r = match self.repr[*src].clone() {
                    Repr::Rows { m, arr } if matches!(v, ViewOp::Unsqueeze(1)) => {
                        Repr::Rows { m, arr }
                    }
                    Repr::Smem { buf, view } => Repr::Smem {
                        buf,
                        view: view.apply(v),
                    },
                    Repr::Inline { kind, view } => Repr::Inline {
                        kind,
                        view: view.apply(v),
                    },
                    Repr::Frag { .. } | Repr::Rows { .. } => {
                        // Lowered through a shadow copy at the view statement.
                        let elem = self.shadow_elem(*src, false);
                        let buf = self.shadow_buf(*src, elem);
                        Repr::Smem {
                            buf,
                            view: View::base(self.k.tiles[*src].shape.len()).apply(v),
                        }
                    }
                    Repr::None => Repr::None,
                };
                self.repr[t] = r;
                return;
            }
        }
        self.repr[t] = match lay[t] {
            Lay::Frag { m, n } => {
                let arr = format!("t{t}");
                self.decl.lines.push(format!(
                    "{} {arr}[{}];",
                    self.tile_vt(t).cty(),
                    self.geo.frag_regs(m, n)
                ));
                self.decl.geo_m.insert(m);
                self.decl.geo_mn.insert((m, n));
                Repr::Frag { m, n, arr }
            }
            Lay::Rows { m } => {
                let arr = format!("t{t}");
                self.decl.lines.push(format!(
                    "{} {arr}[{}];",
                    self.tile_vt(t).cty(),
                    self.geo.mt(m) * 2
                ));
                self.decl.geo_m.insert(m);
                Repr::Rows { m, arr }
            }
            _ if self.fused.get(t).copied().unwrap_or(false) => Repr::Inline {
                kind: InlineKind::Fused,
                view: View::base(rank),
            },
            Lay::Any | Lay::Bottom if self.info.single_def[t].as_ref().is_some_and(inlineable) => {
                let view = View::base(rank);
                let kind = match op {
                    TileOp::Iota { axis } => InlineKind::Iota(view.axes[*axis]),
                    TileOp::Full(o) => InlineKind::Value(self.scalar_operand(o, self.tile_vt(t))),
                    _ => unreachable!(),
                };
                Repr::Inline { kind, view }
            }
            _ => {
                let dt = self.k.tiles[t].dtype;
                let elem = if dt.is_float() {
                    if self.info.exact_bf16[t]
                        || (self.target.f32_gemm == F32Gemm::RoundBf16
                            && self.target.has_tensor_cores()
                            && self.info.gemm_only[t])
                    {
                        Elem::Bf16
                    } else {
                        Elem::F32
                    }
                } else {
                    Elem::of_dtype(dt)
                };
                let shape = info.shape.clone();
                let buf = self.add_buf(&format!("sm_t{t}_"), elem, &shape, 1, true);
                Repr::Smem {
                    buf,
                    view: View::base(rank),
                }
            }
        };
    }

    /// Storage type of a shadow copy of a register tile.
    pub(crate) fn shadow_elem(&self, t: TileId, mma_bf16: bool) -> Elem {
        match self.k.tiles[t].dtype {
            DType::F32 | DType::BF16 if mma_bf16 => Elem::Bf16,
            DType::F32 | DType::BF16 => Elem::F32,
            d => Elem::of_dtype(d),
        }
    }

    pub(crate) fn shadow_buf(&mut self, t: TileId, elem: Elem) -> usize {
        if let Some(b) = self.smem.shadows.get(&(t, elem)) {
            return *b;
        }
        let shape = self.shape(t);
        let b = self.add_buf(&format!("sh_t{t}_"), elem, &shape, 1, true);
        self.smem.shadows.insert((t, elem), b);
        b
    }

    // -------------------------------------------------------------- expressions
}
