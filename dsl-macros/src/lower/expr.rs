//! Lowering of expressions: names, binary operators, elementwise type checks and the
//! argument helpers shared by calls and methods.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{BinOp, Expr, ExprBinary, Ident, Lit, UnOp};

use super::tokens::{broadcast, define, is_upper, operand, to_f};
use super::{err, ir, Ctx, Lowered, OpV, Val, Var, R};
use crate::sig::Dt;
use crate::sym::{shape_str, Sym};

impl Ctx {
    pub(super) fn receiver_var(&self, e: &Expr) -> R<Var> {
        if let Expr::Path(p) = e {
            if let Some(id) = p.path.get_ident() {
                return self
                    .lookup(&id.to_string())
                    .cloned()
                    .ok_or_else(|| syn::Error::new(id.span(), format!("unknown name `{id}`")));
            }
        }
        err(e, "expected a parameter name")
    }

    /// Lowers to an integer index or fails.
    pub(super) fn index(&mut self, e: &Expr) -> R<TokenStream> {
        match self.val(e)? {
            Val::I { code, .. } => Ok(code),
            _ => err(e, "expected an integer index"),
        }
    }

    /// Lowers to a value, defining a temporary tile for operations.
    pub fn val(&mut self, e: &Expr) -> R<Val> {
        match self.expr(e)? {
            Lowered::V(v) => Ok(v),
            Lowered::Op(op) => {
                let code = define("tmp", &op);
                Ok(Val::Tile {
                    code,
                    dt: op.dt,
                    shape: op.shape,
                    var: None,
                })
            }
        }
    }

    pub(super) fn expr(&mut self, e: &Expr) -> R<Lowered> {
        let irp = ir();
        match e {
            Expr::Paren(p) => self.expr(&p.expr),
            Expr::Group(g) => self.expr(&g.expr),
            Expr::Lit(l) => match &l.lit {
                Lit::Int(i) => {
                    let v: i64 = i.base10_parse()?;
                    Ok(Lowered::V(Val::I {
                        code: quote!(#irp::Index::Const(#v)),
                        sym: Some(Sym::lit(v)),
                    }))
                }
                Lit::Float(f) => {
                    let v: f32 = f.base10_parse()?;
                    Ok(Lowered::V(Val::F(quote!(#irp::FScalar::Lit(#v)))))
                }
                _ => err(l, "only integer and float literals"),
            },
            Expr::Path(p) => {
                let Some(id) = p.path.get_ident() else {
                    return err(p, "unknown path");
                };
                self.name(id).map(Lowered::V)
            }
            Expr::Unary(u) => {
                let UnOp::Neg(_) = u.op else {
                    return err(u.op, "only `-` is a unary operator in kernels");
                };
                Ok(match self.val(&u.expr)? {
                    Val::Tile {
                        code, dt, shape, ..
                    } => {
                        if !dt.is_float() {
                            return err(u, format!("`-` needs a float tile, got {}", dt.name()));
                        }
                        Lowered::Op(OpV {
                            code: quote!(#irp::TileOp::Unary(#irp::UnaryOp::Neg, #code)),
                            dt,
                            shape,
                            typed: false,
                        })
                    }
                    Val::F(c) => Lowered::V(Val::F(
                        quote!(#irp::FScalar::Unary(#irp::UnaryOp::Neg, Box::new(#c))),
                    )),
                    Val::I { code, sym } => Lowered::V(Val::I {
                        code: quote!(#irp::Index::bin(#irp::IndexOp::Sub, #irp::Index::Const(0), #code)),
                        sym: sym.map(|s| Sym::lit(0).sub(&s)),
                    }),
                })
            }
            Expr::Binary(b) => self.binary(b),
            Expr::Call(c) => self.call(c),
            Expr::MethodCall(m) => self.method(m),
            Expr::Range(r) => err(
                r,
                "ranges appear only inside `.tile([..])`, `.cols(..)` and `.rows(..)`",
            ),
            other => err(other, "unsupported expression in a kernel"),
        }
    }

    pub(super) fn name(&mut self, id: &Ident) -> R<Val> {
        let irp = ir();
        let name = id.to_string();
        if let Some(v) = self.lookup(&name).cloned() {
            return Ok(match v {
                Var::Tile {
                    id: t,
                    dt,
                    shape,
                    mutable,
                    ..
                } => Val::Tile {
                    code: quote!(#t),
                    dt,
                    shape,
                    var: Some((t, mutable)),
                },
                Var::Float { id } => Val::F(quote!(#id.clone())),
                Var::Index { id, sym } => Val::I {
                    code: quote!(#id.clone()),
                    sym,
                },
                Var::Tensor { .. } => {
                    return err(
                        id,
                        format!("`{name}` is a tensor: load a tile with load({name}.tile([..]))"),
                    )
                }
                Var::Paged { .. } => {
                    return err(
                        id,
                        format!("`{name}` is a paged cache: loop over {name}.blocks::<N>(..)"),
                    )
                }
            });
        }
        if self.is_const(&name) {
            return Ok(Val::I {
                code: quote!(#irp::Index::Const(#id)),
                sym: Some(Sym::name(&name)),
            });
        }
        if self.dims.contains(&name) {
            let d = format_ident!("__tpla_dim_{}", name);
            return Ok(Val::I {
                code: quote!(#irp::Index::Dim(#d)),
                sym: None,
            });
        }
        let lit = match name.as_str() {
            "LOG2_E" => Some(std::f32::consts::LOG2_E),
            "LN_2" => Some(std::f32::consts::LN_2),
            _ => None,
        };
        if name == "INF" {
            return Ok(Val::F(quote!(#irp::FScalar::Lit(f32::INFINITY))));
        }
        if let Some(v) = lit {
            return Ok(Val::F(quote!(#irp::FScalar::Lit(#v))));
        }
        if is_upper(&name) {
            return err(id, format!("unknown tune parameter or constant `{name}`: declare it as `#[tune(..)] const {name}: usize` or in `constants({name})`"));
        }
        err(id, format!("unknown name `{name}`"))
    }

    pub(super) fn binary(&mut self, b: &ExprBinary) -> R<Lowered> {
        let irp = ir();
        let l = self.val(&b.left)?;
        let r = self.val(&b.right)?;
        let arith = match b.op {
            BinOp::Add(_) => Some((quote!(Add), "+")),
            BinOp::Sub(_) => Some((quote!(Sub), "-")),
            BinOp::Mul(_) => Some((quote!(Mul), "*")),
            BinOp::Div(_) => Some((quote!(Div), "/")),
            _ => None,
        };
        let cmp = match b.op {
            BinOp::Lt(_) => Some(quote!(Lt)),
            BinOp::Le(_) => Some(quote!(Le)),
            BinOp::Gt(_) => Some(quote!(Gt)),
            BinOp::Ge(_) => Some(quote!(Ge)),
            BinOp::Eq(_) => Some(quote!(Eq)),
            BinOp::Ne(_) => Some(quote!(Ne)),
            _ => None,
        };
        let any_tile = matches!(l, Val::Tile { .. }) || matches!(r, Val::Tile { .. });
        if let BinOp::Rem(_) = b.op {
            return match (l, r) {
                (Val::I { code: a, .. }, Val::I { code: c, .. }) => Ok(Lowered::V(Val::I {
                    code: quote!(#irp::Index::bin(#irp::IndexOp::Rem, #a, #c)),
                    sym: None,
                })),
                _ => err(b, "`%` works on integer indices only"),
            };
        }
        if let Some(c) = cmp {
            if !any_tile {
                return err(b, "comparisons produce masks: one side must be a tile");
            }
            let (oa, ob, _dt, shape) = self.elementwise(b, &l, &r, "comparison")?;
            return Ok(Lowered::Op(OpV {
                code: quote!(#irp::TileOp::Compare(#irp::CmpOp::#c, #oa, #ob)),
                dt: Dt::Bool,
                shape,
                typed: false,
            }));
        }
        let Some((op, sym_op)) = arith else {
            return err(b.op, "unsupported operator in a kernel");
        };
        if any_tile {
            let (oa, ob, dt, shape) = self.elementwise(b, &l, &r, sym_op)?;
            if dt == Dt::Bool {
                return err(b, format!("`{sym_op}` on a bool mask"));
            }
            return Ok(Lowered::Op(OpV {
                code: quote!(#irp::TileOp::Binary(#irp::BinaryOp::#op, #oa, #ob)),
                dt,
                shape,
                typed: false,
            }));
        }
        Ok(Lowered::V(match (l, r) {
            (Val::I { code: a, sym: sa }, Val::I { code: c, sym: sc }) => {
                let sym = match (sa, sc, sym_op) {
                    (Some(x), Some(y), "+") => Some(x.add(&y)),
                    (Some(x), Some(y), "-") => Some(x.sub(&y)),
                    (Some(x), Some(y), "*") => Some(x.mul(&y)),
                    _ => None,
                };
                Val::I {
                    code: quote!(#irp::Index::bin(#irp::IndexOp::#op, #a, #c)),
                    sym,
                }
            }
            (x, y) => {
                let (fa, fc) = (to_f(&x), to_f(&y));
                Val::F(
                    quote!(#irp::FScalar::Bin(#irp::BinaryOp::#op, Box::new(#fa), Box::new(#fc))),
                )
            }
        }))
    }

    /// Type-checks an elementwise pair; returns both operands' code, the dtype and the shape.
    pub(super) fn elementwise(
        &self,
        at: &dyn quote::ToTokens,
        l: &Val,
        r: &Val,
        what: &str,
    ) -> R<(TokenStream, TokenStream, Dt, Vec<Sym>)> {
        match (l, r) {
            (
                Val::Tile {
                    dt: da, shape: sa, ..
                },
                Val::Tile {
                    dt: db, shape: sb, ..
                },
            ) => {
                if da != db {
                    return Err(syn::Error::new_spanned(at, format!("dtype mismatch in `{what}`: {} tile vs {} tile; convert one with .cast::<{}>()", da.name(), db.name(), da.name())));
                }
                let shape = broadcast(sa, sb).ok_or_else(|| {
                    syn::Error::new_spanned(at, format!("shape mismatch in `{what}`: {} vs {} do not broadcast; use .unsqueeze(axis)", shape_str(sa), shape_str(sb)))
                })?;
                Ok((operand(l, *da), operand(r, *db), *da, shape))
            }
            (Val::Tile { dt, shape, .. }, s) | (s, Val::Tile { dt, shape, .. }) => {
                let scalar_is_float = matches!(s, Val::F(_));
                match dt {
                    Dt::F32 | Dt::Bf16 => {}
                    Dt::I32 if !scalar_is_float => {}
                    _ => {
                        return Err(syn::Error::new_spanned(
                            at,
                            format!(
                                "dtype mismatch in `{what}`: {} tile with a {} scalar",
                                dt.name(),
                                if scalar_is_float { "float" } else { "integer" }
                            ),
                        ));
                    }
                }
                Ok((operand(l, *dt), operand(r, *dt), *dt, shape.clone()))
            }
            _ => Err(syn::Error::new_spanned(at, "expected a tile operand")),
        }
    }

    pub(super) fn tile_arg(&mut self, e: &Expr, what: &str) -> R<(TokenStream, Dt, Vec<Sym>)> {
        match self.val(e)? {
            Val::Tile {
                code, dt, shape, ..
            } => Ok((code, dt, shape)),
            _ => err(e, format!("{what} needs a tile")),
        }
    }

    pub(super) fn axis(&self, e: &Expr, rank: usize) -> R<usize> {
        let v = match e {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Int(i), ..
            }) => i.base10_parse::<usize>()?,
            _ => return err(e, "axis must be an integer literal"),
        };
        if v >= rank {
            return err(
                e,
                format!("axis {v} out of range for a tile of rank {rank}"),
            );
        }
        Ok(v)
    }

    pub(super) fn dims_arg(&self, e: &Expr) -> R<Vec<Sym>> {
        let Expr::Array(a) = e else {
            return err(e, "give the tile shape as `[D0, D1]`");
        };
        if a.elems.len() > 2 {
            return err(a, "tiles have rank at most 2");
        }
        a.elems.iter().map(|d| self.sym(d)).collect()
    }
}
