//! The output formats of `broker token` (docs/reference.md §5) and small printing helpers.

use std::io::Write;
use std::time::{Duration, SystemTime};

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
    /// kubectl's exec-plugin ExecCredential (v1, or v1beta1 when `KUBERNETES_EXEC_INFO` asks for it).
    ExecCredential,
    /// The header line and, for a DPoP-bound token, the `DPoP: <proof>` line for `--method` and `--url`.
    Dpop,
}

/// Quotes `s` for POSIX shells: single quotes, with `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What rendering needs of a profile: small enough for the daemon to keep one per profile.
#[derive(Debug, Clone)]
pub struct Shown {
    pub profile: String,
    pub header: String,
    pub token_env: Option<String>,
}

impl From<&Settings> for Shown {
    fn from(s: &Settings) -> Self {
        Shown {
            profile: s.profile().to_owned(),
            header: s.header().to_owned(),
            token_env: s.token_env().map(str::to_owned),
        }
    }
}

impl Shown {
    fn header_line(&self, token: &AccessToken) -> String {
        broker_core::config::fill_header_typed(
            &self.header,
            token.secret().expose_secret(),
            token.token_type(),
        )
    }
}

/// The `json` format of a token (docs/reference.md §5): what `broker token --format json` prints, what the daemon
/// serves, and what its client reads back. It holds the token only while being written or read.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TokenJson {
    pub access_token: String,
    #[serde(default = "bearer")]
    pub token_type: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    pub expires_in: u64,
    pub profile: String,
    pub header: String,
    /// A DPoP proof for the request the token was asked for (`--url`, the daemon's `/proof`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<String>,
}

fn bearer() -> String {
    "Bearer".into()
}

impl TokenJson {
    /// The token it holds (`obtained_at` is not in the format: it is taken as `now`, or the expiry if earlier).
    /// A token or type with a control character is refused, as from a provider.
    pub fn token(&self, now: SystemTime) -> broker_core::Result<AccessToken> {
        let bad = || broker_core::Error::internal("the daemon's answer is not a token");
        if !broker_core::token::printable(&self.access_token)
            || !broker_core::token::printable(&self.token_type)
        {
            return Err(bad());
        }
        let expires_at = humantime::parse_rfc3339(&self.expires_at).map_err(|_| bad())?;
        Ok(AccessToken::new(
            secrecy::SecretString::from(self.access_token.clone()),
            self.token_type.clone(),
            now.min(expires_at),
            expires_at,
        ))
    }
}

/// Renders `token` in `format`, with the DPoP `proof` made for it when there is one. `min_ttl` decides the margin
/// kubectl is told to refresh at.
pub fn render(
    format: Format,
    settings: &Shown,
    token: &AccessToken,
    proof: Option<&str>,
    now: SystemTime,
    min_ttl: Duration,
) -> broker_core::Result<String> {
    let raw = token.secret().expose_secret();
    Ok(match format {
        Format::Token => format!("{raw}\n"),
        Format::Header => format!("{}\n", settings.header_line(token)),
        Format::Dpop => match proof {
            Some(p) => format!("{}\nDPoP: {p}\n", settings.header_line(token)),
            None => format!("{}\n", settings.header_line(token)),
        },
        Format::Json => token_json(settings, token, proof, now),
        Format::Env => {
            let mut out = format!("export BROKER_TOKEN={}\n", shell_quote(raw));
            if let Some(name) = &settings.token_env {
                out.push_str(&format!("export {name}={}\n", shell_quote(raw)));
            }
            out
        }
        Format::ExecCredential => {
            let api_version =
                exec_credential_version(std::env::var("KUBERNETES_EXEC_INFO").ok().as_deref())?;
            let expiration = token.expires_at() - token.margin(min_ttl);
            let v = serde_json::json!({
                "apiVersion": api_version,
                "kind": "ExecCredential",
                "status": {"token": raw, "expirationTimestamp": rfc3339(expiration)},
            });
            format!("{v}\n")
        }
    })
}

/// The `json` format, written field by field into one buffer: the same text as `serde_json` makes of a
/// [`TokenJson`] (`tests::token_json_is_what_serde_writes`), without copying the token into it twice first. The
/// daemon answers every cache hit with it, so it is the daemon's hot path.
fn token_json(
    settings: &Shown,
    token: &AccessToken,
    proof: Option<&str>,
    now: SystemTime,
) -> String {
    let raw = token.secret().expose_secret();
    let template = broker_core::config::header_template(&settings.header, token.token_type());
    let mut out = String::with_capacity(2 * raw.len() + settings.header.len() + 160);
    out.push_str("{\"access_token\":");
    json_str(&mut out, &[raw]);
    out.push_str(",\"token_type\":");
    json_str(&mut out, &[token.token_type()]);
    out.push_str(",\"expires_at\":\"");
    out.push_str(&rfc3339(token.expires_at()));
    out.push_str("\",\"expires_in\":");
    out.push_str(&token.remaining(now).as_secs().to_string());
    out.push_str(",\"profile\":");
    json_str(&mut out, &[&settings.profile]);
    out.push_str(",\"header\":");
    let mut parts = Vec::with_capacity(3);
    for (i, piece) in template.split("{token}").enumerate() {
        if i > 0 {
            parts.push(raw);
        }
        parts.push(piece);
    }
    json_str(&mut out, &parts);
    if let Some(p) = proof {
        out.push_str(",\"dpop\":");
        json_str(&mut out, &[p]);
    }
    out.push_str("}\n");
    out
}

/// Appends the pieces, joined, as one JSON string. A piece with nothing to escape (the usual token: printable
/// ASCII) is copied as it is, found by a check the compiler vectorises; any other goes through `serde_json`.
fn json_str(out: &mut String, pieces: &[&str]) {
    out.push('"');
    for piece in pieces {
        let plain = piece.as_bytes().chunks(32).all(|c| {
            c.iter()
                .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
        });
        if plain {
            out.push_str(piece);
        } else if let Ok(quoted) = serde_json::to_string(piece) {
            out.push_str(&quoted[1..quoted.len() - 1]); // cannot fail on a str; quotes off
        }
    }
    out.push('"');
}

/// The ExecCredential apiVersion kubectl asked for in `KUBERNETES_EXEC_INFO` (v1 when it said nothing).
pub fn exec_credential_version(info: Option<&str>) -> broker_core::Result<&'static str> {
    const V1: &str = "client.authentication.k8s.io/v1";
    const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";
    let Some(info) = info.filter(|s| !s.trim().is_empty()) else {
        return Ok(V1);
    };
    let v: serde_json::Value = serde_json::from_str(info)
        .map_err(|e| broker_core::Error::usage(format!("KUBERNETES_EXEC_INFO is not JSON: {e}")))?;
    match v.get("apiVersion").and_then(serde_json::Value::as_str) {
        Some(V1) | None => Ok(V1),
        Some(V1BETA1) => Ok(V1BETA1),
        Some(other) => Err(broker_core::Error::usage(format!(
            "KUBERNETES_EXEC_INFO asks for {other}; supported: {V1}, {V1BETA1}"
        ))),
    }
}

/// An error as the CLI shows it: `error: <message>`; one that points into a file is drawn with its line, the span
/// marked, and its hint (annotate-snippets, coloured only when [`colour`] says so).
pub fn error_text(e: &broker_core::Error) -> String {
    use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
    let Some(d) = e.diagnostic() else {
        return format!("error: {}", e.message());
    };
    let mut report = vec![Level::ERROR.primary_title(e.message()).element(
        Snippet::source(d.excerpt.as_str())
            .line_start(d.line)
            .path(d.file.as_str())
            .annotation(AnnotationKind::Primary.span(d.span.clone())),
    )];
    if let Some(h) = &d.hint {
        report.push(Group::with_title(Level::HELP.secondary_title(h.as_str())));
    }
    let renderer = if colour() {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    renderer.render(&report)
}

/// An error as one JSON object (`broker token --format json`): `error` (the class) and `message`, and where it
/// points into a file, `file`, `line`, `column` and `hint`.
pub fn error_json(e: &broker_core::Error) -> serde_json::Value {
    let mut v = serde_json::json!({"error": e.kind().as_str(), "message": e.message()});
    if let Some(d) = e.diagnostic() {
        v["file"] = d.file.clone().into();
        v["line"] = d.line.into();
        v["column"] = d.column.into();
        v["hint"] = d.hint.clone().into();
    }
    v
}

/// Whether stderr may carry colour: it is a terminal and `NO_COLOR` is unset (or empty).
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;
    use broker_core::AccessToken;
    use secrecy::SecretString;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn token_json_is_what_serde_writes() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        for (raw, header, profile, token_type, proof) in [
            (
                "eyJ.abc-_.def",
                "Authorization: Bearer {token}",
                "ion-prod",
                "Bearer",
                None,
            ),
            (
                "t\"o\\k",
                "X-Key: \"{token}\" and {token}",
                "pr\u{e9}\"f",
                "Bearer",
                None,
            ),
            ("plain", "Static-Header: none", "p", "Bearer", None),
            ("", "{token}{token}", "{token}", "Bearer", None),
            (
                "eyJ.d-_.s",
                "Authorization: {token}",
                "ion",
                "DPoP",
                Some("eyJ.proof.sig"),
            ),
        ] {
            let token = AccessToken::new(
                SecretString::from(raw.to_owned()),
                token_type,
                at(10),
                at(4000),
            );
            let shown = Shown {
                profile: profile.into(),
                header: header.into(),
                token_env: None,
            };
            let now = at(1000);
            let expected = TokenJson {
                access_token: raw.into(),
                token_type: token_type.into(),
                expires_at: rfc3339(at(4000)),
                expires_in: 3000,
                profile: profile.into(),
                header: shown.header_line(&token),
                dpop: proof.map(str::to_owned),
            };
            let expected = format!("{}\n", serde_json::to_string(&expected).unwrap());
            let got = render(Format::Json, &shown, &token, proof, now, Duration::ZERO).unwrap();
            assert_eq!(got, expected);
            if token_type == "DPoP" {
                assert!(
                    got.contains(r#""header":"Authorization: DPoP eyJ.d-_.s""#),
                    "{got}"
                );
            }
        }
    }
}
