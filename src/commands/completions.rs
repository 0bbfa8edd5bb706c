//! `broker completions <shell>` and `broker man`: generated from the clap command tree.

use clap::CommandFactory;

use crate::cli::{Cli, CmdResult};

pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    clap_complete::generate(shell, &mut Cli::command(), "broker", &mut std::io::stdout());
    Ok(())
}

pub fn man() -> CmdResult {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| broker_core::Error::internal(format!("cannot render the man page: {e}")))?;
    crate::output::print_stdout(&String::from_utf8_lossy(&out))?;
    Ok(())
}
