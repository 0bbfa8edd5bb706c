//! `broker check`: validate every file, resolve every profile, show settings with secrets redacted, and check the
//! key and certificate material that can be read without running anything.

use std::time::{Duration, SystemTime};

use broker_core::config::{AuthMethod, CacheMode, DpopKeySource, DpopMode};
use broker_core::credential::{key_algorithm, short_hmac_key, ClientCert};
use broker_core::secret::{SecretSource, Shape};
use broker_core::{Error, Settings};
use secrecy::ExposeSecret;

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output;

/// A client certificate that ends within this long gets a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn run(g: &Globals) -> CmdResult {
    let config = context::load(g)?;
    let mut out = String::from("files:\n");
    for f in config.files() {
        out.push_str(&format!("  {f}\n"));
    }
    let mut failed = 0;
    out.push_str(&match config.cache_encryption() {
        broker_core::config::CacheEncryption::Keyring => format!(
            "\ncache: entries sealed under the key in {} (made on first use)\n",
            broker_core::seal::cache_key_entry().describe()
        ),
        broker_core::config::CacheEncryption::Off => {
            "\ncache: entries plain (cache_encryption = \"off\")\n".to_owned()
        }
    });
    let audit = config.audit();
    out.push_str(&match (audit.mode, &audit.sink) {
        (broker_core::config::AuditMode::Off, _) => "audit: off\n".to_owned(),
        (mode, sink) => format!(
            "audit: {}, to {}\n",
            if mode == broker_core::config::AuditMode::Required {
                "required"
            } else {
                "on"
            },
            match sink {
                broker_core::config::AuditSink::File => format!(
                    "{} (rotated at {} bytes, {} kept)",
                    broker_core::paths::state_dir()
                        .map(|d| d.join(crate::audit::FILE).display().to_string())
                        .unwrap_or_else(|| "(no state directory)".into()),
                    audit.max_size,
                    audit.keep
                ),
                broker_core::config::AuditSink::Syslog(p) => format!("syslog at {}", p.display()),
            }
        ),
    });
    if let Some(def) = config.shared_cache() {
        if let Some(warning) = def.cleartext_password() {
            tracing::warn!("{warning}");
            out.push_str(&format!("\nwarning: {warning}\n"));
        }
        out.push_str(&format!(
            "\n[shared_cache]\n  {:<20} {}\n  {:<20} {}\n",
            "url",
            def.shown_url(),
            "prefix",
            def.prefix
        ));
        match broker_core::shared::SharedCache::read_key(def) {
            Ok(key) => out.push_str(&format!(
                "  {:<20} {} ({})\n",
                "key",
                def.key.describe(),
                broker_core::shared::key_fingerprint(&key)
            )),
            Err(e) => {
                failed += 1;
                out.push_str(&format!("  {}\n", output::error_text(&e).trim_end()));
            }
        }
    }
    let now = SystemTime::now();
    for name in config.profile_names() {
        out.push_str(&format!("\n[profiles.{name}]\n"));
        match config
            .resolve(name, &Default::default())
            .and_then(|s| check_material(&s, now).map(|notes| (s, notes)))
        {
            Ok((s, notes)) => {
                for (k, v) in s.describe() {
                    out.push_str(&format!("  {k:<20} {v}\n"));
                }
                for n in notes {
                    out.push_str(&format!("  {n}\n"));
                }
            }
            Err(e) => {
                failed += 1;
                let text = output::error_text(&e);
                out.push_str(&format!("  {}\n", text.trim_end().replace('\n', "\n  ")));
            }
        }
    }
    output::print_stdout(&out)?;
    if failed > 0 {
        return Err(Error::config(format!("{failed} profile(s) have errors")).into());
    }
    output::print_stdout("\nok\n")?;
    Ok(())
}

/// Env, file and literal sources must be readable now, and keys and certificates must parse (commands and keyrings
/// are not asked: they may prompt or cost). Returns what is worth a note: the algorithm a key signs with, a
/// certificate's subject and end, a warning when it ends within a week.
fn check_material(s: &Settings, now: SystemTime) -> Result<Vec<String>, Error> {
    let mut notes = Vec::new();
    for (field, source, shape) in s.secret_sources() {
        if !matches!(
            source,
            SecretSource::Env(_) | SecretSource::File(_) | SecretSource::Literal(_)
        ) {
            continue;
        }
        let at = |e: String| {
            let place = s
                .position(field)
                .map_or_else(String::new, |p| format!(" (set at {p})"));
            Error::config(format!(
                "profile `{}`: {field}{place}: {} {e}",
                s.profile(),
                source.describe()
            ))
        };
        let value = source
            .read(shape)
            .map_err(|e| e.context(format!("profile `{}`: {field}", s.profile())))?;
        let pem = value.expose_secret().as_bytes();
        if field == "client_secret" && s.auth() == AuthMethod::ClientSecretJwt {
            if let Some(short) = short_hmac_key(pem.len(), s.signing_alg()) {
                if s.strict() {
                    return Err(at(format!("{short}; refused because `strict = true`")));
                }
                let msg = format!("profile `{}`: client_secret: {short}", s.profile());
                tracing::warn!("{msg}");
                notes.push(format!("warning: {msg}"));
            }
        }
        match (field, shape) {
            ("private_key", Shape::Whole) => {
                let alg =
                    key_algorithm(pem, s.signing_alg()).map_err(|e| at(format!("holds {e}")))?;
                notes.push(format!("private_key signs {}", alg.as_str()));
            }
            ("client_key", Shape::Whole) => {
                key_algorithm(pem, None).map_err(|e| at(format!("holds {e}")))?;
            }
            ("client_cert", Shape::Public) => {
                let cert = ClientCert::from_pem(pem).map_err(|e| at(format!("is {e}")))?;
                let end = output::rfc3339(cert.not_after);
                let left = cert.left_at(now).map_err(|e| at(format!("is {e}")))?;
                if left < EXPIRY_WARNING {
                    let msg = format!(
                        "profile `{}`: client_cert {} expires {end}, in {}: renew it",
                        s.profile(),
                        source.describe(),
                        broker_core::duration::format(left)
                    );
                    tracing::warn!("{msg}");
                    notes.push(format!("warning: {msg}"));
                }
                notes.push(format!(
                    "client_cert {} until {end}, x5t#S256 {}",
                    cert.subject, cert.thumbprint
                ));
            }
            ("dpop", Shape::Whole) => {
                let key = broker_core::dpop::DpopKey::from_pem(pem)
                    .map_err(|e| at(format!("holds {e}")))?;
                notes.push(dpop_note(s, Some(key.thumbprint())));
            }
            _ => {}
        }
    }
    let in_keyring = match s.client_secret() {
        Some(SecretSource::Keyring { service, account }) => {
            Some(format!("keyring {service}/{account}.dpop"))
        }
        _ => None,
    };
    if let (true, DpopKeySource::Generated, Some(entry)) =
        (s.dpop().enabled(), &s.dpop().key, &in_keyring)
    {
        if s.cache() == CacheMode::Disk {
            // Keyrings are not asked here (they may prompt): say where the key is.
            notes.push(format!("{} (key kept in {entry})", dpop_note(s, None)));
            return Ok(notes);
        }
    }
    if let (true, DpopKeySource::Generated) = (s.dpop().enabled(), &s.dpop().key) {
        let dir = context::cache_dir()
            .filter(|_| s.cache() == CacheMode::Disk)
            .map(|d| d.join("dpop"));
        let key = match &dir {
            Some(d) => {
                broker_core::dpop::existing(d, &broker_core::dpop::generated_key_name(s.profile()))
                    .map_err(|e| e.context(format!("profile `{}`: dpop", s.profile())))?
            }
            None => None,
        };
        notes.push(match (key, dir) {
            (Some(k), _) => dpop_note(s, Some(k.thumbprint())),
            (None, Some(d)) => format!(
                "{} (generated on first use in {})",
                dpop_note(s, None),
                d.display()
            ),
            (None, None) => format!(
                "{} (generated in memory: the profile does not cache on disk)",
                dpop_note(s, None)
            ),
        });
    }
    Ok(notes)
}

/// The note on a DPoP-bound profile: whether a bearer token is accepted, and the key's thumbprint (`cnf.jkt`).
fn dpop_note(s: &Settings, jkt: Option<&str>) -> String {
    let mode = if s.dpop().mode == DpopMode::Optional {
        "optional"
    } else {
        "required"
    };
    match jkt {
        Some(j) => format!("DPoP-bound ({mode}, ES256): key thumbprint (cnf.jkt) {j}"),
        None => format!("DPoP-bound ({mode}, ES256)"),
    }
}
