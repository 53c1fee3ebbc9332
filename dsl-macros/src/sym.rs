//! Symbolic tile dimensions: polynomials over tune parameters and shape constants, compared at
//! expansion time so that shape errors point at the author's code.

use std::collections::BTreeMap;
use std::fmt;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// `Σ coeff · Π names` in canonical form (sorted monomials, no zero coefficients).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Sym {
    terms: BTreeMap<Vec<String>, i64>,
}

impl Sym {
    /// A literal.
    pub fn lit(v: i64) -> Sym {
        let mut s = Sym::default();
        if v != 0 {
            s.terms.insert(Vec::new(), v);
        }
        s
    }
    /// A named constant.
    pub fn name(n: &str) -> Sym {
        let mut s = Sym::default();
        s.terms.insert(vec![n.to_string()], 1);
        s
    }
    /// `self + o`.
    pub fn add(&self, o: &Sym) -> Sym {
        let mut s = self.clone();
        for (m, c) in &o.terms {
            *s.terms.entry(m.clone()).or_insert(0) += c;
        }
        s.terms.retain(|_, c| *c != 0);
        s
    }
    /// `self - o`.
    pub fn sub(&self, o: &Sym) -> Sym {
        self.add(&o.scale(-1))
    }
    fn scale(&self, k: i64) -> Sym {
        let mut s = self.clone();
        s.terms.values_mut().for_each(|c| *c *= k);
        s.terms.retain(|_, c| *c != 0);
        s
    }
    /// `self * o`.
    pub fn mul(&self, o: &Sym) -> Sym {
        let mut s = Sym::default();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &o.terms {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                m.sort();
                *s.terms.entry(m).or_insert(0) += ca * cb;
            }
        }
        s.terms.retain(|_, c| *c != 0);
        s
    }
    /// The literal value, if the polynomial has no names.
    pub fn as_lit(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }
    /// Rust code computing the value as `i64` from locals named after the constants.
    pub fn to_tokens(&self) -> TokenStream {
        if self.terms.is_empty() {
            return quote!(0i64);
        }
        let parts = self.terms.iter().map(|(m, c)| {
            let names = m.iter().map(|n| format_ident!("{}", n));
            quote!((#c #(* #names)*))
        });
        quote!((0i64 #(+ #parts)*))
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        let mut first = true;
        for (m, c) in &self.terms {
            let (sign, mag) = if *c < 0 { ("-", -c) } else { ("+", *c) };
            if first {
                if sign == "-" {
                    f.write_str("-")?;
                }
            } else {
                write!(f, " {sign} ")?;
            }
            first = false;
            let names = m.join("·");
            match (mag, m.is_empty()) {
                (_, true) => write!(f, "{mag}")?,
                (1, false) => f.write_str(&names)?,
                _ => write!(f, "{mag}·{names}")?,
            }
        }
        Ok(())
    }
}

/// Formats a shape like `[BLOCK_H, LAT + ROPE]`.
pub fn shape_str(s: &[Sym]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
