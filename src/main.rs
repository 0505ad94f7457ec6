use clap::Parser;

fn main() {
    // A TAB in a shell (GOV_COMPLETE set): answer it and exit.
    gov::cli::complete::answer_if_asked();
    let cli = gov::cli::Cli::parse();
    if matches!(cli.command, gov::cli::Command::Daemon { .. }) {
        gov::cli::init_logging();
    }
    match gov::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One sentence with its causes, never a backtrace.
            eprintln!("gov: {e:#}");
            std::process::exit(1);
        }
    }
}
