//! `--max-batch`: the modelled largest batch per form under an H200 memory budget, printed and
//! written as a report.

use tpla::layer::cost::Hardware;

use crate::cli::error::CliError;

pub(super) fn max_batch(dir: &std::path::Path) -> Result<(), CliError> {
    use tpla::layer::maxbatch::{sweep, tpla_speedup, Budget, PAPER};
    let hw = Hardware::h200();
    let rows = sweep(&hw);
    println!("largest batch per form (modelled: H200 rooflines, 141 GB, fp8 weights, bf16 cache)");
    println!(
        "{:<12} {:<15} {:>3} {:>6} {:<10} {:>9} {:>9} {:>12}",
        "model", "budget", "tp", "ctx", "form", "weights", "max batch", "tokens/s"
    );
    for r in rows
        .iter()
        .filter(|r| r.context == 32768 || r.context == 4096)
    {
        println!(
            "{:<12} {:<15} {:>3} {:>5}K {:<10} {:>7.1}GB {:>9} {:>12.0}",
            r.model,
            format!("{:?}", r.budget),
            r.tp,
            r.context / 1024,
            r.form,
            r.weights_gb,
            r.max_batch,
            r.tokens_per_s
        );
    }
    for (model, paper) in PAPER {
        for tp in [2, 4, 8] {
            let s = tpla_speedup(&rows, model, Budget::AttentionOnly, tp, 32768);
            println!(
                "{model} TP{tp} 32K attention-only: TPLA g=2 / MLA-TP tokens/s {} (paper, TP2 H800: {paper}x)",
                s.map_or("n/a".into(), |s| format!("{s:.2}x"))
            );
        }
    }
    let (j, p) = tpla::layer::report::write_max_batch(dir, &rows, &hw)?;
    println!("wrote {} and {}", j.display(), p.display());
    Ok(())
}
