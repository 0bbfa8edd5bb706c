//! The token request: the grant's parameters, client authentication by method (a shared secret in the body or
//! `Basic`, a signed assertion, mutual TLS, none), subject and actor tokens, encoded as a form or JSON.
//! *Invariant: the body is built in memory and never logged; every assertion sent is recorded in `Creds` so a
//! provider that echoes it gets it redacted.*

use super::*;

impl HttpProvider {
    pub(super) async fn post(
        &self,
        endpoint: &str,
        creds: &Creds,
        now: std::time::SystemTime,
    ) -> Result<crate::http::Answer> {
        let mut fields = self.params.clone();
        let client = if self.auth.uses_tls() {
            self.tls_client(endpoint, creds)?
        } else {
            self.client_for(endpoint)?
        };
        let mut req = client.post(endpoint).header("accept", "application/json");
        if let Some(proof) = self.token_request_proof(endpoint, creds, now)? {
            req = req.header("dpop", proof.expose_secret());
        }
        let id = creds.id.expose_secret();
        let secret = || creds.secret.as_ref().map_or("", |s| s.expose_secret());
        match self.auth {
            AuthMethod::ClientSecretPost => {
                fields.push(("client_id".into(), id.to_owned()));
                fields.push(("client_secret".into(), secret().to_owned()));
            }
            AuthMethod::ClientSecretBasic => {
                req = req.header("authorization", basic_credentials(id, secret()));
            }
            AuthMethod::ClientSecretJwt | AuthMethod::PrivateKeyJwt => {
                let signer = creds
                    .signer
                    .as_ref()
                    .ok_or_else(|| Error::internal("no assertion key"))?;
                let aud = self.assertion.audience.as_deref().unwrap_or(endpoint);
                let assertion = signer
                    .sign(id, aud, now, self.assertion.key_id.as_deref())
                    .map_err(|e| {
                        Error::internal(format!("cannot sign the client assertion: {e}"))
                    })?;
                fields.push(("client_id".into(), id.to_owned()));
                fields.push(("client_assertion_type".into(), ASSERTION_TYPE.into()));
                creds.sent(&assertion);
                fields.push(("client_assertion".into(), assertion));
            }
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth | AuthMethod::None => {
                fields.push(("client_id".into(), id.to_owned()));
            }
        }
        for (name, token) in [
            ("subject_token", &creds.subject),
            ("actor_token", &creds.actor),
        ] {
            if let Some(t) = token {
                fields.push((name.into(), t.expose_secret().to_owned()));
            }
        }
        let body = match self.body {
            BodyFormat::Form => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&fields)
                    .finish()
                    .into_bytes()
            }
            BodyFormat::Json => {
                req = req.header("content-type", "application/json");
                let map: serde_json::Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                serde_json::to_vec(&map).map_err(|e| Error::internal(e.to_string()))?
            }
        };
        send(req.body(body)).await
    }
}
