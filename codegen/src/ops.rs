//! The IR's operations in the DSL's op table ([`tpla_optable`]): each [`TileOp`] and statement
//! knows its [`OpDef`] (name, operand kinds, shape and dtype rule, op family), so the printer,
//! the validator's messages and the backends' dispatch read the same table as the macro.

pub use tpla_optable::{self as table, DtypeRule, Family, OpDef, ShapeRule};

use crate::ir::{BinaryOp, CmpOp, ReduceOp, Stmt, TileOp, UnaryOp, ViewOp};

impl UnaryOp {
    /// This function's row of the op table.
    pub fn def(self) -> &'static OpDef {
        match self {
            UnaryOp::Neg => &table::NEG,
            UnaryOp::Exp2 => &table::EXP2,
            UnaryOp::Log2 => &table::LOG2,
            UnaryOp::Sqrt => &table::SQRT,
            UnaryOp::Rsqrt => &table::RSQRT,
            UnaryOp::Abs => &table::ABS,
            UnaryOp::Recip => &table::RECIP,
        }
    }
}

impl BinaryOp {
    /// This operator's row of the op table.
    pub fn def(self) -> &'static OpDef {
        match self {
            BinaryOp::Add => &table::ADD,
            BinaryOp::Sub => &table::SUB,
            BinaryOp::Mul => &table::MUL,
            BinaryOp::Div => &table::DIV,
            BinaryOp::Max => &table::MAX,
            BinaryOp::Min => &table::MIN,
        }
    }
}

impl CmpOp {
    /// This comparison's row of the op table.
    pub fn def(self) -> &'static OpDef {
        match self {
            CmpOp::Lt => &table::LT,
            CmpOp::Le => &table::LE,
            CmpOp::Gt => &table::GT,
            CmpOp::Ge => &table::GE,
            CmpOp::Eq => &table::EQ,
            CmpOp::Ne => &table::NE,
        }
    }
}

impl ReduceOp {
    /// This reduction's row of the op table.
    pub fn def(self) -> &'static OpDef {
        match self {
            ReduceOp::Sum => &table::REDUCE_SUM,
            ReduceOp::Max => &table::REDUCE_MAX,
        }
    }
}

impl ViewOp {
    /// This view's row of the op table (a slice is `cols` or `rows` by its axis).
    pub fn def(&self) -> &'static OpDef {
        match self {
            ViewOp::Transpose => &table::T,
            ViewOp::Unsqueeze(_) => &table::UNSQUEEZE,
            ViewOp::Slice { axis: 0, .. } => &table::ROWS,
            ViewOp::Slice { .. } => &table::COLS,
        }
    }
}

impl TileOp {
    /// This operation's row of the op table (`Full` is `full`, of which `zeros` is a case).
    pub fn def(&self) -> &'static OpDef {
        match self {
            TileOp::Full(_) => &table::FULL,
            TileOp::Iota { .. } => &table::IOTA,
            TileOp::Load { .. } => &table::LOAD,
            TileOp::Unary(u, _) => u.def(),
            TileOp::Binary(b, _, _) => b.def(),
            TileOp::Compare(c, _, _) => c.def(),
            TileOp::Select { .. } => &table::SELECT,
            TileOp::Reduce { op, .. } => op.def(),
            TileOp::Gemm { .. } => &table::GEMM,
            TileOp::Cast(_) => &table::CAST,
            TileOp::View(_, v) => v.def(),
        }
    }

    /// The op family, which picks the backend module that lowers it.
    pub fn family(&self) -> Family {
        self.def().family
    }
}

impl Stmt {
    /// The op-table row of a statement that is an operation (`store`, a paged store, a
    /// `blocks` loop); `None` for `let`, assignments and `for` loops.
    pub fn def(&self) -> Option<&'static OpDef> {
        match self {
            Stmt::Store { .. } => Some(&table::STORE),
            Stmt::PagedStore { .. } => Some(&table::PAGED_ROWS),
            Stmt::PagedBlocks { .. } => Some(&table::BLOCKS),
            Stmt::Let { .. } | Stmt::Assign { .. } | Stmt::For { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{FScalar, Operand};

    #[test]
    fn ir_ops_map_to_rows_of_their_family() {
        let lit = || Operand::Scalar(FScalar::Lit(1.0));
        let cases = [
            (TileOp::Full(lit()), "full", Family::Constant),
            (TileOp::Iota { axis: 0 }, "iota", Family::Constant),
            (TileOp::Unary(UnaryOp::Exp2, 0), "exp2", Family::Elementwise),
            (
                TileOp::Binary(BinaryOp::Max, lit(), lit()),
                "max",
                Family::Elementwise,
            ),
            (
                TileOp::Compare(CmpOp::Le, lit(), lit()),
                "<=",
                Family::Elementwise,
            ),
            (
                TileOp::Reduce {
                    op: ReduceOp::Sum,
                    src: 0,
                    axis: 1,
                },
                "reduce_sum",
                Family::Reduce,
            ),
            (TileOp::Gemm { a: 0, b: 1 }, "gemm", Family::Gemm),
            (TileOp::View(0, ViewOp::Transpose), "t", Family::View),
            (
                TileOp::Load {
                    param: 0,
                    index: vec![],
                },
                "load",
                Family::Memory,
            ),
        ];
        for (op, name, fam) in cases {
            assert_eq!((op.def().name, op.family()), (name, fam), "{op:?}");
        }
        // Every unary function's IR name is its table name.
        for u in [
            UnaryOp::Exp2,
            UnaryOp::Log2,
            UnaryOp::Sqrt,
            UnaryOp::Rsqrt,
            UnaryOp::Abs,
        ] {
            assert_eq!(u.name(), u.def().name);
        }
    }
}
