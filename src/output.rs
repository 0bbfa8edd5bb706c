//! The output formats of `broker token` (contract §5) and small printing helpers.

use std::io::Write;
use std::time::SystemTime;

use broker_core::{AccessToken, Settings};
use secrecy::ExposeSecret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The bare token and a newline.
    Token,
    /// The provider's header line.
    Header,
    /// {"access_token","token_type","expires_at","expires_in","profile","header"}.
    Json,
    /// `export` lines, shell-quoted, for `eval`.
    Env,
}

/// Quotes `s` for POSIX shells: single quotes, with `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn render(format: Format, settings: &Settings, token: &AccessToken, now: SystemTime) -> String {
    let raw = token.secret().expose_secret();
    match format {
        Format::Token => format!("{raw}\n"),
        Format::Header => format!("{}\n", settings.header_line(raw)),
        Format::Json => {
            let v = serde_json::json!({
                "access_token": raw,
                "token_type": token.token_type(),
                "expires_at": rfc3339(token.expires_at()),
                "expires_in": token.remaining(now).as_secs(),
                "profile": settings.profile,
                "header": settings.header_line(raw),
            });
            format!("{v}\n")
        }
        Format::Env => {
            let mut out = format!("export BROKER_TOKEN={}\n", shell_quote(raw));
            if let Some(name) = &settings.token_env {
                out.push_str(&format!("export {name}={}\n", shell_quote(raw)));
            }
            out
        }
    }
}

/// Writes to stdout; a closed stdout (`BrokenPipe`) counts as success.
pub fn print_stdout(s: &str) -> broker_core::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(broker_core::Error::internal(format!(
            "cannot write to stdout: {e}"
        ))),
    }
}

/// Pads columns of a table of strings.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
