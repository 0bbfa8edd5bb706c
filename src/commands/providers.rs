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
        let default = p.default_environment.as_ref().map(|d| d.value.as_str());
        let envs: Vec<String> = p
            .environments
            .iter()
            .map(|(n, e)| {
                let mut s = n.clone();
                if Some(n.as_str()) == default {
                    s.push('*');
                }
                if !e.aliases.is_empty() {
                    s.push_str(&format!(" ({})", e.aliases.join(", ")));
                }
                s
            })
            .collect();
        rows.push(vec![
            p.name.clone(),
            p.fields
                .kind
                .as_ref()
                .map_or("-", |k| k.value.as_str())
                .to_owned(),
            if envs.is_empty() {
                "-".into()
            } else {
                envs.join(", ")
            },
            p.source.clone(),
            p.description.clone().unwrap_or_default(),
        ]);
    }
    output::print_stdout(&output::table(&rows))?;
    output::print_stdout("(* = default environment)\n")?;
    Ok(())
}
