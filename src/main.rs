//! The `tpla` command line.

mod cli;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => {
            cli::info::info();
            Ok(())
        }
        Command::Decode(a) => cli::decode::decode(a),
        Command::Run(a) => cli::run::run(a),
        Command::Bench(a) => cli::bench::bench(a),
        Command::Convert(a) => cli::model::convert(a),
        Command::Accuracy(a) => cli::model::accuracy(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
