//! Shape and dtype inference for tile operations, shared by the builder and the validator.

use crate::error::IrError;
use crate::ir::{DType, Kernel, Operand, ParamKind, Slice, TileOp, ViewOp};

/// Inferred type of a tile value.
#[derive(Clone, Debug, PartialEq)]
pub struct TileType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Broadcasts two shapes NumPy-style (aligned from the right, 1 stretches).
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

fn operand_type(k: &Kernel, op: &Operand) -> Result<Option<TileType>, IrError> {
    Ok(match op {
        Operand::Tile(t) => {
            let info = k.tiles.get(*t).ok_or(IrError::UnknownTile(*t))?;
            Some(TileType {
                dtype: info.dtype,
                shape: info.shape.clone(),
            })
        }
        Operand::Scalar(_) | Operand::Int(_) => None,
    })
}

fn scalar_class(op: &Operand) -> Option<DType> {
    match op {
        Operand::Scalar(_) => Some(DType::F32),
        Operand::Int(_) => Some(DType::I32),
        Operand::Tile(_) => None,
    }
}

fn same_class(a: DType, b: DType) -> bool {
    a == b || (a.is_float() && b.is_float())
}

/// Shape and dtype of a pair of broadcast operands; `what` names the operation for errors.
fn elementwise(k: &Kernel, a: &Operand, b: &Operand, what: &str) -> Result<TileType, IrError> {
    let ta = operand_type(k, a)?;
    let tb = operand_type(k, b)?;
    match (ta, tb) {
        (Some(x), Some(y)) => {
            if x.dtype != y.dtype {
                return Err(IrError::DTypeMismatch {
                    op: what.into(),
                    left: x.dtype,
                    right: y.dtype,
                });
            }
            let shape = broadcast(&x.shape, &y.shape).ok_or_else(|| IrError::ShapeMismatch {
                op: what.into(),
                left: x.shape.clone(),
                right: y.shape.clone(),
            })?;
            Ok(TileType {
                dtype: x.dtype,
                shape,
            })
        }
        (Some(x), None) | (None, Some(x)) => {
            let s = scalar_class(if operand_type(k, a)?.is_none() { a } else { b }).unwrap();
            if !same_class(x.dtype, s) {
                return Err(IrError::DTypeMismatch {
                    op: what.into(),
                    left: x.dtype,
                    right: s,
                });
            }
            Ok(x)
        }
        (None, None) => Err(IrError::Invalid(format!(
            "{what}: at least one operand must be a tile"
        ))),
    }
}

/// Shape of the region selected by `index` from parameter `param` (spans only).
pub fn region_shape(
    k: &Kernel,
    param: usize,
    index: &[Slice],
) -> Result<(DType, Vec<usize>), IrError> {
    let p = k.params.get(param).ok_or(IrError::UnknownParam(param))?;
    let ParamKind::Tensor { dtype, dims, .. } = &p.kind else {
        return Err(IrError::Invalid(format!("`{}` is not a tensor", p.name)));
    };
    if dims.len() != index.len() {
        return Err(IrError::Rank {
            name: p.name.clone(),
            expected: dims.len(),
            got: index.len(),
        });
    }
    let shape: Vec<usize> = index
        .iter()
        .filter_map(|s| match s {
            Slice::Span { len, .. } => Some(*len),
            Slice::At(_) => None,
        })
        .collect();
    if shape.len() > 2 {
        return Err(IrError::Invalid(format!(
            "tile of `{}` has rank {} (at most 2)",
            p.name,
            shape.len()
        )));
    }
    if shape.contains(&0) {
        return Err(IrError::Invalid(format!(
            "tile of `{}` has an empty axis",
            p.name
        )));
    }
    Ok((*dtype, shape))
}

/// Infers the result type of `op`. `Full`, `Iota` and `Cast` take their type from the caller
/// (`declared`), which is checked for plausibility.
pub fn infer(k: &Kernel, op: &TileOp, declared: Option<&TileType>) -> Result<TileType, IrError> {
    let tile = |t: usize| -> Result<TileType, IrError> {
        let info = k.tiles.get(t).ok_or(IrError::UnknownTile(t))?;
        Ok(TileType {
            dtype: info.dtype,
            shape: info.shape.clone(),
        })
    };
    let need_declared = || -> Result<TileType, IrError> {
        declared
            .cloned()
            .ok_or_else(|| IrError::Invalid("operation needs a declared type".into()))
    };
    let ty = match op {
        TileOp::Full(v) => {
            let d = need_declared()?;
            let s = scalar_class(v)
                .ok_or_else(|| IrError::Invalid("full: value must be a scalar".into()))?;
            if !(same_class(d.dtype, s) || d.dtype == DType::Bool && s == DType::I32) {
                return Err(IrError::DTypeMismatch {
                    op: "full".into(),
                    left: d.dtype,
                    right: s,
                });
            }
            d
        }
        TileOp::Iota { axis } => {
            let d = need_declared()?;
            if d.dtype != DType::I32 || *axis >= d.shape.len() {
                return Err(IrError::Invalid(
                    "iota: i32 tile and an axis within its rank".into(),
                ));
            }
            d
        }
        TileOp::Load { param, index } => {
            let (dtype, shape) = region_shape(k, *param, index)?;
            TileType { dtype, shape }
        }
        TileOp::Unary(u, t) => {
            let t = tile(*t)?;
            if !t.dtype.is_float() {
                return Err(IrError::Invalid(format!(
                    "{} needs a float tile, got {}",
                    u.name(),
                    t.dtype
                )));
            }
            t
        }
        TileOp::Binary(b, x, y) => {
            let t = elementwise(k, x, y, b.name())?;
            if t.dtype == DType::Bool {
                return Err(IrError::Invalid(format!("`{}` on a bool tile", b.name())));
            }
            t
        }
        TileOp::Compare(c, x, y) => {
            let t = elementwise(k, x, y, c.name())?;
            TileType {
                dtype: DType::Bool,
                shape: t.shape,
            }
        }
        TileOp::Select {
            mask,
            on_true,
            on_false,
        } => {
            let m = tile(*mask)?;
            if m.dtype != DType::Bool {
                return Err(IrError::DTypeMismatch {
                    op: "select mask".into(),
                    left: m.dtype,
                    right: DType::Bool,
                });
            }
            let v = elementwise(k, on_true, on_false, "select")?;
            let shape = broadcast(&m.shape, &v.shape).ok_or_else(|| IrError::ShapeMismatch {
                op: "select".into(),
                left: m.shape.clone(),
                right: v.shape.clone(),
            })?;
            TileType {
                dtype: v.dtype,
                shape,
            }
        }
        TileOp::Reduce { src, axis, .. } => {
            let mut t = tile(*src)?;
            if *axis >= t.shape.len() || !t.dtype.is_float() {
                return Err(IrError::Invalid(format!(
                    "reduce along axis {axis} of a {}-tile of rank {}",
                    t.dtype,
                    t.shape.len()
                )));
            }
            t.shape.remove(*axis);
            t.dtype = DType::F32;
            t
        }
        TileOp::Gemm { a, b } => {
            let (ta, tb) = (tile(*a)?, tile(*b)?);
            if ta.shape.len() != 2 || tb.shape.len() != 2 {
                return Err(IrError::Invalid("gemm needs rank-2 tiles".into()));
            }
            if !ta.dtype.is_float() || !tb.dtype.is_float() {
                return Err(IrError::DTypeMismatch {
                    op: "gemm".into(),
                    left: ta.dtype,
                    right: tb.dtype,
                });
            }
            if ta.shape[1] != tb.shape[0] {
                return Err(IrError::ShapeMismatch {
                    op: "gemm".into(),
                    left: ta.shape,
                    right: tb.shape,
                });
            }
            TileType {
                dtype: DType::F32,
                shape: vec![ta.shape[0], tb.shape[1]],
            }
        }
        TileOp::Cast(src) => {
            let d = need_declared()?;
            let s = tile(*src)?;
            if d.shape != s.shape || d.dtype == DType::Bool {
                return Err(IrError::Invalid(
                    "cast keeps the shape and targets f32, bf16 or i32".into(),
                ));
            }
            d
        }
        TileOp::View(src, v) => {
            let mut t = tile(*src)?;
            match v {
                ViewOp::Transpose => {
                    if t.shape.len() != 2 {
                        return Err(IrError::Invalid("transpose needs a rank-2 tile".into()));
                    }
                    t.shape.swap(0, 1);
                }
                ViewOp::Unsqueeze(axis) => {
                    if *axis > t.shape.len() || t.shape.len() >= 2 {
                        return Err(IrError::Invalid(
                            "unsqueeze: result rank must be at most 2".into(),
                        ));
                    }
                    t.shape.insert(*axis, 1);
                }
                ViewOp::Slice { axis, start, len } => {
                    let ext = *t
                        .shape
                        .get(*axis)
                        .ok_or_else(|| IrError::Invalid("slice axis out of range".into()))?;
                    if *len == 0 || start + len > ext {
                        return Err(IrError::Invalid(format!(
                            "slice {start}..{} of an axis of {ext}",
                            start + len
                        )));
                    }
                    t.shape[*axis] = *len;
                }
            }
            t
        }
    };
    if ty.shape.len() > 2 {
        return Err(IrError::Invalid("tiles have rank at most 2".into()));
    }
    if let Some(d) = declared {
        if d != &ty {
            return Err(IrError::Reassign {
                expected: format!("{:?}{:?}", d.dtype, d.shape),
                got: format!("{:?}{:?}", ty.dtype, ty.shape),
            });
        }
    }
    Ok(ty)
}
