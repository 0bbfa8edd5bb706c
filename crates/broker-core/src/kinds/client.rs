//! The HTTP clients of token requests: shared between providers through a [`ClientPool`] (one per timeouts and
//! `ca_file`, and a separate one for plain `http://`, which never uses a proxy), and a profile's own mutual-TLS
//! client. *Invariant: built on the first fetch that needs one, never on a cache hit; the mutual-TLS client is never
//! pooled.*

use super::*;

/// What makes two token clients different: timeout, connect timeout, `ca_file`, and whether it is the client for
/// plain `http://` URLs (which never uses a proxy).
pub(super) type ClientKey = (Duration, Duration, Option<PathBuf>, bool);

/// HTTP clients shared by providers, one per [`ClientKey`].
#[derive(Default)]
pub(crate) struct ClientPool {
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
    /// DPoP nonces token endpoints gave, by origin: one per issuer, whichever profile learned it.
    pub(super) nonces: crate::dpop::Nonces,
}

impl ClientPool {
    fn get(&self, key: &ClientKey) -> Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(key) {
            return Ok(c.clone());
        }
        let (timeout, connect_timeout, ca_file, plain_http) = key;
        let c = build_client(
            *timeout,
            *connect_timeout,
            ca_file.as_deref(),
            *plain_http,
            None,
        )?;
        clients.insert(key.clone(), c.clone());
        Ok(c)
    }
}

impl HttpProvider {
    /// The client for `url`: plain `http://` goes through a client that ignores proxy settings, so the secret
    /// is never handed to a proxy in clear.
    pub(super) fn client_for(&self, url: &str) -> Result<&reqwest::Client> {
        let plain = url.starts_with("http://");
        let cell = if plain {
            &self.plain_client
        } else {
            &self.client
        };
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        let mut key = self.pool_key.clone();
        key.3 = plain;
        let c = self.pool.get(&key)?;
        Ok(cell.get_or_init(|| c))
    }

    /// The mutual-TLS client, built on first use with the client certificate (never pooled: it is this profile's).
    pub(super) fn tls_client(&self, endpoint: &str, creds: &Creds) -> Result<&reqwest::Client> {
        if !endpoint.starts_with("https://") {
            return Err(Error::config(format!(
                "`auth = \"{}\"` authenticates with TLS, but the token endpoint {endpoint} is not https://",
                self.auth.as_str()
            )));
        }
        if let Some(c) = self.tls_client.get() {
            return Ok(c);
        }
        let (Some(cert), Some(key)) = (&creds.cert, &creds.key) else {
            return Err(Error::internal("no client certificate"));
        };
        let identity = crate::credential::identity(cert.expose_secret(), key.expose_secret())
            .map_err(|e| Error::config(format!("{}: {e}", self.source_context("client_cert"))))?;
        let (timeout, connect_timeout, ca_file, _) = &self.pool_key;
        let c = build_client(
            *timeout,
            *connect_timeout,
            ca_file.as_deref(),
            false,
            Some(identity),
        )
        .map_err(|e| {
            // rustls refusing the pair is about the key (a ca_file error names itself).
            if e.kind() == ErrorKind::Config && e.message().starts_with("the client certificate") {
                // The caller names the profile and the request.
                e.context(self.position("client_key").map_or_else(
                    || "client_key".to_owned(),
                    |at| format!("client_key (set at {at})"),
                ))
            } else {
                e
            }
        })?;
        Ok(self.tls_client.get_or_init(|| c))
    }
}
