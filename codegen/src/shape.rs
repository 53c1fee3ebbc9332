//! Shape and dtype inference for tile operations, shared by the builder and the validator,
//! driven by each operation's row of the op table (operand kinds, shape rule, dtype rule).

use crate::error::IrError;
use crate::ir::{DType, Kernel, Operand, ParamKind, Slice, TileOp, ViewOp};
use crate::ops::table::Operand as OperandKind;
use crate::ops::{DtypeRule, OpDef, ShapeRule};

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

/// The value operands of `op`, in the op table's order (a method's receiver first; constant
/// arguments such as shapes and axes are part of the IR op, not operands).
fn value_operands(op: &TileOp) -> Vec<Operand> {
    let t = |id: usize| Operand::Tile(id);
    match op {
        TileOp::Full(v) => vec![v.clone()],
        TileOp::Iota { .. } | TileOp::Load { .. } => Vec::new(),
        TileOp::Unary(_, x) | TileOp::Cast(x) | TileOp::View(x, _) => vec![t(*x)],
        TileOp::Reduce { src, .. } => vec![t(*src)],
        TileOp::Binary(_, a, b) | TileOp::Compare(_, a, b) => vec![a.clone(), b.clone()],
        TileOp::Select {
            mask,
            on_true,
            on_false,
        } => vec![t(*mask), on_true.clone(), on_false.clone()],
        TileOp::Gemm { a, b } => vec![t(*a), t(*b)],
    }
}

/// The table's kinds of the value operands (see [`value_operands`]).
fn value_kinds(def: &OpDef) -> Vec<OperandKind> {
    def.receiver
        .into_iter()
        .chain(def.operands.iter().map(|(_, k)| *k))
        .filter(|k| {
            !matches!(
                k,
                OperandKind::Shape
                    | OperandKind::Const
                    | OperandKind::Axis
                    | OperandKind::Range
                    | OperandKind::Region
                    | OperandKind::Index
                    | OperandKind::Int
            )
        })
        .collect()
}

/// Checks each operand against its kind in the op table.
fn check_kinds(k: &Kernel, def: &OpDef, args: &[Operand]) -> Result<(), IrError> {
    let kinds = value_kinds(def);
    if kinds.len() != args.len() {
        return Err(IrError::Invalid(format!(
            "`{}` has {} operands, the op table says {}",
            def.name,
            args.len(),
            kinds.len()
        )));
    }
    for (i, (kind, a)) in kinds.iter().zip(args).enumerate() {
        let tile = operand_type(k, a)?;
        let dtype = tile
            .as_ref()
            .map(|t| t.dtype)
            .or_else(|| scalar_class(a))
            .unwrap_or(DType::F32);
        let ok = match kind {
            OperandKind::Tile => tile.is_some(),
            OperandKind::FloatTile => tile.is_some() && dtype.is_float(),
            OperandKind::Mask => tile.is_some() && dtype == DType::Bool,
            OperandKind::FloatValue => dtype.is_float(),
            OperandKind::Number => dtype != DType::Bool,
            OperandKind::Scalar => tile.is_none(),
            _ => true,
        };
        if !ok {
            let got = match &tile {
                Some(t) => format!("a {} tile", t.dtype),
                None => format!("a {dtype} scalar"),
            };
            return Err(IrError::Invalid(def.operand_message(i, &got)));
        }
    }
    Ok(())
}

/// Infers the result type of `op` from its op-table row ([`TileOp::def`]): operand kinds, then
/// the shape rule and the dtype rule. `Full`, `Iota` and `Cast` take their type from the caller
/// (`declared`), which is checked for plausibility.
pub fn infer(k: &Kernel, op: &TileOp, declared: Option<&TileType>) -> Result<TileType, IrError> {
    let def = op.def();
    let name = def.name;
    let args = value_operands(op);
    check_kinds(k, def, &args)?;
    let tile = |i: usize| -> Result<TileType, IrError> {
        args.get(i)
            .map(|a| operand_type(k, a))
            .transpose()?
            .flatten()
            .ok_or_else(|| IrError::Invalid(format!("`{name}`: operand {i} is not a tile")))
    };
    let need_declared = || -> Result<TileType, IrError> {
        declared
            .cloned()
            .ok_or_else(|| IrError::Invalid(format!("`{name}` needs a declared type")))
    };
    // Two broadcast value operands (`a + b`, `select(m, a, b)`): their common class and shape.
    let pair = || -> Result<TileType, IrError> {
        match args.len() {
            n @ 2.. => elementwise(k, &args[n - 2], &args[n - 1], name),
            _ => Err(IrError::Invalid(format!("`{name}` needs two operands"))),
        }
    };

    let shape = match def.shape {
        ShapeRule::Broadcast => {
            let mut shape = pair()?.shape;
            for a in &args[..args.len().saturating_sub(2)] {
                if let Some(t) = operand_type(k, a)? {
                    shape = broadcast(&t.shape, &shape).ok_or_else(|| IrError::ShapeMismatch {
                        op: name.into(),
                        left: t.shape.clone(),
                        right: shape.clone(),
                    })?;
                }
            }
            shape
        }
        ShapeRule::Same => tile(0)?.shape,
        ShapeRule::Given => {
            let d = need_declared()?;
            if let TileOp::Iota { axis } = op {
                if *axis >= d.shape.len() {
                    return Err(IrError::Invalid(format!(
                        "{name}: axis {axis} of a tile of rank {}",
                        d.shape.len()
                    )));
                }
            }
            d.shape
        }
        ShapeRule::Region => match op {
            TileOp::Load { param, index } => region_shape(k, *param, index)?.1,
            _ => return Err(IrError::Invalid(format!("`{name}` has no region"))),
        },
        ShapeRule::DropAxis => {
            let (mut t, axis) = match op {
                TileOp::Reduce { axis, .. } => (tile(0)?, *axis),
                _ => return Err(IrError::Invalid(format!("`{name}` has no axis"))),
            };
            if axis >= t.shape.len() {
                return Err(IrError::Invalid(format!(
                    "{name} along axis {axis} of a tile of rank {}",
                    t.shape.len()
                )));
            }
            t.shape.remove(axis);
            t.shape
        }
        ShapeRule::Gemm => {
            let (ta, tb) = (tile(0)?, tile(1)?);
            if ta.shape.len() != 2 || tb.shape.len() != 2 {
                return Err(IrError::Invalid(format!("{name} needs rank-2 tiles")));
            }
            if ta.shape[1] != tb.shape[0] {
                return Err(IrError::ShapeMismatch {
                    op: name.into(),
                    left: ta.shape,
                    right: tb.shape,
                });
            }
            vec![ta.shape[0], tb.shape[1]]
        }
        ShapeRule::Transpose => {
            let mut t = tile(0)?;
            if t.shape.len() != 2 {
                return Err(IrError::Invalid(format!(".{name}() needs a rank-2 tile")));
            }
            t.shape.swap(0, 1);
            t.shape
        }
        ShapeRule::InsertAxis => {
            let mut t = tile(0)?;
            let TileOp::View(_, ViewOp::Unsqueeze(axis)) = op else {
                return Err(IrError::Invalid(format!("`{name}` has no axis")));
            };
            if *axis > t.shape.len() || t.shape.len() >= 2 {
                return Err(IrError::Invalid(format!(
                    "{name}: result rank must be at most 2"
                )));
            }
            t.shape.insert(*axis, 1);
            t.shape
        }
        ShapeRule::SliceAxis => {
            let mut t = tile(0)?;
            let TileOp::View(_, ViewOp::Slice { axis, start, len }) = op else {
                return Err(IrError::Invalid(format!("`{name}` has no range")));
            };
            let ext = *t
                .shape
                .get(*axis)
                .ok_or_else(|| IrError::Invalid(format!("{name}: axis {axis} out of range")))?;
            if *len == 0 || start + len > ext {
                return Err(IrError::Invalid(format!(
                    "{name} {start}..{} of an axis of {ext}",
                    start + len
                )));
            }
            t.shape[*axis] = *len;
            t.shape
        }
        ShapeRule::Block | ShapeRule::BlockRows | ShapeRule::NoTile => {
            return Err(IrError::Invalid(format!("`{name}` does not define a tile")))
        }
    };

    let dtype = match def.dtype {
        DtypeRule::Common => pair()?.dtype,
        DtypeRule::Bool => {
            pair()?;
            DType::Bool
        }
        DtypeRule::SameFloat | DtypeRule::Same => tile(0)?.dtype,
        DtypeRule::F32 => DType::F32,
        DtypeRule::I32 => {
            let d = need_declared()?;
            if d.dtype != DType::I32 {
                return Err(IrError::Invalid(format!("{name} defines an i32 tile")));
            }
            DType::I32
        }
        DtypeRule::Given => {
            let d = need_declared()?;
            let s = scalar_class(&args[0])
                .ok_or_else(|| IrError::Invalid(format!("{name}: value must be a scalar")))?;
            if !(same_class(d.dtype, s) || d.dtype == DType::Bool && s == DType::I32) {
                return Err(IrError::DTypeMismatch {
                    op: name.into(),
                    left: d.dtype,
                    right: s,
                });
            }
            d.dtype
        }
        DtypeRule::Target => {
            let d = need_declared()?;
            if d.dtype == DType::Bool {
                return Err(IrError::Invalid(format!(
                    "{name} keeps the shape and targets f32, bf16 or i32"
                )));
            }
            d.dtype
        }
        DtypeRule::Source => match op {
            TileOp::Load { param, index } => region_shape(k, *param, index)?.0,
            _ => return Err(IrError::Invalid(format!("`{name}` has no source"))),
        },
        DtypeRule::MustMatch | DtypeRule::NoTile => {
            return Err(IrError::Invalid(format!("`{name}` does not define a tile")))
        }
    };
    let ty = TileType { dtype, shape };
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
