//! Element and value types of the generated code, conversions and literals.

use crate::ir::*;

/// Storage element type in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Elem {
    F32,
    Bf16,
    I32,
    U8,
}

impl Elem {
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::Bf16 => 2,
            Elem::U8 => 1,
        }
    }
    pub(crate) fn cty(self) -> &'static str {
        match self {
            Elem::F32 => "float",
            Elem::Bf16 => "tpla_bf16",
            Elem::I32 => "int",
            Elem::U8 => "unsigned char",
        }
    }
    pub(crate) fn of_dtype(d: DType) -> Elem {
        match d {
            DType::F32 => Elem::F32,
            DType::BF16 => Elem::Bf16,
            DType::I32 => Elem::I32,
            DType::Bool => Elem::U8,
        }
    }
    /// Converts a stored element (C lvalue/expr) to a value of type `vt`.
    pub(crate) fn load(self, e: &str, vt: Vt) -> String {
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
    pub(crate) fn store(self, v: &str, vt: Vt) -> String {
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
pub(crate) enum Vt {
    F32,
    I32,
    Bool,
}

impl Vt {
    pub(crate) fn of(d: DType) -> Vt {
        match d {
            DType::F32 | DType::BF16 => Vt::F32,
            DType::I32 => Vt::I32,
            DType::Bool => Vt::Bool,
        }
    }
    pub(crate) fn cty(self) -> &'static str {
        match self {
            Vt::F32 => "float",
            Vt::I32 => "int",
            Vt::Bool => "bool",
        }
    }
    pub(crate) fn zero(self) -> &'static str {
        match self {
            Vt::F32 => "0.0f",
            Vt::I32 => "0",
            Vt::Bool => "false",
        }
    }
}

pub(crate) fn convert(v: &str, from: Vt, to: Vt) -> String {
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

pub(crate) fn flit(v: f32) -> String {
    if v.is_finite() {
        format!("{v:e}f")
    } else {
        format!("__uint_as_float(0x{:08x}u)", v.to_bits())
    }
}
