//! The rows of the table: one `pub const` per operation and [`OPS`] listing them all.

use crate::{DtypeRule, Family, Form, OpDef, Operand, ShapeRule};

/// `program_id`: This program's index along grid axis 0, 1 or 2.
pub const PROGRAM_ID: OpDef = OpDef {
    name: "program_id",
    form: Form::Call,
    operands: &[("axis", Operand::Axis)],
    receiver: None,
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "This program's index along grid axis 0, 1 or 2.",
};
/// `cdiv`: Integer ceiling division `(a + b - 1) / b` (0 when `b` is 0).
pub const CDIV: OpDef = OpDef {
    name: "cdiv",
    form: Form::Call,
    operands: &[("a", Operand::Int), ("b", Operand::Int)],
    receiver: None,
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "Integer ceiling division `(a + b - 1) / b` (0 when `b` is 0).",
};
/// `range`: Loop source: `for i in range(a, b)` runs `i` over `a..b` at run time.
pub const RANGE: OpDef = OpDef {
    name: "range",
    form: Form::Call,
    operands: &[("start", Operand::Int), ("end", Operand::Int)],
    receiver: None,
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "Loop source: `for i in range(a, b)` runs `i` over `a..b` at run time.",
};
/// `load`: Masked load of a tensor region; elements outside the tensor read 0.
pub const LOAD: OpDef = OpDef {
    name: "load",
    form: Form::Call,
    operands: &[("region", Operand::Region)],
    receiver: None,
    shape: ShapeRule::Region,
    dtype: DtypeRule::Source,
    family: Family::Memory,
    doc: "Masked load of a tensor region; elements outside the tensor read 0.",
};
/// `store`: Masked store of a tile into a writable tensor region (statement); elements outside are skipped.
pub const STORE: OpDef = OpDef {
    name: "store",
    form: Form::Call,
    operands: &[("region", Operand::Region), ("x", Operand::Tile)],
    receiver: None,
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::MustMatch,
    family: Family::Memory,
    doc: "Masked store of a tile into a writable tensor region (statement); elements outside are skipped.",
};
/// `tile`: The region `[i, a..a + N, ..]` of a tensor: a single index drops the axis, a span keeps it.
pub const TILE: OpDef = OpDef {
    name: "tile",
    form: Form::Method,
    operands: &[("index", Operand::Index)],
    receiver: Some(Operand::Tensor),
    shape: ShapeRule::Region,
    dtype: DtypeRule::Source,
    family: Family::Memory,
    doc: "The region `[i, a..a + N, ..]` of a tensor: a single index drops the axis, a span keeps it.",
};
/// `get`: One element of an i32 tensor, as an integer index (0 out of bounds).
pub const GET: OpDef = OpDef {
    name: "get",
    form: Form::Method,
    operands: &[("index", Operand::Index)],
    receiver: Some(Operand::Tensor),
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Memory,
    doc: "One element of an i32 tensor, as an integer index (0 out of bounds).",
};
/// `blocks`: Loop source: `cache.blocks::<BLOCK_N>(b, split, splits)` streams one split of a sequence, BLOCK_N rows at a time.
pub const BLOCKS: OpDef = OpDef {
    name: "blocks",
    form: Form::Method,
    operands: &[("batch", Operand::Int), ("split", Operand::Int), ("splits", Operand::Int)],
    receiver: Some(Operand::Paged),
    shape: ShapeRule::Block,
    dtype: DtypeRule::Source,
    family: Family::Memory,
    doc: "Loop source: `cache.blocks::<BLOCK_N>(b, split, splits)` streams one split of a sequence, BLOCK_N rows at a time.",
};
/// `pipelined`: `blocks(..).pipelined(STAGES)`: let a backend keep STAGES blocks in flight.
pub const PIPELINED: OpDef = OpDef {
    name: "pipelined",
    form: Form::Method,
    operands: &[("stages", Operand::Const)],
    receiver: Some(Operand::Blocks),
    shape: ShapeRule::Block,
    dtype: DtypeRule::Source,
    family: Family::Memory,
    doc: "`blocks(..).pipelined(STAGES)`: let a backend keep STAGES blocks in flight.",
};
/// `rows`: `store(cache.rows(b, start), x)`: the rows of sequence `b` from token `start` of a writable paged cache.
pub const PAGED_ROWS: OpDef = OpDef {
    name: "rows",
    form: Form::Method,
    operands: &[("batch", Operand::Int), ("start", Operand::Int)],
    receiver: Some(Operand::Paged),
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::MustMatch,
    family: Family::Memory,
    doc: "`store(cache.rows(b, start), x)`: the rows of sequence `b` from token `start` of a writable paged cache.",
};
/// `len`: The current length of a sequence of a paged cache.
pub const LEN: OpDef = OpDef {
    name: "len",
    form: Form::Method,
    operands: &[("batch", Operand::Int)],
    receiver: Some(Operand::Paged),
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "The current length of a sequence of a paged cache.",
};
/// `page_size`: The page size of a paged cache.
pub const PAGE_SIZE: OpDef = OpDef {
    name: "page_size",
    form: Form::Method,
    operands: &[],
    receiver: Some(Operand::Paged),
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "The page size of a paged cache.",
};
/// `valid`: Which rows of the current block are inside the split (`[BLOCK_N]` bool).
pub const VALID: OpDef = OpDef {
    name: "valid",
    form: Form::Method,
    operands: &[],
    receiver: Some(Operand::Block),
    shape: ShapeRule::BlockRows,
    dtype: DtypeRule::Bool,
    family: Family::Memory,
    doc: "Which rows of the current block are inside the split (`[BLOCK_N]` bool).",
};
/// `start`: Token index of the current block's first row.
pub const START: OpDef = OpDef {
    name: "start",
    form: Form::Method,
    operands: &[],
    receiver: Some(Operand::Block),
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "Token index of the current block's first row.",
};
/// `zeros`: A tile of zeros: `zeros::<f32>([M, N])`.
pub const ZEROS: OpDef = OpDef {
    name: "zeros",
    form: Form::Call,
    operands: &[("shape", Operand::Shape)],
    receiver: None,
    shape: ShapeRule::Given,
    dtype: DtypeRule::Given,
    family: Family::Constant,
    doc: "A tile of zeros: `zeros::<f32>([M, N])`.",
};
/// `full`: A tile with every element `value`: `full::<f32>([M], -1.0e30)`.
pub const FULL: OpDef = OpDef {
    name: "full",
    form: Form::Call,
    operands: &[("shape", Operand::Shape), ("value", Operand::Scalar)],
    receiver: None,
    shape: ShapeRule::Given,
    dtype: DtypeRule::Given,
    family: Family::Constant,
    doc: "A tile with every element `value`: `full::<f32>([M], -1.0e30)`.",
};
/// `iota`: An i32 tile whose elements are their index along `axis`.
pub const IOTA: OpDef = OpDef {
    name: "iota",
    form: Form::Call,
    operands: &[("shape", Operand::Shape), ("axis", Operand::Axis)],
    receiver: None,
    shape: ShapeRule::Given,
    dtype: DtypeRule::I32,
    family: Family::Constant,
    doc: "An i32 tile whose elements are their index along `axis`.",
};
/// `gemm`: Matrix product of two float tiles, accumulated in f32; transpose an operand with `.t()`.
pub const GEMM: OpDef = OpDef {
    name: "gemm",
    form: Form::Call,
    operands: &[("a", Operand::FloatTile), ("b", Operand::FloatTile)],
    receiver: None,
    shape: ShapeRule::Gemm,
    dtype: DtypeRule::F32,
    family: Family::Gemm,
    doc: "Matrix product of two float tiles, accumulated in f32; transpose an operand with `.t()`.",
};
/// `exp2`: `2^x` (`exp2(-inf) = 0`).
pub const EXP2: OpDef = OpDef {
    name: "exp2",
    form: Form::Call,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "`2^x` (`exp2(-inf) = 0`).",
};
/// `log2`: `log2(x)` (`log2(0) = -inf`).
pub const LOG2: OpDef = OpDef {
    name: "log2",
    form: Form::Call,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "`log2(x)` (`log2(0) = -inf`).",
};
/// `sqrt`: Square root.
pub const SQRT: OpDef = OpDef {
    name: "sqrt",
    form: Form::Call,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "Square root.",
};
/// `rsqrt`: `1 / sqrt(x)`.
pub const RSQRT: OpDef = OpDef {
    name: "rsqrt",
    form: Form::Call,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "`1 / sqrt(x)`.",
};
/// `abs`: Absolute value.
pub const ABS: OpDef = OpDef {
    name: "abs",
    form: Form::Call,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "Absolute value.",
};
/// `recip`: `1 / x`.
pub const RECIP: OpDef = OpDef {
    name: "recip",
    form: Form::Call,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "`1 / x`.",
};
/// `-`: Negation `-x`.
pub const NEG: OpDef = OpDef {
    name: "-",
    form: Form::Prefix,
    operands: &[("x", Operand::FloatValue)],
    receiver: None,
    shape: ShapeRule::Same,
    dtype: DtypeRule::SameFloat,
    family: Family::Elementwise,
    doc: "Negation `-x`.",
};
/// `max`: Elementwise maximum of tiles or scalars (of two indices: an index).
pub const MAX: OpDef = OpDef {
    name: "max",
    form: Form::Call,
    operands: &[("a", Operand::Number), ("b", Operand::Number)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "Elementwise maximum of tiles or scalars (of two indices: an index).",
};
/// `min`: Elementwise minimum of tiles or scalars (of two indices: an index).
pub const MIN: OpDef = OpDef {
    name: "min",
    form: Form::Call,
    operands: &[("a", Operand::Number), ("b", Operand::Number)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "Elementwise minimum of tiles or scalars (of two indices: an index).",
};
/// `+`: Addition. Tiles broadcast; on two indices, integer arithmetic.
pub const ADD: OpDef = OpDef {
    name: "+",
    form: Form::Infix,
    operands: &[("a", Operand::Number), ("b", Operand::Number)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "Addition. Tiles broadcast; on two indices, integer arithmetic.",
};
/// `-`: Subtraction. Tiles broadcast; on two indices, integer arithmetic.
pub const SUB: OpDef = OpDef {
    name: "-",
    form: Form::Infix,
    operands: &[("a", Operand::Number), ("b", Operand::Number)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "Subtraction. Tiles broadcast; on two indices, integer arithmetic.",
};
/// `*`: Multiplication. Tiles broadcast; on two indices, integer arithmetic.
pub const MUL: OpDef = OpDef {
    name: "*",
    form: Form::Infix,
    operands: &[("a", Operand::Number), ("b", Operand::Number)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "Multiplication. Tiles broadcast; on two indices, integer arithmetic.",
};
/// `/`: Division. Tiles broadcast; on two indices, integer arithmetic.
pub const DIV: OpDef = OpDef {
    name: "/",
    form: Form::Infix,
    operands: &[("a", Operand::Number), ("b", Operand::Number)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "Division. Tiles broadcast; on two indices, integer arithmetic.",
};
/// `<`: Less than. A bool tile.
pub const LT: OpDef = OpDef {
    name: "<",
    form: Form::Infix,
    operands: &[("a", Operand::Value), ("b", Operand::Value)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Bool,
    family: Family::Elementwise,
    doc: "Less than. A bool tile.",
};
/// `<=`: At most. A bool tile.
pub const LE: OpDef = OpDef {
    name: "<=",
    form: Form::Infix,
    operands: &[("a", Operand::Value), ("b", Operand::Value)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Bool,
    family: Family::Elementwise,
    doc: "At most. A bool tile.",
};
/// `>`: Greater than. A bool tile.
pub const GT: OpDef = OpDef {
    name: ">",
    form: Form::Infix,
    operands: &[("a", Operand::Value), ("b", Operand::Value)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Bool,
    family: Family::Elementwise,
    doc: "Greater than. A bool tile.",
};
/// `>=`: At least. A bool tile.
pub const GE: OpDef = OpDef {
    name: ">=",
    form: Form::Infix,
    operands: &[("a", Operand::Value), ("b", Operand::Value)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Bool,
    family: Family::Elementwise,
    doc: "At least. A bool tile.",
};
/// `==`: Equal. A bool tile.
pub const EQ: OpDef = OpDef {
    name: "==",
    form: Form::Infix,
    operands: &[("a", Operand::Value), ("b", Operand::Value)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Bool,
    family: Family::Elementwise,
    doc: "Equal. A bool tile.",
};
/// `!=`: Not equal. A bool tile.
pub const NE: OpDef = OpDef {
    name: "!=",
    form: Form::Infix,
    operands: &[("a", Operand::Value), ("b", Operand::Value)],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Bool,
    family: Family::Elementwise,
    doc: "Not equal. A bool tile.",
};
/// `%`: Integer remainder (0 when `b` is 0).
pub const REM: OpDef = OpDef {
    name: "%",
    form: Form::Infix,
    operands: &[("a", Operand::Int), ("b", Operand::Int)],
    receiver: None,
    shape: ShapeRule::NoTile,
    dtype: DtypeRule::NoTile,
    family: Family::Index,
    doc: "Integer remainder (0 when `b` is 0).",
};
/// `select`: `mask ? a : b` per element; all three broadcast.
pub const SELECT: OpDef = OpDef {
    name: "select",
    form: Form::Call,
    operands: &[
        ("mask", Operand::Mask),
        ("a", Operand::Value),
        ("b", Operand::Value),
    ],
    receiver: None,
    shape: ShapeRule::Broadcast,
    dtype: DtypeRule::Common,
    family: Family::Elementwise,
    doc: "`mask ? a : b` per element; all three broadcast.",
};
/// `cast`: `x.cast::<T>()`: convert a tile (float to int truncates toward zero).
pub const CAST: OpDef = OpDef {
    name: "cast",
    form: Form::Method,
    operands: &[],
    receiver: Some(Operand::Tile),
    shape: ShapeRule::Same,
    dtype: DtypeRule::Target,
    family: Family::Elementwise,
    doc: "`x.cast::<T>()`: convert a tile (float to int truncates toward zero).",
};
/// `reduce_max`: Maximum along `axis` (the axis is removed).
pub const REDUCE_MAX: OpDef = OpDef {
    name: "reduce_max",
    form: Form::Call,
    operands: &[("x", Operand::FloatTile), ("axis", Operand::Axis)],
    receiver: None,
    shape: ShapeRule::DropAxis,
    dtype: DtypeRule::F32,
    family: Family::Reduce,
    doc: "Maximum along `axis` (the axis is removed).",
};
/// `reduce_sum`: Sum along `axis` (the axis is removed).
pub const REDUCE_SUM: OpDef = OpDef {
    name: "reduce_sum",
    form: Form::Call,
    operands: &[("x", Operand::FloatTile), ("axis", Operand::Axis)],
    receiver: None,
    shape: ShapeRule::DropAxis,
    dtype: DtypeRule::F32,
    family: Family::Reduce,
    doc: "Sum along `axis` (the axis is removed).",
};
/// `t`: Transpose of a rank-2 tile (a view: no copy).
pub const T: OpDef = OpDef {
    name: "t",
    form: Form::Method,
    operands: &[],
    receiver: Some(Operand::Tile),
    shape: ShapeRule::Transpose,
    dtype: DtypeRule::Same,
    family: Family::View,
    doc: "Transpose of a rank-2 tile (a view: no copy).",
};
/// `unsqueeze`: Insert a size-1 axis into a tile of rank 0 or 1 (a view).
pub const UNSQUEEZE: OpDef = OpDef {
    name: "unsqueeze",
    form: Form::Method,
    operands: &[("axis", Operand::Axis)],
    receiver: Some(Operand::Tile),
    shape: ShapeRule::InsertAxis,
    dtype: DtypeRule::Same,
    family: Family::View,
    doc: "Insert a size-1 axis into a tile of rank 0 or 1 (a view).",
};
/// `cols`: Columns `a..b` of a rank-2 tile (a view).
pub const COLS: OpDef = OpDef {
    name: "cols",
    form: Form::Method,
    operands: &[("range", Operand::Range)],
    receiver: Some(Operand::Tile),
    shape: ShapeRule::SliceAxis,
    dtype: DtypeRule::Same,
    family: Family::View,
    doc: "Columns `a..b` of a rank-2 tile (a view).",
};
/// `rows`: Rows `a..b` of a rank-2 tile (a view).
pub const ROWS: OpDef = OpDef {
    name: "rows",
    form: Form::Method,
    operands: &[("range", Operand::Range)],
    receiver: Some(Operand::Tile),
    shape: ShapeRule::SliceAxis,
    dtype: DtypeRule::Same,
    family: Family::View,
    doc: "Rows `a..b` of a rank-2 tile (a view).",
};

/// Every operation, in the order the docs list them.
pub const OPS: &[OpDef] = &[
    PROGRAM_ID, CDIV, RANGE, LOAD, STORE, TILE, GET, BLOCKS, PIPELINED, PAGED_ROWS, LEN, PAGE_SIZE,
    VALID, START, ZEROS, FULL, IOTA, GEMM, EXP2, LOG2, SQRT, RSQRT, ABS, RECIP, NEG, MAX, MIN, ADD,
    SUB, MUL, DIV, LT, LE, GT, GE, EQ, NE, REM, SELECT, CAST, REDUCE_MAX, REDUCE_SUM, T, UNSQUEEZE,
    COLS, ROWS,
];
