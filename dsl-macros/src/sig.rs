//! Parsing of the kernel attribute and signature: grid, shape constants, tune parameters and
//! typed parameters.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, GenericParam, Ident, ItemFn, Pat, Token, Type};

/// Element types the DSL knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    F32,
    Bf16,
    I32,
    Bool,
}

impl Dt {
    pub fn parse(ident: &str) -> Option<Dt> {
        Some(match ident {
            "f32" => Dt::F32,
            "bf16" => Dt::Bf16,
            "i32" => Dt::I32,
            "bool" => Dt::Bool,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Dt::F32 => "f32",
            Dt::Bf16 => "bf16",
            Dt::I32 => "i32",
            Dt::Bool => "bool",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Dt::F32 | Dt::Bf16)
    }
    /// The `tpla_codegen::ir::DType` variant.
    pub fn ir(self) -> TokenStream {
        match self {
            Dt::F32 => quote::quote!(__tpla_private::codegen::ir::DType::F32),
            Dt::Bf16 => quote::quote!(__tpla_private::codegen::ir::DType::BF16),
            Dt::I32 => quote::quote!(__tpla_private::codegen::ir::DType::I32),
            Dt::Bool => quote::quote!(__tpla_private::codegen::ir::DType::Bool),
        }
    }
    /// The Rust element type of a tensor argument.
    pub fn rust(self) -> TokenStream {
        match self {
            Dt::F32 => quote::quote!(f32),
            Dt::Bf16 => quote::quote!(__tpla_private::runtime::half::bf16),
            Dt::I32 => quote::quote!(i32),
            Dt::Bool => quote::quote!(bool),
        }
    }
}

/// `#[kernel(grid = (..), constants(A, B, C = 1), crate = path, dump)]`.
pub struct KernelAttr {
    pub grid: Vec<Expr>,
    pub grid_span: Span,
    pub constants: Vec<Ident>,
    /// `C = 1` in `constants(..)`: the value a config without `C` builds with.
    pub defaults: Vec<(Ident, i64)>,
    /// The crate whose `__private` module the emitted code names (`::tpla` unless given).
    pub krate: Option<syn::Path>,
    pub dump: bool,
}

impl Parse for KernelAttr {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut grid = None;
        let mut constants = Vec::new();
        let mut defaults = Vec::new();
        let mut dump = false;
        let mut krate = None;
        while !input.is_empty() {
            if input.peek(Token![crate]) {
                input.parse::<Token![crate]>()?;
                input.parse::<Token![=]>()?;
                krate = Some(input.parse::<syn::Path>()?);
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
                continue;
            }
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "grid" => {
                    input.parse::<Token![=]>()?;
                    let e: Expr = input.parse()?;
                    let span = e.span();
                    let items: Vec<Expr> = match e {
                        Expr::Tuple(t) => t.elems.into_iter().collect(),
                        Expr::Paren(p) => vec![*p.expr],
                        other => vec![other],
                    };
                    if items.is_empty() || items.len() > 3 {
                        return Err(syn::Error::new(span, "grid has 1 to 3 axes"));
                    }
                    grid = Some((items, span));
                }
                "constants" => {
                    let content;
                    syn::parenthesized!(content in input);
                    let list = Punctuated::<ConstDecl, Token![,]>::parse_terminated(&content)?;
                    for c in list {
                        if let Some(v) = c.default {
                            defaults.push((c.name.clone(), v));
                        }
                        constants.push(c.name);
                    }
                }
                "dump" => dump = true,
                _ => {
                    return Err(syn::Error::new(
                        key.span(),
                        "expected `grid = (...)`, `constants(...)`, `crate = path` or `dump`",
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        let (grid, grid_span) = grid.ok_or_else(|| input.error("missing `grid = (...)`"))?;
        Ok(KernelAttr {
            grid,
            grid_span,
            constants,
            defaults,
            krate,
            dump,
        })
    }
}

/// One entry of `constants(..)`: `NAME` or `NAME = value` (a positive default).
struct ConstDecl {
    name: Ident,
    default: Option<i64>,
}

impl Parse for ConstDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name: Ident = input.parse()?;
        let default = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let lit: syn::LitInt = input.parse()?;
            let v: i64 = lit.base10_parse()?;
            if v <= 0 {
                return Err(syn::Error::new(
                    lit.span(),
                    "a shape constant's default must be positive",
                ));
            }
            Some(v)
        } else {
            None
        };
        Ok(ConstDecl { name, default })
    }
}

/// A `#[tune(a, b, c)] const NAME: usize` generic.
pub struct Tune {
    pub name: Ident,
    pub candidates: Vec<i64>,
}

/// How a parameter is passed.
#[derive(Clone)]
pub enum ParamTy {
    Tensor {
        dt: Dt,
        dims: Vec<Expr>,
        writable: bool,
    },
    Paged {
        dt: Dt,
        row: Expr,
        writable: bool,
    },
    Scalar(Dt),
}

/// A kernel parameter.
pub struct ParamDecl {
    pub name: Ident,
    pub ty: ParamTy,
}

/// Reads the tune parameters from the generics.
pub fn tunes(f: &ItemFn) -> syn::Result<Vec<Tune>> {
    let mut out = Vec::new();
    for g in &f.sig.generics.params {
        let GenericParam::Const(c) = g else {
            return Err(syn::Error::new(
                g.span(),
                "kernels take only `#[tune(...)] const NAME: usize` generics",
            ));
        };
        let attr = c
            .attrs
            .iter()
            .find(|a| a.path().is_ident("tune"))
            .ok_or_else(|| {
                syn::Error::new(
                    c.ident.span(),
                    format!("const `{}` needs `#[tune(candidates...)]`", c.ident),
                )
            })?;
        let lits = attr.parse_args_with(Punctuated::<syn::LitInt, Token![,]>::parse_terminated)?;
        let mut candidates = Vec::new();
        for l in lits {
            let v: i64 = l.base10_parse()?;
            if v <= 0 {
                return Err(syn::Error::new(
                    l.span(),
                    "tune candidates must be positive",
                ));
            }
            candidates.push(v);
        }
        if candidates.is_empty() {
            return Err(syn::Error::new(
                attr.span(),
                "`#[tune]` needs at least one candidate",
            ));
        }
        out.push(Tune {
            name: c.ident.clone(),
            candidates,
        });
    }
    Ok(out)
}

/// Reads the typed parameters.
pub fn params(f: &ItemFn) -> syn::Result<Vec<ParamDecl>> {
    let mut out = Vec::new();
    for a in &f.sig.inputs {
        let FnArg::Typed(pt) = a else {
            return Err(syn::Error::new(a.span(), "kernels take no `self`"));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(syn::Error::new(
                pt.pat.span(),
                "parameters must be plain names",
            ));
        };
        out.push(ParamDecl {
            name: pi.ident.clone(),
            ty: param_ty(&pt.ty)?,
        });
    }
    Ok(out)
}

fn param_ty(ty: &Type) -> syn::Result<ParamTy> {
    let err = || {
        syn::Error::new(
            ty.span(),
            "expected `Tensor<dtype, dims![..]>`, `TensorMut<dtype, dims![..]>`, `Paged<dtype, dims![ROW]>`, `PagedMut<..>`, `f32` or `i32`",
        )
    };
    let Type::Path(tp) = ty else {
        return Err(err());
    };
    let seg = tp.path.segments.last().ok_or_else(err)?;
    let name = seg.ident.to_string();
    if let (Some(dt), syn::PathArguments::None) = (Dt::parse(&name), &seg.arguments) {
        return match dt {
            Dt::F32 | Dt::I32 => Ok(ParamTy::Scalar(dt)),
            _ => Err(syn::Error::new(
                ty.span(),
                "scalar parameters are f32 or i32",
            )),
        };
    }
    let syn::PathArguments::AngleBracketed(args) = &seg.arguments else {
        return Err(err());
    };
    let args: Vec<_> = args.args.iter().collect();
    if args.len() != 2 {
        return Err(err());
    }
    let dt = match args[0] {
        syn::GenericArgument::Type(Type::Path(p)) if p.path.get_ident().is_some() => {
            let id = p.path.get_ident().unwrap();
            Dt::parse(&id.to_string()).ok_or_else(|| {
                syn::Error::new(id.span(), format!("unknown dtype `{id}` (f32, bf16, i32)"))
            })?
        }
        other => {
            return Err(syn::Error::new(
                other.span(),
                "expected a dtype (f32, bf16, i32)",
            ))
        }
    };
    let dims = match args[1] {
        syn::GenericArgument::Type(Type::Macro(m)) if m.mac.path.is_ident("dims") => m
            .mac
            .parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated)?
            .into_iter()
            .collect::<Vec<_>>(),
        other => {
            return Err(syn::Error::new(
                other.span(),
                "expected the shape as `dims![A, B, ..]`",
            ))
        }
    };
    match name.as_str() {
        "Tensor" | "TensorMut" => Ok(ParamTy::Tensor {
            dt,
            dims,
            writable: name == "TensorMut",
        }),
        "Paged" | "PagedMut" => {
            if dims.len() != 1 {
                return Err(syn::Error::new(
                    args[1].span(),
                    "a paged cache has one row dimension: `dims![ROW]`",
                ));
            }
            Ok(ParamTy::Paged {
                dt,
                row: dims.into_iter().next().unwrap(),
                writable: name == "PagedMut",
            })
        }
        _ => Err(err()),
    }
}
