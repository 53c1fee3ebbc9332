//! Incremental construction of a [`Kernel`]; the code the `#[kernel]` macro emits calls this.
//!
//! Every method that defines a tile infers its shape and dtype and fails with a typed
//! [`IrError`] when the operation is ill-typed for the config at hand.

use crate::config::Config;
use crate::error::IrError;
use crate::ir::*;
use crate::shape::{infer, TileType};

/// Builds one kernel for one config.
pub struct KernelBuilder {
    kernel: Kernel,
    /// Open statement lists: the body, then one per open loop.
    stack: Vec<Vec<Stmt>>,
    /// Loop headers waiting for their body.
    open: Vec<Stmt>,
}

impl KernelBuilder {
    /// Starts a kernel named `name` for `config`.
    pub fn new(name: &str, config: &Config) -> Self {
        KernelBuilder {
            kernel: Kernel {
                name: name.to_string(),
                config: config.iter().map(|(k, v)| (k.to_string(), v)).collect(),
                params: Vec::new(),
                dims: Vec::new(),
                grid: [Index::Const(1), Index::Const(1), Index::Const(1)],
                tiles: Vec::new(),
                scalars: Vec::new(),
                body: Vec::new(),
            },
            stack: vec![Vec::new()],
            open: Vec::new(),
        }
    }

    /// The kernel as built so far (for inspection).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The id of runtime dimension `name`, created on first use.
    pub fn dim(&mut self, name: &str) -> DimId {
        if let Some(i) = self.kernel.dims.iter().position(|d| d == name) {
            return i;
        }
        self.kernel.dims.push(name.to_string());
        self.kernel.dims.len() - 1
    }

    /// Declares a dense tensor parameter.
    pub fn tensor(
        &mut self,
        name: &str,
        dtype: DType,
        dims: Vec<ParamDim>,
        writable: bool,
    ) -> ParamId {
        self.push_param(
            name,
            ParamKind::Tensor {
                dtype,
                dims,
                writable,
            },
        )
    }

    /// Declares a paged cache parameter whose rows have `row` elements. A read-only cache is
    /// `chunked` (carries a per-sequence split table) when the config sets the schedule knob
    /// `KV_CHUNKS = 1`; any value other than 0 and 1 is an error naming the knob. The rows'
    /// storage format follows the knob `KV_FP8` ([`crate::kv_format::kv_fp8`]).
    pub fn paged(
        &mut self,
        name: &str,
        dtype: DType,
        row: i64,
        writable: bool,
    ) -> Result<ParamId, IrError> {
        let row = positive(name, row)?;
        let chunked = crate::schedule::kv_chunks(&self.kernel.config)? && !writable;
        let format = crate::kv_format::kv_fp8(&self.kernel.config, dtype, row)?;
        Ok(self.push_param(
            name,
            ParamKind::Paged {
                dtype,
                row,
                writable,
                chunked,
                format,
            },
        ))
    }

    /// Declares a scalar parameter.
    pub fn scalar(&mut self, name: &str, dtype: DType) -> ParamId {
        self.push_param(name, ParamKind::Scalar { dtype })
    }

    fn push_param(&mut self, name: &str, kind: ParamKind) -> ParamId {
        self.kernel.params.push(Param {
            name: name.to_string(),
            kind,
        });
        self.kernel.params.len() - 1
    }

    /// Sets the grid.
    pub fn grid(&mut self, grid: [Index; 3]) {
        self.kernel.grid = grid;
    }

    /// `let name = value;` for an integer scalar; returns an expression reading it.
    pub fn let_index(&mut self, name: &str, value: Index) -> Index {
        let id = self.new_scalar(name);
        self.push(Stmt::Let { dst: id, value });
        Index::Var(id)
    }

    fn new_scalar(&mut self, name: &str) -> ScalarId {
        self.kernel.scalars.push(name.to_string());
        self.kernel.scalars.len() - 1
    }

    fn new_tile(&mut self, name: &str, ty: TileType) -> TileId {
        self.kernel.tiles.push(TileInfo {
            name: name.to_string(),
            dtype: ty.dtype,
            shape: ty.shape,
        });
        self.kernel.tiles.len() - 1
    }

    fn push(&mut self, s: Stmt) {
        self.stack
            .last_mut()
            .expect("builder stack is never empty")
            .push(s);
    }

    /// Defines a new tile from an operation whose type can be inferred.
    pub fn define(&mut self, name: &str, op: TileOp) -> Result<TileId, IrError> {
        let ty = infer(&self.kernel, &op, None)?;
        let id = self.new_tile(name, ty);
        self.push(Stmt::Assign { dst: id, op });
        Ok(id)
    }

    /// Defines a new tile with a declared type (`full`, `zeros`, `iota`, `cast`).
    pub fn define_typed(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[i64],
        op: TileOp,
    ) -> Result<TileId, IrError> {
        let shape = shape
            .iter()
            .map(|d| positive(name, *d))
            .collect::<Result<Vec<_>, _>>()?;
        let ty = infer(&self.kernel, &op, Some(&TileType { dtype, shape }))?;
        let id = self.new_tile(name, ty);
        self.push(Stmt::Assign { dst: id, op });
        Ok(id)
    }

    /// Reassigns an existing tile; the new value must have the same shape and dtype.
    pub fn assign(&mut self, dst: TileId, op: TileOp) -> Result<(), IrError> {
        let info = self
            .kernel
            .tiles
            .get(dst)
            .ok_or(IrError::UnknownTile(dst))?;
        let declared = TileType {
            dtype: info.dtype,
            shape: info.shape.clone(),
        };
        let ty = match &op {
            TileOp::Full(_) | TileOp::Iota { .. } | TileOp::Cast(_) => {
                infer(&self.kernel, &op, Some(&declared))?
            }
            _ => infer(&self.kernel, &op, None)?,
        };
        // A value of another float label may be assigned (it is f32 inside either way).
        if ty.shape != declared.shape
            || (ty.dtype != declared.dtype && !(ty.dtype.is_float() && declared.dtype.is_float()))
        {
            return Err(IrError::Reassign {
                expected: format!("{}{:?}", declared.dtype, declared.shape),
                got: format!("{}{:?}", ty.dtype, ty.shape),
            });
        }
        self.push(Stmt::Assign { dst, op });
        Ok(())
    }

    /// The type of a tile.
    pub fn tile_type(&self, t: TileId) -> Result<TileType, IrError> {
        let info = self.kernel.tiles.get(t).ok_or(IrError::UnknownTile(t))?;
        Ok(TileType {
            dtype: info.dtype,
            shape: info.shape.clone(),
        })
    }

    /// Masked store of `src` into a region of a writable tensor.
    pub fn store(&mut self, param: ParamId, index: Vec<Slice>, src: TileId) -> Result<(), IrError> {
        let p = self
            .kernel
            .params
            .get(param)
            .ok_or(IrError::UnknownParam(param))?;
        let name = p.name.clone();
        if !matches!(p.kind, ParamKind::Tensor { writable: true, .. }) {
            return Err(IrError::Invalid(format!(
                "store into `{name}`, which is not a writable tensor"
            )));
        }
        let (dtype, shape) = crate::shape::region_shape(&self.kernel, param, &index)?;
        let t = self.tile_type(src)?;
        if t.dtype != dtype && !(dtype == DType::F32 && t.dtype == DType::F32) {
            return Err(IrError::DTypeMismatch {
                op: format!("store into `{name}`"),
                left: t.dtype,
                right: dtype,
            });
        }
        if t.shape != shape {
            return Err(IrError::ShapeMismatch {
                op: format!("store into `{name}`"),
                left: t.shape,
                right: shape,
            });
        }
        self.push(Stmt::Store { param, index, src });
        Ok(())
    }

    /// Opens `for name in start..end`; returns the loop variable. Close with [`Self::end_loop`].
    pub fn begin_for(&mut self, name: &str, start: Index, end: Index) -> Index {
        let var = self.new_scalar(name);
        self.open.push(Stmt::For {
            var,
            start,
            end,
            body: Vec::new(),
        });
        self.stack.push(Vec::new());
        Index::Var(var)
    }

    /// Opens a loop over the cache blocks of one split (see [`Stmt::PagedBlocks`]). Returns
    /// `(start, tile, valid)`. Close with [`Self::end_loop`].
    #[allow(clippy::too_many_arguments)]
    pub fn begin_paged_blocks(
        &mut self,
        name: &str,
        cache: ParamId,
        batch: Index,
        split: Index,
        num_splits: Index,
        block: i64,
        stages: i64,
    ) -> Result<(Index, TileId, TileId), IrError> {
        let p = self
            .kernel
            .params
            .get(cache)
            .ok_or(IrError::UnknownParam(cache))?;
        let ParamKind::Paged { dtype, row, .. } = p.kind else {
            return Err(IrError::Invalid(format!(
                "`{}` is not a paged cache",
                p.name
            )));
        };
        let block = positive("block size", block)?;
        let stages = positive("stages", stages)?;
        let start = self.new_scalar(&format!("{name}_start"));
        let tile = self.new_tile(
            name,
            TileType {
                dtype,
                shape: vec![block, row],
            },
        );
        let valid = self.new_tile(
            &format!("{name}_valid"),
            TileType {
                dtype: DType::Bool,
                shape: vec![block],
            },
        );
        self.open.push(Stmt::PagedBlocks {
            cache,
            batch,
            split,
            num_splits,
            block,
            stages,
            start,
            tile,
            valid,
            body: Vec::new(),
        });
        self.stack.push(Vec::new());
        Ok((Index::Var(start), tile, valid))
    }

    /// Closes the innermost open loop.
    pub fn end_loop(&mut self) -> Result<(), IrError> {
        let mut header = self
            .open
            .pop()
            .ok_or_else(|| IrError::Invalid("end_loop without a loop".into()))?;
        let done = self.stack.pop().expect("one list per open loop");
        match &mut header {
            Stmt::For { body, .. } | Stmt::PagedBlocks { body, .. } => *body = done,
            _ => unreachable!("only loops are opened"),
        }
        self.push(header);
        Ok(())
    }

    /// Writes the rows of `src` at token positions `start..` of sequence `batch`.
    pub fn paged_store(
        &mut self,
        cache: ParamId,
        batch: Index,
        start: Index,
        src: TileId,
    ) -> Result<(), IrError> {
        let p = self
            .kernel
            .params
            .get(cache)
            .ok_or(IrError::UnknownParam(cache))?;
        let ParamKind::Paged {
            dtype,
            row,
            writable,
            ..
        } = p.kind
        else {
            return Err(IrError::Invalid(format!(
                "`{}` is not a paged cache",
                p.name
            )));
        };
        if !writable {
            return Err(IrError::Invalid(format!(
                "paged store into read-only `{}`",
                p.name
            )));
        }
        let t = self.tile_type(src)?;
        if t.dtype != dtype {
            return Err(IrError::DTypeMismatch {
                op: format!("paged store into `{}`", p.name),
                left: t.dtype,
                right: dtype,
            });
        }
        if t.shape.len() != 2 || t.shape[1] != row {
            return Err(IrError::ShapeMismatch {
                op: format!("paged store into `{}`", p.name),
                left: t.shape,
                right: vec![0, row],
            });
        }
        self.push(Stmt::PagedStore {
            cache,
            batch,
            start,
            src,
        });
        Ok(())
    }

    /// Finishes and validates the kernel.
    pub fn finish(mut self) -> Result<Kernel, IrError> {
        if !self.open.is_empty() {
            return Err(IrError::Invalid("a loop was left open".into()));
        }
        self.kernel.body = self.stack.pop().expect("body list");
        crate::validate::validate(&self.kernel)?;
        Ok(self.kernel)
    }
}

fn positive(what: &str, v: i64) -> Result<usize, IrError> {
    if v <= 0 {
        return Err(IrError::BadConfig {
            name: what.to_string(),
            value: v,
            why: "sizes must be positive".into(),
        });
    }
    Ok(v as usize)
}

/// Converts a constant dimension computed from the config into a tile or tensor extent, naming the
/// expression when it is not positive. Used by macro-generated code.
pub fn const_dim(what: &str, value: i64) -> Result<usize, IrError> {
    positive(what, value)
}
