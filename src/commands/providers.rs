//! `broker providers`: the provider definitions, built-in and the user's.

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output;

pub fn run(g: &Globals) -> CmdResult {
    let config = context::load(g)?;
    let mut rows = vec![vec![
        "PROVIDER".into(),
        "KIND".into(),
        "ENVIRONMENTS".into(),
        "SOURCE".into(),
        "DESCRIPTION".into(),
    ]];
    for p in config.providers() {
        let default = p.default_environment();
        let envs: Vec<String> = p
            .environments()
            .map(|(n, aliases)| {
                let mut s = n.to_owned();
                if Some(n) == default {
                    s.push('*');
                }
                if !aliases.is_empty() {
                    s.push_str(&format!(" ({})", aliases.join(", ")));
                }
                s
            })
            .collect();
        rows.push(vec![
            p.name().to_owned(),
            p.kind().map_or("-", |k| k.as_str()).to_owned(),
            if envs.is_empty() {
                "-".into()
            } else {
                envs.join(", ")
            },
            p.source().to_owned(),
            p.description().unwrap_or_default().to_owned(),
        ]);
    }
    output::print_stdout(&output::table(&rows))?;
    output::print_stdout("(* = default environment)\n")?;
    Ok(())
}
