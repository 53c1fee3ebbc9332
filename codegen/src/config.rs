//! Tune configurations and the trait every DSL kernel implements.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::IrError;
use crate::ir::Kernel;

/// A tune parameter and its candidate values, as declared with `#[tune(...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TuneParam {
    /// Name of the const generic.
    pub name: &'static str,
    /// Candidate values, in declaration order (the first is the default).
    pub candidates: &'static [i64],
}

/// Values of tune parameters and shape constants for one specialisation of a kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Config {
    values: BTreeMap<String, i64>,
}

impl Config {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }
    /// Returns the config with `name = value` set.
    pub fn with(mut self, name: &str, value: i64) -> Self {
        self.values.insert(name.to_string(), value);
        self
    }
    /// Sets `name = value`.
    pub fn set(&mut self, name: &str, value: i64) {
        self.values.insert(name.to_string(), value);
    }
    /// The value of `name`, or a typed error.
    pub fn get(&self, name: &str) -> Result<i64, IrError> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| IrError::MissingConfig(name.to_string()))
    }
    /// The value of `name` if present.
    pub fn try_get(&self, name: &str) -> Option<i64> {
        self.values.get(name).copied()
    }
    /// All entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A kernel written with `#[kernel]`: it can be specialised for a config and built into IR.
pub trait KernelDef: Sync {
    /// The kernel's name.
    fn name(&self) -> &'static str;
    /// Tune parameters with their candidates.
    fn tune_params(&self) -> &'static [TuneParam];
    /// Shape constants (upper-case dims that are not tune parameters), fixed per specialisation.
    fn shape_constants(&self) -> &'static [&'static str];
    /// Builds the IR for `config`, which must give every tune parameter and shape constant.
    fn build(&self, config: &Config) -> Result<Kernel, IrError>;

    /// Checks that `config` sets every tune parameter to one of its candidates and every shape
    /// constant to a positive value.
    fn check_config(&self, config: &Config) -> Result<(), IrError> {
        for t in self.tune_params() {
            let v = config.get(t.name)?;
            if !t.candidates.contains(&v) {
                return Err(IrError::BadConfig {
                    name: t.name.into(),
                    value: v,
                    why: format!("not one of the candidates {:?}", t.candidates),
                });
            }
        }
        for c in self.shape_constants() {
            let v = config.get(c)?;
            if v <= 0 {
                return Err(IrError::BadConfig {
                    name: (*c).into(),
                    value: v,
                    why: "must be positive".into(),
                });
            }
        }
        Ok(())
    }

    /// The config with every tune parameter at its first candidate plus the given shape constants.
    fn default_config(&self, shape_constants: &[(&str, i64)]) -> Config {
        let mut c = Config::new();
        for t in self.tune_params() {
            c.set(t.name, t.candidates[0]);
        }
        for (k, v) in shape_constants {
            c.set(k, *v);
        }
        c
    }

    /// Every combination of tune candidates, each with the given shape constants.
    fn tune_space(&self, shape_constants: &[(&str, i64)]) -> Vec<Config> {
        let mut out = vec![self.default_config(shape_constants)];
        for t in self.tune_params() {
            out = out
                .into_iter()
                .flat_map(|c| t.candidates.iter().map(move |v| c.clone().with(t.name, *v)))
                .collect();
        }
        out
    }
}
