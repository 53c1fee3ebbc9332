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
    /// Builds the IR for `config`, which must give every tune parameter and every shape constant
    /// that has no default.
    fn build(&self, config: &Config) -> Result<Kernel, IrError>;
    /// Shape constants declared with a default (`constants(SQ = 1)`): a config without the name
    /// builds with this value. [`default_config`](Self::default_config) leaves them out, so a
    /// config that does not mention them keeps its name, its tune-database key and its code.
    fn constant_defaults(&self) -> &'static [(&'static str, i64)] {
        &[]
    }

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
            let default = self.constant_defaults().iter().find(|(n, _)| n == c);
            let v = match (config.try_get(c), default) {
                (Some(v), _) => v,
                (None, Some(&(_, d))) => d,
                (None, None) => config.get(c)?,
            };
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

    /// The config with every tune parameter at its first candidate plus the given shape constants
    /// (a constant with a default may be left out).
    ///
    /// A name that is not one of [`shape_constants`](Self::shape_constants) is rejected here,
    /// with [`IrError::UnknownConstant`], rather than surfacing at launch.
    fn default_config(&self, shape_constants: &[(&str, i64)]) -> Result<Config, IrError> {
        let known = self.shape_constants();
        let mut c = Config::new();
        for t in self.tune_params() {
            c.set(t.name, t.candidates[0]);
        }
        for (k, v) in shape_constants {
            if !known.contains(k) {
                return Err(IrError::UnknownConstant {
                    kernel: self.name().to_string(),
                    name: (*k).to_string(),
                    known: known.iter().map(|s| s.to_string()).collect(),
                });
            }
            c.set(k, *v);
        }
        Ok(c)
    }

    /// Every combination of tune candidates, each with the given shape constants (checked as in
    /// [`default_config`](Self::default_config)).
    fn tune_space(&self, shape_constants: &[(&str, i64)]) -> Result<Vec<Config>, IrError> {
        let mut out = vec![self.default_config(shape_constants)?];
        for t in self.tune_params() {
            out = out
                .into_iter()
                .flat_map(|c| t.candidates.iter().map(move |v| c.clone().with(t.name, *v)))
                .collect();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;
    impl KernelDef for Two {
        fn name(&self) -> &'static str {
            "two"
        }
        fn tune_params(&self) -> &'static [TuneParam] {
            &[TuneParam {
                name: "BLOCK",
                candidates: &[16, 32],
            }]
        }
        fn shape_constants(&self) -> &'static [&'static str] {
            &["LAT", "ROPE"]
        }
        fn build(&self, _: &Config) -> Result<Kernel, IrError> {
            Err(IrError::Invalid("not built in this test".into()))
        }
    }

    #[test]
    fn default_config_rejects_an_unknown_constant_by_name() {
        let e = Two.default_config(&[("LAT", 512), ("CC", 8)]).unwrap_err();
        assert_eq!(
            e,
            IrError::UnknownConstant {
                kernel: "two".into(),
                name: "CC".into(),
                known: vec!["LAT".into(), "ROPE".into()],
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("`CC`") && msg.contains("LAT, ROPE"), "{msg}");
        assert!(Two.tune_space(&[("CC", 8)]).is_err());
    }

    struct WithDefault;
    impl KernelDef for WithDefault {
        fn name(&self) -> &'static str {
            "with_default"
        }
        fn tune_params(&self) -> &'static [TuneParam] {
            &[]
        }
        fn shape_constants(&self) -> &'static [&'static str] {
            &["LAT", "SQ"]
        }
        fn constant_defaults(&self) -> &'static [(&'static str, i64)] {
            &[("SQ", 1)]
        }
        fn build(&self, _: &Config) -> Result<Kernel, IrError> {
            Err(IrError::Invalid("not built in this test".into()))
        }
    }

    #[test]
    fn a_constant_with_a_default_may_be_left_out_but_not_set_bad() {
        let c = WithDefault.default_config(&[("LAT", 512)]).unwrap();
        assert_eq!(c.try_get("SQ"), None, "defaults stay out of the config");
        assert_eq!(WithDefault.check_config(&c), Ok(()));
        let two = WithDefault
            .default_config(&[("LAT", 512), ("SQ", 2)])
            .unwrap();
        assert_eq!(WithDefault.check_config(&two), Ok(()));
        let bad = c.clone().with("SQ", 0);
        assert!(matches!(
            WithDefault.check_config(&bad),
            Err(IrError::BadConfig { .. })
        ));
        // A constant without a default is still required.
        assert_eq!(
            WithDefault.check_config(&Config::new()),
            Err(IrError::MissingConfig("LAT".into()))
        );
    }

    #[test]
    fn default_config_keeps_known_constants_and_first_candidates() {
        let c = Two.default_config(&[("LAT", 512)]).unwrap();
        assert_eq!(c.get("LAT"), Ok(512));
        assert_eq!(c.get("BLOCK"), Ok(16));
        assert_eq!(Two.tune_space(&[("ROPE", 64)]).unwrap().len(), 2);
    }
}
