//! `tpla convert` and `tpla accuracy`: the model tools of `tpla_runtime::model`.

use clap::Args;

use super::error::CliError;

/// Options of `tpla convert`.
#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Placeholder until wired.
    #[arg(long)]
    pub input: Option<String>,
}

/// Options of `tpla accuracy`.
#[derive(Args, Debug, Clone)]
pub struct AccuracyArgs {
    /// Placeholder until wired.
    #[arg(long)]
    pub out: Option<String>,
}

/// Runs `tpla convert`.
pub fn convert(_a: ConvertArgs) -> Result<(), CliError> {
    Err(CliError::Usage("convert: not wired yet".into()))
}

/// Runs `tpla accuracy`.
pub fn accuracy(_a: AccuracyArgs) -> Result<(), CliError> {
    Err(CliError::Usage("accuracy: not wired yet".into()))
}
