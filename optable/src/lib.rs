//! The one table of the tile DSL's operations.
//!
//! Every operation a `#[kernel]` body can use is one [`OpDef`] in [`OPS`]: its DSL name, how it
//! is written ([`Form`]), its operands ([`Operand`]), the rule giving the result's shape
//! ([`ShapeRule`]) and dtype ([`DtypeRule`]), its op family ([`Family`], which names the backend
//! module that lowers it) and a one-line doc. The `#[kernel]` macro looks operations up here
//! (names, arity, operand kinds, error text, did-you-mean), the IR names its ops through it
//! (`tpla_codegen::ops`), and `docs/dsl-ops.md` is generated from it ([`markdown`]).
//!
//! This crate has no dependencies so that the proc-macro crate can read it without building the
//! code generator.

#![forbid(unsafe_code)]

mod doc;
mod table;

pub use doc::{markdown, REGENERATE};
pub use table::*;

/// How an operation is written in a kernel body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// A free function: `gemm(a, b)`.
    Call,
    /// A method on a tile, tensor, cache or block variable: `x.t()`.
    Method,
    /// A binary operator: `a + b`.
    Infix,
    /// A unary operator: `-x`.
    Prefix,
}

/// The kind of one operand, checked by the macro.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// Any tile.
    Tile,
    /// A tile of `f32` or `bf16`.
    FloatTile,
    /// A `bool` tile.
    Mask,
    /// A tile or a scalar (float or integer), broadcast.
    Value,
    /// A number: a float or integer tile or scalar (not `bool`), broadcast.
    Number,
    /// A scalar (float or integer).
    Scalar,
    /// A float tile or a float scalar.
    FloatValue,
    /// An integer index expression.
    Int,
    /// A constant axis number.
    Axis,
    /// A constant (a tune parameter, shape constant or literal).
    Const,
    /// The loop source `cache.blocks::<N>(..)` (the receiver of `pipelined`).
    Blocks,
    /// A constant shape `[d0, d1]` (tune parameters, shape constants, literals).
    Shape,
    /// A region of a tensor parameter, `tensor.tile([..])` (or, stored into, `cache.rows(b, t)`).
    Region,
    /// A list of indices and spans `[i, a..a + N, ..]`, one per tensor dimension.
    Index,
    /// A constant half-open range `a..b`.
    Range,
    /// A tensor parameter (the receiver of a method).
    Tensor,
    /// A paged cache parameter (the receiver of a method).
    Paged,
    /// The block variable of a `blocks` loop (the receiver of a method).
    Block,
}

impl Operand {
    /// What the operand must be, as error messages and the docs say it.
    pub fn describe(self) -> &'static str {
        match self {
            Operand::Tile => "a tile",
            Operand::FloatTile => "a float tile",
            Operand::Mask => "a bool tile",
            Operand::Value => "a tile or a scalar",
            Operand::Number => "a number (a tile or scalar, not bool)",
            Operand::Scalar => "a scalar",
            Operand::FloatValue => "a float tile or scalar",
            Operand::Int => "an integer index",
            Operand::Axis => "a constant axis",
            Operand::Const => "a constant",
            Operand::Blocks => "a `cache.blocks::<N>(..)` loop source",
            Operand::Shape => "a constant shape [..]",
            Operand::Region => "a region tensor.tile([..])",
            Operand::Index => "an index list [i, a..a + N, ..]",
            Operand::Range => "a constant range a..b",
            Operand::Tensor => "a tensor parameter",
            Operand::Paged => "a paged cache parameter",
            Operand::Block => "a `blocks` loop variable",
        }
    }
}

/// How the result's shape follows from the operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShapeRule {
    /// The operands' shapes broadcast NumPy-style (a scalar broadcasts to anything).
    Broadcast,
    /// The shape of the (first) tile operand.
    Same,
    /// The constant `shape` argument.
    Given,
    /// The extents of the region's spans (a single index drops the dimension).
    Region,
    /// The operand's shape without `axis`.
    DropAxis,
    /// `[M, K] x [K, N] -> [M, N]`.
    Gemm,
    /// The two axes swapped.
    Transpose,
    /// A size-1 axis inserted at `axis`.
    InsertAxis,
    /// The range's length along the sliced axis.
    SliceAxis,
    /// `[BLOCK_N, row]` rows per iteration.
    Block,
    /// `[BLOCK_N]`, one flag per row of the block.
    BlockRows,
    /// No tile: an integer index, or nothing (a statement or loop source).
    NoTile,
}

impl ShapeRule {
    /// The rule in words.
    pub fn describe(self) -> &'static str {
        match self {
            ShapeRule::Broadcast => "operands broadcast (NumPy rules)",
            ShapeRule::Same => "same as the operand",
            ShapeRule::Given => "the `shape` argument",
            ShapeRule::Region => "the region's span lengths",
            ShapeRule::DropAxis => "the operand's without `axis`",
            ShapeRule::Gemm => "[M, K] x [K, N] -> [M, N]",
            ShapeRule::Transpose => "[M, N] -> [N, M]",
            ShapeRule::InsertAxis => "a size-1 axis inserted at `axis`",
            ShapeRule::SliceAxis => "the axis cut to the range",
            ShapeRule::Block => "[BLOCK_N, row] per iteration",
            ShapeRule::BlockRows => "[BLOCK_N]",
            ShapeRule::NoTile => "-",
        }
    }
}

/// How the result's dtype follows from the operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtypeRule {
    /// The operands' common dtype; both float or both integer (`bf16` with `f32` is an error).
    Common,
    /// The float operand's dtype; float operands only.
    SameFloat,
    /// The operand's dtype.
    Same,
    /// `f32` (float operands, accumulated in f32).
    F32,
    /// `bool`.
    Bool,
    /// `i32`.
    I32,
    /// The turbofish `::<T>` (default `f32`).
    Given,
    /// The cast's target `::<T>`.
    Target,
    /// The dtype of the tensor or cache read.
    Source,
    /// The stored tile's dtype must equal the tensor's.
    MustMatch,
    /// No tile.
    NoTile,
}

impl DtypeRule {
    /// The rule in words.
    pub fn describe(self) -> &'static str {
        match self {
            DtypeRule::Common => "the operands' (same class)",
            DtypeRule::SameFloat => "the operand's (float only)",
            DtypeRule::Same => "the operand's",
            DtypeRule::F32 => "f32",
            DtypeRule::Bool => "bool",
            DtypeRule::I32 => "i32",
            DtypeRule::Given => "`::<T>`, default f32",
            DtypeRule::Target => "`::<T>` (f32, bf16, i32)",
            DtypeRule::Source => "the tensor's",
            DtypeRule::MustMatch => "tile's = tensor's",
            DtypeRule::NoTile => "-",
        }
    }
}

/// Which backend lowering handles an operation (`lower/{elementwise, reduce, memory, gemm}` in
/// each backend; views, constants and index arithmetic are handled next to them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Per-element arithmetic, comparisons, selects and casts.
    Elementwise,
    /// Reductions along an axis.
    Reduce,
    /// Loads and stores of tensors and paged caches.
    Memory,
    /// Tile matrix products.
    Gemm,
    /// Tiles defined by a value (`zeros`, `full`, `iota`).
    Constant,
    /// Views that alias their source (transpose, unsqueeze, slices).
    View,
    /// Integer index arithmetic and loop sources (no tile).
    Index,
}

impl Family {
    /// Lower-case name, as in the backends' module names.
    pub fn name(self) -> &'static str {
        match self {
            Family::Elementwise => "elementwise",
            Family::Reduce => "reduce",
            Family::Memory => "memory",
            Family::Gemm => "gemm",
            Family::Constant => "constant",
            Family::View => "view",
            Family::Index => "index",
        }
    }
}

/// One operation of the DSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpDef {
    /// Name as written: `gemm`, `t`, `+`.
    pub name: &'static str,
    /// How it is written.
    pub form: Form,
    /// The operands (for a method, after the receiver) with their names in the docs.
    pub operands: &'static [(&'static str, Operand)],
    /// The receiver of a method.
    pub receiver: Option<Operand>,
    /// Result shape.
    pub shape: ShapeRule,
    /// Result dtype.
    pub dtype: DtypeRule,
    /// Op family.
    pub family: Family,
    /// One line of documentation.
    pub doc: &'static str,
}

impl OpDef {
    /// Number of operands (for a method, not counting the receiver).
    pub fn arity(&self) -> usize {
        self.operands.len()
    }

    /// How the operation is written, with operand names: `reduce_sum(x, axis)`, `x.t()`, `a + b`.
    pub fn signature(&self) -> String {
        let names: Vec<&str> = self.operands.iter().map(|(n, _)| *n).collect();
        match self.form {
            Form::Call => format!("{}({})", self.name, names.join(", ")),
            Form::Method => format!(".{}({})", self.name, names.join(", ")),
            Form::Infix => format!("a {} b", self.name),
            Form::Prefix => format!("{}x", self.name),
        }
    }

    /// The error for a call with the wrong number of arguments.
    pub fn arity_message(&self) -> String {
        let n = self.arity();
        format!(
            "`{}` takes {n} argument{}: {}",
            self.name,
            if n == 1 { "" } else { "s" },
            self.signature()
        )
    }

    /// The error for operand `i` of the wrong kind: `exp2 needs a float tile, got i32`.
    pub fn operand_message(&self, i: usize, got: &str) -> String {
        let want = self
            .operands
            .get(i)
            .map_or("an operand", |(_, k)| k.describe());
        format!("{} needs {want}, got {got}", self.name)
    }
}

/// The operation `name` written in `form`.
pub fn lookup(name: &str, form: Form) -> Option<&'static OpDef> {
    OPS.iter().find(|o| o.name == name && o.form == form)
}

/// The method `name` on a receiver of kind `receiver`.
pub fn method(name: &str, receiver: Operand) -> Option<&'static OpDef> {
    OPS.iter()
        .find(|o| o.name == name && o.form == Form::Method && o.receiver == Some(receiver))
}

/// The free-function operation `name`.
pub fn call(name: &str) -> Option<&'static OpDef> {
    lookup(name, Form::Call)
}

/// The closest name of an operation written in `form`, if one is close enough to be a typo
/// (`exp` -> `exp2`, `reduce_mx` -> `reduce_max`).
pub fn suggest(name: &str, form: Form) -> Option<&'static str> {
    closest(name, OPS.iter().filter(|o| o.form == form))
}

/// The closest method name among the methods of `receiver`.
pub fn suggest_method(name: &str, receiver: Operand) -> Option<&'static str> {
    closest(
        name,
        OPS.iter()
            .filter(|o| o.form == Form::Method && o.receiver == Some(receiver)),
    )
}

fn closest<'a>(name: &str, ops: impl Iterator<Item = &'a OpDef>) -> Option<&'static str> {
    let limit = (name.chars().count() / 3).max(1);
    ops.map(|o| (edit_distance(name, o.name), o.name))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// `unknown operation `name`` plus a did-you-mean when [`suggest`] finds one.
pub fn unknown_message(name: &str, form: Form) -> String {
    match (form, suggest(name, form)) {
        (Form::Method, Some(s)) => format!("unknown operation `.{name}()`; did you mean `.{s}()`?"),
        (Form::Method, None) => format!("unknown operation `.{name}()`"),
        (_, Some(s)) => format!("unknown operation `{name}`; did you mean `{s}`?"),
        (_, None) => format!("unknown operation `{name}`"),
    }
}

/// `unknown operation `.name()` on {on}` plus a did-you-mean among the methods of `receiver`.
pub fn unknown_method_message(name: &str, receiver: Operand, on: &str) -> String {
    match suggest_method(name, receiver) {
        Some(s) => format!("unknown operation `.{name}()` on {on}; did you mean `.{s}()`?"),
        None => format!("unknown operation `.{name}()` on {on}"),
    }
}

/// Edit distance over chars where a swap of two neighbours counts as one edit (optimal string
/// alignment), so `tiel` is one edit from `tile`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let sub = d[(i - 1) * w + j - 1] + usize::from(a[i - 1] != b[j - 1]);
                let mut best = sub.min(d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * w + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_form() {
        for (i, a) in OPS.iter().enumerate() {
            for b in &OPS[i + 1..] {
                assert!(
                    !(a.name == b.name && a.form == b.form && a.receiver == b.receiver),
                    "`{}` is declared twice",
                    a.name
                );
            }
        }
    }

    #[test]
    fn typos_get_a_suggestion_and_unrelated_names_none() {
        assert_eq!(suggest("exp", Form::Call), Some("exp2"));
        assert_eq!(suggest("reduce_mx", Form::Call), Some("reduce_max"));
        assert_eq!(suggest("softmax", Form::Call), None);
        assert_eq!(suggest("unsqeeze", Form::Method), Some("unsqueeze"));
        assert_eq!(
            unknown_message("exp", Form::Call),
            "unknown operation `exp`; did you mean `exp2`?"
        );
        assert_eq!(
            unknown_message("softmax", Form::Call),
            "unknown operation `softmax`"
        );
        assert_eq!(
            unknown_method_message("tiel", Operand::Tensor, "tensor `q`"),
            "unknown operation `.tiel()` on tensor `q`; did you mean `.tile()`?"
        );
    }

    #[test]
    fn arity_message_shows_the_signature() {
        let m = call("reduce_sum").unwrap().arity_message();
        assert_eq!(m, "`reduce_sum` takes 2 arguments: reduce_sum(x, axis)");
    }
}
