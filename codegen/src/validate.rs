//! Structural validation of a built kernel: every operation well-typed, views never observable as
//! aliases, indices referring to things that exist.

use crate::error::IrError;
use crate::ir::*;
use crate::ops::table::STORE;
use crate::ops::DtypeRule;
use crate::shape::{infer, region_shape, TileType};

/// Checks a kernel; the builder calls this, and backends may rely on it having passed.
pub fn validate(k: &Kernel) -> Result<(), IrError> {
    for g in &k.grid {
        check_grid_index(k, g)?;
    }
    let mut assigns = vec![0usize; k.tiles.len()];
    count_assigns(&k.body, &mut assigns);
    check_block(k, &k.body, &assigns)?;
    check_chunked_loops_top_level(k)
}

/// A block loop over a `chunked` cache ends its program when the split is past the sequence's
/// last (see [`Stmt::PagedBlocks`]), which is only well-defined at the top level of the body.
fn check_chunked_loops_top_level(k: &Kernel) -> Result<(), IrError> {
    let chunked = |c: ParamId| {
        matches!(
            k.params.get(c).map(|p| &p.kind),
            Some(ParamKind::Paged { chunked: true, .. })
        )
    };
    let top_level_ok = k
        .body
        .iter()
        .filter_map(crate::visit::nested_body)
        .all(|inner| {
            !crate::visit::any_stmt(
                inner,
                &mut |s| matches!(s, Stmt::PagedBlocks { cache, .. } if chunked(*cache)),
            )
        });
    if !top_level_ok {
        return Err(IrError::Invalid(
            "a block loop over a cache with a split table (KV_CHUNKS = 1) must be at the top \
             level of the kernel body"
                .into(),
        ));
    }
    Ok(())
}

fn check_grid_index(k: &Kernel, i: &Index) -> Result<(), IrError> {
    match i {
        Index::Const(_) => Ok(()),
        Index::Dim(d) if *d < k.dims.len() => Ok(()),
        Index::Bin(_, a, b) => {
            check_grid_index(k, a)?;
            check_grid_index(k, b)
        }
        other => Err(IrError::Invalid(format!(
            "grid may use only constants and runtime dims, not {other:?}"
        ))),
    }
}

fn count_assigns(body: &[Stmt], n: &mut [usize]) {
    for s in body {
        match s {
            Stmt::Assign { dst, .. } => n[*dst] += 1,
            Stmt::For { body, .. } => count_assigns(body, n),
            Stmt::PagedBlocks {
                tile, valid, body, ..
            } => {
                n[*tile] += 1;
                n[*valid] += 1;
                count_assigns(body, n);
            }
            _ => {}
        }
    }
}

fn check_index(k: &Kernel, i: &Index) -> Result<(), IrError> {
    match i {
        Index::Const(_) | Index::ProgramId(0..=2) => Ok(()),
        Index::ProgramId(a) => Err(IrError::Invalid(format!("program_id axis {a}"))),
        Index::Dim(d) if *d < k.dims.len() => Ok(()),
        Index::Var(v) if *v < k.scalars.len() => Ok(()),
        Index::Bin(_, a, b) => {
            check_index(k, a)?;
            check_index(k, b)
        }
        Index::SeqLen { cache, batch } => {
            paged(k, *cache)?;
            check_index(k, batch)
        }
        Index::PageSize(cache) => paged(k, *cache).map(|_| ()),
        Index::Load { param, index } => match k.params.get(*param).map(|p| &p.kind) {
            Some(ParamKind::Tensor {
                dtype: DType::I32,
                dims,
                ..
            }) if dims.len() == index.len() => index.iter().try_for_each(|i| check_index(k, i)),
            _ => Err(IrError::Invalid(format!(
                "scalar load from parameter #{param} needs an i32 tensor of matching rank"
            ))),
        },
        Index::Scalar(p) => match k.params.get(*p).map(|p| &p.kind) {
            Some(ParamKind::Scalar { dtype: DType::I32 }) => Ok(()),
            _ => Err(IrError::Invalid(format!(
                "parameter #{p} is not an i32 scalar"
            ))),
        },
        other => Err(IrError::Invalid(format!("dangling index {other:?}"))),
    }
}

fn paged(k: &Kernel, p: ParamId) -> Result<(DType, usize, bool), IrError> {
    match k.params.get(p).map(|p| &p.kind) {
        Some(ParamKind::Paged {
            dtype,
            row,
            writable,
            ..
        }) => Ok((*dtype, *row, *writable)),
        _ => Err(IrError::Invalid(format!(
            "parameter #{p} is not a paged cache"
        ))),
    }
}

fn check_fscalar(k: &Kernel, s: &FScalar) -> Result<(), IrError> {
    match s {
        FScalar::Lit(_) => Ok(()),
        FScalar::Param(p) => match k.params.get(*p).map(|p| &p.kind) {
            Some(ParamKind::Scalar { dtype: DType::F32 }) => Ok(()),
            _ => Err(IrError::Invalid(format!(
                "parameter #{p} is not an f32 scalar"
            ))),
        },
        FScalar::FromIndex(i) => check_index(k, i),
        FScalar::Bin(_, a, b) => {
            check_fscalar(k, a)?;
            check_fscalar(k, b)
        }
        FScalar::Unary(_, a) => check_fscalar(k, a),
    }
}

fn check_operand(k: &Kernel, o: &Operand) -> Result<(), IrError> {
    match o {
        Operand::Tile(t) if *t < k.tiles.len() => Ok(()),
        Operand::Tile(t) => Err(IrError::UnknownTile(*t)),
        Operand::Scalar(s) => check_fscalar(k, s),
        Operand::Int(i) => check_index(k, i),
    }
}

fn check_slices(k: &Kernel, index: &[Slice]) -> Result<(), IrError> {
    index.iter().try_for_each(|s| match s {
        Slice::At(i) | Slice::Span { start: i, .. } => check_index(k, i),
    })
}

fn check_op(k: &Kernel, op: &TileOp, assigns: &[usize], dst: TileId) -> Result<(), IrError> {
    match op {
        TileOp::Full(o) => check_operand(k, o)?,
        TileOp::Binary(_, a, b) | TileOp::Compare(_, a, b) => {
            check_operand(k, a)?;
            check_operand(k, b)?;
        }
        TileOp::Select {
            on_true, on_false, ..
        } => {
            check_operand(k, on_true)?;
            check_operand(k, on_false)?;
        }
        TileOp::Load { index, .. } => check_slices(k, index)?,
        TileOp::View(src, _) if (assigns.get(*src) != Some(&1) || assigns[dst] != 1) => {
            return Err(IrError::Invalid(format!(
                "view `{}` of `{}`: both must be assigned exactly once",
                k.tiles[dst].name,
                k.tiles.get(*src).map(|t| t.name.as_str()).unwrap_or("?")
            )));
        }
        _ => {}
    }
    let info = &k.tiles[dst];
    let declared = TileType {
        dtype: info.dtype,
        shape: info.shape.clone(),
    };
    let got = infer(k, op, Some(&declared)).or_else(|e| match e {
        // Float labels may differ between a variable and a later value assigned to it.
        IrError::Reassign { .. } => {
            let t = infer(k, op, None)?;
            if t.shape == declared.shape && t.dtype.is_float() && declared.dtype.is_float() {
                Ok(declared.clone())
            } else {
                Err(e)
            }
        }
        e => Err(e),
    })?;
    debug_assert_eq!(got.shape, declared.shape);
    Ok(())
}

fn check_block(k: &Kernel, body: &[Stmt], assigns: &[usize]) -> Result<(), IrError> {
    for s in body {
        match s {
            Stmt::Let { dst, value } => {
                if *dst >= k.scalars.len() {
                    return Err(IrError::Invalid(format!("dangling scalar #{dst}")));
                }
                check_index(k, value)?;
            }
            Stmt::Assign { dst, op } => {
                if *dst >= k.tiles.len() {
                    return Err(IrError::UnknownTile(*dst));
                }
                check_op(k, op, assigns, *dst)?;
            }
            Stmt::Store { param, index, src } => {
                check_slices(k, index)?;
                let (dtype, shape) = region_shape(k, *param, index)?;
                let t = k.tiles.get(*src).ok_or(IrError::UnknownTile(*src))?;
                if !matches!(
                    k.params[*param].kind,
                    ParamKind::Tensor { writable: true, .. }
                ) {
                    return Err(IrError::Invalid(format!(
                        "store into read-only `{}`",
                        k.params[*param].name
                    )));
                }
                // The op table's `store` dtype rule: the tile's dtype is the tensor's.
                let op = format!("{} into `{}`", STORE.name, k.params[*param].name);
                if STORE.dtype == DtypeRule::MustMatch && t.dtype != dtype {
                    return Err(IrError::DTypeMismatch {
                        op,
                        left: t.dtype,
                        right: dtype,
                    });
                }
                if t.shape != shape {
                    return Err(IrError::ShapeMismatch {
                        op,
                        left: t.shape.clone(),
                        right: shape,
                    });
                }
            }
            Stmt::For {
                var,
                start,
                end,
                body,
            } => {
                if *var >= k.scalars.len() {
                    return Err(IrError::Invalid(format!("dangling scalar #{var}")));
                }
                check_index(k, start)?;
                check_index(k, end)?;
                check_block(k, body, assigns)?;
            }
            Stmt::PagedBlocks {
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
            } => {
                let (dtype, row, _) = paged(k, *cache)?;
                check_index(k, batch)?;
                check_index(k, split)?;
                check_index(k, num_splits)?;
                let t = k.tiles.get(*tile).ok_or(IrError::UnknownTile(*tile))?;
                let v = k.tiles.get(*valid).ok_or(IrError::UnknownTile(*valid))?;
                if *block == 0
                    || *stages == 0
                    || *start >= k.scalars.len()
                    || t.dtype != dtype
                    || t.shape != vec![*block, row]
                    || v.dtype != DType::Bool
                    || v.shape != vec![*block]
                {
                    return Err(IrError::Invalid("malformed paged block loop".into()));
                }
                check_block(k, body, assigns)?;
            }
            Stmt::PagedStore {
                cache,
                batch,
                start,
                src,
            } => {
                let (dtype, row, writable) = paged(k, *cache)?;
                check_index(k, batch)?;
                check_index(k, start)?;
                let t = k.tiles.get(*src).ok_or(IrError::UnknownTile(*src))?;
                if !writable || t.dtype != dtype || t.shape.len() != 2 || t.shape[1] != row {
                    return Err(IrError::Invalid("malformed paged store".into()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, KernelBuilder};

    /// A store of an f32 tile into a tensor relabelled bf16: the dtype rule of `store`, not a
    /// shape mismatch between two equal shapes.
    #[test]
    fn store_of_the_wrong_dtype_is_a_dtype_mismatch() {
        let mut b = KernelBuilder::new("k", &Config::new());
        let x = b.tensor("x", DType::F32, vec![ParamDim::Const(4)], false);
        let y = b.tensor("y", DType::F32, vec![ParamDim::Const(4)], true);
        let idx = vec![Slice::Span {
            start: Index::Const(0),
            len: 4,
        }];
        let t = b
            .define(
                "t",
                TileOp::Load {
                    param: x,
                    index: idx.clone(),
                },
            )
            .unwrap();
        b.store(y, idx, t).unwrap();
        b.grid([Index::Const(1), Index::Const(1), Index::Const(1)]);
        let mut k = b.finish().unwrap();
        k.params[y].kind = ParamKind::Tensor {
            dtype: DType::BF16,
            dims: vec![ParamDim::Const(4)],
            writable: true,
        };
        assert_eq!(
            validate(&k),
            Err(IrError::DTypeMismatch {
                op: "store into `y`".into(),
                left: DType::F32,
                right: DType::BF16,
            })
        );
    }
}
