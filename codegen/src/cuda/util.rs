//! Small helpers shared by the passes.

use crate::error::IrError;
use crate::ir::*;

pub(crate) fn backend_err(k: &Kernel, message: impl Into<String>) -> IrError {
    IrError::Backend {
        backend: "cuda",
        kernel: k.name.clone(),
        message: message.into(),
    }
}

pub(crate) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
