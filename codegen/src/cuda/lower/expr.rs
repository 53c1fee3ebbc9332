//! Index and scalar expressions.

use crate::cuda::elem::*;
use crate::cuda::lower::*;
use crate::ir::*;

impl<'a> Lower<'a> {
    pub(crate) fn idx(&self, i: &Index) -> String {
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

    pub(crate) fn fscalar(&self, s: &FScalar) -> String {
        match s {
            FScalar::Lit(v) => flit(*v),
            FScalar::Param(p) => format!("p{p}"),
            FScalar::FromIndex(i) => format!("((float)({}))", self.idx(i)),
            FScalar::Bin(op, a, b) => float_bin(*op, &self.fscalar(a), &self.fscalar(b)),
            FScalar::Unary(op, a) => float_un(*op, &self.fscalar(a)),
        }
    }

    /// A scalar operand as a value of type `vt`.
    pub(crate) fn scalar_operand(&self, o: &Operand, vt: Vt) -> String {
        match o {
            Operand::Scalar(s) => convert(&self.fscalar(s), Vt::F32, vt),
            Operand::Int(i) => convert(&self.idx(i), Vt::I32, vt),
            Operand::Tile(_) => unreachable!("tile operand"),
        }
    }

    /// C expressions for a tensor parameter's dimensions.
    pub(crate) fn tensor_dims(&self, p: ParamId) -> Vec<String> {
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
    pub(crate) fn offset_expr(&self, dims: &[String], idx: &[String]) -> (String, String) {
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
}

pub(crate) fn flat_index(coords: &[String], shape: &[usize]) -> String {
    match shape.len() {
        0 => "0".into(),
        1 => coords[0].clone(),
        _ => format!("(({}) * {} + ({}))", coords[0], shape[1], coords[1]),
    }
}

pub(crate) fn float_bin(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("({a} + {b})"),
        BinaryOp::Sub => format!("({a} - {b})"),
        BinaryOp::Mul => format!("({a} * {b})"),
        BinaryOp::Div => format!("({a} / {b})"),
        BinaryOp::Max => format!("tpla_fmax({a}, {b})"),
        BinaryOp::Min => format!("tpla_fmin({a}, {b})"),
    }
}

pub(crate) fn float_un(op: UnaryOp, x: &str) -> String {
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
