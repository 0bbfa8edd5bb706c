//! `broker completions <shell>` and `broker man`: generated from the clap command tree the caller passes.

use crate::context::CmdResult;

pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) -> CmdResult {
    clap_complete::generate(shell, &mut cmd, "broker", &mut std::io::stdout());
    Ok(())
}

pub fn man(cmd: clap::Command) -> CmdResult {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| broker_core::Error::internal(format!("cannot render the man page: {e}")))?;
    crate::output::print_stdout(&String::from_utf8_lossy(&out))?;
    Ok(())
}
