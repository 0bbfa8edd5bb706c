//! A profile's `sink`: the token file the daemon keeps fresh (docs/reference.md §6), and the small template
//! language of its `template` (a fixed set of placeholders, checked when the config loads).

use super::*;

/// A token file the daemon rewrites atomically on every refresh, for programs that only read files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// Where (a leading `~/` is the home directory).
    pub path: PathBuf,
    /// `token`, `header` or `json`, as `broker token --format`; the presets `netrc`, `npmrc`, `docker`, `env`; or
    /// `template` (implied by `template`).
    pub format: String,
    /// The text of a `template` sink, its placeholders checked ([`SINK_PLACEHOLDERS`]).
    pub template: Option<String>,
    /// A command run (no shell) after the file changed.
    pub on_change: Vec<String>,
    /// File mode; default 0600.
    pub mode: u32,
    /// The file's owner, a user name or a numeric uid (a daemon running as root writes for another user).
    pub owner: Option<String>,
    /// The file's group, a group name or a numeric gid.
    pub group: Option<String>,
}

pub(super) fn p_sink(cx: &Ctx, key: &str, v: &Val) -> Result<Sink> {
    let t = cx.table(key, v)?;
    let mut sink = Sink {
        path: PathBuf::new(),
        format: "token".into(),
        template: None,
        on_change: Vec::new(),
        mode: 0o600,
        owner: None,
        group: None,
    };
    for (k, val) in t.iter() {
        match k.get_ref().as_ref() {
            "path" => sink.path = p_path(cx, "path", val)?,
            "format" => {
                sink.format = p_choice(
                    cx,
                    "format",
                    val,
                    &[
                        ("token", "token"),
                        ("header", "header"),
                        ("json", "json"),
                        ("netrc", "netrc"),
                        ("npmrc", "npmrc"),
                        ("docker", "docker"),
                        ("env", "env"),
                        ("template", "template"),
                    ],
                )?
                .to_owned()
            }
            "template" => {
                let text = p_str(cx, "template", val)?;
                if let Err(bad) = check_template(&text) {
                    return Err(cx.err(
                        val.span(),
                        format!("the template has {bad}"),
                        Some(format!(
                            "placeholders: {}; write {{{{ and }}}} for braces",
                            SINK_PLACEHOLDERS
                                .iter()
                                .map(|p| format!("{{{p}}}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        )),
                    ));
                }
                sink.template = Some(text);
            }
            "on_change" => {
                sink.on_change = p_str_list(cx, "on_change", val)?;
                if sink.on_change.first().is_none_or(|c| c.is_empty()) {
                    return Err(cx.err(
                        val.span(),
                        "`on_change` is a command and its arguments, like [\"systemctl\", \"reload\", \"app\"]",
                        None,
                    ));
                }
            }
            "mode" => {
                let s = cx.string("mode", val)?;
                sink.mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777 && m & 0o022 == 0)
                    .ok_or_else(|| cx.err(val.span(), "`mode` must be an octal file mode no one else can write, like \"0600\" or \"0640\"", None))?;
            }
            which @ ("owner" | "group") => {
                let id = match val.get_ref() {
                    DeValue::Integer(i) => i.as_str().to_owned(),
                    DeValue::String(s) if !s.is_empty() => s.to_string(),
                    _ => return Err(cx.wrong_type(which, val, "a name or a number")),
                };
                if which == "owner" {
                    sink.owner = Some(id);
                } else {
                    sink.group = Some(id);
                }
            }
            _ => {
                return Err(cx.unknown_key(
                    k,
                    &[
                        "path",
                        "format",
                        "template",
                        "mode",
                        "owner",
                        "group",
                        "on_change",
                    ],
                    "a sink",
                ))
            }
        }
    }
    if sink.path.as_os_str().is_empty() {
        return Err(cx.err(v.span(), "a sink needs a `path`", None));
    }
    match (sink.template.is_some(), sink.format.as_str()) {
        (true, "token") => sink.format = "template".into(),
        (false, "template") => {
            return Err(cx.err(v.span(), "`format = \"template\"` needs a `template`", None))
        }
        (true, f) if f != "template" => {
            return Err(cx.err(
                v.span(),
                format!("a sink has either `format = \"{f}\"` or a `template`, not both"),
                None,
            ))
        }
        _ => {}
    }
    Ok(sink)
}

/// The placeholders of a sink's `template`.
pub const SINK_PLACEHOLDERS: &[&str] = &[
    "token",
    "header",
    "header_name",
    "header_value",
    "expires_at",
    "expires_in",
    "profile",
    "api",
    "api_host",
    "username",
    "basic",
];

/// One piece of a template: text, or a placeholder's name.
pub enum Piece<'a> {
    /// Text copied as it is.
    Text(&'a str),
    /// The name of a placeholder, one of [`SINK_PLACEHOLDERS`].
    Placeholder(&'a str),
}

/// The pieces of `template` (`{{` and `}}` are braces), or what is wrong with it.
pub fn template_pieces(template: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let (text, tail) = rest.split_at(i);
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        if let Some(after) = tail.strip_prefix("{{") {
            out.push(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push(Piece::Text("}"));
            rest = after;
        } else if tail.starts_with('}') {
            return Err("a `}` that closes nothing".into());
        } else {
            let end = tail
                .find('}')
                .ok_or_else(|| "a `{` that is never closed".to_owned())?;
            let name = &tail[1..end];
            if !SINK_PLACEHOLDERS.contains(&name) {
                return Err(format!("an unknown placeholder `{{{name}}}`"));
            }
            out.push(Piece::Placeholder(name));
            rest = &tail[end + 1..];
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn check_template(template: &str) -> std::result::Result<(), String> {
    template_pieces(template).map(|_| ())
}
