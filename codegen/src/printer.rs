//! A readable text form of the IR (`TPLA_DUMP=ir`).

use std::fmt::{self, Write};

use crate::ir::*;
use crate::ops::table::{self, Form};

struct P<'a> {
    k: &'a Kernel,
    out: String,
}

impl P<'_> {
    fn index(&self, i: &Index) -> String {
        match i {
            Index::Const(c) => c.to_string(),
            Index::ProgramId(a) => format!("pid{a}"),
            Index::Dim(d) => self.k.dims[*d].clone(),
            Index::Var(v) => format!("{}#{v}", self.k.scalars[*v]),
            Index::Bin(op @ (IndexOp::CeilDiv | IndexOp::Min | IndexOp::Max), a, b) => {
                format!("{}({}, {})", op.symbol(), self.index(a), self.index(b))
            }
            Index::Bin(op, a, b) => {
                format!("({} {} {})", self.index(a), op.symbol(), self.index(b))
            }
            Index::SeqLen { cache, batch } => {
                format!("{}.len[{}]", self.k.params[*cache].name, self.index(batch))
            }
            Index::PageSize(c) => format!("{}.page_size", self.k.params[*c].name),
            Index::Load { param, index } => {
                let idx: Vec<String> = index.iter().map(|i| self.index(i)).collect();
                format!("{}[{}]", self.k.params[*param].name, idx.join(", "))
            }
            Index::Scalar(p) => self.k.params[*p].name.clone(),
        }
    }
    fn fscalar(&self, s: &FScalar) -> String {
        match s {
            FScalar::Lit(v) => format!("{v:?}"),
            FScalar::Param(p) => self.k.params[*p].name.clone(),
            FScalar::FromIndex(i) => format!("f32({})", self.index(i)),
            FScalar::Bin(op, a, b) => {
                format!("({} {} {})", self.fscalar(a), op.name(), self.fscalar(b))
            }
            FScalar::Unary(op, a) => format!("{}({})", op.name(), self.fscalar(a)),
        }
    }
    fn tile(&self, t: TileId) -> String {
        format!("%{}#{t}", self.k.tiles[t].name)
    }
    fn operand(&self, o: &Operand) -> String {
        match o {
            Operand::Tile(t) => self.tile(*t),
            Operand::Scalar(s) => self.fscalar(s),
            Operand::Int(i) => self.index(i),
        }
    }
    fn slices(&self, index: &[Slice]) -> String {
        let parts: Vec<String> = index
            .iter()
            .map(|s| match s {
                Slice::At(i) => self.index(i),
                Slice::Span { start, len } => format!("{}..+{len}", self.index(start)),
            })
            .collect();
        parts.join(", ")
    }
    /// One operation, spelled with its op-table name ([`TileOp::def`]).
    fn op(&self, op: &TileOp) -> String {
        let name = op.def().name;
        match op {
            TileOp::Full(v) => format!("{name}({})", self.operand(v)),
            TileOp::Iota { axis } => format!("{name}(axis={axis})"),
            TileOp::Load { param, index } => format!(
                "{name} {}[{}]",
                self.k.params[*param].name,
                self.slices(index)
            ),
            TileOp::Unary(_, t) => format!("{name}({})", self.tile(*t)),
            TileOp::Binary(_, x, y) | TileOp::Compare(_, x, y) => match op.def().form {
                Form::Infix => format!("{} {name} {}", self.operand(x), self.operand(y)),
                _ => format!("{name}({}, {})", self.operand(x), self.operand(y)),
            },
            TileOp::Select {
                mask,
                on_true,
                on_false,
            } => {
                format!(
                    "{name}({}, {}, {})",
                    self.tile(*mask),
                    self.operand(on_true),
                    self.operand(on_false)
                )
            }
            TileOp::Reduce { src, axis, .. } => {
                format!("{name}({}, axis={axis})", self.tile(*src))
            }
            TileOp::Gemm { a, b } => format!("{name}({}, {})", self.tile(*a), self.tile(*b)),
            TileOp::Cast(t) => format!("{name}({})", self.tile(*t)),
            TileOp::View(t, v) => match v {
                ViewOp::Transpose => format!("view {}.{name}()", self.tile(*t)),
                ViewOp::Unsqueeze(a) => format!("view {}.{name}({a})", self.tile(*t)),
                ViewOp::Slice { axis, start, len } => {
                    format!(
                        "view {}.{name}({start}..+{len}) [axis {axis}]",
                        self.tile(*t)
                    )
                }
            },
        }
    }
    fn block(&mut self, body: &[Stmt], depth: usize) {
        let pad = "  ".repeat(depth);
        for s in body {
            match s {
                Stmt::Let { dst, value } => {
                    let _ = writeln!(
                        self.out,
                        "{pad}let {}#{dst} = {}",
                        self.k.scalars[*dst],
                        self.index(value)
                    );
                }
                Stmt::Assign { dst, op } => {
                    let t = &self.k.tiles[*dst];
                    let _ = writeln!(
                        self.out,
                        "{pad}{}: {}{:?} = {}",
                        self.tile(*dst),
                        t.dtype,
                        t.shape,
                        self.op(op)
                    );
                }
                Stmt::Store { param, index, src } => {
                    let _ = writeln!(
                        self.out,
                        "{pad}{} {}[{}] <- {}",
                        table::STORE.name,
                        self.k.params[*param].name,
                        self.slices(index),
                        self.tile(*src)
                    );
                }
                Stmt::For {
                    var,
                    start,
                    end,
                    body,
                } => {
                    let _ = writeln!(
                        self.out,
                        "{pad}for {}#{var} in {}..{} {{",
                        self.k.scalars[*var],
                        self.index(start),
                        self.index(end)
                    );
                    self.block(body, depth + 1);
                    let _ = writeln!(self.out, "{pad}}}");
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
                    let _ = writeln!(
                        self.out,
                        "{pad}for ({}#{start}, {}, {}) in {}.{}(batch={}, split={}/{}, block={block}, stages={stages}) {{",
                        self.k.scalars[*start],
                        self.tile(*tile),
                        self.tile(*valid),
                        self.k.params[*cache].name,
                        table::BLOCKS.name,
                        self.index(batch),
                        self.index(split),
                        self.index(num_splits)
                    );
                    self.block(body, depth + 1);
                    let _ = writeln!(self.out, "{pad}}}");
                }
                Stmt::PagedStore {
                    cache,
                    batch,
                    start,
                    src,
                } => {
                    let _ = writeln!(
                        self.out,
                        "{pad}{} {}.{}(batch={}, from {}) <- {}",
                        table::STORE.name,
                        self.k.params[*cache].name,
                        table::PAGED_ROWS.name,
                        self.index(batch),
                        self.index(start),
                        self.tile(*src)
                    );
                }
            }
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut p = P {
            k: self,
            out: String::new(),
        };
        let cfg: Vec<String> = self
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(p.out, "kernel {} [{}]", self.name, cfg.join(", "));
        for (i, prm) in self.params.iter().enumerate() {
            let desc = match &prm.kind {
                ParamKind::Tensor {
                    dtype,
                    dims,
                    writable,
                } => {
                    let d: Vec<String> = dims
                        .iter()
                        .map(|d| match d {
                            ParamDim::Const(c) => c.to_string(),
                            ParamDim::Runtime(r) => self.dims[*r].clone(),
                        })
                        .collect();
                    format!(
                        "{}tensor<{dtype}, [{}]>",
                        if *writable { "mut " } else { "" },
                        d.join(", ")
                    )
                }
                ParamKind::Paged {
                    dtype,
                    row,
                    writable,
                    chunked,
                    format,
                } => format!(
                    "{}paged<{dtype}, [{row}]{}{}>",
                    if *writable { "mut " } else { "" },
                    if *chunked { ", chunks" } else { "" },
                    match format {
                        PagedFormat::Plain => String::new(),
                        PagedFormat::Fp8 { lat } => format!(", fp8 {lat}"),
                    }
                ),
                ParamKind::Scalar { dtype } => dtype.to_string(),
            };
            let _ = writeln!(p.out, "  param #{i} {}: {desc}", prm.name);
        }
        let g: Vec<String> = self.grid.iter().map(|g| p.index(g)).collect();
        let _ = writeln!(p.out, "  grid ({})", g.join(", "));
        p.block(&self.body, 1);
        f.write_str(&p.out)
    }
}
