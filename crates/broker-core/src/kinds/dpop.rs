//! A profile's DPoP binding (RFC 9449, docs/reference.md §10): its key (generated beside the disk cache, or read from
//! the profile's source), the proof each token request carries, the server's nonce, and the check of the token
//! that comes back.
//! *Invariant: with `dpop` on, every token request carries a fresh proof, and a token is cached only when its type
//! is `DPoP` (or `dpop = "optional"`) and any `cnf.jkt` it names is this key's thumbprint.*

use super::*;
use crate::config::{Dpop, DpopKeySource, DpopMode};
use crate::dpop::{DpopKey, ProofFor};

pub(super) struct Binding {
    /// The generated key's file name in the key directory.
    file_name: String,
    mode: DpopMode,
    source: DpopKeySource,
    /// Where a generated key is kept (the disk cache's `dpop/`); unset keeps it in memory, as the tokens are.
    pub(super) dir: OnceLock<PathBuf>,
    /// A generated key of a profile whose secret is in the keyring is kept there too (`<account>.dpop`).
    keyring: Option<SecretSource>,
    key: OnceLock<Arc<DpopKey>>,
}

impl Binding {
    pub(super) fn new(profile: &str, dpop: Dpop, secret: Option<&SecretSource>) -> Self {
        let keyring = match secret {
            Some(SecretSource::Keyring { service, account }) => Some(SecretSource::Keyring {
                service: service.clone(),
                account: format!("{account}.dpop"),
            }),
            _ => None,
        };
        Binding {
            keyring,
            file_name: crate::dpop::generated_key_name(profile),
            mode: dpop.mode,
            source: dpop.key,
            dir: OnceLock::new(),
            key: OnceLock::new(),
        }
    }

    /// The key, loaded (or generated) on first use.
    pub(super) fn key(&self, p: &HttpProvider) -> Result<Arc<DpopKey>> {
        if let Some(k) = self.key.get() {
            return Ok(Arc::clone(k));
        }
        let key = match (&self.source, self.dir.get(), &self.keyring) {
            (DpopKeySource::Generated, Some(_), Some(entry)) => {
                self.in_keyring(entry).map_err(|e| e.context(&p.label))?
            }
            (DpopKeySource::Generated, Some(dir), None) => {
                crate::dpop::load_or_create(dir, &self.file_name)
                    .map_err(|e| e.context(&p.label))?
            }
            (DpopKeySource::Generated, None, _) => {
                DpopKey::generate()
                    .map_err(|e| Error::internal(format!("{}: dpop: {e}", p.label)))?
                    .0
            }
            (DpopKeySource::Source(s), ..) => {
                let pem = s
                    .read(Shape::Whole)
                    .map_err(|e| e.context(p.source_context("dpop")))?;
                DpopKey::from_pem(pem.expose_secret().as_bytes())
                    .map_err(|e| Error::config(format!("{}: {e}", p.source_context("dpop"))))?
            }
        };
        Ok(Arc::clone(self.key.get_or_init(|| Arc::new(key))))
    }
}

impl Binding {
    /// The generated key kept in the keyring `entry`, made and stored there on first use.
    fn in_keyring(&self, entry: &SecretSource) -> Result<DpopKey> {
        let bad = |e: String| Error::config(format!("dpop: the key in {}: {e}", entry.describe()));
        if let Some(pem) = entry.read_if_present(Shape::Whole)? {
            return DpopKey::from_pem(pem.expose_secret().as_bytes()).map_err(bad);
        }
        let (key, pem) = DpopKey::generate().map_err(Error::internal)?;
        entry.store(&pem)?;
        tracing::info!(
            "created the DPoP key in {} ({})",
            entry.describe(),
            key.thumbprint()
        );
        Ok(key)
    }
}

/// Whether a token endpoint's answer asks for a (new) nonce: RFC 9449 §8's 400 `use_dpop_nonce`, or a 401 whose
/// challenge says so.
fn asks_for_nonce(answer: &crate::http::Answer) -> bool {
    let challenge = answer
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::dpop::asks_for_nonce);
    let error = || {
        serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|e| e == "use_dpop_nonce")
    };
    match answer.status {
        400 => error(),
        401 => challenge || error(),
        _ => false,
    }
}

impl HttpProvider {
    /// The `DPoP` header of a token request to `endpoint`, when `dpop` is on: a proof with the nonce the endpoint's
    /// server last gave.
    pub(super) fn token_request_proof(
        &self,
        endpoint: &str,
        creds: &Creds,
        now: std::time::SystemTime,
    ) -> Result<Option<SecretString>> {
        let Some(b) = &self.dpop else {
            return Ok(None);
        };
        let nonce = self.pool.nonces.get(endpoint);
        let proof = b.key(self)?.proof(&ProofFor {
            method: "POST",
            url: endpoint,
            token: None,
            nonce: nonce.as_deref(),
            now,
        })?;
        creds.sent(proof.expose_secret());
        Ok(Some(proof))
    }

    /// A token request, sent once more when a DPoP server answers that it wants a nonce it has just given (one
    /// retry, never more: a server that keeps asking is answered with its error). Returns when the answer's request
    /// was sent, and the answer.
    pub(super) async fn post_with_nonce(
        &self,
        endpoint: &str,
        creds: &Creds,
        cx: &FetchContext<'_>,
    ) -> Result<(std::time::SystemTime, crate::http::Answer)> {
        let requested_at = cx.clock.now();
        let answer = self.post(endpoint, creds, requested_at).await?;
        if self.dpop.is_none() {
            return Ok((requested_at, answer));
        }
        let given = self.remember_nonce(endpoint, &answer);
        if given && asks_for_nonce(&answer) {
            tracing::debug!(
                "{}: the token endpoint gave a DPoP nonce; asking again with it",
                self.label
            );
            let requested_at = cx.clock.now();
            let again = self.post(endpoint, creds, requested_at).await?;
            self.remember_nonce(endpoint, &again);
            return Ok((requested_at, again));
        }
        Ok((requested_at, answer))
    }

    /// Keeps the `DPoP-Nonce` an answer carries (for this server's next request); whether there was a valid one.
    fn remember_nonce(&self, endpoint: &str, answer: &crate::http::Answer) -> bool {
        match answer
            .headers
            .get("dpop-nonce")
            .and_then(|v| crate::dpop::nonce_of(v.as_bytes()))
        {
            Some(n) => {
                self.pool.nonces.set(endpoint, &n);
                true
            }
            None => false,
        }
    }

    /// What a token's type and binding must be for this profile (docs/reference.md §10).
    pub(super) fn check_binding(&self, response: &crate::token::TokenResponse) -> Result<()> {
        let dpop_type = response
            .token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop"));
        let Some(b) = &self.dpop else {
            if dpop_type {
                return Err(Error::bad_response(
                    "`token_type` is `DPoP`, but this profile sends no DPoP proofs: set `dpop = true` to use DPoP-bound tokens",
                ));
            }
            return Ok(());
        };
        if !dpop_type {
            if b.mode == DpopMode::Required {
                return Err(Error::bad_response(format!(
                    "DPoP was asked for, but `token_type` is `{}`, not `DPoP`: the server did not bind the token to \
                     the key; set `dpop = \"optional\"` to accept a bearer token",
                    crate::http::provider_text(response.token_type.as_deref().unwrap_or("(none)"))
                )));
            }
            tracing::debug!(
                "{}: DPoP is optional and the server gave a bearer token",
                self.label
            );
            return Ok(());
        }
        let key = b.key(self)?;
        let jkt = crate::token::jwt_claims(response.access_token.expose_secret())
            .and_then(|c| c.get("cnf")?.get("jkt")?.as_str().map(str::to_owned));
        match jkt {
            Some(j) if j != key.thumbprint() => Err(Error::bad_response(format!(
                "the token is bound to the key {}, not to this profile's key {}",
                crate::http::provider_text(&j),
                key.thumbprint()
            ))),
            _ => Ok(()),
        }
    }
}
