//! The `#[kernel]` attribute of the tpla tile DSL.
//!
//! A kernel is a Rust function whose body uses tile operations. The macro checks it at expansion
//! time (unknown operations, dtype and shape mismatches including gemm inner dimensions, tile
//! sizes that are not constants, unknown tune parameters: each reported at the author's span) and
//! replaces it with a unit struct of the same name that
//! - implements `tpla::codegen::KernelDef`: `build(&config)` records the body into the tile IR for
//!   concrete tune values and shape constants;
//! - has a typed launcher `NAME::launch(&executor, &config, args..)` taking one argument per
//!   kernel parameter, so a wrong argument count or type is a compile error at the call site.
//!
//! ```ignore
//! #[kernel(grid = (batch, cdiv(heads, BLOCK_H)), constants(D))]
//! pub fn scale_rows<#[tune(16, 32)] const BLOCK_H: usize>(
//!     x: Tensor<f32, dims![batch, heads, D]>,
//!     y: TensorMut<f32, dims![batch, heads, D]>,
//!     s: f32,
//! ) {
//!     let b = program_id(0);
//!     let h0 = program_id(1) * BLOCK_H;
//!     let t = load(x.tile([b, h0..h0 + BLOCK_H, ..]));
//!     store(y.tile([b, h0..h0 + BLOCK_H, ..]), t * s);
//! }
//! ```
//!
//! A shape constant may carry a default, `constants(LAT, SQ = 1)`: a config without it builds with
//! that value. A body may branch on constants with `if SQ > 1 { .. } else { .. }` (comparisons of
//! tune parameters, shape constants and literals, joined by `&&` and `||`): the condition is
//! decided when the kernel is built, so a specialisation holds only the branch it takes.
//!
//! Add `dump` to the attribute to print the generated code at expansion time.
//!
//! The emitted code names one path only, `::tpla::__private` (a hidden re-export of the codegen
//! and runtime crates), so a crate that depends on `tpla` alone can write kernels. A crate that
//! cannot depend on `tpla` points the macro at its own `__private` module with
//! `#[kernel(crate = path, ..)]`, or (as `tpla-kernels` does) declares `extern crate self as tpla;`
//! next to a `#[doc(hidden)] pub mod __private { pub use tpla_codegen as codegen; pub use
//! tpla_runtime as runtime; }`.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::ItemFn;

mod lower;
mod sig;
mod sym;

use lower::{Ctx, DimS, Var};
use sig::{KernelAttr, ParamTy};

/// Turns a tile-DSL function into a `KernelDef` plus a typed launcher. See the crate docs.
#[proc_macro_attribute]
pub fn kernel(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = match syn::parse::<KernelAttr>(attr) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let f = match syn::parse::<ItemFn>(item) {
        Ok(f) => f,
        Err(e) => return e.to_compile_error().into(),
    };
    match expand(&attr, &f) {
        Ok(ts) => {
            if attr.dump {
                eprintln!("// #[kernel] expansion of `{}`\n{ts}", f.sig.ident);
            }
            ts.into()
        }
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(attr: &KernelAttr, f: &ItemFn) -> syn::Result<TokenStream2> {
    let name = &f.sig.ident;
    let name_str = name.to_string();
    let vis = &f.vis;
    let docs: Vec<_> = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let tunes = sig::tunes(f)?;
    let params = sig::params(f)?;
    let tune_names: Vec<String> = tunes.iter().map(|t| t.name.to_string()).collect();
    let const_names: Vec<String> = attr.constants.iter().map(|c| c.to_string()).collect();
    for c in &attr.constants {
        if tune_names.contains(&c.to_string()) {
            return Err(syn::Error::new(
                c.span(),
                format!("`{c}` is both a tune parameter and a shape constant"),
            ));
        }
    }

    // Runtime dims are the lower-case names in parameter shapes.
    let probe = Ctx::new(tune_names.clone(), const_names.clone(), Vec::new());
    let mut dims = Vec::new();
    for p in &params {
        let exprs: Vec<&syn::Expr> = match &p.ty {
            ParamTy::Tensor { dims, .. } => dims.iter().collect(),
            _ => Vec::new(),
        };
        for e in exprs {
            if let DimS::Runtime(n) = probe.dim(e)? {
                if !dims.contains(&n) {
                    dims.push(n);
                }
            }
        }
    }
    let dim_regs: Vec<TokenStream2> = dims
        .iter()
        .map(|n| {
            let d = format_ident!("__tpla_dim_{}", n);
            quote!(let #d = __tpla_b.dim(#n);)
        })
        .collect();
    let mut ctx = Ctx::new(tune_names.clone(), const_names.clone(), dims);

    // Parameters.
    let mut param_code = Vec::new();
    let mut launch_params = Vec::new();
    let mut launch_args = Vec::new();
    for p in &params {
        let id = &p.name;
        let label = id.to_string();
        match &p.ty {
            ParamTy::Tensor { dt, dims, writable } => {
                let mut dim_code = Vec::new();
                let mut ds = Vec::new();
                for e in dims {
                    let d = ctx.dim(e)?;
                    dim_code.push(match &d {
                        DimS::Runtime(n) => {
                            let d = format_ident!("__tpla_dim_{}", n);
                            quote!(__tpla_private::codegen::ir::ParamDim::Runtime(#d))
                        }
                        DimS::Const(s) => {
                            let t = s.to_tokens();
                            let what = format!("dimension `{s}` of `{label}`");
                            quote!(__tpla_private::codegen::ir::ParamDim::Const(__tpla_private::codegen::builder::const_dim(#what, #t)?))
                        }
                    });
                    ds.push(d);
                }
                let irdt = dt.ir();
                param_code.push(quote!(let #id: usize = { let __dims = vec![#(#dim_code),*]; __tpla_b.tensor(#label, #irdt, __dims, #writable) };));
                ctx.bind(
                    &label,
                    Var::Tensor {
                        id: id.clone(),
                        dt: *dt,
                        dims: ds,
                        writable: *writable,
                    },
                );
                let rt = dt.rust();
                if *writable {
                    launch_params.push(quote!(#id: &mut X::Tensor<#rt>));
                    launch_args.push(quote!(X::tensor_arg_mut(#id)));
                } else {
                    launch_params.push(quote!(#id: &X::Tensor<#rt>));
                    launch_args.push(quote!(X::tensor_arg(#id)));
                }
            }
            ParamTy::Paged { dt, row, writable } => {
                let rs = ctx.sym(row)?;
                let t = rs.to_tokens();
                let irdt = dt.ir();
                param_code
                    .push(quote!(let #id: usize = __tpla_b.paged(#label, #irdt, #t, #writable)?;));
                ctx.bind(
                    &label,
                    Var::Paged {
                        id: id.clone(),
                        dt: *dt,
                        row: rs,
                        writable: *writable,
                    },
                );
                let rt = dt.rust();
                if *writable {
                    launch_params.push(quote!(#id: &mut X::Paged<#rt>));
                    launch_args.push(quote!(X::paged_arg_mut(#id)));
                } else {
                    launch_params.push(quote!(#id: &X::Paged<#rt>));
                    launch_args.push(quote!(X::paged_arg(#id)));
                }
            }
            ParamTy::Scalar(dt) => {
                let irdt = dt.ir();
                let (var, rt, arg) = match dt {
                    sig::Dt::F32 => (
                        quote!(__tpla_private::codegen::ir::FScalar::Param(__p)),
                        quote!(f32),
                        quote!(__tpla_private::runtime::KernelArg::F32(#id)),
                    ),
                    _ => (
                        quote!(__tpla_private::codegen::ir::Index::Scalar(__p)),
                        quote!(i32),
                        quote!(__tpla_private::runtime::KernelArg::I32(#id)),
                    ),
                };
                param_code
                    .push(quote!(let #id = { let __p = __tpla_b.scalar(#label, #irdt); #var };));
                ctx.bind(
                    &label,
                    if *dt == sig::Dt::F32 {
                        Var::Float { id: id.clone() }
                    } else {
                        Var::Index {
                            id: id.clone(),
                            sym: None,
                        }
                    },
                );
                launch_params.push(quote!(#id: #rt));
                launch_args.push(arg);
            }
        }
    }

    // Grid.
    let mut grid_code = Vec::new();
    for g in &attr.grid {
        match ctx.val(g)? {
            lower::Val::I { code, .. } => grid_code.push(code),
            _ => {
                return Err(syn::Error::new_spanned(
                    g,
                    "grid axes are integer expressions of runtime dims and constants",
                ))
            }
        }
    }
    while grid_code.len() < 3 {
        grid_code.push(quote!(__tpla_private::codegen::ir::Index::Const(1)));
    }
    let _ = attr.grid_span;

    let body = ctx.block(&f.block.stmts)?;

    let tune_entries = tunes.iter().map(|t| {
        let n = t.name.to_string();
        let c = &t.candidates;
        quote!(__tpla_private::codegen::TuneParam { name: #n, candidates: &[#(#c),*] })
    });
    let const_locals = tune_names.iter().chain(const_names.iter()).map(|n| {
        let id = format_ident!("{}", n);
        match attr.defaults.iter().find(|(d, _)| d == n) {
            Some((_, v)) => quote!(let #id: i64 = __tpla_config.try_get(#n).unwrap_or(#v);),
            None => quote!(let #id: i64 = __tpla_config.get(#n)?;),
        }
    });
    let default_entries = attr.defaults.iter().map(|(d, v)| {
        let n = d.to_string();
        quote!((#n, #v))
    });
    let krate = match &attr.krate {
        Some(p) => quote!(#p),
        None => quote!(::tpla),
    };
    let launch_doc = format!(
        "Launches `{name_str}` on `exec` with `config`; arguments follow the kernel signature."
    );

    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        const _: () = {
        use #krate::__private as __tpla_private;

        impl __tpla_private::codegen::KernelDef for #name {
            fn name(&self) -> &'static str { #name_str }
            fn tune_params(&self) -> &'static [__tpla_private::codegen::TuneParam] { &[#(#tune_entries),*] }
            fn shape_constants(&self) -> &'static [&'static str] { &[#(#const_names),*] }
            fn constant_defaults(&self) -> &'static [(&'static str, i64)] { &[#(#default_entries),*] }
            #[allow(non_snake_case, unused_variables, unused_braces, clippy::all)]
            fn build(&self, __tpla_config: &__tpla_private::codegen::Config) -> ::core::result::Result<__tpla_private::codegen::ir::Kernel, __tpla_private::codegen::IrError> {
                self.check_config(__tpla_config)?;
                #(#const_locals)*
                let mut __tpla_b = __tpla_private::codegen::KernelBuilder::new(#name_str, __tpla_config);
                #(#dim_regs)*
                #(#param_code)*
                let __grid = [#(#grid_code),*];
                __tpla_b.grid(__grid);
                #body
                __tpla_b.finish()
            }
        }

        impl #name {
            #[doc = #launch_doc]
            #[allow(clippy::too_many_arguments)]
            #vis fn launch<X: __tpla_private::runtime::Executor>(
                exec: &X,
                config: &__tpla_private::codegen::Config,
                #(#launch_params),*
            ) -> ::core::result::Result<(), __tpla_private::runtime::RuntimeError> {
                let __args = [#(#launch_args),*];
                exec.launch(&#name, config, &__args)
            }
        }
        };
    })
}
