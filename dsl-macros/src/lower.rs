//! Translation of the kernel body into code that drives `tpla_codegen::KernelBuilder`.
//!
//! Every expression is classified at expansion time as a tile (with a dtype and a symbolic
//! shape), a float scalar or an integer index, so dtype and shape errors are reported at the
//! author's span before any code runs.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    BinOp, Expr, ExprArray, ExprBinary, ExprCall, ExprMethodCall, Ident, Lit, Pat, RangeLimits,
    Stmt, UnOp,
};

use tpla_optable::{self as optable, Form, Operand as OpKind};

use crate::sig::Dt;
use crate::sym::{shape_str, Sym};

/// A tensor dimension as declared in the signature.
#[derive(Clone)]
pub enum DimS {
    Const(Sym),
    Runtime(String),
}

/// What a name in the kernel body refers to.
#[derive(Clone)]
pub enum Var {
    Tile {
        id: Ident,
        dt: Dt,
        shape: Vec<Sym>,
        mutable: bool,
        block: Option<(Ident, Ident)>,
    },
    Float {
        id: Ident,
    },
    Index {
        id: Ident,
        sym: Option<Sym>,
    },
    Tensor {
        id: Ident,
        dt: Dt,
        dims: Vec<DimS>,
        writable: bool,
    },
    Paged {
        id: Ident,
        dt: Dt,
        row: Sym,
        writable: bool,
    },
}

/// A lowered value: code evaluating to a `TileId`, an `FScalar` or an `Index`.
#[derive(Clone)]
pub enum Val {
    Tile {
        code: TokenStream,
        dt: Dt,
        shape: Vec<Sym>,
        var: Option<(Ident, bool)>,
    },
    F(TokenStream),
    I {
        code: TokenStream,
        sym: Option<Sym>,
    },
}

/// A lowered tile operation: code evaluating to a `TileOp`.
pub struct OpV {
    code: TokenStream,
    dt: Dt,
    shape: Vec<Sym>,
    /// The builder needs the declared type (full, iota, cast, copy).
    typed: bool,
}

enum Lowered {
    Op(OpV),
    V(Val),
}

type R<T> = syn::Result<T>;

/// An error spanning all of `tokens` (start to end, also on stable Rust).
fn err<T>(tokens: impl quote::ToTokens, msg: impl std::fmt::Display) -> R<T> {
    Err(syn::Error::new_spanned(tokens, msg))
}

/// Expansion-time state.
pub struct Ctx {
    pub tunes: Vec<String>,
    pub consts: Vec<String>,
    pub dims: Vec<String>,
    scopes: Vec<Vec<(String, Var)>>,
    tmp: usize,
}

const IR: &str = "__tpla_private::codegen::ir";

fn ir() -> TokenStream {
    IR.parse().unwrap()
}

impl Ctx {
    pub fn new(tunes: Vec<String>, consts: Vec<String>, dims: Vec<String>) -> Ctx {
        Ctx {
            tunes,
            consts,
            dims,
            scopes: vec![Vec::new()],
            tmp: 0,
        }
    }

    pub fn bind(&mut self, name: &str, v: Var) {
        self.scopes.last_mut().unwrap().push((name.to_string(), v));
    }

    fn lookup(&self, name: &str) -> Option<&Var> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn is_const(&self, name: &str) -> bool {
        self.tunes.iter().any(|t| t == name) || self.consts.iter().any(|c| c == name)
    }

    fn fresh(&mut self, base: &str) -> Ident {
        self.tmp += 1;
        format_ident!("__tpla_{}_{}", base, self.tmp)
    }

    /// A compile-time constant size.
    pub fn sym(&self, e: &Expr) -> R<Sym> {
        match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Int(i) => Ok(Sym::lit(i.base10_parse()?)),
                _ => err(e, "tile sizes are integers"),
            },
            Expr::Paren(p) => self.sym(&p.expr),
            Expr::Group(g) => self.sym(&g.expr),
            Expr::Binary(b) => {
                let (l, r) = (self.sym(&b.left)?, self.sym(&b.right)?);
                match b.op {
                    BinOp::Add(_) => Ok(l.add(&r)),
                    BinOp::Sub(_) => Ok(l.sub(&r)),
                    BinOp::Mul(_) => Ok(l.mul(&r)),
                    _ => err(b.op, "tile sizes combine constants with `+`, `-` and `*` only"),
                }
            }
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let id = p.path.get_ident().unwrap();
                let name = id.to_string();
                if self.is_const(&name) {
                    return Ok(Sym::name(&name));
                }
                match self.lookup(&name) {
                    Some(Var::Index { sym: Some(s), .. }) => Ok(s.clone()),
                    Some(_) => err(id, format!("tile size is not a constant: `{name}` is only known when the kernel runs; use a tune parameter, a shape constant or a literal")),
                    None if self.dims.contains(&name) => err(id, format!("tile size is not a constant: `{name}` is a runtime dimension; use a tune parameter, a shape constant or a literal")),
                    None if is_upper(&name) => err(id, format!("unknown tune parameter or constant `{name}`: declare it as `#[tune(..)] const {name}: usize` or in `constants({name})`")),
                    None => err(id, format!("unknown name `{name}`")),
                }
            }
            _ => err(e, "tile size is not a constant: use a tune parameter, a shape constant, a literal or `+ - *` of those"),
        }
    }

    /// A dimension in a parameter type.
    pub fn dim(&self, e: &Expr) -> R<DimS> {
        if let Expr::Path(p) = e {
            if let Some(id) = p.path.get_ident() {
                let name = id.to_string();
                if !self.is_const(&name) && !is_upper(&name) {
                    return Ok(DimS::Runtime(name));
                }
            }
        }
        Ok(DimS::Const(self.sym(e)?))
    }

    // ---------------------------------------------------------------- statements

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

    fn stmt(&mut self, s: &Stmt) -> R<TokenStream> {
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

    fn let_binding(&mut self, name: &Ident, mutable: bool, init: &Expr) -> R<TokenStream> {
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

    fn expr_stmt(&mut self, e: &Expr) -> R<TokenStream> {
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
    fn const_if(&mut self, i: &syn::ExprIf) -> R<TokenStream> {
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
    fn const_cond(&self, e: &Expr) -> R<TokenStream> {
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

    fn store(&mut self, c: &ExprCall) -> R<TokenStream> {
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

    fn for_loop(&mut self, f: &syn::ExprForLoop) -> R<TokenStream> {
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

    // ---------------------------------------------------------------- expressions

    fn receiver_var(&self, e: &Expr) -> R<Var> {
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
    fn index(&mut self, e: &Expr) -> R<TokenStream> {
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

    fn expr(&mut self, e: &Expr) -> R<Lowered> {
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

    fn name(&mut self, id: &Ident) -> R<Val> {
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

    fn binary(&mut self, b: &ExprBinary) -> R<Lowered> {
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
    fn elementwise(
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

    fn tile_arg(&mut self, e: &Expr, what: &str) -> R<(TokenStream, Dt, Vec<Sym>)> {
        match self.val(e)? {
            Val::Tile {
                code, dt, shape, ..
            } => Ok((code, dt, shape)),
            _ => err(e, format!("{what} needs a tile")),
        }
    }

    fn axis(&self, e: &Expr, rank: usize) -> R<usize> {
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

    fn dims_arg(&self, e: &Expr) -> R<Vec<Sym>> {
        let Expr::Array(a) = e else {
            return err(e, "give the tile shape as `[D0, D1]`");
        };
        if a.elems.len() > 2 {
            return err(a, "tiles have rank at most 2");
        }
        a.elems.iter().map(|d| self.sym(d)).collect()
    }

    fn call(&mut self, c: &ExprCall) -> R<Lowered> {
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

    fn method(&mut self, m: &ExprMethodCall) -> R<Lowered> {
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
    fn slices(
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

fn define(label: &str, op: &OpV) -> TokenStream {
    let code = &op.code;
    if op.typed {
        let dt = op.dt.ir();
        let dims = op.shape.iter().map(|s| s.to_tokens());
        quote!({ let __op = #code; __tpla_b.define_typed(#label, #dt, &[#(#dims),*], __op)? })
    } else {
        quote!({ let __op = #code; __tpla_b.define(#label, __op)? })
    }
}

fn operand(v: &Val, tile_dt: Dt) -> TokenStream {
    let irp = ir();
    match v {
        Val::Tile { code, .. } => quote!(#irp::Operand::Tile(#code)),
        Val::F(c) => quote!(#irp::Operand::Scalar(#c)),
        Val::I { code, .. } if tile_dt == Dt::I32 => quote!(#irp::Operand::Int(#code)),
        i => {
            let f = to_f(i);
            quote!(#irp::Operand::Scalar(#f))
        }
    }
}

fn to_f(v: &Val) -> TokenStream {
    let irp = ir();
    match v {
        Val::F(c) => c.clone(),
        Val::I { sym: Some(s), .. } if s.as_lit().is_some() => {
            let x = s.as_lit().unwrap() as f32;
            quote!(#irp::FScalar::Lit(#x))
        }
        Val::I { code, .. } => quote!(#irp::FScalar::FromIndex(#code)),
        Val::Tile { .. } => quote!(compile_error!("tile used as scalar")),
    }
}

fn broadcast(a: &[Sym], b: &[Sym]) -> Option<Vec<Sym>> {
    let rank = a.len().max(b.len());
    let one = Sym::lit(1);
    let get = |s: &[Sym], i: usize| {
        if i < rank - s.len() {
            one.clone()
        } else {
            s[i - (rank - s.len())].clone()
        }
    };
    (0..rank)
        .map(|i| {
            let (x, y) = (get(a, i), get(b, i));
            if x == y || y == one {
                Some(x)
            } else if x == one {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

fn call_name(c: &ExprCall) -> Option<String> {
    match &*c.func {
        Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn turbofish_dt(func: &Expr) -> R<Option<Dt>> {
    let Expr::Path(p) = func else { return Ok(None) };
    let Some(seg) = p.path.segments.last() else {
        return Ok(None);
    };
    match &seg.arguments {
        syn::PathArguments::None => Ok(None),
        syn::PathArguments::AngleBracketed(a) => match a.args.first() {
            Some(syn::GenericArgument::Type(syn::Type::Path(tp))) => {
                let id = tp
                    .path
                    .get_ident()
                    .ok_or_else(|| syn::Error::new(tp.span(), "expected a dtype"))?;
                Dt::parse(&id.to_string())
                    .filter(|d| *d != Dt::Bool)
                    .map(Some)
                    .ok_or_else(|| {
                        syn::Error::new(id.span(), format!("unknown dtype `{id}` (f32, bf16, i32)"))
                    })
            }
            _ => err(a, "expected ::<dtype>"),
        },
        other => err(other, "expected ::<dtype>"),
    }
}

fn same_tokens(a: &Expr, b: &Expr) -> bool {
    quote!(#a).to_string() == quote!(#b).to_string()
}

fn is_upper(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}
