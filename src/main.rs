//! The `tpla` command line.

mod cli;

use clap::Parser;
use cli::{Cli, Command};

/// Makes a closed stdout end the process quietly (as for any Unix filter) instead of panicking
/// in `println!` when the output is piped into `head`.
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: `signal` is async-signal-safe libc API; installing the default disposition for
        // SIGPIPE before any thread or output exists has no other effect on the program.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

fn main() {
    restore_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => {
            cli::info::info();
            Ok(())
        }
        Command::Decode(a) => cli::decode::decode(a),
        Command::Run(a) => cli::run::run(a),
        Command::Bench(a) => cli::bench::bench(a),
        Command::Tune(a) => cli::tune::tune(a),
        Command::Convert(a) => cli::model::convert(a),
        Command::Accuracy(a) => cli::model::accuracy(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
