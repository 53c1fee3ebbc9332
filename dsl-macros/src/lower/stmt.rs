//! Lowering of statements: `let` bindings, expression statements, build-time `if`,
//! stores and `for` loops.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{BinOp, Expr, ExprCall, Ident, Pat, Stmt};

use tpla_optable::{self as optable};

use super::tokens::{call_name, define};
use super::{err, ir, Ctx, Lowered, OpV, Val, Var, R};
use crate::sym::{shape_str, Sym};

impl Ctx {
    /// Lowers a block's statements.
    pub fn block(&mut self, stmts: &[Stmt]) -> R<TokenStream> {
        self.scopes.push(Vec::new());
        let mut out = TokenStream::new();
        for s in stmts {
            out.extend(self.stmt(s)?);
        }
        self.scopes.pop();
        Ok(out)
    }

    pub(super) fn stmt(&mut self, s: &Stmt) -> R<TokenStream> {
        match s {
            Stmt::Local(l) => {
                let (name, mutable) = match &l.pat {
                    Pat::Ident(pi) => (pi.ident.clone(), pi.mutability.is_some()),
                    Pat::Type(pt) => match &*pt.pat {
                        Pat::Ident(pi) => (pi.ident.clone(), pi.mutability.is_some()),
                        other => return err(other, "bind one name per `let`"),
                    },
                    other => return err(other, "bind one name per `let`"),
                };
                let Some(init) = &l.init else {
                    return err(l, "`let` needs a value");
                };
                self.let_binding(&name, mutable, &init.expr)
            }
            Stmt::Expr(e, _) => self.expr_stmt(e),
            Stmt::Item(i) => err(i, "items are not allowed in a kernel body"),
            Stmt::Macro(m) => err(m, "macros are not allowed in a kernel body"),
        }
    }

    pub(super) fn let_binding(
        &mut self,
        name: &Ident,
        mutable: bool,
        init: &Expr,
    ) -> R<TokenStream> {
        let label = name.to_string();
        let b = quote!(__tpla_b);
        let irp = ir();
        match self.expr(init)? {
            Lowered::Op(op) => {
                let code = define(&label, &op);
                self.bind(
                    &label,
                    Var::Tile {
                        id: name.clone(),
                        dt: op.dt,
                        shape: op.shape,
                        mutable,
                        block: None,
                    },
                );
                Ok(quote_spanned!(name.span()=> let #name: usize = #code;))
            }
            Lowered::V(Val::Tile {
                code, dt, shape, ..
            }) => {
                let op = OpV {
                    code: quote!(#irp::TileOp::Cast(#code)),
                    dt,
                    shape: shape.clone(),
                    typed: true,
                };
                let code = define(&label, &op);
                self.bind(
                    &label,
                    Var::Tile {
                        id: name.clone(),
                        dt,
                        shape,
                        mutable,
                        block: None,
                    },
                );
                Ok(quote!(let #name: usize = #code;))
            }
            Lowered::V(Val::F(code)) => {
                if mutable {
                    return err(
                        name,
                        "float scalars are immutable; use a tile of shape [1] for a running value",
                    );
                }
                self.bind(&label, Var::Float { id: name.clone() });
                Ok(quote!(let #name: #irp::FScalar = #code;))
            }
            Lowered::V(Val::I { code, sym }) => {
                if mutable {
                    return err(
                        name,
                        "integer scalars are immutable; loop with `for i in range(a, b)`",
                    );
                }
                self.bind(
                    &label,
                    Var::Index {
                        id: name.clone(),
                        sym,
                    },
                );
                Ok(quote!(let #name: #irp::Index = { let __v = #code; #b.let_index(#label, __v) };))
            }
        }
    }

    pub(super) fn expr_stmt(&mut self, e: &Expr) -> R<TokenStream> {
        match e {
            Expr::Assign(a) => {
                let Expr::Path(p) = &*a.left else {
                    return err(&a.left, "assign to a tile variable");
                };
                let Some(id) = p.path.get_ident() else {
                    return err(&a.left, "assign to a tile variable");
                };
                let Some(Var::Tile {
                    id: var,
                    dt,
                    shape,
                    mutable,
                    ..
                }) = self.lookup(&id.to_string()).cloned()
                else {
                    return err(
                        id,
                        format!("`{id}` is not a tile variable; only tiles can be reassigned"),
                    );
                };
                if !mutable {
                    return err(id, format!("cannot assign twice to immutable tile `{id}`: declare it with `let mut`"));
                }
                let irp = ir();
                let op = match self.expr(&a.right)? {
                    Lowered::Op(op) => op,
                    Lowered::V(Val::Tile {
                        code, dt, shape, ..
                    }) => OpV {
                        code: quote!(#irp::TileOp::Cast(#code)),
                        dt,
                        shape,
                        typed: true,
                    },
                    Lowered::V(_) => {
                        return err(
                            &a.right,
                            format!(
                            "`{id}` is a tile; assign a tile (use full(..) to broadcast a scalar)"
                        ),
                        )
                    }
                };
                if op.shape != shape {
                    return err(
                        &a.right,
                        format!(
                            "shape mismatch: `{id}` is {} but the value is {}",
                            shape_str(&shape),
                            shape_str(&op.shape)
                        ),
                    );
                }
                if op.dt != dt && !(op.dt.is_float() && dt.is_float()) {
                    return err(
                        &a.right,
                        format!(
                            "dtype mismatch: `{id}` is {} but the value is {}",
                            dt.name(),
                            op.dt.name()
                        ),
                    );
                }
                let code = op.code;
                Ok(quote_spanned!(a.span()=> { let __op = #code; __tpla_b.assign(#var, __op)?; }))
            }
            Expr::Call(c) if call_name(c).as_deref() == Some("store") => self.store(c),
            Expr::ForLoop(f) => self.for_loop(f),
            Expr::If(i) => self.const_if(i),
            Expr::Block(b) => {
                let body = self.block(&b.block.stmts)?;
                Ok(quote!({ #body }))
            }
            other => err(
                other,
                "expected `let`, an assignment, `store(..)`, a `for` loop or an `if` on constants",
            ),
        }
    }

    /// `if COND { .. } else { .. }` on constants: decided when the kernel is built, so only the
    /// taken branch reaches the IR (a specialisation pays nothing for the branch it does not take).
    pub(super) fn const_if(&mut self, i: &syn::ExprIf) -> R<TokenStream> {
        let cond = self.const_cond(&i.cond)?;
        let then = self.block(&i.then_branch.stmts)?;
        let els = match i.else_branch.as_ref().map(|(_, e)| &**e) {
            None => quote!(),
            Some(Expr::Block(b)) => {
                let body = self.block(&b.block.stmts)?;
                quote!(else { #body })
            }
            Some(Expr::If(inner)) => {
                let inner = self.const_if(inner)?;
                quote!(else #inner)
            }
            Some(other) => return err(other, "expected `else { .. }` or `else if`"),
        };
        Ok(quote!(if #cond { #then } #els))
    }

    /// A build-time condition: comparisons of constants (tune parameters, shape constants,
    /// literals) joined by `&&` and `||`.
    pub(super) fn const_cond(&self, e: &Expr) -> R<TokenStream> {
        match e {
            Expr::Paren(p) => self.const_cond(&p.expr),
            Expr::Binary(b) => match b.op {
                BinOp::And(_) | BinOp::Or(_) => {
                    let (l, r, op) = (self.const_cond(&b.left)?, self.const_cond(&b.right)?, b.op);
                    Ok(quote!((#l #op #r)))
                }
                BinOp::Lt(_) | BinOp::Le(_) | BinOp::Gt(_) | BinOp::Ge(_) | BinOp::Eq(_) | BinOp::Ne(_) => {
                    let side = |e: &Expr| {
                        self.sym(e).map(|s| s.to_tokens()).map_err(|_| {
                            syn::Error::new_spanned(e, "an `if` condition is decided when the kernel is built: compare tune parameters, shape constants and literals, not values known only when it runs")
                        })
                    };
                    let (l, r, op) = (side(&b.left)?, side(&b.right)?, b.op);
                    Ok(quote!((#l #op #r)))
                }
                _ => err(b.op, "an `if` condition compares constants with < <= > >= == != (and && ||)"),
            },
            _ => err(e, "an `if` in a kernel tests constants when the kernel is built, e.g. `if SQ > 1 { .. }`"),
        }
    }

    pub(super) fn store(&mut self, c: &ExprCall) -> R<TokenStream> {
        if c.args.len() != optable::STORE.arity() {
            return err(c, optable::STORE.arity_message());
        }
        let Expr::MethodCall(dst) = &c.args[0] else {
            return err(
                &c.args[0],
                "store into `tensor.tile([..])` or `cache.rows(batch, start)`",
            );
        };
        let target = self.receiver_var(&dst.receiver)?;
        let value = self.val(&c.args[1])?;
        let Val::Tile {
            code, dt, shape, ..
        } = value
        else {
            return err(&c.args[1], "store a tile");
        };
        match (target, dst.method.to_string().as_str()) {
            (Var::Tensor { id, dt: tdt, dims, writable }, "tile") => {
                if !writable {
                    return err(&dst.receiver, format!("`{id}` is read-only: declare it `TensorMut` to store into it"));
                }
                let (slices, tshape) = self.slices(&id, &dims, &dst.args)?;
                if dt != tdt {
                    return err(&c.args[1], format!("dtype mismatch: storing a {} tile into `{id}` of {}; convert with .cast::<{}>()", dt.name(), tdt.name(), tdt.name()));
                }
                if shape != tshape {
                    return err(&c.args[1], format!("shape mismatch: the tile is {} but the destination is {}", shape_str(&shape), shape_str(&tshape)));
                }
                Ok(quote_spanned!(c.span()=> { let __src = #code; let __idx = vec![#(#slices),*]; __tpla_b.store(#id, __idx, __src)?; }))
            }
            (Var::Paged { id, dt: pdt, row, writable }, "rows") => {
                if !writable {
                    return err(&dst.receiver, format!("`{id}` is read-only: declare it `PagedMut` to store into it"));
                }
                if dst.args.len() != 2 {
                    return err(dst, "cache.rows(batch, start) takes 2 arguments");
                }
                let bt = self.index(&dst.args[0])?;
                let st = self.index(&dst.args[1])?;
                if dt != pdt {
                    return err(&c.args[1], format!("dtype mismatch: storing {} rows into `{id}` of {}", dt.name(), pdt.name()));
                }
                if shape.len() != 2 || shape[1] != row {
                    return err(&c.args[1], format!("shape mismatch: rows of `{id}` are [_, {row}] but the tile is {}", shape_str(&shape)));
                }
                Ok(quote!({ let __bt = #bt; let __st = #st; let __src = #code; __tpla_b.paged_store(#id, __bt, __st, __src)?; }))
            }
            (_, m) => err(&dst.method, format!("cannot store into `.{m}(..)`: use `tensor.tile([..])` or `cache.rows(batch, start)`")),
        }
    }

    pub(super) fn for_loop(&mut self, f: &syn::ExprForLoop) -> R<TokenStream> {
        let Pat::Ident(pi) = &*f.pat else {
            return err(&f.pat, "loop over one name");
        };
        let name = pi.ident.clone();
        let label = name.to_string();
        let (head, var) = match &*f.expr {
            Expr::Call(c) if call_name(c).as_deref() == Some("range") => {
                if c.args.len() != optable::RANGE.arity() {
                    return err(c, optable::RANGE.arity_message());
                }
                let a = self.index(&c.args[0])?;
                let e = self.index(&c.args[1])?;
                (
                    quote!(let #name: __tpla_private::codegen::ir::Index = { let (__a, __e) = (#a, #e); __tpla_b.begin_for(#label, __a, __e) };),
                    Var::Index {
                        id: name.clone(),
                        sym: None,
                    },
                )
            }
            Expr::MethodCall(m) => {
                let (blocks, stages) = if m.method == "pipelined" {
                    if m.args.len() != optable::PIPELINED.arity() {
                        return err(m, optable::PIPELINED.arity_message());
                    }
                    let Expr::MethodCall(inner) = &*m.receiver else {
                        return err(&m.receiver, "expected cache.blocks::<N>(..)");
                    };
                    (inner, self.sym(&m.args[0])?)
                } else {
                    (m, Sym::lit(1))
                };
                if blocks.method != "blocks" {
                    return err(&blocks.method, format!("unknown loop source `.{}()`: loop over `range(a, b)` or `cache.blocks::<N>(batch, split, splits)`", blocks.method));
                }
                let Var::Paged { id, dt, row, .. } = self.receiver_var(&blocks.receiver)? else {
                    return err(&blocks.receiver, "blocks() needs a paged cache");
                };
                let Some(tf) = &blocks.turbofish else {
                    return err(blocks, "give the block size: blocks::<BLOCK_N>(..)");
                };
                let n = match tf.args.first() {
                    Some(syn::GenericArgument::Type(syn::Type::Path(p))) => {
                        let e: Expr = syn::parse2(quote!(#p))?;
                        self.sym(&e)?
                    }
                    Some(syn::GenericArgument::Const(e)) => self.sym(e)?,
                    _ => return err(tf, "blocks::<N>: N is a constant"),
                };
                if blocks.args.len() != optable::BLOCKS.arity() {
                    return err(blocks, optable::BLOCKS.arity_message());
                }
                let bt = self.index(&blocks.args[0])?;
                let sp = self.index(&blocks.args[1])?;
                let ns = self.index(&blocks.args[2])?;
                let (nt, st) = (n.to_tokens(), stages.to_tokens());
                let valid = self.fresh("valid");
                let start = self.fresh("start");
                (
                    quote!(let (#start, #name, #valid) = { let (__bt, __sp, __ns) = (#bt, #sp, #ns); __tpla_b.begin_paged_blocks(#label, #id, __bt, __sp, __ns, #nt, #st)? };),
                    Var::Tile {
                        id: name.clone(),
                        dt,
                        shape: vec![n, row],
                        mutable: false,
                        block: Some((valid, start)),
                    },
                )
            }
            other => {
                return err(
                    other,
                    "loop over `range(a, b)` or `cache.blocks::<N>(batch, split, splits)`",
                )
            }
        };
        self.scopes.push(Vec::new());
        self.bind(&label, var);
        let body = self.block(&f.body.stmts);
        self.scopes.pop();
        let body = body?;
        Ok(quote!({ #head #body __tpla_b.end_loop()?; }))
    }
}
