//! `broker inspect <profile | ->`: a token's JWT header and claims (never the signature) and its expiry.

use std::io::Read;
use std::time::SystemTime;

use broker_core::credential::ClientCert;
use broker_core::secret::SecretSource;
use broker_core::token::{jwt_claims, jwt_header};
use broker_core::Error;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output::{self, rfc3339};

#[derive(clap::Args)]
pub struct Args {
    /// A profile, or `-` to read a token from standard input.
    pub target: String,
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    let now = SystemTime::now();
    let mut cert = None;
    let mut dpop_key = None;
    let (raw, known_expiry) = if args.target == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut s)
            .map_err(|e| Error::usage(format!("cannot read standard input: {e}")))?;
        (s.trim().to_owned(), None)
    } else {
        let config = context::load(g)?;
        let settings = config.resolve(&args.target, &Default::default())?;
        let broker = context::broker_for(&config, settings.clone())?;
        let t = context::get_token(&broker, &args.target, &Default::default())?;
        cert = configured_thumbprint(&settings);
        dpop_key = broker
            .dpop_key(&args.target)?
            .map(|k| k.thumbprint().to_owned());
        (t.secret().expose_secret().to_owned(), Some(t.expires_at()))
    };
    let mut text = describe(&raw, known_expiry, now);
    text.push_str(&binding(&raw, &CERTIFICATE, cert.as_deref()));
    text.push_str(&binding(&raw, &DPOP_KEY, dpop_key.as_deref()));
    output::print_stdout(&text)?;
    Ok(())
}

/// The `x5t#S256` of the profile's client certificate, when it has one that can be read without running anything.
fn configured_thumbprint(s: &broker_core::Settings) -> Option<String> {
    let (_, source, shape) = s
        .secret_sources()
        .into_iter()
        .find(|(f, _, _)| *f == "client_cert")?;
    if matches!(source, SecretSource::Command(_)) {
        return None;
    }
    let pem = source.read(shape).ok()?;
    ClientCert::from_pem(pem.expose_secret().as_bytes())
        .ok()
        .map(|c| c.thumbprint)
}

/// What a token can be bound to (its `cnf` member), and how the line about it names it.
pub struct Binding {
    /// The `cnf` member: `x5t#S256` (RFC 8705 §3) or `jkt` (RFC 9449 §6).
    pub member: &'static str,
    /// What it names: "the client certificate", "the DPoP key".
    pub what: &'static str,
    /// The configured one: "the configured client_cert", "the profile's key".
    pub ours: &'static str,
    /// What the API does with a token bound to another.
    pub refused: &'static str,
}

/// A certificate-bound token (RFC 8705 §3).
pub const CERTIFICATE: Binding = Binding {
    member: "x5t#S256",
    what: "the client certificate",
    ours: "the configured client_cert",
    refused: "the API will refuse this token over that certificate",
};

/// A DPoP-bound token (RFC 9449 §6).
pub const DPOP_KEY: Binding = Binding {
    member: "jkt",
    what: "the DPoP key",
    ours: "the profile's key",
    refused: "the API will refuse its proofs",
};

/// The line about a bound token: what its `cnf` names, and whether it is ours (`configured`, when known).
pub fn binding(raw: &str, b: &Binding, configured: Option<&str>) -> String {
    let bound = jwt_claims(raw).and_then(|c| {
        c.get("cnf")
            .and_then(|cnf| cnf.get(b.member))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let (member, what, ours) = (b.member, b.what, b.ours);
    match (bound, configured) {
        (None, _) => String::new(),
        (Some(t), None) => format!("bound to {what} with {member} {t}\n"),
        (Some(t), Some(c)) if t == c => {
            format!("bound to {what} with {member} {t}: {ours} (matches)\n")
        }
        (Some(t), Some(c)) => format!(
            "bound to {what} with {member} {t}: NOT {ours} ({c}); {}\n",
            b.refused
        ),
    }
}

/// The inspection text of a token.
pub fn describe(raw: &str, known_expiry: Option<SystemTime>, now: SystemTime) -> String {
    let mut out = String::new();
    match (jwt_header(raw), jwt_claims(raw)) {
        (Some(header), Some(claims)) => {
            let pretty = |m: serde_json::Map<String, Value>| {
                serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default()
            };
            let exp = claims
                .get("exp")
                .and_then(Value::as_f64)
                .and_then(broker_core::clock::from_unix);
            out.push_str(&format!(
                "JWT header:\n{}\nclaims:\n{}\n",
                pretty(header),
                pretty(claims)
            ));
            if let Some(exp) = known_expiry.or(exp) {
                out.push_str(&expiry_line(exp, now));
            }
        }
        _ => {
            out.push_str("opaque token (not a JWT): no claims to show\n");
            if let Some(exp) = known_expiry {
                out.push_str(&expiry_line(exp, now));
            }
        }
    }
    out
}

fn expiry_line(exp: SystemTime, now: SystemTime) -> String {
    match exp.duration_since(now) {
        Ok(left) => format!(
            "expires {} ({} left)\n",
            rfc3339(exp),
            broker_core::duration::format(left)
        ),
        Err(e) => format!(
            "expired {} ({} ago)\n",
            rfc3339(exp),
            broker_core::duration::format(e.duration())
        ),
    }
}
