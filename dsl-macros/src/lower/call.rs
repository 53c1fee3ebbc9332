//! Lowering of free-function calls (`exp(..)`, `full::<T>(..)`, ...) through the op table.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Expr, ExprCall};

use tpla_optable::{self as optable, Form};

use super::tokens::{broadcast, call_name, capitalize, to_f, turbofish_dt};
use super::{err, ir, Ctx, Lowered, OpV, Val, Var, R};
use crate::sig::Dt;
use crate::sym::{shape_str, Sym};

impl Ctx {
    pub(super) fn call(&mut self, c: &ExprCall) -> R<Lowered> {
        let irp = ir();
        let Some(name) = call_name(c) else {
            return err(&c.func, "call a DSL operation by name");
        };
        // The op table decides which operations exist and how many operands each takes.
        let Some(def) = optable::call(&name) else {
            return err(&c.func, optable::unknown_message(&name, Form::Call));
        };
        let args: Vec<&Expr> = c.args.iter().collect();
        if args.len() != def.arity() {
            return err(c, def.arity_message());
        }
        let op = |code: TokenStream, dt: Dt, shape: Vec<Sym>, typed: bool| {
            Ok(Lowered::Op(OpV {
                code,
                dt,
                shape,
                typed,
            }))
        };
        match name.as_str() {
            "program_id" => {
                let axis = self.axis(args[0], 3)? as u8;
                Ok(Lowered::V(Val::I {
                    code: quote!(#irp::Index::ProgramId(#axis)),
                    sym: None,
                }))
            }
            "cdiv" | "min" | "max" => {
                let (l, r) = (self.val(args[0])?, self.val(args[1])?);
                let ir_op = match name.as_str() {
                    "cdiv" => quote!(CeilDiv),
                    "min" => quote!(Min),
                    _ => quote!(Max),
                };
                match (&l, &r) {
                    (Val::I { code: a, .. }, Val::I { code: b, .. }) => Ok(Lowered::V(Val::I {
                        code: quote!(#irp::Index::bin(#irp::IndexOp::#ir_op, #a, #b)),
                        sym: None,
                    })),
                    _ if name == "cdiv" => err(c, "cdiv works on integer indices"),
                    (Val::Tile { .. }, _) | (_, Val::Tile { .. }) => {
                        let (oa, ob, dt, shape) = self.elementwise(c, &l, &r, &name)?;
                        op(
                            quote!(#irp::TileOp::Binary(#irp::BinaryOp::#ir_op, #oa, #ob)),
                            dt,
                            shape,
                            false,
                        )
                    }
                    _ => {
                        let (fa, fb) = (to_f(&l), to_f(&r));
                        Ok(Lowered::V(Val::F(
                            quote!(#irp::FScalar::Bin(#irp::BinaryOp::#ir_op, Box::new(#fa), Box::new(#fb))),
                        )))
                    }
                }
            }
            "load" => {
                let Expr::MethodCall(m) = args[0] else {
                    return err(args[0], "load(tensor.tile([..]))");
                };
                if m.method != "tile" {
                    return err(&m.method, "load(tensor.tile([..]))");
                }
                let Var::Tensor { id, dt, dims, .. } = self.receiver_var(&m.receiver)? else {
                    return err(&m.receiver, "load from a tensor parameter");
                };
                let (slices, shape) = self.slices(&id, &dims, &m.args)?;
                op(
                    quote!(#irp::TileOp::Load { param: #id, index: vec![#(#slices),*] }),
                    dt,
                    shape,
                    false,
                )
            }
            "zeros" | "full" => {
                let dt = turbofish_dt(&c.func)?.unwrap_or(Dt::F32);
                let shape = self.dims_arg(args[0])?;
                let value = if name == "zeros" {
                    if dt.is_float() {
                        quote!(#irp::Operand::Scalar(#irp::FScalar::Lit(0.0)))
                    } else {
                        quote!(#irp::Operand::Int(#irp::Index::Const(0)))
                    }
                } else {
                    let v = self.val(args[1])?;
                    match (&v, dt.is_float()) {
                        (Val::Tile { .. }, _) => {
                            return err(args[1], "full(shape, value) takes a scalar value")
                        }
                        (_, true) => {
                            let f = to_f(&v);
                            quote!(#irp::Operand::Scalar(#f))
                        }
                        (Val::I { code, .. }, false) => quote!(#irp::Operand::Int(#code)),
                        (Val::F(_), false) => {
                            return err(
                                args[1],
                                format!("dtype mismatch: a float value for a {} tile", dt.name()),
                            )
                        }
                    }
                };
                op(quote!(#irp::TileOp::Full(#value)), dt, shape, true)
            }
            "iota" => {
                let shape = self.dims_arg(args[0])?;
                let axis = self.axis(args[1], shape.len())?;
                op(
                    quote!(#irp::TileOp::Iota { axis: #axis }),
                    Dt::I32,
                    shape,
                    true,
                )
            }
            "gemm" => {
                let (a, da, sa) = self.tile_arg(args[0], "gemm")?;
                let (b, db, sb) = self.tile_arg(args[1], "gemm")?;
                if sa.len() != 2 || sb.len() != 2 {
                    return err(
                        c,
                        format!(
                            "gemm needs rank-2 tiles, got {} and {}",
                            shape_str(&sa),
                            shape_str(&sb)
                        ),
                    );
                }
                if !da.is_float() || !db.is_float() {
                    return err(
                        c,
                        format!(
                            "dtype mismatch in gemm: {} x {} (float tiles only)",
                            da.name(),
                            db.name()
                        ),
                    );
                }
                if sa[1] != sb[0] {
                    return err(
                        c,
                        format!(
                            "gemm inner dimensions differ: {} x {} ({} vs {}); transpose with .t()",
                            shape_str(&sa),
                            shape_str(&sb),
                            sa[1],
                            sb[0]
                        ),
                    );
                }
                op(
                    quote!(#irp::TileOp::Gemm { a: #a, b: #b }),
                    Dt::F32,
                    vec![sa[0].clone(), sb[1].clone()],
                    false,
                )
            }
            "exp2" | "log2" | "sqrt" | "rsqrt" | "abs" | "recip" => {
                let u = format_ident!("{}", capitalize(&name));
                match self.val(args[0])? {
                    Val::Tile {
                        code, dt, shape, ..
                    } => {
                        if !dt.is_float() {
                            let got = format!("{} tile", dt.name());
                            return err(
                                args[0],
                                format!("dtype mismatch: {}", def.operand_message(0, &got)),
                            );
                        }
                        op(
                            quote!(#irp::TileOp::Unary(#irp::UnaryOp::#u, #code)),
                            dt,
                            shape,
                            false,
                        )
                    }
                    v => {
                        let f = to_f(&v);
                        Ok(Lowered::V(Val::F(
                            quote!(#irp::FScalar::Unary(#irp::UnaryOp::#u, Box::new(#f))),
                        )))
                    }
                }
            }
            "reduce_max" | "reduce_sum" => {
                let (t, dt, mut shape) = self.tile_arg(args[0], &name)?;
                if !dt.is_float() {
                    let got = format!("{} tile", dt.name());
                    return err(
                        args[0],
                        format!("dtype mismatch: {}", def.operand_message(0, &got)),
                    );
                }
                let axis = self.axis(args[1], shape.len())?;
                shape.remove(axis);
                let r = if name == "reduce_max" {
                    quote!(Max)
                } else {
                    quote!(Sum)
                };
                op(
                    quote!(#irp::TileOp::Reduce { op: #irp::ReduceOp::#r, src: #t, axis: #axis }),
                    Dt::F32,
                    shape,
                    false,
                )
            }
            "select" => {
                let (m, dm, sm) = self.tile_arg(args[0], "select")?;
                if dm != Dt::Bool {
                    let got = format!("{} tile", dm.name());
                    return err(
                        args[0],
                        format!("dtype mismatch: {}", def.operand_message(0, &got)),
                    );
                }
                let (a, b) = (self.val(args[1])?, self.val(args[2])?);
                let (oa, ob, dt, shape) = self.elementwise(c, &a, &b, "select")?;
                let shape = broadcast(&sm, &shape).ok_or_else(|| {
                    syn::Error::new(
                        c.span(),
                        format!(
                            "shape mismatch in select: mask {} vs values {}",
                            shape_str(&sm),
                            shape_str(&shape)
                        ),
                    )
                })?;
                op(
                    quote!(#irp::TileOp::Select { mask: #m, on_true: #oa, on_false: #ob }),
                    dt,
                    shape,
                    false,
                )
            }
            "range" => err(c, "range(a, b) is only a loop source"),
            "store" => err(c, "store(..) is a statement"),
            other => err(
                &c.func,
                format!("`{other}` is in the op table but the macro does not lower it"),
            ),
        }
    }
}
