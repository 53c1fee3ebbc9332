//! Lowering of method calls (`tensor.tile(..)`, `tile.sum(..)`, ...) and of the slice
//! lists of `tensor.tile([..])`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{BinOp, Expr, ExprArray, ExprMethodCall, Ident, RangeLimits};

use tpla_optable::{self as optable, Operand as OpKind};

use super::tokens::{define, same_tokens};
use super::{err, ir, Ctx, DimS, Lowered, OpV, Val, Var, R};
use crate::sig::Dt;
use crate::sym::{shape_str, Sym};

impl Ctx {
    pub(super) fn method(&mut self, m: &ExprMethodCall) -> R<Lowered> {
        let irp = ir();
        let method = m.method.to_string();
        // Methods on parameters.
        if let Expr::Path(p) = &*m.receiver {
            if let Some(id) = p.path.get_ident() {
                match self.lookup(&id.to_string()).cloned() {
                    Some(Var::Tensor { id, dt, dims, .. }) => {
                        return match method.as_str() {
                            "get" => {
                                if dt != Dt::I32 {
                                    return err(m, format!("get([..]) reads i32 tensors; `{id}` is {}", dt.name()));
                                }
                                if m.args.len() != 1 {
                                    return err(m, "get([i, j, ..]) takes one index array");
                                }
                                let Expr::Array(a) = &m.args[0] else { return err(&m.args[0], "get([i, j, ..])") };
                                if a.elems.len() != dims.len() {
                                    return err(a, format!("`{id}` has {} dimensions but {} indices were given", dims.len(), a.elems.len()));
                                }
                                let idx = a.elems.iter().map(|e| self.index(e)).collect::<R<Vec<_>>>()?;
                                Ok(Lowered::V(Val::I { code: quote!(#irp::Index::Load { param: #id, index: vec![#(#idx),*] }), sym: None }))
                            }
                            "tile" => err(m, format!("a tile region is loaded with load({id}.tile([..])) or written with store({id}.tile([..]), value)")),
                            other => err(&m.method, optable::unknown_method_message(other, OpKind::Tensor, &format!("tensor `{id}`"))),
                        };
                    }
                    Some(Var::Paged { id, .. }) => {
                        return match method.as_str() {
                            "len" => {
                                if m.args.len() != 1 {
                                    return err(m, "len(batch) takes 1 argument");
                                }
                                let b = self.index(&m.args[0])?;
                                Ok(Lowered::V(Val::I {
                                    code: quote!(#irp::Index::SeqLen { cache: #id, batch: Box::new(#b) }),
                                    sym: None,
                                }))
                            }
                            "page_size" => Ok(Lowered::V(Val::I {
                                code: quote!(#irp::Index::PageSize(#id)),
                                sym: None,
                            })),
                            other => err(
                                &m.method,
                                optable::unknown_method_message(
                                    other,
                                    OpKind::Paged,
                                    &format!("paged cache `{id}`"),
                                ),
                            ),
                        };
                    }
                    Some(Var::Tile {
                        block: Some((valid, start)),
                        dt: _,
                        shape,
                        ..
                    }) if method == "valid" || method == "start" => {
                        return Ok(Lowered::V(if method == "valid" {
                            Val::Tile {
                                code: quote!(#valid),
                                dt: Dt::Bool,
                                shape: vec![shape[0].clone()],
                                var: Some((valid, false)),
                            }
                        } else {
                            Val::I {
                                code: quote!(#start.clone()),
                                sym: None,
                            }
                        }));
                    }
                    _ => {}
                }
            }
        }
        let recv = self.val(&m.receiver)?;
        let Val::Tile {
            code,
            dt,
            shape,
            var,
        } = recv
        else {
            return err(
                &m.method,
                format!("unknown operation `.{method}()` on a scalar"),
            );
        };
        // Views need a single-assignment source: copy mutable variables first.
        let src = match var {
            Some((_, true)) => {
                let copy = OpV {
                    code: quote!(#irp::TileOp::Cast(#code)),
                    dt,
                    shape: shape.clone(),
                    typed: true,
                };
                define("copy", &copy)
            }
            _ => code,
        };
        let view = |v: TokenStream, shape: Vec<Sym>| {
            Ok(Lowered::Op(OpV {
                code: quote!(#irp::TileOp::View(#src, #v)),
                dt,
                shape,
                typed: false,
            }))
        };
        match method.as_str() {
            "t" => {
                if shape.len() != 2 {
                    return err(
                        m,
                        format!(".t() needs a rank-2 tile, got {}", shape_str(&shape)),
                    );
                }
                view(
                    quote!(#irp::ViewOp::Transpose),
                    vec![shape[1].clone(), shape[0].clone()],
                )
            }
            "unsqueeze" => {
                if m.args.len() != 1 || shape.len() >= 2 {
                    return err(
                        m,
                        ".unsqueeze(axis) takes one axis and a tile of rank 0 or 1",
                    );
                }
                let axis = self.axis(&m.args[0], shape.len() + 1)?;
                let mut s = shape.clone();
                s.insert(axis, Sym::lit(1));
                view(quote!(#irp::ViewOp::Unsqueeze(#axis)), s)
            }
            "cols" | "rows" => {
                let axis = if method == "rows" { 0usize } else { 1usize };
                if shape.len() != 2 || m.args.len() != 1 {
                    return err(
                        m,
                        format!(".{method}(a..b) takes one constant range of a rank-2 tile"),
                    );
                }
                let Expr::Range(r) = &m.args[0] else {
                    return err(
                        &m.args[0],
                        format!(".{method}(a..b) takes a constant range"),
                    );
                };
                let start = match &r.start {
                    Some(s) => self.sym(s)?,
                    None => Sym::lit(0),
                };
                let end = match &r.end {
                    Some(e) => self.sym(e)?,
                    None => shape[axis].clone(),
                };
                if matches!(r.limits, RangeLimits::Closed(_)) {
                    return err(r, "use a half-open range a..b");
                }
                let len = end.sub(&start);
                let (st, ln) = (start.to_tokens(), len.to_tokens());
                let mut s = shape.clone();
                s[axis] = len;
                let what = format!("{method} range");
                view(
                    quote!(#irp::ViewOp::Slice { axis: #axis, start: __tpla_private::codegen::builder::const_dim(#what, #st + 1)? - 1, len: __tpla_private::codegen::builder::const_dim(#what, #ln)? }),
                    s,
                )
            }
            "cast" => {
                let to = match &m.turbofish {
                    Some(tf) => match tf.args.first() {
                        Some(syn::GenericArgument::Type(syn::Type::Path(p))) => p
                            .path
                            .get_ident()
                            .and_then(|i| Dt::parse(&i.to_string()))
                            .filter(|d| *d != Dt::Bool)
                            .ok_or_else(|| syn::Error::new(p.span(), "cast to f32, bf16 or i32"))?,
                        _ => return err(tf, "cast::<dtype>()"),
                    },
                    None => return err(m, "give the target: .cast::<f32>()"),
                };
                Ok(Lowered::Op(OpV {
                    code: quote!(#irp::TileOp::Cast(#src)),
                    dt: to,
                    shape,
                    typed: true,
                }))
            }
            "valid" | "start" => err(
                &m.method,
                format!("`.{method}()` is defined on the block variable of a `blocks` loop"),
            ),
            other => err(
                &m.method,
                optable::unknown_method_message(other, OpKind::Tile, "a tile"),
            ),
        }
    }

    /// Lowers the `[..]` of `tensor.tile([..])` into IR slices and the tile's symbolic shape.
    pub(super) fn slices(
        &mut self,
        id: &Ident,
        dims: &[DimS],
        args: &syn::punctuated::Punctuated<Expr, syn::Token![,]>,
    ) -> R<(Vec<TokenStream>, Vec<Sym>)> {
        let irp = ir();
        let Some(Expr::Array(ExprArray { elems, .. })) = args.first() else {
            return err(args, "tile([..]) takes one index array");
        };
        if elems.len() != dims.len() {
            return err(
                elems,
                format!(
                    "`{id}` has {} dimensions but the tile names {}",
                    dims.len(),
                    elems.len()
                ),
            );
        }
        let mut slices = Vec::new();
        let mut shape = Vec::new();
        for (e, d) in elems.iter().zip(dims) {
            match e {
                Expr::Range(r) => {
                    if matches!(r.limits, RangeLimits::Closed(_)) {
                        return err(r, "use a half-open range");
                    }
                    let (start, len) = match (&r.start, &r.end) {
                        (None, None) => match d {
                            DimS::Const(s) => (quote!(#irp::Index::Const(0)), s.clone()),
                            DimS::Runtime(n) => return err(r, format!("tile size is not a constant: `..` spans the runtime dimension `{n}`; take a constant span `i..i + N`")),
                        },
                        (Some(s), Some(end)) => {
                            let len = match &**end {
                                Expr::Binary(b) if matches!(b.op, BinOp::Add(_)) && same_tokens(&b.left, s) => self.sym(&b.right)?,
                                _ => match (self.sym(s), self.sym(end)) {
                                    (Ok(a), Ok(z)) => z.sub(&a),
                                    (_, Err(e)) if e.to_string().starts_with("unknown") => return Err(e),
                                    _ => return err(end, "tile size is not a constant: write the span as `start..start + N` with a constant N"),
                                },
                            };
                            (self.index(s)?, len)
                        }
                        (None, Some(end)) => (quote!(#irp::Index::Const(0)), self.sym(end)?),
                        (Some(_), None) => return err(r, "tile size is not a constant: an open range `a..` has no constant length"),
                    };
                    let what = format!("tile span of `{id}`");
                    let lt = len.to_tokens();
                    slices.push(quote!(#irp::Slice::Span { start: #start, len: __tpla_private::codegen::builder::const_dim(#what, #lt)? }));
                    shape.push(len);
                }
                other => {
                    let i = self.index(other)?;
                    slices.push(quote!(#irp::Slice::At(#i)));
                }
            }
        }
        if shape.len() > 2 {
            return err(
                elems,
                format!(
                    "a tile has at most 2 spanned dimensions, this one has {}",
                    shape.len()
                ),
            );
        }
        Ok((slices, shape))
    }
}
