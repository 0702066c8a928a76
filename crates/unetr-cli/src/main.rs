use clap::Parser;
use unetr_cli::{alloc, exit_code, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    alloc::configure(cli.cmd.profile());
    unetr_cli::threads::configure();
    alloc::init_tracing();
    exit_code(cli.cmd.run())
}
