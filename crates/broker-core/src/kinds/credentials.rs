//! What a fetch authenticates with ([`Creds`], read from the sources and dropped after the request), the forms
//! each secret takes on the wire (for redaction), and how a rejection names where the credentials came from.
//! *Invariant: values live in `SecretString`; errors name sources and positions, never values.*

use super::*;

/// Everything outside `A-Z a-z 0-9 - . _ ~` is `%XX`-encoded, a space as `%20` (RFC 6749 §2.3.1, and what
/// both strict servers and Keycloak accept).
const BASIC_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `Authorization: Basic` value for a client id and secret, each encoded before joining.
pub(crate) fn basic_credentials(id: &str, secret: &str) -> String {
    let joined = format!(
        "{}:{}",
        utf8_percent_encode(id, BASIC_SET),
        utf8_percent_encode(secret, BASIC_SET)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(joined)
    )
}

/// What one fetch authenticates with, read from the sources: never logged, dropped after the request.
pub(super) struct Creds {
    pub(super) id: SecretString,
    pub(super) secret: Option<SecretString>,
    pub(super) signer: Option<SigningKey>,
    /// Mutual TLS material (PEM), read only while the TLS client is still to be built.
    pub(super) cert: Option<SecretString>,
    pub(super) key: Option<SecretString>,
    pub(super) subject: Option<SecretString>,
    pub(super) actor: Option<SecretString>,
    /// The client assertions sent (one per request), kept only to redact them from provider text.
    pub(super) assertions: Mutex<Vec<SecretString>>,
}

impl Creds {
    pub(super) fn sent(&self, assertion: &str) {
        self.assertions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SecretString::from(assertion.to_owned()));
    }

    /// Every wire form of every secret value, for redaction from provider text.
    pub(super) fn forms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in [&self.secret, &self.subject, &self.actor]
            .into_iter()
            .flatten()
        {
            out.extend(secret_forms(&self.id, s));
        }
        let assertions = self.assertions.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(assertions.iter().map(|a| a.expose_secret().to_owned()));
        out
    }
}

/// The assertion settings of `client_secret_jwt` and `private_key_jwt`.
pub(super) struct Assertion {
    pub(super) private_key: Option<SecretSource>,
    pub(super) key_id: Option<String>,
    pub(super) signing_alg: Option<SigningAlg>,
    /// `aud` when it is not the token endpoint posted to (`assertion_audience = "issuer"`).
    pub(super) audience: Option<String>,
}

/// The forms a client secret can take on the wire, for redaction from provider text (docs/security.md): raw,
/// percent-encoded, form-encoded, JSON-escaped, and the whole `Basic` credentials.
fn secret_forms(id: &SecretString, secret: &SecretString) -> Vec<String> {
    let raw = secret.expose_secret();
    let basic = basic_credentials(id.expose_secret(), raw);
    vec![
        raw.to_owned(),
        utf8_percent_encode(raw, BASIC_SET).to_string(),
        url::form_urlencoded::byte_serialize(raw.as_bytes()).collect(),
        serde_json::to_string(raw)
            .map(|j| j.trim_matches('"').to_owned())
            .unwrap_or_default(),
        basic.trim_start_matches("Basic ").to_owned(),
    ]
}

impl HttpProvider {
    /// The sources of what authenticates this client, by field: what a rejection tells the user to check.
    fn credential_sources(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("client_id", self.client_id.describe())];
        let sources = [
            (
                "client_secret",
                self.client_secret.as_ref().map(SecretSource::describe),
            ),
            (
                "private_key",
                self.assertion
                    .private_key
                    .as_ref()
                    .map(SecretSource::describe),
            ),
            (
                "client_cert",
                self.client_cert.as_ref().map(SecretSource::describe),
            ),
            (
                "subject_token",
                self.subject_token.as_ref().map(TokenSource::describe),
            ),
            (
                "actor_token",
                self.actor_token.as_ref().map(TokenSource::describe),
            ),
        ];
        out.extend(sources.into_iter().filter_map(|(f, d)| Some((f, d?))));
        out
    }

    /// A rejection says where the credentials came from (never their values), so the user knows what to check:
    /// `client_secret from env CHILI_CLIENT_SECRET (config.toml:4:17)`.
    pub(super) fn explain(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Rejected {
            return e;
        }
        let parts: Vec<String> = self
            .credential_sources()
            .into_iter()
            .map(|(field, source)| match self.position(field) {
                None => format!("{field} from {source}"),
                Some(at) => format!("{field} from {source} ({at})"),
            })
            .collect();
        let msg = format!(
            "{}; check the credentials ({}): {}",
            e.message(),
            self.auth.as_str(),
            parts.join(", ")
        );
        Error::rejected(msg).with_retry_at(e.retry_at())
    }

    /// Reads every credential the request needs, and checks the material (a key that does not parse or does not fit
    /// `signing_alg` is a config error naming its source).
    pub(super) async fn credentials(&self, cx: &FetchContext<'_>) -> Result<Creds> {
        let id = self
            .client_id
            .resolve_async()
            .await
            .map_err(|e| e.context(self.source_context("client_id")))?;
        let secret = self
            .read("client_secret", self.client_secret.as_ref(), Shape::Line)
            .await?;
        let material_error = |field: &str, source: &SecretSource, e: String| {
            Error::config(format!(
                "{} ({}): {e}",
                self.source_context(field),
                source.describe()
            ))
        };
        let signer = match self.auth {
            AuthMethod::ClientSecretJwt => {
                let secret = secret.as_ref().map_or("", |s| s.expose_secret());
                if let Some(short) =
                    crate::credential::short_hmac_key(secret.len(), self.assertion.signing_alg)
                {
                    let at = self.source_context("client_secret");
                    if self.strict {
                        return Err(Error::config(format!(
                            "{at}: {short}; refused because `strict = true`"
                        )));
                    }
                    if !self.warned_short_key.swap(true, Ordering::Relaxed) {
                        tracing::warn!("{at}: {short}");
                    }
                }
                Some(
                    SigningKey::hmac(secret.as_bytes(), self.assertion.signing_alg)
                        .map_err(Error::config)?,
                )
            }
            AuthMethod::PrivateKeyJwt => {
                let source = self
                    .assertion
                    .private_key
                    .as_ref()
                    .ok_or_else(|| Error::internal("no private_key"))?;
                let pem = self
                    .read("private_key", Some(source), Shape::Whole)
                    .await?
                    .ok_or_else(|| Error::internal("no private_key"))?;
                Some(
                    SigningKey::from_pem(
                        pem.expose_secret().as_bytes(),
                        self.assertion.signing_alg,
                    )
                    .map_err(|e| material_error("private_key", source, format!("holds {e}")))?,
                )
            }
            _ => None,
        };
        let (cert, key) = if self.auth.uses_tls() && self.tls_client.get().is_none() {
            let cert = self
                .read("client_cert", self.client_cert.as_ref(), Shape::Public)
                .await?;
            if let (Some(pem), Some(source)) = (&cert, &self.client_cert) {
                let parsed =
                    crate::credential::ClientCert::from_pem(pem.expose_secret().as_bytes())
                        .map_err(|e| material_error("client_cert", source, format!("is {e}")))?;
                parsed
                    .left_at(cx.clock.now())
                    .map_err(|e| material_error("client_cert", source, format!("is {e}")))?;
            }
            let key = self
                .read("client_key", self.client_key.as_ref(), Shape::Whole)
                .await?;
            (cert, key)
        } else {
            (None, None)
        };
        let subject = self
            .exchange_token("subject_token", &self.subject_token, cx)
            .await?;
        let actor = self
            .exchange_token("actor_token", &self.actor_token, cx)
            .await?;
        Ok(Creds {
            id,
            secret,
            signer,
            cert,
            key,
            subject,
            actor,
            assertions: Mutex::default(),
        })
    }

    /// The value of `field` from `source` if it has one, an error naming the field and where it was set.
    async fn read(
        &self,
        field: &str,
        source: Option<&SecretSource>,
        shape: Shape,
    ) -> Result<Option<SecretString>> {
        match source {
            Some(s) => s
                .read_async(shape)
                .await
                .map(Some)
                .map_err(|e| e.context(self.source_context(field))),
            None => Ok(None),
        }
    }

    /// A subject or actor token: read from its source, or another profile's current token.
    async fn exchange_token(
        &self,
        field: &str,
        source: &Option<TokenSource>,
        cx: &FetchContext<'_>,
    ) -> Result<Option<SecretString>> {
        match source {
            None => Ok(None),
            Some(TokenSource::Secret(s)) => self.read(field, Some(s), Shape::Line).await,
            Some(TokenSource::Profile(p)) => {
                let t = cx.tokens.token_of(p).await.map_err(|e| {
                    e.context(format!("{}: {field} from profile `{p}`", self.label))
                })?;
                Ok(Some(t.secret().clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_encode_each_part_before_joining() {
        // RFC 6749 Appendix B: space as %20, `:` `+` `%` `/` `=` `&` escaped.
        let v = basic_credentials("id:1", "a b+c%d/e=f&g~h");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.trim_start_matches("Basic "))
            .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "id%3A1:a%20b%2Bc%25d%2Fe%3Df%26g~h"
        );
    }
}
