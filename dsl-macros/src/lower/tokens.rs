//! Token-level helpers shared by the lowering passes: operand conversion, broadcasting and
//! small name utilities.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Expr, ExprCall};

use super::{err, ir, OpV, Val, R};
use crate::sig::Dt;
use crate::sym::Sym;

pub(super) fn define(label: &str, op: &OpV) -> TokenStream {
    let code = &op.code;
    if op.typed {
        let dt = op.dt.ir();
        let dims = op.shape.iter().map(|s| s.to_tokens());
        quote!({ let __op = #code; __tpla_b.define_typed(#label, #dt, &[#(#dims),*], __op)? })
    } else {
        quote!({ let __op = #code; __tpla_b.define(#label, __op)? })
    }
}

pub(super) fn operand(v: &Val, tile_dt: Dt) -> TokenStream {
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

pub(super) fn to_f(v: &Val) -> TokenStream {
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

pub(super) fn broadcast(a: &[Sym], b: &[Sym]) -> Option<Vec<Sym>> {
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

pub(super) fn call_name(c: &ExprCall) -> Option<String> {
    match &*c.func {
        Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

pub(super) fn turbofish_dt(func: &Expr) -> R<Option<Dt>> {
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

pub(super) fn same_tokens(a: &Expr, b: &Expr) -> bool {
    quote!(#a).to_string() == quote!(#b).to_string()
}

pub(super) fn is_upper(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

pub(super) fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}
