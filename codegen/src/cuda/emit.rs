//! The IR -> CUDA C++ lowering. See the module documentation of [`super`] for the model.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{CudaSource, F32Gemm, PagedInt, PagedPtr, ParamAbi, Target, PRELUDE};
use crate::error::IrError;
use crate::ir::*;

fn backend_err(k: &Kernel, message: impl Into<String>) -> IrError {
    IrError::Backend {
        backend: "cuda",
        kernel: k.name.clone(),
        message: message.into(),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

// ------------------------------------------------------------------------------------------------
// Analysis
// ------------------------------------------------------------------------------------------------

/// Where a tile variable lives (analysis lattice; `Bottom` < `Any` < register layouts < `Smem`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lay {
    Bottom,
    Any,
    Frag { m: usize, n: usize },
    Rows { m: usize },
    Smem,
}

fn join(a: Lay, b: Lay) -> Lay {
    match (a, b) {
        (Lay::Bottom, x) | (x, Lay::Bottom) => x,
        (Lay::Any, x) | (x, Lay::Any) => x,
        (x, y) if x == y => x,
        _ => Lay::Smem,
    }
}

/// Warp geometry: `nw` warps per block. A fragment tile `[m, n]` is split over `wm(m)` warps
/// along rows and `wn(m, n)` along columns; remaining warps hold replicas.
///
/// With `wg` (warpgroup geometry, for `wgmma`), 64-row tiles are split over 4 warps along rows:
/// warps `4g .. 4g + 3` form warpgroup `g`, which owns a column slice of `n / wn` columns, and
/// each warp's fragments are exactly the `wgmma` accumulator layout (warp `w % 4` holds rows
/// `16 (w % 4) ..`, thread `lane` the mma.sync m16n8 positions).
#[derive(Clone, Copy, Debug)]
struct Geo {
    nw: usize,
    wg: bool,
    /// Under `wg`: the fewest columns a warpgroup takes when warpgroups split a tile (config
    /// `WG_SPLIT`, default 128). 128 keeps q·kᵀ whole per warpgroup (duplicated, P stays in
    /// registers); 32 splits it too (no duplicate tensor work; P and the row statistics go
    /// through shared memory).
    wg_split: usize,
}

impl Geo {
    fn frag_ok(m: usize, n: usize) -> bool {
        m > 0 && n > 0 && m.is_multiple_of(16) && n.is_multiple_of(8)
    }
    /// Warps along M. At most about `sqrt(nw)`: each warp then reuses every B fragment it loads
    /// from shared memory for `mt` m-tiles, which halves the `ldmatrix` traffic of wide gemms
    /// (P·V) against splitting M over all warps.
    fn wm(&self, m: usize) -> usize {
        if self.wg && m == 64 && self.nw.is_multiple_of(4) {
            return 4;
        }
        let mut w = gcd(m / 16, self.nw);
        while w > 1 && w * w > self.nw {
            w /= 2;
        }
        w
    }
    fn wn(&self, m: usize, n: usize) -> usize {
        if self.wg && m == 64 && self.nw.is_multiple_of(4) {
            // Warpgroups split wide tiles (at least 128 columns each, e.g. P·V); narrower
            // tiles (q·kᵀ) are computed whole by every warpgroup, so each warp holds whole rows:
            // row statistics stay in registers and P feeds wgmma from registers.
            let groups = self.nw / 4;
            return if (n / 8).is_multiple_of(groups) && n / groups >= self.wg_split {
                groups
            } else {
                1
            };
        }
        gcd(n / 8, self.nw / self.wm(m))
    }
    /// m-tiles of 16 rows per warp.
    fn mt(&self, m: usize) -> usize {
        m / 16 / self.wm(m)
    }
    /// n-tiles of 8 columns per warp.
    fn ntl(&self, m: usize, n: usize) -> usize {
        n / 8 / self.wn(m, n)
    }
    fn frag_regs(&self, m: usize, n: usize) -> usize {
        self.mt(m) * self.ntl(m, n) * 4
    }
}

struct Info {
    assigns: Vec<usize>,
    uses: Vec<usize>,
    /// Every assignment is a load from a bf16 tensor: values are exactly bf16.
    exact_bf16: Vec<bool>,
    /// The single defining op of tiles assigned once.
    single_def: Vec<Option<TileOp>>,
    /// `valid` tiles of paged loops.
    valid_of: HashSet<TileId>,
    /// `tile` tiles of paged loops.
    paged_tile: HashSet<TileId>,
    /// Gemm shapes `(m, n)`.
    gemms: Vec<(usize, usize)>,
    /// Every use is as a gemm operand (directly or through views).
    gemm_only: Vec<bool>,
    /// Some gemm has an f32-labelled operand that is not exactly bf16.
    split_gemm: bool,
    gemm_operands: Vec<(TileId, TileId)>,
}

fn operand_tiles(op: &TileOp) -> Vec<TileId> {
    let o = |x: &Operand| match x {
        Operand::Tile(t) => vec![*t],
        _ => vec![],
    };
    match op {
        TileOp::Full(x) => o(x),
        TileOp::Iota { .. } | TileOp::Load { .. } => vec![],
        TileOp::Unary(_, t) | TileOp::Cast(t) | TileOp::View(t, _) => vec![*t],
        TileOp::Binary(_, a, b) | TileOp::Compare(_, a, b) => [o(a), o(b)].concat(),
        TileOp::Select {
            mask,
            on_true,
            on_false,
        } => [vec![*mask], o(on_true), o(on_false)].concat(),
        TileOp::Reduce { src, .. } => vec![*src],
        TileOp::Gemm { a, b } => vec![*a, *b],
    }
}

fn analyse(k: &Kernel) -> Info {
    let n = k.tiles.len();
    let mut info = Info {
        assigns: vec![0; n],
        uses: vec![0; n],
        exact_bf16: vec![true; n],
        single_def: vec![None; n],
        valid_of: HashSet::new(),
        paged_tile: HashSet::new(),
        gemms: Vec::new(),
        gemm_only: vec![false; n],
        split_gemm: false,
        gemm_operands: Vec::new(),
    };
    fn walk(k: &Kernel, body: &[Stmt], info: &mut Info) {
        for s in body {
            match s {
                Stmt::Assign { dst, op } => {
                    info.assigns[*dst] += 1;
                    info.single_def[*dst] = Some(op.clone());
                    for t in operand_tiles(op) {
                        info.uses[t] += 1;
                    }
                    let exact = matches!(op, TileOp::Load { param, .. }
                        if matches!(k.params[*param].kind, ParamKind::Tensor { dtype: DType::BF16, .. }));
                    if !exact {
                        info.exact_bf16[*dst] = false;
                    }
                    if let TileOp::Gemm { a, b } = op {
                        info.gemms
                            .push((k.tiles[*a].shape[0], k.tiles[*b].shape[1]));
                        info.gemm_operands.push((*a, *b));
                    }
                }
                Stmt::Store { src, .. } | Stmt::PagedStore { src, .. } => info.uses[*src] += 1,
                Stmt::For { body, .. } => walk(k, body, info),
                Stmt::PagedBlocks {
                    tile, valid, body, ..
                } => {
                    info.assigns[*tile] += 1;
                    info.assigns[*valid] += 1;
                    info.valid_of.insert(*valid);
                    info.paged_tile.insert(*tile);
                    info.exact_bf16[*tile] = false;
                    info.exact_bf16[*valid] = false;
                    walk(k, body, info);
                }
                Stmt::Let { .. } => {}
            }
        }
    }
    walk(k, &k.body, &mut info);
    // gemm_only: uses are gemm operands or views that are themselves gemm_only.
    let mut users: Vec<Vec<(TileId, bool)>> = vec![Vec::new(); n];
    let mut other_use = vec![false; n];
    fn collect(body: &[Stmt], users: &mut [Vec<(TileId, bool)>], other: &mut [bool]) {
        for s in body {
            match s {
                Stmt::Assign { dst, op } => match op {
                    TileOp::Gemm { a, b } => {
                        users[*a].push((*dst, true));
                        users[*b].push((*dst, true));
                    }
                    TileOp::View(src, _) => users[*src].push((*dst, false)),
                    _ => operand_tiles(op).into_iter().for_each(|t| other[t] = true),
                },
                Stmt::Store { src, .. } | Stmt::PagedStore { src, .. } => other[*src] = true,
                Stmt::For { body, .. } | Stmt::PagedBlocks { body, .. } => {
                    collect(body, users, other)
                }
                Stmt::Let { .. } => {}
            }
        }
    }
    collect(&k.body, &mut users, &mut other_use);
    fn only_gemm(t: TileId, users: &[Vec<(TileId, bool)>], other: &[bool], depth: usize) -> bool {
        depth < 16
            && !other[t]
            && !users[t].is_empty()
            && users[t]
                .iter()
                .all(|&(u, gemm)| gemm || only_gemm(u, users, other, depth + 1))
    }
    for t in 0..n {
        info.gemm_only[t] = only_gemm(t, &users, &other_use, 0);
    }
    info.split_gemm = info.gemm_operands.iter().any(|&(a, b)| {
        [a, b].iter().any(|&t| {
            k.tiles[t].dtype == DType::F32 && !(info.exact_bf16[t] || info.paged_tile.contains(&t))
        })
    });
    for t in 0..n {
        if info.assigns[t] != 1 {
            info.single_def[t] = None;
        }
        if info.assigns[t] == 0 {
            info.exact_bf16[t] = false;
        }
    }
    info
}

/// Shapes `(m, n)` of the gemms that take the fragment (tensor-core) path.
fn frag_gemms(info: &Info) -> Vec<(usize, usize)> {
    info.gemms
        .iter()
        .copied()
        .filter(|&(m, n)| Geo::frag_ok(m, n))
        .collect()
}

/// Warps per block: the fewest (4 or 8) that keep the largest fragment tile within a register
/// budget per thread (128 accumulators, 96 when a gemm splits f32 operands into hi/lo parts,
/// which needs more temporaries), else 8. A `WARPS` / `NUM_WARPS` config value overrides.
fn choose_warps(k: &Kernel, info: &Info, target: &Target) -> usize {
    for (name, v) in &k.config {
        if (name == "WARPS" || name == "NUM_WARPS") && [1, 2, 4, 8, 16, 32].contains(v) {
            return *v as usize;
        }
    }
    let frag = frag_gemms(info);
    if frag.is_empty() {
        return 8;
    }
    let split = target.f32_gemm == F32Gemm::Split && target.has_tensor_cores() && info.split_gemm;
    let budget = if split { 96 } else { 128 };
    // At most 8 warps: a 512-thread block may use only 128 registers per thread.
    for nw in [4usize, 8] {
        let g = Geo {
            nw,
            wg: false,
            wg_split: 128,
        };
        if frag.iter().all(|&(m, n)| g.frag_regs(m, n) <= budget) {
            return nw;
        }
    }
    8
}

/// Whether the kernel uses the warpgroup geometry (and with it `wgmma` where operands allow):
/// the target allows it, the config does not say `WGMMA = 0`, every tensor-core gemm has 64 rows,
/// the block is whole warpgroups and the accumulators fit the register budget under that geometry.
/// The `WG_SPLIT` config value (see [`Geo::wg_split`]), 128 when absent or not a multiple of 8.
fn wg_split(k: &Kernel) -> usize {
    k.config
        .iter()
        .find(|(name, v)| name == "WG_SPLIT" && *v >= 8 && *v % 8 == 0)
        .map_or(128, |(_, v)| *v as usize)
}

fn use_warpgroups(k: &Kernel, info: &Info, target: &Target, nw: usize) -> bool {
    let off = k.config.iter().any(|(name, v)| name == "WGMMA" && *v == 0);
    let frag = frag_gemms(info);
    let g = Geo {
        nw,
        wg: true,
        wg_split: wg_split(k),
    };
    target.wgmma
        && !off
        && nw.is_multiple_of(4)
        && !frag.is_empty()
        && frag.iter().all(|&(m, _)| m == 64)
        && frag.iter().all(|&(m, n)| g.frag_regs(m, n) <= 128)
}

fn pure_index(i: &Index) -> bool {
    match i {
        Index::Var(_) | Index::Load { .. } => false,
        Index::Bin(_, a, b) => pure_index(a) && pure_index(b),
        Index::SeqLen { batch, .. } => pure_index(batch),
        _ => true,
    }
}

fn pure_fscalar(s: &FScalar) -> bool {
    match s {
        FScalar::Lit(_) | FScalar::Param(_) => true,
        FScalar::FromIndex(i) => pure_index(i),
        FScalar::Bin(_, a, b) => pure_fscalar(a) && pure_fscalar(b),
        FScalar::Unary(_, a) => pure_fscalar(a),
    }
}

fn inlineable(op: &TileOp) -> bool {
    match op {
        TileOp::Full(Operand::Scalar(s)) => pure_fscalar(s),
        TileOp::Full(Operand::Int(i)) => pure_index(i),
        TileOp::Iota { .. } => true,
        _ => false,
    }
}

struct LayoutCx<'a> {
    k: &'a Kernel,
    lay: Vec<Lay>,
}

impl LayoutCx<'_> {
    fn shape(&self, t: TileId) -> &[usize] {
        &self.k.tiles[t].shape
    }

    fn elementwise(&self, shape: &[usize], ops: &[TileId]) -> Lay {
        let compat_frag = |t: TileId, m: usize, n: usize| match self.lay[t] {
            Lay::Frag { m: a, n: b } => a == m && b == n && self.shape(t) == [m, n],
            Lay::Rows { m: a } => a == m && self.shape(t) == [m, 1],
            Lay::Smem | Lay::Any | Lay::Bottom => true,
        };
        if shape.len() == 2 {
            let (m, n) = (shape[0], shape[1]);
            let has = ops
                .iter()
                .any(|&t| self.lay[t] == Lay::Frag { m, n } && self.shape(t) == shape);
            if has && ops.iter().all(|&t| compat_frag(t, m, n)) {
                return Lay::Frag { m, n };
            }
        }
        if !shape.is_empty() && (shape.len() == 1 || shape[1] == 1) {
            let m = shape[0];
            let has = ops
                .iter()
                .any(|&t| self.lay[t] == Lay::Rows { m } && self.shape(t) == shape);
            let compat = |t: TileId| match self.lay[t] {
                Lay::Rows { m: a } => a == m && self.shape(t) == shape,
                Lay::Frag { .. } => false,
                _ => true,
            };
            if has && ops.iter().all(|&t| compat(t)) {
                return Lay::Rows { m };
            }
        }
        if ops.is_empty()
            || ops
                .iter()
                .any(|&t| matches!(self.lay[t], Lay::Any | Lay::Bottom))
        {
            // Undetermined until the operands settle; resolves to Smem if it stays so.
            let all_ok = ops
                .iter()
                .all(|&t| !matches!(self.lay[t], Lay::Frag { .. }) || shape.len() == 2);
            if all_ok {
                return Lay::Any;
            }
        }
        Lay::Smem
    }

    fn pref(&self, dst: TileId, op: &TileOp) -> Lay {
        let shape = self.shape(dst).to_vec();
        match op {
            TileOp::Full(_) | TileOp::Iota { .. } => Lay::Any,
            TileOp::Load { .. } => Lay::Smem,
            TileOp::Unary(_, t) | TileOp::Cast(t) => match self.lay[*t] {
                Lay::Bottom | Lay::Any => Lay::Any,
                l => l,
            },
            TileOp::Binary(..) | TileOp::Compare(..) | TileOp::Select { .. } => {
                self.elementwise(&shape, &operand_tiles(op))
            }
            TileOp::Reduce { src, axis, .. } => match self.lay[*src] {
                Lay::Frag { m, .. } if *axis == 1 => Lay::Rows { m },
                Lay::Bottom | Lay::Any => Lay::Any,
                _ => Lay::Smem,
            },
            TileOp::Gemm { a, b } => {
                let (m, n) = (self.shape(*a)[0], self.shape(*b)[1]);
                if Geo::frag_ok(m, n) {
                    Lay::Frag { m, n }
                } else {
                    Lay::Smem
                }
            }
            TileOp::View(src, v) => match (self.lay[*src], v) {
                (Lay::Rows { m }, ViewOp::Unsqueeze(1)) if self.shape(*src).len() == 1 => {
                    Lay::Rows { m }
                }
                (Lay::Bottom | Lay::Any, _) => Lay::Any,
                _ => Lay::Smem,
            },
        }
    }

    fn walk(&mut self, body: &[Stmt], changed: &mut bool) {
        for s in body {
            match s {
                Stmt::Assign { dst, op } => {
                    let p = self.pref(*dst, op);
                    let j = join(self.lay[*dst], p);
                    if j != self.lay[*dst] {
                        self.lay[*dst] = j;
                        *changed = true;
                    }
                }
                Stmt::For { body, .. } => self.walk(body, changed),
                Stmt::PagedBlocks {
                    tile, valid, body, ..
                } => {
                    self.lay[*tile] = Lay::Smem;
                    if self.lay[*valid] == Lay::Bottom {
                        self.lay[*valid] = Lay::Any;
                        *changed = true;
                    }
                    self.walk(body, changed)
                }
                _ => {}
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Representations
// ------------------------------------------------------------------------------------------------

/// Storage element type in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Elem {
    F32,
    Bf16,
    I32,
    U8,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::Bf16 => 2,
            Elem::U8 => 1,
        }
    }
    fn cty(self) -> &'static str {
        match self {
            Elem::F32 => "float",
            Elem::Bf16 => "tpla_bf16",
            Elem::I32 => "int",
            Elem::U8 => "unsigned char",
        }
    }
    fn of_dtype(d: DType) -> Elem {
        match d {
            DType::F32 => Elem::F32,
            DType::BF16 => Elem::Bf16,
            DType::I32 => Elem::I32,
            DType::Bool => Elem::U8,
        }
    }
    /// Converts a stored element (C lvalue/expr) to a value of type `vt`.
    fn load(self, e: &str, vt: Vt) -> String {
        let v = match self {
            Elem::F32 => e.to_string(),
            Elem::Bf16 => format!("tpla_bf16_to_f32({e})"),
            Elem::I32 => e.to_string(),
            Elem::U8 => format!("({e} != 0)"),
        };
        let from = match self {
            Elem::F32 | Elem::Bf16 => Vt::F32,
            Elem::I32 => Vt::I32,
            Elem::U8 => Vt::Bool,
        };
        convert(&v, from, vt)
    }
    /// Converts a value of type `vt` to this element type.
    fn store(self, v: &str, vt: Vt) -> String {
        match self {
            Elem::F32 => convert(v, vt, Vt::F32),
            Elem::Bf16 => format!("tpla_f32_to_bf16({})", convert(v, vt, Vt::F32)),
            Elem::I32 => convert(v, vt, Vt::I32),
            Elem::U8 => format!("(unsigned char)({})", convert(v, vt, Vt::Bool)),
        }
    }
}

/// Value type of a tile element in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vt {
    F32,
    I32,
    Bool,
}

impl Vt {
    fn of(d: DType) -> Vt {
        match d {
            DType::F32 | DType::BF16 => Vt::F32,
            DType::I32 => Vt::I32,
            DType::Bool => Vt::Bool,
        }
    }
    fn cty(self) -> &'static str {
        match self {
            Vt::F32 => "float",
            Vt::I32 => "int",
            Vt::Bool => "bool",
        }
    }
    fn zero(self) -> &'static str {
        match self {
            Vt::F32 => "0.0f",
            Vt::I32 => "0",
            Vt::Bool => "false",
        }
    }
}

fn convert(v: &str, from: Vt, to: Vt) -> String {
    match (from, to) {
        (a, b) if a == b => v.to_string(),
        (Vt::F32, Vt::I32) => format!("tpla_f2i({v})"),
        (Vt::F32, Vt::Bool) => format!("(({v}) != 0.0f)"),
        (Vt::I32, Vt::F32) => format!("((float)({v}))"),
        (Vt::I32, Vt::Bool) => format!("(({v}) != 0)"),
        (Vt::Bool, Vt::F32) => format!("(({v}) ? 1.0f : 0.0f)"),
        (Vt::Bool, Vt::I32) => format!("(({v}) ? 1 : 0)"),
        _ => unreachable!(),
    }
}

fn flit(v: f32) -> String {
    if v.is_finite() {
        format!("{v:e}f")
    } else {
        format!("__uint_as_float(0x{:08x}u)", v.to_bits())
    }
}

/// A shared-memory buffer.
#[derive(Clone, Debug)]
struct Buf {
    /// C pointer name (for rings: the current slot's pointer).
    name: String,
    elem: Elem,
    rows: usize,
    /// Elements between rows.
    stride: usize,
    /// XOR swizzle of `chunk` elements (16 bytes) by `row & 7`; 0 when not swizzled.
    chunk: usize,
    /// Column-blocked layout for `wgmma` operands (bf16, rows a multiple of 8, columns of 64):
    /// element `(r, c)` lives in block `c / 64`, a `[rows][64]` tile of 128-byte rows whose
    /// 16-byte chunks are XOR-swizzled by `r & 7`: the hardware's 128-byte swizzle when the block
    /// starts on a 1024-byte boundary.
    blocked: bool,
    /// Ring slots (stages) for paged loops, 1 otherwise.
    slots: usize,
    /// Whether the hazard analysis tracks it (rings manage their own barriers).
    tracked: bool,
    /// Byte offset in dynamic shared memory (assigned at the end).
    offset: usize,
}

impl Buf {
    fn slot_elems(&self) -> usize {
        self.rows * self.stride
    }
    fn bytes(&self) -> usize {
        (self.slot_elems() * self.elem.size() * self.slots).div_ceil(128) * 128
    }
    /// Element index of `(r, c)` (C expressions).
    fn addr(&self, r: &str, c: &str) -> String {
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
    fn blocked_bytes(&self, r: &str, c: &str) -> String {
        format!(
            "((((unsigned)({c})) >> 6) * {blk}u + (unsigned)({r}) * 128u + (((unsigned)({c})) & 63u) * 2u)",
            blk = self.rows * 128
        )
    }
}

fn new_buf(
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

/// A view of a buffer: logical axis `i` indexes physical axis `axes[i]` (0 = rows, 1 = cols,
/// `None` for a unit axis), offset by `off`.
#[derive(Clone, Debug, PartialEq)]
struct View {
    axes: Vec<Option<u8>>,
    off: [usize; 2],
}

impl View {
    fn base(rank: usize) -> View {
        View {
            axes: match rank {
                0 => vec![],
                1 => vec![Some(1)],
                _ => vec![Some(0), Some(1)],
            },
            off: [0, 0],
        }
    }
    fn apply(&self, v: &ViewOp) -> View {
        let mut out = self.clone();
        match v {
            ViewOp::Transpose => out.axes.swap(0, 1),
            ViewOp::Unsqueeze(a) => out.axes.insert(*a, None),
            ViewOp::Slice { axis, start, .. } => {
                if let Some(p) = out.axes[*axis] {
                    out.off[p as usize] += start;
                }
            }
        }
        out
    }
    /// Physical `(row, col)` of logical coordinates.
    fn phys(&self, coords: &[String]) -> (String, String) {
        let mut rc = [self.off[0].to_string(), self.off[1].to_string()];
        for (i, a) in self.axes.iter().enumerate() {
            if let Some(p) = a {
                let c = &coords[i];
                if c != "0" {
                    let p = *p as usize;
                    rc[p] = if rc[p] == "0" {
                        c.clone()
                    } else {
                        format!("({} + {})", rc[p], c)
                    };
                }
            }
        }
        let [r, c] = rc;
        (r, c)
    }
}

#[derive(Clone, Debug)]
enum InlineKind {
    Value(String),
    Iota(Option<u8>),
    Valid { start: String, hi: String },
}

#[derive(Clone, Debug)]
enum Repr {
    None,
    Frag { m: usize, n: usize, arr: String },
    Rows { m: usize, arr: String },
    Smem { buf: usize, view: View },
    Inline { kind: InlineKind, view: View },
}

// ------------------------------------------------------------------------------------------------
// Nodes and barrier insertion
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Node {
    Code {
        text: String,
        reads: Vec<usize>,
        writes: Vec<usize>,
    },
    Barrier,
    Scope {
        head: String,
        body: Vec<Node>,
        tail: String,
        looped: bool,
    },
}

#[derive(Clone, Default, PartialEq, Eq)]
struct Hazards {
    w: BTreeSet<usize>,
    r: BTreeSet<usize>,
}

impl Hazards {
    fn union(&self, o: &Hazards) -> Hazards {
        Hazards {
            w: self.w.union(&o.w).copied().collect(),
            r: self.r.union(&o.r).copied().collect(),
        }
    }
}

/// Bit position of the thread-affinity tag in a hazard resource id (see [`conflict`]).
const AFFINITY_SHIFT: u32 = 32;

/// A buffer access every thread makes only to the elements it owns under element-to-thread
/// mapping `tag` (> 0): the `for (i_ = tid; i_ < n; i_ += threads)` loop over one shape.
fn with_affinity(buf: usize, tag: usize) -> usize {
    buf | (tag << AFFINITY_SHIFT)
}

/// Whether two accesses to hazard resources need a barrier between them: the same resource,
/// unless both carry the same affinity tag (then each thread only meets its own earlier writes).
fn conflict(a: usize, b: usize) -> bool {
    let mask = (1usize << AFFINITY_SHIFT) - 1;
    let (ta, tb) = (a >> AFFINITY_SHIFT, b >> AFFINITY_SHIFT);
    (a & mask) == (b & mask) && !(ta != 0 && ta == tb)
}

fn insert_barriers(nodes: &[Node], st: &mut Hazards) -> Vec<Node> {
    let mut out = Vec::new();
    for n in nodes {
        match n {
            Node::Code { reads, writes, .. } => {
                let hits = |set: &BTreeSet<usize>, x: usize| set.iter().any(|&y| conflict(x, y));
                let hazard = reads.iter().any(|&x| hits(&st.w, x))
                    || writes.iter().any(|&x| hits(&st.w, x) || hits(&st.r, x));
                if hazard {
                    out.push(Node::Barrier);
                    *st = Hazards::default();
                }
                st.r.extend(reads.iter().copied());
                st.w.extend(writes.iter().copied());
                out.push(n.clone());
            }
            Node::Barrier => {
                *st = Hazards::default();
                out.push(Node::Barrier);
            }
            Node::Scope {
                head,
                body,
                tail,
                looped,
            } => {
                if !*looped {
                    let b = insert_barriers(body, st);
                    out.push(Node::Scope {
                        head: head.clone(),
                        body: b,
                        tail: tail.clone(),
                        looped: false,
                    });
                    continue;
                }
                let entry = st.clone();
                let mut init = entry.clone();
                let mut rounds = 0;
                loop {
                    let mut s = init.clone();
                    let b = insert_barriers(body, &mut s);
                    let next = init.union(&s);
                    rounds += 1;
                    if next == init || rounds > 8 {
                        *st = entry.union(&s);
                        out.push(Node::Scope {
                            head: head.clone(),
                            body: b,
                            tail: tail.clone(),
                            looped: true,
                        });
                        break;
                    }
                    init = next;
                }
            }
        }
    }
    out
}

fn print_nodes(nodes: &[Node], depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth);
    for n in nodes {
        match n {
            Node::Code { text, .. } => {
                for line in text.lines() {
                    if line.is_empty() {
                        continue;
                    }
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Node::Barrier => {
                out.push_str(&pad);
                out.push_str("__syncthreads();\n");
            }
            Node::Scope {
                head, body, tail, ..
            } => {
                for line in head.lines() {
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
                print_nodes(body, depth + 1, out);
                for line in tail.lines() {
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
}

const GLOBAL_RES: usize = 1 << 20;

// ------------------------------------------------------------------------------------------------
// Iteration contexts
// ------------------------------------------------------------------------------------------------

/// How an elementwise loop enumerates the elements a thread computes.
#[derive(Clone, Debug)]
enum Iter {
    /// The fragment layout of `[m, n]`.
    Frag { m: usize, n: usize },
    /// The row layout of `m` rows; `rank` is the result's rank (1: `[m]`, 2: `[m, 1]`).
    Rows { m: usize, rank: usize },
    /// Block-strided over all elements of `shape`.
    Flat { shape: Vec<usize> },
}

/// The loop variables available inside an iteration.
struct Ctx {
    coords: Vec<String>,
    frag_slot: String,
    row_slot: String,
}

enum Access {
    Reg(String),
    Smem(usize, View),
    Inline(InlineKind, View),
}

// ------------------------------------------------------------------------------------------------
// The lowering
// ------------------------------------------------------------------------------------------------

struct Lower<'a> {
    k: &'a Kernel,
    target: Target,
    geo: Geo,
    info: Info,
    repr: Vec<Repr>,
    bufs: Vec<Buf>,
    shadows: HashMap<(TileId, Elem), usize>,
    /// Declarations at function scope (register arrays, loop state).
    decls: Vec<String>,
    /// Warp-geometry constants needed.
    geo_m: BTreeSet<usize>,
    geo_mn: BTreeSet<(usize, usize)>,
    uniq: usize,
    stages_cap: usize,
    stages_used: Vec<usize>,
    /// Per paged loop (keyed by its `tile`): ring buffer, name prefix, stages.
    paged: HashMap<TileId, (usize, String, usize)>,
    /// Nesting depth of the block being lowered.
    depth: usize,
    /// Affinity tags of flat element-to-thread mappings, by shape (see [`conflict`]).
    affinity: HashMap<Vec<usize>, usize>,
    /// A paged loop's next-block copy waiting for the first warpgroup gemm at the given depth
    /// (the loop body's own level) to issue it while the tensor cores run.
    deferred_prefetch: Option<(String, usize)>,
    /// `wgmma` instruction variants used: `(n, A form, B N-major)`.
    wgmma_fns: BTreeSet<(usize, WgmmaForm, bool)>,
}

fn nt_total(geo: &Geo) -> usize {
    geo.nw * 32
}

impl<'a> Lower<'a> {
    fn fresh(&mut self, p: &str) -> String {
        self.uniq += 1;
        format!("{p}{}", self.uniq)
    }

    fn tile_vt(&self, t: TileId) -> Vt {
        Vt::of(self.k.tiles[t].dtype)
    }

    fn shape(&self, t: TileId) -> Vec<usize> {
        self.k.tiles[t].shape.clone()
    }

    fn norm(shape: &[usize]) -> (usize, usize) {
        match shape.len() {
            0 => (1, 1),
            1 => (1, shape[0]),
            _ => (shape[0], shape[1]),
        }
    }

    fn add_buf(
        &mut self,
        prefix: &str,
        elem: Elem,
        shape: &[usize],
        slots: usize,
        tracked: bool,
    ) -> usize {
        let (r, c) = Self::norm(shape);
        let name = self.fresh(prefix);
        self.bufs
            .push(new_buf(name, elem, (r, c), slots, tracked, self.geo.wg));
        self.bufs.len() - 1
    }

    // -------------------------------------------------------------- representation resolution

    fn resolve(&mut self, lay: &[Lay]) {
        let n = self.k.tiles.len();
        self.repr = vec![Repr::None; n];
        // Program order guarantees view sources are resolved first when walking statements.
        let body = self.k.body.clone();
        let mut done = vec![false; n];
        self.resolve_block(&body, lay, &mut done);
    }

    fn resolve_block(&mut self, body: &[Stmt], lay: &[Lay], done: &mut [bool]) {
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
                    if let ParamKind::Paged { dtype, row, .. } = self.k.params[*cache].kind {
                        let elem = Elem::of_dtype(dtype);
                        let vec_ok = self.target.has_tensor_cores()
                            && (row * elem.size()).is_multiple_of(16);
                        let st = if vec_ok {
                            (*stages).clamp(1, self.stages_cap.max(1))
                        } else {
                            1
                        };
                        let id = self.fresh("pb");
                        let ring =
                            self.add_buf(&format!("{id}_ring"), elem, &[*block, row], st, false);
                        let cur = format!("{id}_cur");
                        self.bufs[ring].name = cur.clone();
                        let hi = format!("{id}_hi");
                        self.decls.push(format!(
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
                            },
                            view: View::base(1),
                        };
                        self.paged.insert(*tile, (ring, id, st));
                    }
                    self.resolve_block(body, lay, done)
                }
                _ => {}
            }
        }
    }

    fn resolve_tile(&mut self, t: TileId, op: &TileOp, lay: &[Lay]) {
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
                self.decls.push(format!(
                    "{} {arr}[{}];",
                    self.tile_vt(t).cty(),
                    self.geo.frag_regs(m, n)
                ));
                self.geo_m.insert(m);
                self.geo_mn.insert((m, n));
                Repr::Frag { m, n, arr }
            }
            Lay::Rows { m } => {
                let arr = format!("t{t}");
                self.decls.push(format!(
                    "{} {arr}[{}];",
                    self.tile_vt(t).cty(),
                    self.geo.mt(m) * 2
                ));
                self.geo_m.insert(m);
                Repr::Rows { m, arr }
            }
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
    fn shadow_elem(&self, t: TileId, mma_bf16: bool) -> Elem {
        match self.k.tiles[t].dtype {
            DType::F32 | DType::BF16 if mma_bf16 => Elem::Bf16,
            DType::F32 | DType::BF16 => Elem::F32,
            d => Elem::of_dtype(d),
        }
    }

    fn shadow_buf(&mut self, t: TileId, elem: Elem) -> usize {
        if let Some(b) = self.shadows.get(&(t, elem)) {
            return *b;
        }
        let shape = self.shape(t);
        let b = self.add_buf(&format!("sh_t{t}_"), elem, &shape, 1, true);
        self.shadows.insert((t, elem), b);
        b
    }

    // -------------------------------------------------------------- expressions

    fn idx(&self, i: &Index) -> String {
        match i {
            Index::Const(c) => {
                let v = *c as i32;
                if v < 0 {
                    format!("({v})")
                } else {
                    v.to_string()
                }
            }
            Index::ProgramId(a) => {
                ["(int)blockIdx.x", "(int)blockIdx.y", "(int)blockIdx.z"][*a as usize].to_string()
            }
            Index::Dim(d) => format!("d{d}"),
            Index::Var(v) => format!("s{v}"),
            Index::Bin(op, a, b) => {
                let f = match op {
                    IndexOp::Add => "tpla_iadd",
                    IndexOp::Sub => "tpla_isub",
                    IndexOp::Mul => "tpla_imul",
                    IndexOp::Div => "tpla_idiv",
                    IndexOp::Rem => "tpla_irem",
                    IndexOp::CeilDiv => "tpla_icdiv",
                    IndexOp::Min => "tpla_imin",
                    IndexOp::Max => "tpla_imax",
                };
                format!("{f}({}, {})", self.idx(a), self.idx(b))
            }
            Index::SeqLen { cache, batch } => format!(
                "tpla_ld_i32(p{cache}_lens, {}, p{cache}_nb)",
                self.idx(batch)
            ),
            Index::PageSize(c) => format!("p{c}_ps"),
            Index::Load { param, index } => {
                let dims = self.tensor_dims(*param);
                let idx: Vec<String> = index.iter().map(|i| self.idx(i)).collect();
                let (inb, off) = self.offset_expr(&dims, &idx);
                format!("(({inb}) ? p{param}[{off}] : 0)")
            }
            Index::Scalar(p) => format!("p{p}"),
        }
    }

    fn fscalar(&self, s: &FScalar) -> String {
        match s {
            FScalar::Lit(v) => flit(*v),
            FScalar::Param(p) => format!("p{p}"),
            FScalar::FromIndex(i) => format!("((float)({}))", self.idx(i)),
            FScalar::Bin(op, a, b) => float_bin(*op, &self.fscalar(a), &self.fscalar(b)),
            FScalar::Unary(op, a) => float_un(*op, &self.fscalar(a)),
        }
    }

    /// A scalar operand as a value of type `vt`.
    fn scalar_operand(&self, o: &Operand, vt: Vt) -> String {
        match o {
            Operand::Scalar(s) => convert(&self.fscalar(s), Vt::F32, vt),
            Operand::Int(i) => convert(&self.idx(i), Vt::I32, vt),
            Operand::Tile(_) => unreachable!("tile operand"),
        }
    }

    /// C expressions for a tensor parameter's dimensions.
    fn tensor_dims(&self, p: ParamId) -> Vec<String> {
        match &self.k.params[p].kind {
            ParamKind::Tensor { dims, .. } => dims
                .iter()
                .map(|d| match d {
                    ParamDim::Const(c) => c.to_string(),
                    ParamDim::Runtime(r) => format!("d{r}"),
                })
                .collect(),
            _ => vec![],
        }
    }

    /// `(in_bounds, element_offset)` for index expressions into a dense tensor.
    fn offset_expr(&self, dims: &[String], idx: &[String]) -> (String, String) {
        let mut inb = Vec::new();
        let mut off = String::new();
        for (d, (dim, i)) in dims.iter().zip(idx).enumerate() {
            inb.push(format!("(unsigned)({i}) < (unsigned)({dim})"));
            if d == 0 {
                off = format!("(tpla_i64)({i})");
            } else {
                off = format!("({off} * {dim} + ({i}))");
            }
        }
        if dims.is_empty() {
            return ("true".into(), "0".into());
        }
        (inb.join(" && "), off)
    }

    // -------------------------------------------------------------- iteration

    fn iter_of(&self, t: TileId) -> Iter {
        match &self.repr[t] {
            Repr::Frag { m, n, .. } => Iter::Frag { m: *m, n: *n },
            Repr::Rows { m, .. } => Iter::Rows {
                m: *m,
                rank: self.k.tiles[t].shape.len(),
            },
            _ => Iter::Flat {
                shape: self.shape(t),
            },
        }
    }

    /// Opens the loops of an iteration; returns (head, tail, ctx).
    fn open(&self, it: &Iter) -> (String, String, Ctx) {
        match it {
            Iter::Frag { m, n } => {
                let (mt, ntl) = (self.geo.mt(*m), self.geo.ntl(*m, *n));
                let head = format!(
                    "#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int ni = 0; ni < {ntl}; ++ni) {{\n#pragma unroll\nfor (int e = 0; e < 4; ++e) {{\n    const int r_ = (wm{m} * {mt} + mi) * 16 + (lane >> 2) + ((e >> 1) << 3);\n    const int c_ = (wn{m}_{n} * {ntl} + ni) * 8 + ((lane & 3) << 1) + (e & 1);\n    (void)r_; (void)c_;\n"
                );
                (
                    head,
                    "}}}".into(),
                    Ctx {
                        coords: vec!["r_".into(), "c_".into()],
                        frag_slot: format!("((mi * {ntl} + ni) * 4 + e)"),
                        row_slot: "(mi * 2 + (e >> 1))".into(),
                    },
                )
            }
            Iter::Rows { m, rank } => {
                let mt = self.geo.mt(*m);
                let head = format!(
                    "#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int h = 0; h < 2; ++h) {{\n    const int r_ = (wm{m} * {mt} + mi) * 16 + (lane >> 2) + (h << 3);\n    (void)r_;\n"
                );
                let coords = if *rank == 1 {
                    vec!["r_".into()]
                } else {
                    vec!["r_".into(), "0".into()]
                };
                (
                    head,
                    "}}".into(),
                    Ctx {
                        coords,
                        frag_slot: String::new(),
                        row_slot: "(mi * 2 + h)".into(),
                    },
                )
            }
            Iter::Flat { shape } => {
                let total: usize = shape.iter().product();
                let nt = nt_total(&self.geo);
                let (head, coords) = match shape.len() {
                    0 => (
                        format!("for (int i_ = tid; i_ < 1; i_ += {nt}) {{\n"),
                        vec![],
                    ),
                    1 => (
                        format!("for (int i_ = tid; i_ < {total}; i_ += {nt}) {{\n"),
                        vec!["i_".into()],
                    ),
                    _ => (
                        format!(
                            "for (int i_ = tid; i_ < {total}; i_ += {nt}) {{\n    const int r_ = i_ / {c}, c_ = i_ % {c};\n",
                            c = shape[1]
                        ),
                        vec!["r_".into(), "c_".into()],
                    ),
                };
                (
                    head,
                    "}".into(),
                    Ctx {
                        coords,
                        frag_slot: String::new(),
                        row_slot: String::new(),
                    },
                )
            }
        }
    }

    /// How tile `x` is read inside iteration `it` over a result of shape `res`; `None` when its
    /// registers are not owned by the iterating thread (the caller shadows it).
    fn direct_access(&self, x: TileId, it: &Iter, res: &[usize]) -> Option<Access> {
        let xs = &self.k.tiles[x].shape;
        match (&self.repr[x], it) {
            (Repr::Frag { m, n, arr }, Iter::Frag { m: m2, n: n2 })
                if m == m2 && n == n2 && xs.as_slice() == res =>
            {
                Some(Access::Reg(format!("{arr}[##F]")))
            }
            (Repr::Rows { m, arr }, Iter::Frag { m: m2, .. })
                if m == m2 && xs.as_slice() == [*m, 1] =>
            {
                Some(Access::Reg(format!("{arr}[##R]")))
            }
            (Repr::Rows { m, arr }, Iter::Rows { m: m2, .. })
                if m == m2 && xs.as_slice() == res =>
            {
                Some(Access::Reg(format!("{arr}[##R]")))
            }
            (Repr::Smem { buf, view }, _) => Some(Access::Smem(*buf, view.clone())),
            (Repr::Inline { kind, view }, _) => Some(Access::Inline(kind.clone(), view.clone())),
            (Repr::None, _) => Some(Access::Inline(
                InlineKind::Value(self.tile_vt(x).zero().into()),
                View::base(xs.len()),
            )),
            _ => None,
        }
    }

    /// Access to `x` from `it`, emitting a shadow copy into `out` when needed. Returns the access
    /// and the tracked buffers it reads.
    fn access(
        &mut self,
        x: TileId,
        it: &Iter,
        res: &[usize],
        out: &mut Vec<Node>,
    ) -> (Access, Vec<usize>) {
        if let Some(a) = self.direct_access(x, it, res) {
            let reads = match &a {
                Access::Smem(b, _) if self.bufs[*b].tracked => vec![*b],
                _ => vec![],
            };
            return (a, reads);
        }
        let elem = self.shadow_elem(x, false);
        let b = self.materialize(x, elem, out);
        (
            Access::Smem(b, View::base(self.k.tiles[x].shape.len())),
            vec![b],
        )
    }

    /// Copies a register tile into its shadow buffer (one writer per element).
    fn materialize(&mut self, x: TileId, elem: Elem, out: &mut Vec<Node>) -> usize {
        let b = self.shadow_buf(x, elem);
        let vt = self.tile_vt(x);
        let (it, guard) = match &self.repr[x] {
            Repr::Frag { m, n, .. } => (Iter::Frag { m: *m, n: *n }, format!("wr{m}_{n} == 0")),
            Repr::Rows { m, .. } => (
                Iter::Rows {
                    m: *m,
                    rank: self.k.tiles[x].shape.len(),
                },
                format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(*m)),
            ),
            _ => unreachable!("only register tiles are shadowed"),
        };
        let shape = self.shape(x);
        let (head, tail, ctx) = self.open(&it);
        let src = self.read(
            &self.direct_access(x, &it, &shape).expect("own layout"),
            &ctx,
            &shape,
            &shape,
            vt,
        );
        let view = View::base(shape.len());
        let (r, c) = view.phys(&ctx.coords);
        let buf = &self.bufs[b];
        let text = format!(
            "if ({guard}) {{\n{head}    {}[{}] = {};\n{tail}\n}}\n",
            buf.name,
            buf.addr(&r, &c),
            elem.store(&src, vt)
        );
        out.push(Node::Code {
            text,
            reads: vec![],
            writes: vec![b],
        });
        b
    }

    /// The value of an access at the iteration's coordinates (with broadcasting from `xs` to the
    /// result shape `res`), converted to `vt`.
    fn read(&self, a: &Access, ctx: &Ctx, xs: &[usize], res: &[usize], vt: Vt) -> String {
        let coords: Vec<String> = (0..xs.len())
            .map(|i| {
                if xs[i] == 1 {
                    "0".to_string()
                } else {
                    ctx.coords[res.len() - xs.len() + i].clone()
                }
            })
            .collect();
        match a {
            Access::Reg(s) => s
                .replace("##F", &ctx.frag_slot)
                .replace("##R", &ctx.row_slot),
            Access::Smem(b, view) => {
                let (r, c) = view.phys(&coords);
                let buf = &self.bufs[*b];
                buf.elem
                    .load(&format!("{}[{}]", buf.name, buf.addr(&r, &c)), vt)
            }
            Access::Inline(kind, view) => {
                let (r, c) = view.phys(&coords);
                match kind {
                    InlineKind::Value(v) => v.clone(),
                    InlineKind::Iota(Some(0)) => convert(&r, Vt::I32, vt),
                    InlineKind::Iota(Some(_)) => convert(&c, Vt::I32, vt),
                    InlineKind::Iota(None) => convert("0", Vt::I32, vt),
                    InlineKind::Valid { start, hi } => {
                        convert(&format!("(tpla_iadd({start}, {c}) < {hi})"), Vt::Bool, vt)
                    }
                }
            }
        }
    }

    /// Where the iteration writes element values of `dst`.
    fn write(&self, dst: TileId, ctx: &Ctx, v: &str) -> String {
        let vt = self.tile_vt(dst);
        match &self.repr[dst] {
            Repr::Frag { arr, .. } => format!("{arr}[{}] = {v};", ctx.frag_slot),
            Repr::Rows { arr, .. } => format!("{arr}[{}] = {v};", ctx.row_slot),
            Repr::Smem { buf, view } => {
                let (r, c) = view.phys(&ctx.coords);
                let b = &self.bufs[*buf];
                format!("{}[{}] = {};", b.name, b.addr(&r, &c), b.elem.store(v, vt))
            }
            Repr::Inline { .. } | Repr::None => String::new(),
        }
    }

    fn dst_writes(&self, dst: TileId) -> Vec<usize> {
        match &self.repr[dst] {
            Repr::Smem { buf, .. } if self.bufs[*buf].tracked => vec![*buf],
            _ => vec![],
        }
    }

    // -------------------------------------------------------------- statements

    fn lower_block(&mut self, body: &[Stmt]) -> Result<Vec<Node>, IrError> {
        self.depth += 1;
        let r = self.lower_block_at_depth(body);
        self.depth -= 1;
        r
    }

    fn lower_block_at_depth(&mut self, body: &[Stmt]) -> Result<Vec<Node>, IrError> {
        let mut out = Vec::new();
        let fused = self.find_fusions(body);
        for s in body {
            match s {
                Stmt::Let { dst, value } => out.push(Node::Code {
                    text: format!("s{dst} = {};\n", self.idx(value)),
                    reads: self.index_reads(value),
                    writes: vec![],
                }),
                Stmt::Assign { dst, op } => {
                    if let TileOp::Gemm { .. } = op {
                        if fused.iter().any(|f| f.gemm == *dst) {
                            continue;
                        }
                    }
                    if let Some(f) = fused.iter().find(|f| {
                        f.add_dst == *dst
                            && matches!(op, TileOp::Binary(BinaryOp::Add, ..))
                            && operand_tiles(op).contains(&f.gemm)
                    }) {
                        let (a, b, x) = (f.a, f.b, f.init);
                        self.lower_gemm(*dst, a, b, Some(x), &mut out)?;
                        continue;
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
                    out.push(Node::Scope {
                        head: format!(
                            "for (; {i} < {e}; {i} = tpla_iadd({i}, 1)) {{\n    s{var} = {i};"
                        ),
                        body: inner,
                        tail: "}".into(),
                        looped: true,
                    });
                }
                Stmt::PagedBlocks { .. } => self.lower_paged_blocks(s, &mut out)?,
                Stmt::PagedStore {
                    cache,
                    batch,
                    start,
                    src,
                } => self.lower_paged_store(*cache, batch, start, *src, &mut out)?,
            }
        }
        Ok(out)
    }

    fn index_reads(&self, i: &Index) -> Vec<usize> {
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

    fn find_fusions(&self, body: &[Stmt]) -> Vec<Fusion> {
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

    fn lower_assign(
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
            TileOp::Reduce { op: rop, src, axis } => self.lower_reduce(dst, *rop, *src, *axis, out),
            _ => {
                if matches!(self.repr[dst], Repr::Inline { .. } | Repr::None) {
                    return Ok(());
                }
                self.lower_elementwise(dst, op, out);
                Ok(())
            }
        }
    }

    fn lower_elementwise(&mut self, dst: TileId, op: &TileOp, out: &mut Vec<Node>) {
        let it = self.iter_of(dst);
        let res = self.shape(dst);
        // A flat loop writing a shared tile element-for-element: operands of the same shape read
        // the same way are thread-private dependencies (no barrier between such ops).
        let base = View::base(res.len());
        let tag = match (&it, &self.repr[dst]) {
            (Iter::Flat { shape }, Repr::Smem { view, .. }) if *view == base => {
                Some(self.affinity_tag(shape))
            }
            _ => None,
        };
        let mut reads = Vec::new();
        let mut acc: HashMap<TileId, Access> = HashMap::new();
        for t in operand_tiles(op) {
            if acc.contains_key(&t) {
                continue;
            }
            let (a, mut r) = self.access(t, &it, &res, out);
            if let (Some(tag), Access::Smem(b, v)) = (tag, &a) {
                if *v == base && self.shape(t) == res {
                    r.iter_mut()
                        .filter(|x| **x == *b)
                        .for_each(|x| *x = with_affinity(*x, tag));
                }
            }
            reads.extend(r);
            acc.insert(t, a);
        }
        let (head, tail, ctx) = self.open(&it);
        let val = self.ew_value(dst, op, &ctx, &acc, &res);
        let w = self.write(dst, &ctx, &val);
        let text = format!("{head}    {w}\n{tail}\n");
        let mut writes = self.dst_writes(dst);
        if let Some(tag) = tag {
            writes.iter_mut().for_each(|x| *x = with_affinity(*x, tag));
        }
        out.push(Node::Code {
            text,
            reads,
            writes,
        });
    }

    /// The affinity tag (> 0) of flat loops over `shape`.
    fn affinity_tag(&mut self, shape: &[usize]) -> usize {
        let n = self.affinity.len() + 1;
        *self.affinity.entry(shape.to_vec()).or_insert(n)
    }

    fn operand_value(
        &self,
        o: &Operand,
        ctx: &Ctx,
        acc: &HashMap<TileId, Access>,
        res: &[usize],
        vt: Vt,
    ) -> String {
        match o {
            Operand::Tile(t) => {
                let a = &acc[t];
                self.read(a, ctx, &self.k.tiles[*t].shape, res, vt)
            }
            _ => self.scalar_operand(o, vt),
        }
    }

    fn operand_class(&self, o: &Operand) -> Vt {
        match o {
            Operand::Tile(t) => self.tile_vt(*t),
            Operand::Scalar(_) => Vt::F32,
            Operand::Int(_) => Vt::I32,
        }
    }

    fn ew_value(
        &self,
        dst: TileId,
        op: &TileOp,
        ctx: &Ctx,
        acc: &HashMap<TileId, Access>,
        res: &[usize],
    ) -> String {
        let vt = self.tile_vt(dst);
        match op {
            TileOp::Full(o) => self.scalar_operand(o, vt),
            TileOp::Iota { axis } => convert(&ctx.coords[*axis], Vt::I32, vt),
            TileOp::Unary(u, t) => {
                let x = self.read(&acc[t], ctx, &self.k.tiles[*t].shape, res, Vt::F32);
                float_un(*u, &x)
            }
            TileOp::Cast(t) => {
                let from = self.tile_vt(*t);
                let x = self.read(&acc[t], ctx, &self.k.tiles[*t].shape, res, from);
                convert(&x, from, vt)
            }
            TileOp::Binary(b, x, y) => {
                let cls = if self.operand_class(x) == Vt::I32 || self.operand_class(y) == Vt::I32 {
                    if matches!(x, Operand::Tile(_)) || matches!(y, Operand::Tile(_)) {
                        vt
                    } else {
                        Vt::I32
                    }
                } else {
                    Vt::F32
                };
                let cls = if vt == Vt::I32 { Vt::I32 } else { cls };
                let a = self.operand_value(x, ctx, acc, res, cls);
                let c = self.operand_value(y, ctx, acc, res, cls);
                if cls == Vt::I32 {
                    let f = match b {
                        BinaryOp::Add => "tpla_iadd",
                        BinaryOp::Sub => "tpla_isub",
                        BinaryOp::Mul => "tpla_imul",
                        BinaryOp::Div => "tpla_idiv",
                        BinaryOp::Max => "tpla_imax",
                        BinaryOp::Min => "tpla_imin",
                    };
                    format!("{f}({a}, {c})")
                } else {
                    float_bin(*b, &a, &c)
                }
            }
            TileOp::Compare(c, x, y) => {
                let tile_cls = [x, y].iter().find_map(|o| match o {
                    Operand::Tile(t) => Some(self.tile_vt(*t)),
                    _ => None,
                });
                let cls = tile_cls.unwrap_or(Vt::F32);
                let a = self.operand_value(x, ctx, acc, res, cls);
                let b = self.operand_value(y, ctx, acc, res, cls);
                let sym = match c {
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                };
                convert(&format!("(({a}) {sym} ({b}))"), Vt::Bool, vt)
            }
            TileOp::Select {
                mask,
                on_true,
                on_false,
            } => {
                let m = self.read(&acc[mask], ctx, &self.k.tiles[*mask].shape, res, Vt::Bool);
                let a = self.operand_value(on_true, ctx, acc, res, vt);
                let b = self.operand_value(on_false, ctx, acc, res, vt);
                format!("(({m}) ? ({a}) : ({b}))")
            }
            _ => unreachable!("not elementwise"),
        }
    }

    // -------------------------------------------------------------- tensor regions

    /// Tensor index expressions of a region for tile coordinates `coords` (tile rank).
    fn region_index(&self, index: &[Slice], coords: &[String]) -> Vec<String> {
        let mut span = 0;
        index
            .iter()
            .map(|s| match s {
                Slice::At(i) => self.idx(i),
                Slice::Span { start, .. } => {
                    let c = &coords[span];
                    span += 1;
                    format!("tpla_iadd({}, {c})", self.idx(start))
                }
            })
            .collect()
    }

    /// Whether the tile's last axis runs along the tensor's last (contiguous) dimension.
    fn last_contiguous(index: &[Slice]) -> bool {
        matches!(index.last(), Some(Slice::Span { .. }))
    }

    fn tensor_dtype(&self, p: ParamId) -> DType {
        match &self.k.params[p].kind {
            ParamKind::Tensor { dtype, .. } | ParamKind::Paged { dtype, .. } => *dtype,
            ParamKind::Scalar { dtype } => *dtype,
        }
    }

    fn lower_load(
        &mut self,
        dst: TileId,
        param: ParamId,
        index: &[Slice],
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let gdt = self.tensor_dtype(param);
        let gel = Elem::of_dtype(gdt);
        let vt = self.tile_vt(dst);
        let dims = self.tensor_dims(param);
        let shape = self.shape(dst);
        let Repr::Smem { buf, view } = self.repr[dst].clone() else {
            // Register destinations: per-element masked loads in the tile's own layout.
            let it = self.iter_of(dst);
            let (head, tail, ctx) = self.open(&it);
            let idx = self.region_index(index, &ctx.coords);
            let (inb, off) = self.offset_expr(&dims, &idx);
            let v = format!(
                "(({inb}) ? {} : {})",
                gel.load(&format!("p{param}[{off}]"), vt),
                vt.zero()
            );
            let w = self.write(dst, &ctx, &v);
            out.push(Node::Code {
                text: format!("{head}    {w}\n{tail}\n"),
                reads: vec![GLOBAL_RES + param],
                writes: vec![],
            });
            return Ok(());
        };
        let b = self.bufs[buf].clone();
        let (r, c) = Self::norm(&shape);
        let v = 16 / gel.size();
        let nt = nt_total(&self.geo);
        let text = if !shape.is_empty()
            && Self::last_contiguous(index)
            && b.elem == gel
            && c % v == 0
            && view == View::base(shape.len())
        {
            let cpr = c / v;
            let coords: Vec<String> = if shape.len() == 1 {
                vec!["c_".into()]
            } else {
                vec!["r_".into(), "c_".into()]
            };
            let idx = self.region_index(index, &coords);
            let nd = dims.len();
            let (row_inb, _) = self.offset_expr(&dims[..nd - 1], &idx[..nd - 1]);
            let (_, off) = self.offset_expr(&dims, &idx);
            let last = &idx[nd - 1];
            let dl = &dims[nd - 1];
            format!(
                "for (int i_ = tid; i_ < {total}; i_ += {nt}) {{
    const int r_ = i_ / {cpr}, c_ = (i_ % {cpr}) * {v};
    (void)r_;
    const int c0_ = {last};
    const bool row_ok_ = {row_inb};
    {cty}* d_ = &{name}[{addr}];
    const {cty}* g_ = p{param};
    if (row_ok_ && c0_ >= 0 && c0_ <= {dl} - {v}) {{
        const tpla_i64 o_ = {off};
        if ((((unsigned long long)(g_ + o_)) & 15ull) == 0ull) {{
            *(uint4*)d_ = *(const uint4*)(g_ + o_);
            continue;
        }}
    }}
#pragma unroll
    for (int v_ = 0; v_ < {v}; ++v_) {{
        const int cc_ = c0_ + v_;
        {cty} x_ = 0;
        if (row_ok_ && cc_ >= 0 && cc_ < {dl}) x_ = g_[{off} + v_];
        d_[v_] = x_;
    }}
}}
",
                total = r * cpr,
                cty = gel.cty(),
                name = b.name,
                addr = b.addr("r_", "c_"),
                row_inb = if row_inb.is_empty() {
                    "true".into()
                } else {
                    row_inb
                },
            )
        } else {
            let it = Iter::Flat {
                shape: shape.clone(),
            };
            let (head, tail, ctx) = self.open(&it);
            let idx = self.region_index(index, &ctx.coords);
            let (inb, off) = self.offset_expr(&dims, &idx);
            let val = format!(
                "(({inb}) ? {} : {})",
                gel.load(&format!("p{param}[{off}]"), vt),
                vt.zero()
            );
            let w = self.write(dst, &ctx, &val);
            format!("{head}    {w}\n{tail}\n")
        };
        out.push(Node::Code {
            text,
            reads: vec![GLOBAL_RES + param],
            writes: vec![buf],
        });
        Ok(())
    }

    fn lower_store(
        &mut self,
        param: ParamId,
        index: &[Slice],
        src: TileId,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let gdt = self.tensor_dtype(param);
        let gel = Elem::of_dtype(gdt);
        let dims = self.tensor_dims(param);
        let shape = self.shape(src);
        let vt = self.tile_vt(src);
        let nt = nt_total(&self.geo);
        match self.repr[src].clone() {
            Repr::Smem { buf, view }
                if view == View::base(shape.len())
                    && !shape.is_empty()
                    && Self::last_contiguous(index)
                    && self.bufs[buf].elem == gel
                    && Self::norm(&shape).1 % (16 / gel.size()) == 0 =>
            {
                let b = self.bufs[buf].clone();
                let (r, c) = Self::norm(&shape);
                let v = 16 / gel.size();
                let cpr = c / v;
                let coords: Vec<String> = if shape.len() == 1 {
                    vec!["c_".into()]
                } else {
                    vec!["r_".into(), "c_".into()]
                };
                let idx = self.region_index(index, &coords);
                let nd = dims.len();
                let (row_inb, _) = self.offset_expr(&dims[..nd - 1], &idx[..nd - 1]);
                let (_, off) = self.offset_expr(&dims, &idx);
                let last = &idx[nd - 1];
                let dl = &dims[nd - 1];
                let text = format!(
                    "for (int i_ = tid; i_ < {total}; i_ += {nt}) {{
    const int r_ = i_ / {cpr}, c_ = (i_ % {cpr}) * {v};
    (void)r_;
    const int c0_ = {last};
    const bool row_ok_ = {row_inb};
    if (!row_ok_) continue;
    const {cty}* s_ = &{name}[{addr}];
    {cty}* g_ = p{param};
    const tpla_i64 o_ = {off};
    if (c0_ >= 0 && c0_ <= {dl} - {v} && (((unsigned long long)(g_ + o_)) & 15ull) == 0ull) {{
        *(uint4*)(g_ + o_) = *(const uint4*)s_;
        continue;
    }}
#pragma unroll
    for (int v_ = 0; v_ < {v}; ++v_) {{
        const int cc_ = c0_ + v_;
        if (cc_ >= 0 && cc_ < {dl}) g_[o_ + v_] = s_[v_];
    }}
}}
",
                    total = r * cpr,
                    cty = gel.cty(),
                    name = b.name,
                    addr = b.addr("r_", "c_"),
                    row_inb = if row_inb.is_empty() {
                        "true".into()
                    } else {
                        row_inb
                    },
                );
                out.push(Node::Code {
                    text,
                    reads: vec![buf],
                    writes: vec![GLOBAL_RES + param],
                });
            }
            _ => {
                let it = self.iter_of(src);
                let guard = self.writer_guard(src);
                let (a, reads) = self.access(src, &it, &shape, out);
                let (head, tail, ctx) = self.open(&it);
                let v = self.read(&a, &ctx, &shape, &shape, vt);
                let idx = self.region_index(index, &ctx.coords);
                let (inb, off) = self.offset_expr(&dims, &idx);
                let text = format!(
                    "if ({guard}) {{\n{head}    if ({inb}) p{param}[{off}] = {};\n{tail}\n}}\n",
                    gel.store(&v, vt)
                );
                out.push(Node::Code {
                    text,
                    reads,
                    writes: vec![GLOBAL_RES + param],
                });
            }
        }
        Ok(())
    }

    /// A predicate selecting one thread per element of a (possibly replicated) tile.
    fn writer_guard(&self, t: TileId) -> String {
        match &self.repr[t] {
            Repr::Frag { m, n, .. } => format!("wr{m}_{n} == 0"),
            Repr::Rows { m, .. } => format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(*m)),
            _ => "true".into(),
        }
    }

    // -------------------------------------------------------------- reductions

    fn lower_reduce(
        &mut self,
        dst: TileId,
        op: ReduceOp,
        src: TileId,
        axis: usize,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let (init, f, quad, warpf) = match op {
            ReduceOp::Sum => ("0.0f", "({a} + {b})", "tpla_quad_sum", "tpla_warp_sum"),
            ReduceOp::Max => (
                "__uint_as_float(0xff800000u)",
                "tpla_fmax({a}, {b})",
                "tpla_quad_max",
                "tpla_warp_max",
            ),
        };
        let comb = |a: &str, b: &str| f.replace("{a}", a).replace("{b}", b);
        if matches!(self.repr[dst], Repr::Inline { .. } | Repr::None) {
            return Ok(());
        }
        // Fragment rows -> row registers (or a shared tile), in registers and shuffles.
        if let (Repr::Frag { m, n, arr }, 1) = (self.repr[src].clone(), axis) {
            let (mt, ntl, wn) = (self.geo.mt(m), self.geo.ntl(m, n), self.geo.wn(m, n));
            let mut text = format!(
                "{{\nfloat red_[{sz}];\n#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int h = 0; h < 2; ++h) {{\n    float v_ = {init};\n#pragma unroll\n    for (int ni = 0; ni < {ntl}; ++ni) {{\n        v_ = {c1};\n        v_ = {c2};\n    }}\n    red_[mi * 2 + h] = {quad}(v_);\n}}}}\n",
                sz = mt * 2,
                c1 = comb("v_", &format!("{arr}[(mi * {ntl} + ni) * 4 + h * 2]")),
                c2 = comb("v_", &format!("{arr}[(mi * {ntl} + ni) * 4 + h * 2 + 1]")),
            );
            let dst_rows = matches!(&self.repr[dst], Repr::Rows { m: m2, .. } if *m2 == m);
            if wn == 1 {
                let it = Iter::Rows {
                    m,
                    rank: self.k.tiles[dst].shape.len(),
                };
                let (head, tail, ctx) = self.open(&it);
                let w = self.write(dst, &ctx, "red_[mi * 2 + h]");
                let guard = if dst_rows {
                    "true".to_string()
                } else {
                    format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(m))
                };
                text.push_str(&format!("if ({guard}) {{\n{head}    {w}\n{tail}\n}}\n}}\n"));
                out.push(Node::Code {
                    text,
                    reads: vec![],
                    writes: self.dst_writes(dst),
                });
            } else {
                let scratch = self.add_buf("red", Elem::F32, &[wn, m], 1, true);
                let sname = self.bufs[scratch].name.clone();
                text.push_str(&format!(
                    "if ((lane & 3) == 0 && wr{m}_{n} == 0) {{\n#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int h = 0; h < 2; ++h) {{\n    const int r_ = (wm{m} * {mt} + mi) * 16 + (lane >> 2) + (h << 3);\n    {sname}[wn{m}_{n} * {m} + r_] = red_[mi * 2 + h];\n}}}}\n}}\n}}\n"
                ));
                out.push(Node::Code {
                    text,
                    reads: vec![],
                    writes: vec![scratch],
                });
                let it = Iter::Rows {
                    m,
                    rank: self.k.tiles[dst].shape.len(),
                };
                let (head, tail, ctx) = self.open(&it);
                let mut v = format!("{sname}[r_]");
                for w in 1..wn {
                    v = comb(&v, &format!("{sname}[{} + r_]", w * m));
                }
                let w = self.write(dst, &ctx, &v);
                let guard = if dst_rows {
                    "true".to_string()
                } else {
                    format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(m))
                };
                out.push(Node::Code {
                    text: format!("if ({guard}) {{\n{head}    {w}\n{tail}\n}}\n"),
                    reads: vec![scratch],
                    writes: self.dst_writes(dst),
                });
            }
            return Ok(());
        }
        // General: one warp per output element, results through shared memory.
        let sshape = self.shape(src);
        let it = Iter::Flat {
            shape: sshape.clone(),
        };
        let (a, mut reads) = self.access(src, &it, &sshape, out);
        let (outputs, len) = match (sshape.len(), axis) {
            (1, _) => (1, sshape[0]),
            (_, 0) => (sshape[1], sshape[0]),
            _ => (sshape[0], sshape[1]),
        };
        let coords: Vec<String> = match (sshape.len(), axis) {
            (1, _) => vec!["k_".into()],
            (_, 0) => vec!["k_".into(), "o_".into()],
            _ => vec!["o_".into(), "k_".into()],
        };
        let ctx = Ctx {
            coords,
            frag_slot: String::new(),
            row_slot: String::new(),
        };
        let x = self.read(&a, &ctx, &sshape, &sshape, Vt::F32);
        let (into_regs, target_buf) = match &self.repr[dst] {
            Repr::Smem { .. } => (false, None),
            _ => (
                true,
                Some(self.add_buf("rdx", Elem::F32, &[outputs], 1, true)),
            ),
        };
        let dshape = self.shape(dst);
        let write = if let Some(tb) = target_buf {
            format!("{}[o_] = v_;", self.bufs[tb].name)
        } else {
            let Repr::Smem { buf, view } = &self.repr[dst] else {
                unreachable!()
            };
            let dc: Vec<String> = if dshape.is_empty() {
                vec![]
            } else if dshape.len() == 1 {
                vec!["o_".into()]
            } else {
                vec!["o_".into(), "0".into()]
            };
            // rank-2 results of a reduction cannot occur (rank drops); keep general anyway
            let (r, c) = view.phys(&dc);
            let b = &self.bufs[*buf];
            format!(
                "{}[{}] = {};",
                b.name,
                b.addr(&r, &c),
                b.elem.store("v_", Vt::F32)
            )
        };
        let nw = self.geo.nw;
        let text = format!(
            "for (int o_ = warp; o_ < {outputs}; o_ += {nw}) {{\n    float v_ = {init};\n    for (int k_ = lane; k_ < {len}; k_ += 32) {{ const float x_ = {x}; v_ = {c}; }}\n    v_ = {warpf}(v_);\n    if (lane == 0) {{ {write} }}\n}}\n",
            c = comb("v_", "x_"),
        );
        let mut writes = self.dst_writes(dst);
        if let Some(tb) = target_buf {
            writes = vec![tb];
        }
        out.push(Node::Code {
            text,
            reads: reads.clone(),
            writes,
        });
        if into_regs {
            let tb = target_buf.unwrap();
            let it = self.iter_of(dst);
            let (head, tail, ctx) = self.open(&it);
            let acc = Access::Smem(tb, View::base(1));
            // Output o_ corresponds to the flattened destination index.
            let flat_ctx = Ctx {
                coords: vec![flat_index(&ctx.coords, &dshape)],
                frag_slot: ctx.frag_slot.clone(),
                row_slot: ctx.row_slot.clone(),
            };
            let v = self.read(&acc, &flat_ctx, &[outputs], &[outputs], Vt::F32);
            let w = self.write(dst, &ctx, &v);
            reads = vec![tb];
            out.push(Node::Code {
                text: format!("{head}    {w}\n{tail}\n"),
                reads,
                writes: self.dst_writes(dst),
            });
        }
        Ok(())
    }

    // -------------------------------------------------------------- gemm

    /// Terms of an operand for the tensor-core path: `(hi, lo)` needed.
    fn operand_terms(&self, t: TileId) -> (bool, bool) {
        let exact = self.k.tiles[t].dtype == DType::BF16
            || self.info.exact_bf16[t]
            || matches!(&self.repr[t], Repr::Smem { buf, .. } if self.bufs[*buf].elem == Elem::Bf16);
        if exact {
            (true, false)
        } else {
            (true, self.target.f32_gemm == F32Gemm::Split)
        }
    }

    fn gemm_operand(
        &mut self,
        t: TileId,
        bf16_shadow: bool,
        out: &mut Vec<Node>,
    ) -> (usize, View, Vec<usize>) {
        match self.repr[t].clone() {
            Repr::Smem { buf, view } => {
                let r = if self.bufs[buf].tracked {
                    vec![buf]
                } else {
                    vec![]
                };
                (buf, view, r)
            }
            Repr::Frag { .. } | Repr::Rows { .. } => {
                let elem = self.shadow_elem(t, bf16_shadow);
                let b = self.materialize(t, elem, out);
                (b, View::base(self.k.tiles[t].shape.len()), vec![b])
            }
            Repr::Inline { .. } | Repr::None => {
                // Write the constant tile out once (rare).
                let elem = self.shadow_elem(t, false);
                let b = self.shadow_buf(t, elem);
                let shape = self.shape(t);
                let it = Iter::Flat {
                    shape: shape.clone(),
                };
                let (head, tail, ctx) = self.open(&it);
                let a = self.direct_access(t, &it, &shape).unwrap();
                let vt = self.tile_vt(t);
                let v = self.read(&a, &ctx, &shape, &shape, vt);
                let (r, c) = View::base(shape.len()).phys(&ctx.coords);
                let bb = &self.bufs[b];
                out.push(Node::Code {
                    text: format!(
                        "{head}    {}[{}] = {};\n{tail}\n",
                        bb.name,
                        bb.addr(&r, &c),
                        elem.store(&v, vt)
                    ),
                    reads: vec![],
                    writes: vec![b],
                });
                (b, View::base(shape.len()), vec![b])
            }
        }
    }

    fn lower_gemm(
        &mut self,
        dst: TileId,
        a: TileId,
        b: TileId,
        init: Option<TileId>,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        if matches!(self.repr[dst], Repr::None) {
            return Ok(());
        }
        let (m, kd) = (self.k.tiles[a].shape[0], self.k.tiles[a].shape[1]);
        let n = self.k.tiles[b].shape[1];
        let frag = Geo::frag_ok(m, n);
        let (_, a_lo) = self.operand_terms(a);
        let (_, b_lo) = self.operand_terms(b);
        let labelled_f32 = a_lo
            || b_lo
            || (self.k.tiles[a].dtype == DType::F32 && !self.info.exact_bf16[a])
            || (self.k.tiles[b].dtype == DType::F32 && !self.info.exact_bf16[b]);
        let mma = frag
            && self.target.has_tensor_cores()
            && kd % 16 == 0
            && !(labelled_f32 && self.target.f32_gemm == F32Gemm::Fma);
        // A register fragment whose warps each hold whole rows feeds wgmma directly (no shared
        // memory round trip, no barrier), if B qualifies too.
        let a_regs = match &self.repr[a] {
            Repr::Frag { m: m2, n: k2, arr }
                if mma && !a_lo && !b_lo && *m2 == m && *k2 == kd && self.rs_geometry(m, kd) =>
            {
                Some(arr.clone())
            }
            _ => None,
        };
        let (bbuf, bview, rb) = self.gemm_operand(b, mma && !b_lo, out);
        if let Some(arr) = a_regs {
            let nwg = n / self.geo.wn(m, n);
            let n0 = format!("wn{m}_{n} * {nwg}");
            let bb = self.bufs[bbuf].clone();
            if nwg.is_multiple_of(8)
                && nwg <= 256
                && self.wgmma_operand(&bb, &bview, 0, &n0, nwg).is_some()
            {
                return self.lower_gemm_frag(
                    dst,
                    (m, n, kd),
                    init,
                    rb,
                    GemmKind::WgmmaRegsA(arr, bb, bview),
                    out,
                );
            }
        }
        let (abuf, aview, mut reads) = self.gemm_operand(a, mma && !a_lo, out);
        reads.extend(rb);
        // After shadowing, terms depend on the actual storage.
        let a_lo = a_lo && self.bufs[abuf].elem != Elem::Bf16;
        let b_lo = b_lo && self.bufs[bbuf].elem != Elem::Bf16;
        if !frag {
            return self.gemm_flat(dst, (abuf, aview), (bbuf, bview), kd, init, reads, out);
        }
        let ab = self.bufs[abuf].clone();
        let bb = self.bufs[bbuf].clone();
        let kind = if mma {
            GemmKind::Tensor {
                a: (ab, aview, a_lo),
                b: (bb, bview, b_lo),
            }
        } else {
            GemmKind::Fma {
                a: (ab, aview),
                b: (bb, bview),
            }
        };
        self.lower_gemm_frag(dst, (m, n, kd), init, reads, kind, out)
    }

    /// A fragment-layout gemm `dst = init + A·B` (`init` absent: zero) in one code node.
    fn lower_gemm_frag(
        &mut self,
        dst: TileId,
        (m, n, kd): (usize, usize, usize),
        init: Option<TileId>,
        mut reads: Vec<usize>,
        kind: GemmKind,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        self.geo_m.insert(m);
        self.geo_mn.insert((m, n));
        let (mt, ntl) = (self.geo.mt(m), self.geo.ntl(m, n));
        let regs = self.geo.frag_regs(m, n);
        let (acc, local) = match &self.repr[dst] {
            Repr::Frag { m: m2, n: n2, arr } if *m2 == m && *n2 == n => (arr.clone(), false),
            _ => ("gacc_".to_string(), true),
        };
        let mut text = String::from("{\n");
        if local {
            text.push_str(&format!("float gacc_[{regs}];\n"));
        }
        // Initial accumulator: zero or the fused addend.
        match init {
            Some(x) if x != dst || local => {
                let it = Iter::Frag { m, n };
                let (ax, r) = self.access(x, &it, &[m, n], out);
                reads.extend(r);
                let (head, tail, ctx) = self.open(&it);
                let v = self.read(&ax, &ctx, &[m, n], &[m, n], Vt::F32);
                text.push_str(&format!(
                    "{head}    {acc}[{}] = {v};\n{tail}\n",
                    ctx.frag_slot
                ));
            }
            Some(_) => {}
            None => text.push_str(&format!(
                "#pragma unroll\nfor (int i_ = 0; i_ < {regs}; ++i_) {acc}[i_] = 0.0f;\n"
            )),
        }
        match kind {
            GemmKind::WgmmaRegsA(arr, bb, bview) => {
                let code = self
                    .wgmma_gemm(m, n, kd, &acc, WgmmaA::Regs(&arr), (&bb, &bview))
                    .expect("operands checked by the caller");
                text.push_str(&code);
            }
            GemmKind::Tensor { a, b } => {
                let (ab, aview, a_lo) = a;
                let (bb, bview, b_lo) = b;
                let warpgroup = if !a_lo && !b_lo {
                    self.wgmma_gemm(m, n, kd, &acc, WgmmaA::Smem(&ab, &aview), (&bb, &bview))
                } else {
                    None
                };
                match warpgroup {
                    Some(code) => text.push_str(&code),
                    None => text.push_str(&self.mma_loop(
                        m,
                        n,
                        kd,
                        mt,
                        ntl,
                        &acc,
                        (&ab, &aview, a_lo),
                        (&bb, &bview, b_lo),
                    )),
                }
            }
            GemmKind::Fma { a, b } => text.push_str(&self.fma_frag_loop(
                m,
                n,
                kd,
                mt,
                ntl,
                &acc,
                (&a.0, &a.1),
                (&b.0, &b.1),
            )),
        }
        if local {
            // The destination is a shared tile: one writer per element.
            let it = Iter::Frag { m, n };
            let (head, tail, ctx) = self.open(&it);
            let w = self.write(dst, &ctx, &format!("gacc_[{}]", ctx.frag_slot));
            text.push_str(&format!(
                "if (wr{m}_{n} == 0) {{\n{head}    {w}\n{tail}\n}}\n"
            ));
        }
        text.push_str("}\n");
        out.push(Node::Code {
            text,
            reads,
            writes: self.dst_writes(dst),
        });
        Ok(())
    }

    /// Whether a `[m, kd]` register fragment can be wgmma's A operand: the warpgroup geometry
    /// gives each warp whole 16-row slices (`wm = 4`, one column group), the accumulator layout
    /// that is also wgmma's register-A layout per 16 columns.
    fn rs_geometry(&self, m: usize, kd: usize) -> bool {
        self.geo.wg
            && m == 64
            && self.geo.wm(m) == 4
            && self.geo.wn(m, kd) == 1
            && kd.is_multiple_of(16)
    }

    /// Where a wgmma shared-memory operand starts and how it is described, if it qualifies:
    /// bf16 in a blocked buffer, a 2-d view whose K axis (`k_axis` of the logical operand) is
    /// either physical axis, aligned to whole core matrices.
    /// `mn0` is the operand's first M/N index for this warpgroup, `mn_len` its M/N extent.
    fn wgmma_operand(
        &self,
        buf: &Buf,
        view: &View,
        k_axis: usize,
        mn0: &str,
        mn_len: usize,
    ) -> Option<WgmmaOperand> {
        if buf.elem != Elem::Bf16 || !buf.blocked || view.axes.len() != 2 {
            return None;
        }
        let (kp, mp) = (view.axes[k_axis]?, view.axes[1 - k_axis]?);
        let [r0, c0] = view.off;
        let (at, at0, mn_major, lbo) = if kp == 1 && mp == 0 {
            // K-major: K along the contiguous columns, 8-row core-matrix groups 1024 B apart.
            if r0 % 8 != 0 || c0 % 16 != 0 {
                return None;
            }
            let at = |k: &str| buf.blocked_bytes(&format!("{r0} + {mn0}"), &format!("{c0} + {k}"));
            (at("k_"), at("0"), false, 16)
        } else if kp == 0 && mp == 1 {
            // MN-major: 64-column blocks `rows * 128` B apart (LBO), 8-row K groups 1024 B.
            if r0 % 8 != 0 || c0 % 64 != 0 || !mn_len.is_multiple_of(64) {
                return None;
            }
            let at = |k: &str| buf.blocked_bytes(&format!("{r0} + {k}"), &format!("{c0} + {mn0}"));
            (at("k_"), at("0"), true, buf.rows * 128)
        } else {
            return None;
        };
        (lbo < 1 << 18).then_some(WgmmaOperand {
            at,
            at0,
            mn_major,
            lbo,
        })
    }

    /// The gemm as warpgroup `wgmma` instructions, where the geometry and both operands allow:
    /// 64 rows, B (and A unless it is a register fragment) bf16 in blocked (128-byte swizzled)
    /// shared memory, and a column slice per warpgroup of at most 256. Issues `kd / 16`
    /// instructions, commits and waits, so the gemm completes in place like the `mma.sync` loop
    /// it replaces.
    fn wgmma_gemm(
        &mut self,
        m: usize,
        n: usize,
        kd: usize,
        acc: &str,
        a: WgmmaA,
        b: (&Buf, &View),
    ) -> Option<String> {
        let (wm, wn) = (self.geo.wm(m), self.geo.wn(m, n));
        if !self.geo.wg || m != 64 || wm != 4 || !kd.is_multiple_of(16) {
            return None;
        }
        let nwg = n / wn;
        if !nwg.is_multiple_of(8) || nwg > 256 {
            return None;
        }
        let n0 = format!("wn{m}_{n} * {nwg}");
        let bop = self.wgmma_operand(b.0, b.1, 0, &n0, nwg)?;
        let tb = bop.mn_major;
        let regs = nwg / 2;
        let tbi = tb as u8;
        let bdesc = bop.step("db_");
        let (setup, issue) = match a {
            WgmmaA::Smem(ab, av) => {
                let aop = self.wgmma_operand(ab, av, 1, "0", m)?;
                self.wgmma_fns
                    .insert((nwg, WgmmaForm::Smem(aop.mn_major), tb));
                (
                    format!(
                        "const unsigned long long da_ = tpla_wgmma_desc(tpla_smem_addr({}) + {}, {}u);\n",
                        ab.name, aop.at0, aop.lbo
                    ),
                    format!(
                        "    tpla_wgmma_m64n{nwg}k16_{}{tbi}({acc}, {}, {bdesc});\n",
                        aop.mn_major as u8,
                        aop.step("da_"),
                    ),
                )
            }
            WgmmaA::Regs(arr) => {
                if !self.rs_geometry(m, kd) {
                    return None;
                }
                self.wgmma_fns.insert((nwg, WgmmaForm::Regs, tb));
                // Accumulator layout -> A layout: columns 16k.. of rows g / g + 8 are n-tiles
                // 2k and 2k + 1 of the fragment, packed to bf16 pairs.
                (
                    format!(
                        "unsigned pa_[{np}];
#pragma unroll
for (int k_ = 0; k_ < {ks}; ++k_) {{
    pa_[k_ * 4 + 0] = tpla_pack_bf16x2({arr}[(2 * k_) * 4 + 0], {arr}[(2 * k_) * 4 + 1]);
    pa_[k_ * 4 + 1] = tpla_pack_bf16x2({arr}[(2 * k_) * 4 + 2], {arr}[(2 * k_) * 4 + 3]);
    pa_[k_ * 4 + 2] = tpla_pack_bf16x2({arr}[(2 * k_ + 1) * 4 + 0], {arr}[(2 * k_ + 1) * 4 + 1]);
    pa_[k_ * 4 + 3] = tpla_pack_bf16x2({arr}[(2 * k_ + 1) * 4 + 2], {arr}[(2 * k_ + 1) * 4 + 3]);
}}
",
                        np = kd / 4,
                        ks = kd / 16
                    ),
                    format!(
                        "    tpla_wgmma_m64n{nwg}k16_r{tbi}({acc}, &pa_[(k_ / 16) * 4], {bdesc});\n"
                    ),
                )
            }
        };
        // Every early return is above: the deferred copy is placed exactly once.
        let overlap = match &self.deferred_prefetch {
            Some((_, d)) if *d == self.depth => self.deferred_prefetch.take().unwrap().0,
            _ => String::new(),
        };
        Some(format!(
            "{{
{setup}const unsigned long long db_ = tpla_wgmma_desc(tpla_smem_addr({bn}) + {bat0}, {blbo}u);
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
tpla_wgmma_fence();
#pragma unroll
for (int k_ = 0; k_ < {kd}; k_ += 16) {{
{issue}}}
tpla_wgmma_commit();
{overlap}tpla_wgmma_wait0();
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
}}
",
            bn = b.0.name,
            bat0 = bop.at0,
            blbo = bop.lbo,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_flat(
        &mut self,
        dst: TileId,
        a: (usize, View),
        b: (usize, View),
        kd: usize,
        init: Option<TileId>,
        mut reads: Vec<usize>,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let shape = self.shape(dst);
        let it = self.iter_of(dst);
        let ia = init.map(|x| self.access(x, &it, &shape, out));
        if let Some((_, r)) = &ia {
            reads.extend(r.clone());
        }
        let (head, tail, ctx) = self.open(&it);
        let (r, c) = (ctx.coords[0].clone(), ctx.coords[1].clone());
        let av = self.read(
            &Access::Smem(a.0, a.1.clone()),
            &Ctx {
                coords: vec![r.clone(), "k_".into()],
                frag_slot: String::new(),
                row_slot: String::new(),
            },
            &[0, 0],
            &[0, 0],
            Vt::F32,
        );
        let bv = self.read(
            &Access::Smem(b.0, b.1.clone()),
            &Ctx {
                coords: vec!["k_".into(), c.clone()],
                frag_slot: String::new(),
                row_slot: String::new(),
            },
            &[0, 0],
            &[0, 0],
            Vt::F32,
        );
        let init_v = match &ia {
            Some((acc, _)) => self.read(
                acc,
                &ctx,
                &self.k.tiles[init.unwrap()].shape.clone(),
                &shape,
                Vt::F32,
            ),
            None => "0.0f".into(),
        };
        let w = self.write(dst, &ctx, "s_");
        out.push(Node::Code {
            text: format!("{head}    float s_ = {init_v};\n    for (int k_ = 0; k_ < {kd}; ++k_) s_ = fmaf({av}, {bv}, s_);\n    {w}\n{tail}\n"),
            reads,
            writes: self.dst_writes(dst),
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn fma_frag_loop(
        &self,
        m: usize,
        n: usize,
        kd: usize,
        mt: usize,
        ntl: usize,
        acc: &str,
        a: (&Buf, &View),
        b: (&Buf, &View),
    ) -> String {
        let rd = |buf: &Buf, view: &View, x: &str, y: &str| {
            let (r, c) = view.phys(&[x.to_string(), y.to_string()]);
            buf.elem
                .load(&format!("{}[{}]", buf.name, buf.addr(&r, &c)), Vt::F32)
        };
        let ar = format!("(wm{m} * {mt} + mi) * 16 + (lane >> 2) + (h << 3)");
        let bc = format!("(wn{m}_{n} * {ntl} + ni) * 8 + ((lane & 3) << 1) + e");
        format!(
            "#pragma unroll 4
for (int k_ = 0; k_ < {kd}; ++k_) {{
    float av_[{ma}], bv_[{nb}];
#pragma unroll
    for (int mi = 0; mi < {mt}; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) av_[mi * 2 + h] = {aread};
#pragma unroll
    for (int ni = 0; ni < {ntl}; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) bv_[ni * 2 + e] = {bread};
#pragma unroll
    for (int mi = 0; mi < {mt}; ++mi)
#pragma unroll
    for (int ni = 0; ni < {ntl}; ++ni)
#pragma unroll
    for (int e = 0; e < 4; ++e)
        {acc}[(mi * {ntl} + ni) * 4 + e] = fmaf(av_[mi * 2 + (e >> 1)], bv_[ni * 2 + (e & 1)], {acc}[(mi * {ntl} + ni) * 4 + e]);
}}
",
            ma = mt * 2,
            nb = ntl * 2,
            aread = rd(a.0, a.1, &ar, "k_"),
            bread = rd(b.0, b.1, "k_", &bc),
        )
    }

    /// Code that fills `unsigned {name}h[4]` (and `{name}l[4]` when `lo`) with the A fragment of
    /// rows `m0_..m0_+16`, columns `k_..k_+16` (`b_op` false), or `{name}h[2]`/`{name}l[2]` with
    /// the B fragment of columns `n0_..n0_+8` (`b_op` true).
    #[allow(clippy::too_many_arguments)]
    fn frag_load(
        &self,
        buf: &Buf,
        view: &View,
        lo: bool,
        b_op: bool,
        name: &str,
        n0: &str,
        pair: bool,
    ) -> String {
        // Logical (row, col) of the operand for each 32-bit register: pairs along K.
        let (k_axis, mn_axis) = if b_op { (0usize, 1usize) } else { (1, 0) };
        let ldm = buf.elem == Elem::Bf16
            && !lo
            && view.axes.len() == 2
            && view.axes[0].is_some()
            && view.axes[1].is_some()
            && view.axes[0] != view.axes[1]
            && view.off[1].is_multiple_of(8);
        if ldm {
            // Contiguous physical axis is cols (1). Non-trans when K is the contiguous axis.
            let k_contig = view.axes[k_axis] == Some(1);
            let _ = mn_axis;
            let (lr, lc) = if !b_op {
                if k_contig {
                    // matrices: (m0+i, k0), (m0+8+i, k0), (m0+i, k0+8), (m0+8+i, k0+8)
                    (
                        "(m0_ + (lane & 15))".to_string(),
                        "(k_ + ((lane >> 4) << 3))".to_string(),
                    )
                } else {
                    // trans: (k0+i, m0), (k0+i, m0+8), (k0+8+i, m0), (k0+8+i, m0+8)
                    (
                        "(m0_ + (((lane >> 3) & 1) << 3))".to_string(),
                        "(k_ + (lane & 7) + ((lane >> 4) << 3))".to_string(),
                    )
                }
            } else if k_contig {
                // matrices (n0+i, k0), (n0+i, k0+8) [, (n0+8+i, k0), (n0+8+i, k0+8)]
                (
                    "(k_ + (((lane >> 3) & 1) << 3))".to_string(),
                    format!("({n0} + (lane & 7) + ((lane >> 4) << 3))"),
                )
            } else {
                // trans: (k0+i, n0), (k0+8+i, n0) [, (k0+i, n0+8), (k0+8+i, n0+8)]
                (
                    "(k_ + (lane & 7) + (((lane >> 3) & 1) << 3))".to_string(),
                    format!("({n0} + ((lane >> 4) << 3))"),
                )
            };
            // (lr, lc) are logical (row, col) of the operand tile.
            let (pr, pc) = view.phys(&[lr, lc]);
            let trans = !k_contig;
            let addr = buf.addr(&pr, &pc);
            let x = if b_op && !pair { "x2" } else { "x4" };
            let f = if trans {
                format!("tpla_ldmatrix_{x}_trans")
            } else {
                format!("tpla_ldmatrix_{x}")
            };
            return format!("{f}({name}h, &{}[{addr}]);\n", buf.name);
        }
        // Generic: element pairs, converted (and split) in registers.
        let rd = |r: String, c: String| {
            let (pr, pc) = view.phys(&[r, c]);
            buf.elem
                .load(&format!("{}[{}]", buf.name, buf.addr(&pr, &pc)), Vt::F32)
        };
        let mut s = String::new();
        let regs: Vec<(String, String, String, String)> = if !b_op {
            // a0: (g, 2t), a1: (g+8, 2t), a2: (g, 2t+8), a3: (g+8, 2t+8); pairs along k.
            (0..4)
                .map(|j| {
                    let r = format!("(m0_ + (lane >> 2) + {})", (j & 1) * 8);
                    let c = format!("(k_ + ((lane & 3) << 1) + {})", (j >> 1) * 8);
                    (r.clone(), c.clone(), r, format!("({c} + 1)"))
                })
                .collect()
        } else {
            // For each of up to two n-tiles: b0: (k=2t.., n=g), b1: (k=2t+8.., n=g).
            (0..4)
                .map(|j| {
                    let k = format!("(k_ + ((lane & 3) << 1) + {})", (j & 1) * 8);
                    let nn = format!("({n0} + (lane >> 2) + {})", (j >> 1) * 8);
                    (k.clone(), nn.clone(), format!("({k} + 1)"), nn)
                })
                .collect()
        };
        let nregs = if b_op && !pair { 2 } else { 4 };
        for (j, (r0, c0, r1, c1)) in regs.iter().enumerate().take(nregs) {
            s.push_str(&format!(
                "{{ const float x0_ = {}; const float x1_ = {};\n  {name}h[{j}] = tpla_pack_bf16x2(x0_, x1_);\n",
                rd(r0.clone(), c0.clone()),
                rd(r1.clone(), c1.clone())
            ));
            if lo {
                s.push_str(&format!(
                    "  {name}l[{j}] = tpla_pack_bf16x2(x0_ - tpla_bf16_to_f32(tpla_f32_to_bf16(x0_)), x1_ - tpla_bf16_to_f32(tpla_f32_to_bf16(x1_))); "
                ));
            }
            s.push_str("}\n");
        }
        s
    }

    #[allow(clippy::too_many_arguments)]
    fn mma_loop(
        &self,
        m: usize,
        n: usize,
        kd: usize,
        mt: usize,
        ntl: usize,
        acc: &str,
        a: (&Buf, &View, bool),
        b: (&Buf, &View, bool),
    ) -> String {
        let (ab, av, alo) = a;
        let (bb, bv, blo) = b;
        // Independent accumulator chains along K when a warp owns few output tiles: one chain of
        // dependent mma.sync per tile would be latency bound (e.g. q·Kᵀ with K = 576).
        let chains = mt * ntl;
        let mut ks = 1;
        while chains * ks * 2 <= 4 && kd.is_multiple_of(16 * ks * 2) && kd / (16 * ks * 2) >= 2 {
            ks *= 2;
        }
        let pairs = ntl.is_multiple_of(2);
        let step = if pairs { 2 } else { 1 };
        let aload = self.frag_load(ab, av, alo, false, "af_[mi]", "", true);
        // B: for pairs, the ldmatrix covers two n-tiles; the generic path too (4 regs).
        let bload = self.frag_load(bb, bv, blo, true, "bf_", "n0_", pairs);
        let mut mmas = String::new();
        let dacc = if ks > 1 {
            "kacc_[kk_]".to_string()
        } else {
            acc.to_string()
        };
        for j in 0..step {
            let d = format!("&{dacc}[(mi * {ntl} + nj + {j}) * 4]");
            let bh = format!("&bf_h[{}]", j * 2);
            let bl = format!("&bf_l[{}]", j * 2);
            mmas.push_str(&format!(
                "            tpla_mma_bf16_16816({d}, af_[mi]h, {bh});\n"
            ));
            if alo {
                mmas.push_str(&format!(
                    "            tpla_mma_bf16_16816({d}, af_[mi]l, {bh});\n"
                ));
            }
            if blo {
                mmas.push_str(&format!(
                    "            tpla_mma_bf16_16816({d}, af_[mi]h, {bl});\n"
                ));
            }
        }
        // Fix up the array syntax: af_[mi]h -> af_h[mi].
        let fix = |s: String| {
            s.replace("af_[mi]h", "af_h[mi]")
                .replace("af_[mi]l", "af_l[mi]")
        };
        let aload = fix(aload);
        let mmas = fix(mmas);
        let bdecl = if blo {
            "unsigned bf_h[4], bf_l[4];"
        } else {
            "unsigned bf_h[4];"
        };
        let adecl = if alo {
            format!("unsigned af_h[{mt}][4], af_l[{mt}][4];")
        } else {
            format!("unsigned af_h[{mt}][4];")
        };
        let regs = mt * ntl * 4;
        // Fully unrolled K loop for moderate K: the swizzled shared-memory addresses of every
        // step fold to per-thread constants instead of being recomputed each step.
        // Only where the kernel's accumulators leave room for the hoisted addresses.
        let max_frag = self
            .info
            .gemms
            .iter()
            .filter(|&&(m, n)| Geo::frag_ok(m, n))
            .map(|&(m, n)| self.geo.frag_regs(m, n))
            .max()
            .unwrap_or(0);
        let unroll = if kd / (16 * ks) <= 48 && max_frag <= 64 {
            "#pragma unroll"
        } else {
            "#pragma unroll 2"
        };
        let (khead, ktail) = if ks > 1 {
            (
                format!(
                    "float kacc_[{ks}][{regs}];
#pragma unroll
for (int kk_ = 0; kk_ < {ks}; ++kk_)
#pragma unroll
    for (int i_ = 0; i_ < {regs}; ++i_) kacc_[kk_][i_] = 0.0f;
{unroll}
for (int k0_ = 0; k0_ < {kd}; k0_ += {kstep}) {{
#pragma unroll
for (int kk_ = 0; kk_ < {ks}; ++kk_) {{
    const int k_ = k0_ + kk_ * 16;
",
                    kstep = 16 * ks
                ),
                format!(
                    "}}
}}
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) {{
    float s_ = kacc_[0][i_];
#pragma unroll
    for (int kk_ = 1; kk_ < {ks}; ++kk_) s_ += kacc_[kk_][i_];
    {acc}[i_] += s_;
}}
"
                ),
            )
        } else {
            (
                format!("{unroll}\nfor (int k_ = 0; k_ < {kd}; k_ += 16) {{\n"),
                "}\n".to_string(),
            )
        };
        format!(
            "{khead}
    {adecl}
#pragma unroll
    for (int mi = 0; mi < {mt}; ++mi) {{
        const int m0_ = (wm{m} * {mt} + mi) * 16;
{aload}
    }}
#pragma unroll
    for (int nj = 0; nj < {ntl}; nj += {step}) {{
        const int n0_ = (wn{m}_{n} * {ntl} + nj) * 8;
        {bdecl}
{bload}
#pragma unroll
        for (int mi = 0; mi < {mt}; ++mi) {{
{mmas}        }}
    }}
{ktail}"
        )
    }

    // -------------------------------------------------------------- paged loops

    fn paged_names(
        &self,
        cache: ParamId,
    ) -> (String, String, String, String, String, String, String) {
        (
            format!("p{cache}_data"),
            format!("p{cache}_bt"),
            format!("p{cache}_lens"),
            format!("p{cache}_ps"),
            format!("p{cache}_pps"),
            format!("p{cache}_np"),
            format!("p{cache}_nb"),
        )
    }

    fn lower_paged_blocks(&mut self, s: &Stmt, out: &mut Vec<Node>) -> Result<(), IrError> {
        let Stmt::PagedBlocks {
            cache,
            batch,
            split,
            num_splits,
            block,
            stages,
            start,
            tile,
            valid,
            body,
        } = s
        else {
            unreachable!()
        };
        let _ = (stages, valid);
        let ParamKind::Paged { dtype, row, .. } = self.k.params[*cache].kind else {
            return Err(backend_err(self.k, "paged loop over a non-paged parameter"));
        };
        let row = &row;
        let elem = Elem::of_dtype(dtype);
        let vec_ok = self.target.has_tensor_cores() && (row * elem.size()).is_multiple_of(16);
        let (ring, id, st) = self.paged[tile].clone();
        self.stages_used.push(st);
        let cur = format!("{id}_cur");
        let (data, bt, lens, ps, pps, np, nb) = self.paged_names(*cache);
        let (lo, hi, nblk, bvar) = (
            format!("{id}_lo"),
            format!("{id}_hi"),
            format!("{id}_n"),
            format!("{id}_b"),
        );
        let b = self.bufs[ring].clone();
        let slot = b.slot_elems();
        let nw = self.geo.nw;
        let base = format!("{id}_base");
        let cty = elem.cty();
        // Issue the copy of block `j_` into its ring slot (warp per row, 16-byte chunks).
        let rows_per_warp = block.div_ceil(nw);
        let issue = if vec_ok && rows_per_warp <= 32 {
            // The page lookups of a warp's rows are independent global loads: lane `i` resolves
            // row `warp + i * nw` (one load latency per block instead of one per row), and the
            // row offsets are broadcast with a shuffle while the copies are issued.
            let v = 16 / elem.size();
            let cpr = row / v;
            // The warp's rows x 16-byte chunks, enumerated flat over its lanes: every lane issues
            // the same number of copies (no divergent tail pass per row), and a chunk's row comes
            // from the lane that looked it up.
            let total = rows_per_warp * cpr;
            let iters = total.div_ceil(32);
            let mut guard = Vec::new();
            if !total.is_multiple_of(32) {
                guard.push(format!("f_ < {total}"));
            }
            if !block.is_multiple_of(nw) {
                guard.push(format!("r_ < {block}"));
            }
            let guard = if guard.is_empty() {
                String::new()
            } else {
                format!("if ({}) ", guard.join(" && "))
            };
            format!(
                "{{
    const int t0_ = tpla_iadd({lo}, tpla_imul(j_, {block}));
    {cty}* dst_ = {base} + (j_ % {st}) * {slot};
    int row_ = -1;
    {{
        const int r_ = warp + lane * {nw};
        const int t_ = t0_ + r_;
        if (r_ < {block} && t_ < {hi} && {ps} > 0) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            if (pg_ >= 0 && pg_ < {np}) row_ = pg_ * {ps} + (t_ % {ps});
        }}
    }}
#pragma unroll
    for (int q_ = 0; q_ < {iters}; ++q_) {{
        const int f_ = lane + q_ * 32;
        const int rl_ = f_ / {cpr};
        const int ch_ = f_ - rl_ * {cpr};
        const int r_ = warp + rl_ * {nw};
        const int rw_ = tpla_shfl_idx(row_, rl_ & 31);
        const bool ok_ = rw_ >= 0;
        {guard}tpla_cp_async16(&dst_[{addr}], {data} + (ok_ ? (tpla_i64)rw_ * {row} : (tpla_i64)0) + ch_ * {v}, ok_);
    }}
}}
",
                addr = b.addr("r_", &format!("(ch_ * {v})")),
            )
        } else {
            // A warp per row: the row's page lookup, then its copy (16-byte chunks where rows
            // allow, else element by element).
            let copy = if vec_ok {
                let v = 16 / elem.size();
                format!(
                    "for (int ch_ = lane; ch_ < {cpr}; ch_ += 32)\n            tpla_cp_async16(&dst_[{addr}], src_ + ch_ * {v}, ok_);",
                    cpr = row / v,
                    addr = b.addr("r_", &format!("(ch_ * {v})")),
                )
            } else {
                format!(
                    "for (int c_ = lane; c_ < {row}; c_ += 32) dst_[{addr}] = ok_ ? src_[c_] : ({cty})0;",
                    addr = b.addr("r_", "c_"),
                )
            };
            format!(
                "{{
    const int t0_ = tpla_iadd({lo}, tpla_imul(j_, {block}));
    {cty}* dst_ = {base} + (j_ % {st}) * {slot};
    for (int r_ = warp; r_ < {block}; r_ += {nw}) {{
        const int t_ = t0_ + r_;
        bool ok_ = t_ < {hi} && {ps} > 0;
        const {cty}* src_ = {data};
        if (ok_) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            ok_ = pg_ >= 0 && pg_ < {np};
            if (ok_) src_ = {data} + ((tpla_i64)pg_ * {ps} + (t_ % {ps})) * {row};
        }}
        {copy}
    }}
}}
"
            )
        };
        // With two or more stages the copy of block `it + st - 1` is issued after the barrier that
        // ends every read of its slot (block `it - 1`), inside the first warpgroup gemm of the
        // body when there is one (overlapping the tensor cores), else at the top of the body.
        let prefetch = format!(
            "{{ const int j_ = it_ + {ahead}; if (j_ < {nblk}) {issue} }}\ntpla_cp_async_commit();\n",
            ahead = st - 1
        );
        let saved = self.deferred_prefetch.take();
        if st >= 2 {
            self.deferred_prefetch = Some((prefetch.clone(), self.depth + 1));
        }
        let inner = self.lower_block(body)?;
        let unplaced = std::mem::replace(&mut self.deferred_prefetch, saved);
        let mut reads = self.index_reads(batch);
        reads.extend(self.index_reads(split));
        reads.extend(self.index_reads(num_splits));
        reads.push(GLOBAL_RES + *cache);
        let setup = format!(
            "{bvar} = {b};
{{
    const int len_ = tpla_ld_i32({lens}, {bvar}, {nb});
    const int chunk_ = tpla_imul(tpla_icdiv(tpla_icdiv(len_, {ns}), {block}), {block});
    {lo} = tpla_imul({sp}, chunk_);
    {hi} = tpla_imin(len_, tpla_iadd({lo}, chunk_));
    {nblk} = {hi} > {lo} ? tpla_icdiv(tpla_isub({hi}, {lo}), {block}) : 0;
}}
{cty}* const {base} = ({cty}*)(tpla_smem + @OFF{ring}@);
for (int j_ = 0; j_ < {pre}; ++j_) {{
    if (j_ < {nblk}) {issue}
    tpla_cp_async_commit();
}}
",
            b = self.idx(batch),
            ns = self.idx(num_splits),
            sp = self.idx(split),
            pre = st - 1,
        );
        out.push(Node::Code {
            text: format!("{{\n{setup}"),
            reads,
            writes: vec![],
        });
        let head = if st >= 2 {
            format!(
                "for (int it_ = 0; it_ < {nblk}; ++it_) {{\n    tpla_cp_async_wait<{}>();",
                st - 2
            )
        } else {
            format!(
                "for (int it_ = 0; it_ < {nblk}; ++it_) {{\n    {prefetch}    tpla_cp_async_wait<0>();"
            )
        };
        let mut body_nodes = vec![
            Node::Barrier,
            Node::Code {
                text: format!(
                    "s{start} = tpla_iadd({lo}, tpla_imul(it_, {block}));\n{cur} = {base} + (it_ % {st}) * {slot};\n{}",
                    unplaced.map(|(p, _)| p).unwrap_or_default()
                ),
                reads: vec![],
                writes: vec![],
            },
        ];
        body_nodes.extend(inner);
        if st < 2 {
            // One slot: the next block's copy overwrites what this iteration read.
            body_nodes.push(Node::Barrier);
        }
        out.push(Node::Scope {
            head,
            body: body_nodes,
            tail: "}".into(),
            looped: true,
        });
        out.push(Node::Code {
            text: "tpla_cp_async_wait<0>();\n}\n".into(),
            reads: vec![],
            writes: vec![],
        });
        Ok(())
    }

    fn lower_paged_store(
        &mut self,
        cache: ParamId,
        batch: &Index,
        start: &Index,
        src: TileId,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let ParamKind::Paged { dtype, row, .. } = self.k.params[cache].kind else {
            return Err(backend_err(
                self.k,
                "paged store into a non-paged parameter",
            ));
        };
        let gel = Elem::of_dtype(dtype);
        let shape = self.shape(src);
        let vt = self.tile_vt(src);
        let it = self.iter_of(src);
        let guard = self.writer_guard(src);
        let (a, mut reads) = self.access(src, &it, &shape, out);
        let (head, tail, ctx) = self.open(&it);
        let v = self.read(&a, &ctx, &shape, &shape, vt);
        let (data, bt, lens, ps, pps, np, nb) = self.paged_names(cache);
        let (r, c) = (ctx.coords[0].clone(), ctx.coords[1].clone());
        let text = format!(
            "{{
const int pb_ = {b};
const int pst_ = {st};
const int plen_ = tpla_ld_i32({lens}, pb_, {nb});
if ({guard}) {{
{head}    {{
        const int t_ = tpla_iadd(pst_, {r});
        if (t_ >= 0 && t_ < plen_ && {ps} > 0) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64)pb_ * {pps} + pi_] : -1;
            if (pg_ >= 0 && pg_ < {np}) {data}[((tpla_i64)pg_ * {ps} + (t_ % {ps})) * {row} + ({c})] = {val};
        }}
    }}
{tail}
}}
}}
",
            b = self.idx(batch),
            st = self.idx(start),
            val = gel.store(&v, vt),
        );
        reads.extend(self.index_reads(batch));
        reads.extend(self.index_reads(start));
        reads.push(GLOBAL_RES + cache);
        out.push(Node::Code {
            text,
            reads,
            writes: vec![GLOBAL_RES + cache],
        });
        Ok(())
    }
}

/// How a fragment-layout gemm is computed.
enum GemmKind {
    /// wgmma with A from the registers of the fragment array named, B in shared memory.
    WgmmaRegsA(String, Buf, View),
    /// Tensor cores (wgmma where it qualifies, else mma.sync); `bool`: operand has a lo part.
    Tensor {
        a: (Buf, View, bool),
        b: (Buf, View, bool),
    },
    /// f32 FMA.
    Fma { a: (Buf, View), b: (Buf, View) },
}

/// A wgmma shared-memory operand: its byte offset in the buffer at step `k_` and at `k_ = 0`
/// (C expressions), whether it is M/N-major and its descriptor's leading byte offset.
struct WgmmaOperand {
    at: String,
    at0: String,
    mn_major: bool,
    lbo: usize,
}

impl WgmmaOperand {
    /// The descriptor at step `k_` from the one at step 0: the start address is the low field
    /// (16-byte units, no carry out for shared-memory addresses), and the difference folds to a
    /// constant once the K loop is unrolled.
    fn step(&self, desc0: &str) -> String {
        format!(
            "({desc0} + (unsigned long long)((({}) - ({})) >> 4))",
            self.at, self.at0
        )
    }
}

/// wgmma's A operand.
enum WgmmaA<'a> {
    Smem(&'a Buf, &'a View),
    Regs(&'a str),
}

/// The A-operand form of a wgmma instruction variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum WgmmaForm {
    /// Shared-memory descriptor; `true`: M-major.
    Smem(bool),
    /// Registers (bf16 pairs in the mma.sync A-fragment order).
    Regs,
}

struct Fusion {
    gemm: TileId,
    add_dst: TileId,
    a: TileId,
    b: TileId,
    init: TileId,
}

fn assigns_any(s: &Stmt, tiles: &[TileId]) -> bool {
    match s {
        Stmt::Assign { dst, .. } => tiles.contains(dst),
        Stmt::For { body, .. } => body.iter().any(|s| assigns_any(s, tiles)),
        Stmt::PagedBlocks {
            tile, valid, body, ..
        } => {
            tiles.contains(tile)
                || tiles.contains(valid)
                || body.iter().any(|s| assigns_any(s, tiles))
        }
        _ => false,
    }
}

fn flat_index(coords: &[String], shape: &[usize]) -> String {
    match shape.len() {
        0 => "0".into(),
        1 => coords[0].clone(),
        _ => format!("(({}) * {} + ({}))", coords[0], shape[1], coords[1]),
    }
}

fn float_bin(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("({a} + {b})"),
        BinaryOp::Sub => format!("({a} - {b})"),
        BinaryOp::Mul => format!("({a} * {b})"),
        BinaryOp::Div => format!("({a} / {b})"),
        BinaryOp::Max => format!("tpla_fmax({a}, {b})"),
        BinaryOp::Min => format!("tpla_fmin({a}, {b})"),
    }
}

fn float_un(op: UnaryOp, x: &str) -> String {
    match op {
        UnaryOp::Neg => format!("(-{x})"),
        UnaryOp::Exp2 => format!("tpla_exp2({x})"),
        UnaryOp::Log2 => format!("tpla_log2({x})"),
        UnaryOp::Sqrt => format!("tpla_sqrt({x})"),
        UnaryOp::Rsqrt => format!("tpla_rsqrt({x})"),
        UnaryOp::Abs => format!("fabsf({x})"),
        UnaryOp::Recip => format!("(1.0f / {x})"),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Entry point
// ------------------------------------------------------------------------------------------------

pub(super) fn emit(k: &Kernel, target: Target) -> Result<CudaSource, IrError> {
    crate::validate::validate(k)?;
    let max_stages = max_stages(&k.body).max(1);
    // Shared memory decides: fewer pipeline stages first, then (for f32 gemm operands) bf16
    // rounding instead of the hi/lo split, which halves the operand tiles.
    let mut policies = vec![target.f32_gemm];
    if target.f32_gemm == F32Gemm::Split && target.has_tensor_cores() {
        policies.push(F32Gemm::RoundBf16);
    }
    let mut smallest = None;
    for policy in policies {
        let t = target.with_f32_gemm(policy);
        for cap in (1..=max_stages).rev() {
            let src = emit_with_cap(k, t, cap)?;
            if src.shared_bytes <= target.max_shared_bytes {
                return Ok(src);
            }
            smallest = Some(smallest.map_or(src.shared_bytes, |s: u32| s.min(src.shared_bytes)));
        }
    }
    Err(backend_err(
        k,
        format!(
            "needs at least {} bytes of shared memory; {} allows {} per block",
            smallest.unwrap_or(0),
            target.arch_name(),
            target.max_shared_bytes
        ),
    ))
}

/// Device function for one warpgroup `d[64 x n] += A[64 x 16] · B[16 x n]` (bf16 operands, f32
/// accumulators in the mma.sync fragment order: `d[j * 4 + e]` is row `16 (warp % 4) + lane / 4 +
/// 8 (e >> 1)`, column `8 j + 2 (lane % 4) + (e & 1)`), B from a shared-memory descriptor (`tb`:
/// N-major). `tpla_wgmma_m64n{n}k16_{ta}{tb}(d, desc_a, desc_b)` takes A by descriptor (`ta`:
/// M-major); `tpla_wgmma_m64n{n}k16_r{tb}(d, a, desc_b)` takes four registers of bf16 pairs in
/// the mma.sync A-fragment order (rows `16 (warp % 4) ..`).
fn wgmma_fn(n: usize, a: WgmmaForm, tb: bool) -> String {
    let regs = n / 2;
    let list: Vec<String> = (0..regs).map(|i| format!("%{i}")).collect();
    let outs: Vec<String> = (0..regs).map(|i| format!("\"+f\"(d[{i}])")).collect();
    let tb = tb as u8;
    let (name, a_param, a_asm, a_in, trans_a, emu, next) = match a {
        WgmmaForm::Smem(ta) => (
            format!("tpla_wgmma_m64n{n}k16_{}{tb}", ta as u8),
            "unsigned long long da",
            format!("%{regs}"),
            "\"l\"(da)".to_string(),
            format!("{}, ", ta as u8),
            format!("tpla_emu_wgmma(d, da, db, {n}, {}, {tb});", ta as u8),
            regs + 1,
        ),
        WgmmaForm::Regs => (
            format!("tpla_wgmma_m64n{n}k16_r{tb}"),
            "const unsigned* a",
            format!("{{%{}, %{}, %{}, %{}}}", regs, regs + 1, regs + 2, regs + 3),
            "\"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3])".to_string(),
            String::new(),
            format!("tpla_emu_wgmma_rs(d, a, db, {n}, {tb});"),
            regs + 4,
        ),
    };
    format!(
        "__device__ __forceinline__ void {name}(float* d, {a_param}, unsigned long long db) {{
#ifdef __CUDA_ARCH__
    asm volatile(
        \"{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{sc}, 0;\\n\"
        \"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{list}}}, {a_asm}, %{db}, p, 1, 1, {trans_a}{tb};\\n}}\\n\"
        : {outs}
        : {a_in}, \"l\"(db), \"r\"(1));
#else
    {emu}
#endif
}}
",
        list = list.join(", "),
        outs = outs.join(", "),
        db = next,
        sc = next + 1,
    )
}

fn max_stages(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| match s {
            Stmt::For { body, .. } => max_stages(body),
            Stmt::PagedBlocks { stages, body, .. } => (*stages).max(max_stages(body)),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

fn emit_with_cap(k: &Kernel, target: Target, cap: usize) -> Result<CudaSource, IrError> {
    let info = analyse(k);
    let nw = choose_warps(k, &info, &target);
    let geo = Geo {
        nw,
        wg: use_warpgroups(k, &info, &target, nw),
        wg_split: wg_split(k),
    };
    let mut lcx = LayoutCx {
        k,
        lay: vec![Lay::Bottom; k.tiles.len()],
    };
    for _ in 0..64 {
        let mut changed = false;
        lcx.walk(&k.body, &mut changed);
        if !changed {
            break;
        }
    }
    let lay = lcx.lay;
    let mut lw = Lower {
        k,
        target,
        geo,
        info,
        repr: Vec::new(),
        bufs: Vec::new(),
        shadows: HashMap::new(),
        decls: Vec::new(),
        geo_m: BTreeSet::new(),
        geo_mn: BTreeSet::new(),
        uniq: 0,
        stages_cap: cap,
        stages_used: Vec::new(),
        paged: HashMap::new(),
        wgmma_fns: BTreeSet::new(),
        depth: 0,
        affinity: HashMap::new(),
        deferred_prefetch: None,
    };
    lw.resolve(&lay);
    let nodes = lw.lower_block(&k.body)?;
    let nodes = insert_barriers(&nodes, &mut Hazards::default());
    let mut body = String::new();
    print_nodes(&nodes, 1, &mut body);
    if !lw.wgmma_fns.is_empty() {
        // wgmma reads shared memory through the async proxy: every barrier that publishes
        // generic-proxy writes (stores, cp.async) to it carries a proxy fence.
        body = body.replace(
            "__syncthreads();",
            "tpla_fence_proxy_async(); __syncthreads();",
        );
    }

    // Shared memory layout.
    let mut off = 0usize;
    for b in lw.bufs.iter_mut() {
        if b.blocked {
            // The 128-byte swizzle repeats every 1024 bytes: blocks start on that boundary.
            off = off.next_multiple_of(1024);
        }
        b.offset = off;
        off += b.bytes();
    }
    let shared_bytes = off;
    for (i, b) in lw.bufs.iter().enumerate() {
        body = body.replace(&format!("@OFF{i}@"), &b.offset.to_string());
    }

    // Signature.
    let mut params = Vec::new();
    let mut sig = Vec::new();
    for (i, p) in k.params.iter().enumerate() {
        match &p.kind {
            ParamKind::Tensor {
                dtype, writable, ..
            } => {
                let c = if *writable { "" } else { "const " };
                sig.push(format!(
                    "{c}{}* __restrict__ p{i}",
                    Elem::of_dtype(*dtype).cty()
                ));
                params.push(ParamAbi::Tensor {
                    param: i,
                    dtype: *dtype,
                });
            }
            ParamKind::Paged {
                dtype, writable, ..
            } => {
                let c = if *writable { "" } else { "const " };
                sig.push(format!(
                    "{c}{}* __restrict__ p{i}_data",
                    Elem::of_dtype(*dtype).cty()
                ));
                sig.push(format!("const int* __restrict__ p{i}_bt"));
                sig.push(format!("const int* __restrict__ p{i}_lens"));
                for (n, w) in [
                    ("ps", PagedInt::PageSize),
                    ("pps", PagedInt::PagesPerSeq),
                    ("np", PagedInt::NumPages),
                    ("nb", PagedInt::Batch),
                ] {
                    sig.push(format!("const int p{i}_{n}"));
                    let _ = w;
                }
                params.push(ParamAbi::PagedPtr {
                    param: i,
                    what: PagedPtr::Data,
                });
                params.push(ParamAbi::PagedPtr {
                    param: i,
                    what: PagedPtr::BlockTable,
                });
                params.push(ParamAbi::PagedPtr {
                    param: i,
                    what: PagedPtr::SeqLens,
                });
                for w in [
                    PagedInt::PageSize,
                    PagedInt::PagesPerSeq,
                    PagedInt::NumPages,
                    PagedInt::Batch,
                ] {
                    params.push(ParamAbi::PagedInt { param: i, what: w });
                }
            }
            ParamKind::Scalar { dtype } => {
                let c = if *dtype == DType::I32 { "int" } else { "float" };
                sig.push(format!("const {c} p{i}"));
                params.push(ParamAbi::Scalar {
                    param: i,
                    dtype: *dtype,
                });
            }
        }
    }
    for d in 0..k.dims.len() {
        sig.push(format!("const int d{d}"));
        params.push(ParamAbi::Dim { dim: d });
    }

    let nt = nt_total(&geo);
    let name = format!("tpla_{}", sanitize(&k.name));
    let mut code = String::new();
    code.push_str(PRELUDE);
    for &(n, a, tb) in &lw.wgmma_fns {
        code.push_str(&wgmma_fn(n, a, tb));
    }
    code.push_str(&format!(
        "\n// ---- kernel `{}` [{}]: {} threads, {} bytes of dynamic shared memory\n",
        k.name,
        k.config
            .iter()
            .map(|(a, b)| format!("{a}={b}"))
            .collect::<Vec<_>>()
            .join(","),
        nt,
        shared_bytes
    ));
    code.push_str(&format!(
        "extern \"C\" __global__ void __launch_bounds__({nt}, 1) {name}(\n    {}) {{\n",
        if sig.is_empty() {
            "void".to_string()
        } else {
            sig.join(",\n    ")
        }
    ));
    code.push_str(&format!(
        "    extern __shared__ __align__({}) unsigned char tpla_smem[];\n",
        if geo.wg { 1024 } else { 128 }
    ));
    code.push_str("    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;\n    (void)lane; (void)warp;\n");
    for m in &lw.geo_m {
        code.push_str(&format!(
            "    const int wm{m} = warp % {};\n    (void)wm{m};\n",
            geo.wm(*m)
        ));
    }
    for (m, n) in &lw.geo_mn {
        let (wm, wn) = (geo.wm(*m), geo.wn(*m, *n));
        code.push_str(&format!(
            "    const int wn{m}_{n} = (warp / {wm}) % {wn}, wr{m}_{n} = warp / {};\n    (void)wn{m}_{n}; (void)wr{m}_{n};\n",
            wm * wn
        ));
    }
    for b in &lw.bufs {
        if b.tracked {
            code.push_str(&format!(
                "    {cty}* const {n} = ({cty}*)(tpla_smem + {o});\n",
                cty = b.elem.cty(),
                n = b.name,
                o = b.offset
            ));
        }
    }
    if !k.scalars.is_empty() {
        let s: Vec<String> = (0..k.scalars.len()).map(|i| format!("s{i} = 0")).collect();
        code.push_str(&format!("    int {};\n", s.join(", ")));
        for i in 0..k.scalars.len() {
            code.push_str(&format!("    (void)s{i};\n"));
        }
    }
    for d in &lw.decls {
        code.push_str(&format!("    {d}\n"));
    }
    code.push_str(&body);
    code.push_str("}\n");
    Ok(CudaSource {
        name,
        code,
        block_threads: nt as u32,
        shared_bytes: shared_bytes as u32,
        params,
        stages: lw.stages_used,
        f32_gemm: target.f32_gemm,
    })
}
