//! Translation of the kernel body into code that drives `tpla_codegen::KernelBuilder`.
//!
//! Every expression is classified at expansion time as a tile (with a dtype and a symbolic
//! shape), a float scalar or an integer index, so dtype and shape errors are reported at the
//! author's span before any code runs.
//!
//! This module holds the value classes and the expansion context ([`Ctx`]); the passes are
//! `stmt` (statements), `expr` (names, operators, argument helpers), `call` (free-function
//! operations), `method` (method operations and tile slices) and `tokens` (shared helpers).

use proc_macro2::TokenStream;
use quote::format_ident;
use syn::{BinOp, Expr, Ident, Lit};

use crate::sig::Dt;
use crate::sym::Sym;

mod call;
mod expr;
mod method;
mod stmt;
mod tokens;

use tokens::is_upper;

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
}
