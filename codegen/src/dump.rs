//! `TPLA_DUMP`: which compilation stages print what they produced, parsed in one place.
//!
//! The value is a comma list of [`ACCEPTED`] names (`ir`, `clif`, `cuda`, `all`, or the name of
//! a CUDA backend pass, [`CUDA_PASSES`], to print the lowering state after it); unset or empty
//! prints nothing. Anything else is an [`IrError::BadDump`] naming the accepted values, so a
//! typo is reported instead of silently printing nothing.

use crate::error::IrError;

/// The environment variable.
pub const VAR: &str = "TPLA_DUMP";

/// The names `TPLA_DUMP` accepts, in the order the error message lists them.
pub const ACCEPTED: &[&str] = &[
    "ir", "clif", "cuda", "all", "analysis", "layout", "fusion", "geometry", "memory", "lower",
    "sync", "print",
];

/// The CUDA backend's passes (`codegen::cuda`'s pass list), in order: each can be dumped.
pub const CUDA_PASSES: &[&str] = &[
    "analysis", "layout", "fusion", "geometry", "memory", "lower", "sync", "print",
];

/// A stage whose output can be printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The tile IR (`codegen::printer`).
    Ir,
    /// Cranelift IR of the CPU backend.
    Clif,
    /// Generated CUDA C++.
    Cuda,
}

/// The stages `TPLA_DUMP` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStages {
    ir: bool,
    clif: bool,
    cuda: bool,
    /// Bit `i`: print the state after [`CUDA_PASSES`]`[i]`.
    passes: u32,
}

impl DumpStages {
    /// Parses a `TPLA_DUMP` value: a comma list of [`ACCEPTED`] names (spaces around names
    /// and empty items are ignored).
    pub fn parse(value: &str) -> Result<DumpStages, IrError> {
        let mut d = DumpStages::default();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "ir" => d.ir = true,
                "clif" => d.clif = true,
                "cuda" => d.cuda = true,
                "all" => {
                    d = DumpStages {
                        ir: true,
                        clif: true,
                        cuda: true,
                        passes: (1 << CUDA_PASSES.len()) - 1,
                    }
                }
                _ if CUDA_PASSES.contains(&item) => {
                    let i = CUDA_PASSES.iter().position(|p| *p == item).unwrap_or(0);
                    d.passes |= 1 << i;
                }
                _ => {
                    return Err(IrError::BadDump {
                        value: value.to_string(),
                        item: item.to_string(),
                    })
                }
            }
        }
        Ok(d)
    }

    /// Reads and parses [`VAR`] from the environment (unset: nothing is printed).
    pub fn from_env() -> Result<DumpStages, IrError> {
        match std::env::var(VAR) {
            Ok(v) => DumpStages::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(DumpStages::default()),
            Err(std::env::VarError::NotUnicode(v)) => Err(IrError::BadDump {
                value: v.to_string_lossy().into_owned(),
                item: v.to_string_lossy().into_owned(),
            }),
        }
    }

    /// Whether the CUDA lowering state after pass `name` is to be printed.
    pub fn wants_pass(self, name: &str) -> bool {
        CUDA_PASSES
            .iter()
            .position(|p| *p == name)
            .is_some_and(|i| self.passes & (1 << i) != 0)
    }

    /// Whether `stage` is to be printed.
    pub fn wants(self, stage: Stage) -> bool {
        match stage {
            Stage::Ir => self.ir,
            Stage::Clif => self.clif,
            Stage::Cuda => self.cuda,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_lists_and_all() {
        assert_eq!(DumpStages::parse(""), Ok(DumpStages::default()));
        let d = DumpStages::parse("ir, cuda").unwrap();
        assert!(d.wants(Stage::Ir) && d.wants(Stage::Cuda) && !d.wants(Stage::Clif));
        let d = DumpStages::parse("all").unwrap();
        assert!(d.wants(Stage::Ir) && d.wants(Stage::Cuda) && d.wants(Stage::Clif));
        assert!(CUDA_PASSES.iter().all(|p| d.wants_pass(p)));
    }

    #[test]
    fn accepts_cuda_pass_names() {
        let d = DumpStages::parse("geometry,sync").unwrap();
        assert!(d.wants_pass("geometry") && d.wants_pass("sync"));
        assert!(!d.wants_pass("lower") && !d.wants(Stage::Cuda) && !d.wants_pass("bogus"));
        assert!(CUDA_PASSES.iter().all(|p| ACCEPTED.contains(p)));
    }

    #[test]
    fn rejects_an_unknown_name_listing_the_accepted_ones() {
        let e = DumpStages::parse("ir,bogus").unwrap_err();
        assert_eq!(
            e,
            IrError::BadDump {
                value: "ir,bogus".into(),
                item: "bogus".into()
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("`bogus`") && msg.contains("ir, clif, cuda, all"),
            "{msg}"
        );
    }
}
