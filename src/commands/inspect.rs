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
    text.push_str(&binding(&raw, cert.as_deref()));
    text.push_str(&dpop_binding(&raw, dpop_key.as_deref()));
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

/// The line about a certificate-bound token (RFC 8705 §3): its `cnf.x5t#S256`, and whether it is the configured
/// certificate's.
pub fn binding(raw: &str, configured: Option<&str>) -> String {
    let bound = jwt_claims(raw).and_then(|c| {
        c.get("cnf")
            .and_then(|cnf| cnf.get("x5t#S256"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match (bound, configured) {
        (None, _) => String::new(),
        (Some(b), None) => format!("bound to the client certificate with x5t#S256 {b}\n"),
        (Some(b), Some(c)) if b == c => format!(
            "bound to the client certificate with x5t#S256 {b}: the configured client_cert (matches)\n"
        ),
        (Some(b), Some(c)) => format!(
            "bound to the client certificate with x5t#S256 {b}: NOT the configured client_cert ({c}); the API \
             will refuse this token over that certificate\n"
        ),
    }
}

/// The line about a DPoP-bound token (RFC 9449 §6): its `cnf.jkt`, and whether it is the profile's key's.
pub fn dpop_binding(raw: &str, key: Option<&str>) -> String {
    let bound = jwt_claims(raw).and_then(|c| {
        c.get("cnf")
            .and_then(|cnf| cnf.get("jkt"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match (bound, key) {
        (None, None) => String::new(),
        (None, Some(k)) => format!(
            "the profile's DPoP key has thumbprint {k}; the token names no cnf.jkt (an opaque or unbound token)\n"
        ),
        (Some(b), None) => format!("bound to the DPoP key with thumbprint (cnf.jkt) {b}\n"),
        (Some(b), Some(k)) if b == k => {
            format!("bound to the DPoP key with thumbprint (cnf.jkt) {b}: the profile's key (matches)\n")
        }
        (Some(b), Some(k)) => format!(
            "bound to the DPoP key with thumbprint (cnf.jkt) {b}: NOT the profile's key ({k}); its proofs will be \
             refused\n"
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
