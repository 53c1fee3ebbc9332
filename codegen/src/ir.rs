//! The tile-level IR every backend lowers.
//!
//! A [`Kernel`] is built for one [`Config`](crate::Config) (tune values and shape constants are
//! fixed), so every tile has a concrete shape of rank 0, 1 or 2. Sizes that are only known at launch
//! (batch, heads, sequence lengths, pages) stay symbolic: they appear as [`Index`] expressions over
//! named runtime dimensions, program ids and loop variables.
//!
//! Semantics, shared by every backend:
//! - A program (one cell of the grid) runs the body once. Tiles are values private to the program;
//!   tile variables may be reassigned (`acc = ...`) and keep their shape and dtype.
//! - Loads and stores are bounds-masked: a tile element whose source index falls outside the tensor
//!   reads as zero; a store element outside the tensor is skipped.
//! - Float tiles compute in f32 whatever their dtype label; a `BF16` tile is rounded (to nearest
//!   even) only when stored into a bf16 tensor. Integer tiles compute in i32, masks are `Bool`.
//! - Binary operations broadcast like NumPy: shapes are aligned from the right and a dimension of
//!   size 1 stretches. A scalar operand broadcasts to anything.
//! - [`TileOp::View`] results alias their source: the validator requires both the source and the
//!   view to be assigned exactly once, so aliasing can never be observed.
//! - [`Stmt::PagedBlocks`] walks the tokens of one sequence split, `block` rows at a time; see its
//!   documentation for the exact token range.
//!
//! Allowed backend deviations (documented so that results are compared with the right
//! tolerance): a GPU backend may feed `BF16`-labelled gemm operands to bf16 tensor cores (the
//! values are rounded to bf16; f32 accumulation stays), may use the hardware `exp2`/`log2`
//! approximations (about 2 ulp), and may sum reductions in tree order. The CPU backend computes in
//! f32 throughout. Kernels that want bit-level agreement between backends label gemm operands
//! `F32`.

pub use crate::kv_format::PagedFormat;
pub use dtype::DType;

mod dtype;

/// Index of a kernel parameter in [`Kernel::params`].
pub type ParamId = usize;
/// Index of a runtime dimension in [`Kernel::dims`].
pub type DimId = usize;
/// Index of a tile variable in [`Kernel::tiles`].
pub type TileId = usize;
/// Index of an integer scalar variable in [`Kernel::scalars`].
pub type ScalarId = usize;

/// One dimension of a tensor parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamDim {
    /// Fixed by the config (a literal, a tune parameter or a shape constant).
    Const(usize),
    /// Known at launch; all parameters naming the same dimension must agree.
    Runtime(DimId),
}

/// What a parameter is.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// A dense row-major tensor.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Dimensions, outermost first.
        dims: Vec<ParamDim>,
        /// Whether the kernel may store into it.
        writable: bool,
    },
    /// A paged token cache: `data [num_pages, page_size, row]`, a block table
    /// `[batch, pages_per_seq]` of i32 page ids and `seq_lens [batch]` of i32, in the layout
    /// FlashMLA and FlashInfer use. `page_size`, `pages_per_seq`, `num_pages` and `batch` are
    /// launch-time values; `row` is fixed by the config.
    Paged {
        /// Element type of `data`.
        dtype: DType,
        /// Elements per token row.
        row: usize,
        /// Whether the kernel may store rows into it.
        writable: bool,
        /// Whether the argument also carries a per-sequence split table `chunk [batch]` of i32
        /// (the schedule knob `KV_CHUNKS = 1`, read-only caches only): its
        /// [`Stmt::PagedBlocks`] loops then split sequence `b` into pieces of `chunk[b]` tokens
        /// instead of `num_splits` equal pieces.
        chunked: bool,
        /// How the rows are stored in the page pool (the schedule knob `KV_FP8`): the kernel
        /// reads and writes `row` columns of `dtype` whatever the format.
        format: PagedFormat,
    },
    /// A scalar passed by value (`F32` or `I32`).
    Scalar {
        /// Its type.
        dtype: DType,
    },
}

/// A kernel parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Name as written in the kernel signature.
    pub name: String,
    /// Its kind.
    pub kind: ParamKind,
}

/// Integer index arithmetic, evaluated per program in 64-bit (CPU) or 32-bit (GPU) integers.
#[derive(Clone, Debug, PartialEq)]
pub enum Index {
    /// A literal.
    Const(i64),
    /// The program id along grid axis 0, 1 or 2.
    ProgramId(u8),
    /// A runtime dimension's value.
    Dim(DimId),
    /// An integer scalar variable (a `let` or a loop variable).
    Var(ScalarId),
    /// A binary operation.
    Bin(IndexOp, Box<Index>, Box<Index>),
    /// The current length of sequence `batch` of a paged parameter (`seq_lens[batch]`).
    SeqLen {
        /// The paged parameter.
        cache: ParamId,
        /// Which sequence.
        batch: Box<Index>,
    },
    /// The page size of a paged parameter.
    PageSize(ParamId),
    /// One element of an `I32` tensor parameter; reads 0 when the index is out of bounds.
    Load {
        /// The tensor.
        param: ParamId,
        /// One index per tensor dimension.
        index: Vec<Index>,
    },
    /// An `I32` scalar parameter.
    Scalar(ParamId),
}

/// Binary integer operators. Division and remainder round toward zero; a zero divisor yields 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a % b`
    Rem,
    /// `(a + b - 1) / b`
    CeilDiv,
    /// `min(a, b)`
    Min,
    /// `max(a, b)`
    Max,
}

impl Index {
    /// `Index::Bin(op, a, b)` without the boxing noise.
    pub fn bin(op: IndexOp, a: Index, b: Index) -> Index {
        Index::Bin(op, Box::new(a), Box::new(b))
    }

    /// Evaluates an expression that uses only constants and runtime dimensions (the grid).
    pub fn eval_dims(&self, dims: &[i64]) -> Option<i64> {
        Some(match self {
            Index::Const(c) => *c,
            Index::Dim(d) => *dims.get(*d)?,
            Index::Bin(op, a, b) => op.apply(a.eval_dims(dims)?, b.eval_dims(dims)?),
            _ => return None,
        })
    }
}

impl IndexOp {
    /// Applies the operator with the IR's conventions (division by zero yields 0).
    pub fn apply(self, a: i64, b: i64) -> i64 {
        match self {
            IndexOp::Add => a.wrapping_add(b),
            IndexOp::Sub => a.wrapping_sub(b),
            IndexOp::Mul => a.wrapping_mul(b),
            IndexOp::Div => a.checked_div(b).unwrap_or(0),
            IndexOp::Rem => a.checked_rem(b).unwrap_or(0),
            IndexOp::CeilDiv => {
                if b == 0 {
                    0
                } else {
                    (a + b - 1).div_euclid(b)
                }
            }
            IndexOp::Min => a.min(b),
            IndexOp::Max => a.max(b),
        }
    }
    /// Symbol used by the printer and emitters.
    pub fn symbol(self) -> &'static str {
        match self {
            IndexOp::Add => "+",
            IndexOp::Sub => "-",
            IndexOp::Mul => "*",
            IndexOp::Div => "/",
            IndexOp::Rem => "%",
            IndexOp::CeilDiv => "cdiv",
            IndexOp::Min => "min",
            IndexOp::Max => "max",
        }
    }
}

/// A float scalar expression (broadcasts against tiles).
#[derive(Clone, Debug, PartialEq)]
pub enum FScalar {
    /// A literal (may be ±inf).
    Lit(f32),
    /// An `F32` scalar parameter.
    Param(ParamId),
    /// An integer index converted to f32.
    FromIndex(Index),
    /// Binary arithmetic on scalars.
    Bin(BinaryOp, Box<FScalar>, Box<FScalar>),
    /// Unary function of a scalar.
    Unary(UnaryOp, Box<FScalar>),
}

/// One operand of an elementwise operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A tile variable.
    Tile(TileId),
    /// A float scalar, broadcast.
    Scalar(FScalar),
    /// An integer scalar, broadcast (for comparisons with integer tiles).
    Int(Index),
}

/// Elementwise unary functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `2^x` (`exp2(-inf) = 0`).
    Exp2,
    /// `log2(x)` (`log2(0) = -inf`).
    Log2,
    /// `sqrt(x)`
    Sqrt,
    /// `1 / sqrt(x)`
    Rsqrt,
    /// `|x|`
    Abs,
    /// `1 / x`
    Recip,
}

impl UnaryOp {
    /// DSL spelling, from the op table ([`crate::ops`]).
    pub fn name(self) -> &'static str {
        self.def().name
    }
    /// Reference semantics in f32.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp2 => x.exp2(),
            UnaryOp::Log2 => x.log2(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Recip => 1.0 / x,
        }
    }
}

/// Elementwise binary operators (float or integer tiles; both operands of one dtype class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
}

impl BinaryOp {
    /// DSL spelling, from the op table ([`crate::ops`]).
    pub fn name(self) -> &'static str {
        self.def().name
    }
    /// Reference semantics in f32.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => a.max(b),
            BinaryOp::Min => a.min(b),
        }
    }
}

/// Comparisons producing a `Bool` tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
}

impl CmpOp {
    /// DSL spelling, from the op table ([`crate::ops`]).
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

/// Reductions along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
}

/// Shape-only views; the result aliases the source (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum ViewOp {
    /// Swap the two axes of a rank-2 tile.
    Transpose,
    /// Insert an axis of size 1 at this position.
    Unsqueeze(usize),
    /// Keep `len` elements of `axis` starting at constant `start`.
    Slice {
        /// Which axis.
        axis: usize,
        /// First element kept.
        start: usize,
        /// Elements kept.
        len: usize,
    },
}

/// Selects a region of a tensor: one entry per tensor dimension.
#[derive(Clone, Debug, PartialEq)]
pub enum Slice {
    /// A single index (the dimension does not appear in the tile).
    At(Index),
    /// `len` consecutive indices from `start` (a tile axis of size `len`).
    Span {
        /// First index (may be negative or past the end: masked).
        start: Index,
        /// Tile extent, a constant.
        len: usize,
    },
}

/// Operations that define a tile variable. The destination's shape and dtype are in
/// [`Kernel::tiles`].
#[derive(Clone, Debug, PartialEq)]
pub enum TileOp {
    /// Every element equals the scalar.
    Full(Operand),
    /// `I32` tile whose elements equal their index along `axis`.
    Iota {
        /// Axis whose index is taken.
        axis: usize,
    },
    /// Masked load of a region of a tensor parameter (see [`Slice`]).
    Load {
        /// The tensor.
        param: ParamId,
        /// One slice per tensor dimension.
        index: Vec<Slice>,
    },
    /// Elementwise unary function.
    Unary(UnaryOp, TileId),
    /// Elementwise binary operation with broadcasting.
    Binary(BinaryOp, Operand, Operand),
    /// Elementwise comparison with broadcasting.
    Compare(CmpOp, Operand, Operand),
    /// `mask ? on_true : on_false`, broadcasting all three.
    Select {
        /// A `Bool` tile.
        mask: TileId,
        /// Value where the mask is true.
        on_true: Operand,
        /// Value where it is false.
        on_false: Operand,
    },
    /// Reduce `src` along `axis` (the axis is removed).
    Reduce {
        /// Sum or max.
        op: ReduceOp,
        /// The tile reduced.
        src: TileId,
        /// The axis removed.
        axis: usize,
    },
    /// Matrix product `a [M, K] x b [K, N] -> [M, N]` accumulated in f32. Transposed operands are
    /// expressed with [`ViewOp::Transpose`].
    Gemm {
        /// Left operand `[M, K]`.
        a: TileId,
        /// Right operand `[K, N]`.
        b: TileId,
    },
    /// Convert to the destination's dtype (float to int truncates toward zero).
    Cast(TileId),
    /// A view of another tile (no copy).
    View(TileId, ViewOp),
}

/// Statements of a kernel body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// Define (or redefine) an integer scalar.
    Let {
        /// The variable.
        dst: ScalarId,
        /// Its value.
        value: Index,
    },
    /// Assign a tile variable.
    Assign {
        /// The variable (shape and dtype fixed in [`Kernel::tiles`]).
        dst: TileId,
        /// How it is computed.
        op: TileOp,
    },
    /// Masked store of a tile into a region of a writable tensor parameter. The tile's shape must
    /// equal the span lengths; its dtype must equal the tensor's.
    Store {
        /// The tensor.
        param: ParamId,
        /// One slice per tensor dimension.
        index: Vec<Slice>,
        /// The tile stored.
        src: TileId,
    },
    /// `for var in start..end { body }` (runtime bounds, step 1).
    For {
        /// Loop variable.
        var: ScalarId,
        /// First value.
        start: Index,
        /// One past the last value.
        end: Index,
        /// Loop body.
        body: Vec<Stmt>,
    },
    /// Streams the tokens of one split of sequence `batch` of a paged cache in blocks of `block`
    /// rows. With `len = seq_lens[batch]`, the split covers the tokens `[lo, hi)` given below;
    /// each iteration sets `start` to the block's first token (`lo + i * block`), `tile`
    /// (`[block, row]`, the cache dtype) to the rows (zero past `hi`) and `valid` (`Bool [block]`)
    /// to whether each row is inside `[lo, hi)`. `stages` is a pipelining hint: how many blocks a
    /// backend may keep in flight.
    ///
    /// - Uniform splits (the cache is not `chunked`): with
    ///   `chunk = ceil(ceil(len / num_splits) / block) * block`, `lo = split * chunk` and
    ///   `hi = min(len, (split + 1) * chunk)` (the loop runs no iteration when `lo >= hi`; what
    ///   follows the loop still runs).
    /// - Per-sequence splits (the cache is `chunked`, carrying `chunk [batch]` of i32): with
    ///   `c = chunk[batch]` when it is at least 1, else `c = max(len, 1)` (the whole sequence is
    ///   split 0), the sequence has `nsplits = max(1, ceil(len / c))` splits and `num_splits` is
    ///   not read. A program whose `split` is in `0..nsplits` covers `lo = split * c`,
    ///   `hi = min(len, lo + c)` (split 0 of an empty sequence covers nothing and runs on). A
    ///   program whose `split` is outside `0..nsplits` ends at this statement: neither the loop
    ///   nor any statement after it runs, so it writes nothing that follows the loop. Such a
    ///   statement must therefore be at the top level of the kernel body, and `batch` and
    ///   `split` must be the same in every thread of a program (they are: indices are per
    ///   program). A `batch` outside the cache reads `len = 0` and `c = 1`.
    PagedBlocks {
        /// The paged parameter read.
        cache: ParamId,
        /// Which sequence.
        batch: Index,
        /// Which split.
        split: Index,
        /// How many splits.
        num_splits: Index,
        /// Rows per block (a constant).
        block: usize,
        /// Pipelining depth hint (>= 1).
        stages: usize,
        /// Receives the token index of row 0.
        start: ScalarId,
        /// Receives the rows.
        tile: TileId,
        /// Receives the validity mask.
        valid: TileId,
        /// Loop body.
        body: Vec<Stmt>,
    },
    /// Writes the rows of `src` (`[n, row]`) at token positions `start .. start + n` of sequence
    /// `batch`; rows at positions outside `[0, seq_lens[batch])` are skipped.
    PagedStore {
        /// The writable paged parameter.
        cache: ParamId,
        /// Which sequence.
        batch: Index,
        /// Token position of row 0.
        start: Index,
        /// The rows.
        src: TileId,
    },
}

/// Shape and dtype of a tile variable.
#[derive(Clone, Debug, PartialEq)]
pub struct TileInfo {
    /// Source name (for printing and error messages).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, rank 0 to 2.
    pub shape: Vec<usize>,
}

impl TileInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the tile has no elements (never for a valid kernel).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A kernel specialised for one config.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Kernel name.
    pub name: String,
    /// The config it was built for, as `(name, value)` pairs (tune parameters and shape
    /// constants).
    pub config: Vec<(String, i64)>,
    /// Parameters in launch order.
    pub params: Vec<Param>,
    /// Names of the runtime dimensions.
    pub dims: Vec<String>,
    /// Grid extent per axis; uses only constants and runtime dimensions.
    pub grid: [Index; 3],
    /// Every tile variable.
    pub tiles: Vec<TileInfo>,
    /// Names of integer scalar variables.
    pub scalars: Vec<String>,
    /// The body, run once per program.
    pub body: Vec<Stmt>,
}
