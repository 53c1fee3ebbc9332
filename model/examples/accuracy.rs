//! Runs the TPLA accuracy harness and writes `bench/results/accuracy-<date>.{json,png}`.
//!
//! `cargo run --release -p tpla-model --example accuracy -- [DATE] [PRESET] [SEED]`

use tpla_model::accuracy::{run_accuracy, AccuracyOptions};
use tpla_model::config::Preset;
use tpla_model::reparam::MuConvention;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let date = args.get(1).cloned().unwrap_or_else(|| "undated".into());
    let preset = Preset::parse(args.get(2).map_or("deepseek-v2-lite", |s| s.as_str()))?;
    let seed: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let opts = AccuracyOptions {
        preset,
        seed,
        ..AccuracyOptions::default()
    };
    let rep = run_accuracy(&opts)?;
    print!("{}", rep.table());
    println!("took {:.1} s", rep.seconds);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    let stem = if seed == 0 {
        format!("accuracy-{date}")
    } else {
        format!("accuracy-{date}-seed{seed}")
    };
    rep.write_json(&dir.join(format!("{stem}.json")))?;
    let mu = rep
        .mu_decision
        .as_ref()
        .map_or(MuConvention::default(), |d| d.favoured);
    rep.write_png(&dir.join(format!("{stem}.png")), mu)?;
    Ok(())
}
