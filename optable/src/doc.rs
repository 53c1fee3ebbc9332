//! `docs/dsl-ops.md`, generated from the table.

use crate::{Family, Form, OpDef, OPS};

/// The command that rewrites `docs/dsl-ops.md` from the table.
pub const REGENERATE: &str = "TPLA_BLESS=1 cargo test -p tpla-optable --test docs";

/// The reference of the DSL's operations as Markdown, one table per op family.
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str("# Operations of the tpla tile DSL\n\n");
    s.push_str(&format!(
        "<!-- Generated from optable/src/table.rs; do not edit. Regenerate: {REGENERATE} -->\n\n"
    ));
    s.push_str(
        "Every operation a `#[kernel]` body can use, from the one op table that the macro, the \
         IR and both backends read. Shapes and dtypes are checked when the macro expands, at the \
         span of the mistake.\n",
    );
    for fam in [
        Family::Memory,
        Family::Constant,
        Family::Elementwise,
        Family::Reduce,
        Family::Gemm,
        Family::View,
        Family::Index,
    ] {
        let ops: Vec<&OpDef> = OPS.iter().filter(|o| o.family == fam).collect();
        if ops.is_empty() {
            continue;
        }
        s.push_str(&format!("\n## {}\n\n", fam.name()));
        s.push_str("| operation | operands | shape | dtype | what it does |\n");
        s.push_str("|---|---|---|---|---|\n");
        for o in ops {
            let mut operands: Vec<String> = o
                .operands
                .iter()
                .map(|(n, k)| format!("`{n}`: {}", k.describe()))
                .collect();
            if let Some(r) = o.receiver {
                operands.insert(0, format!("receiver: {}", r.describe()));
            }
            let operands = if operands.is_empty() {
                "-".to_string()
            } else {
                operands.join("; ")
            };
            s.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                cell(&written(o)),
                cell(&operands),
                cell(o.shape.describe()),
                cell(o.dtype.describe()),
                cell(o.doc)
            ));
        }
    }
    s
}

fn written(o: &OpDef) -> String {
    match o.form {
        Form::Infix | Form::Prefix | Form::Call => o.signature(),
        Form::Method => match o.receiver {
            Some(crate::Operand::Tensor) => format!("tensor{}", o.signature()),
            Some(crate::Operand::Paged) => format!("cache{}", o.signature()),
            Some(crate::Operand::Block) => format!("kv{}", o.signature()),
            Some(crate::Operand::Blocks) => format!("cache.blocks::<N>(..){}", o.signature()),
            _ => format!("x{}", o.signature()),
        },
    }
}

/// Escapes `|` inside a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}
