//! Element types of the tile IR.

use std::fmt;

/// Element type of a tensor, tile or scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16 (stored as the upper 16 bits of an f32).
    BF16,
    /// 32-bit signed integer.
    I32,
    /// Boolean mask (tiles only).
    Bool,
}

impl DType {
    /// Size in bytes of one element in memory.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 => 2,
            DType::Bool => 1,
        }
    }
    /// True for F32 and BF16.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16)
    }
    /// Lower-case name as written in the DSL (`f32`, `bf16`, `i32`, `bool`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
