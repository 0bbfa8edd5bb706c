//! Client authentication material beyond a shared secret (docs/reference.md §8): private keys that sign RFC 7523
//! client assertions, and client certificates for RFC 8705 mutual TLS. Parsed from PEM; errors say what is wrong
//! with the material, never what it holds.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pkcs8::der::{Decode, Encode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::SigningAlg;

/// How long a client assertion is valid: the contract's `exp = now + 60 s`.
pub(crate) const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// `client_assertion_type` of RFC 7523 §2.2.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const RSA: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112");

/// What a private key is, which decides the algorithms it can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn default_alg(self) -> SigningAlg {
        match self {
            Family::Rsa => SigningAlg::RS256,
            Family::P256 => SigningAlg::ES256,
            Family::P384 => SigningAlg::ES384,
            Family::Ed25519 => SigningAlg::EdDSA,
        }
    }

    fn can_sign(self, alg: SigningAlg) -> bool {
        use SigningAlg::*;
        match self {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::P256 => alg == ES256,
            Family::P384 => alg == ES384,
            Family::Ed25519 => alg == EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Rsa => "an RSA key",
            Family::P256 => "an EC P-256 key",
            Family::P384 => "an EC P-384 key",
            Family::Ed25519 => "an Ed25519 key",
        }
    }
}

fn jws(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::HS256 => Algorithm::HS256,
        SigningAlg::HS384 => Algorithm::HS384,
        SigningAlg::HS512 => Algorithm::HS512,
        SigningAlg::RS256 => Algorithm::RS256,
        SigningAlg::RS384 => Algorithm::RS384,
        SigningAlg::RS512 => Algorithm::RS512,
        SigningAlg::PS256 => Algorithm::PS256,
        SigningAlg::PS384 => Algorithm::PS384,
        SigningAlg::PS512 => Algorithm::PS512,
        SigningAlg::ES256 => Algorithm::ES256,
        SigningAlg::ES384 => Algorithm::ES384,
        SigningAlg::EdDSA => Algorithm::EdDSA,
    }
}

/// A key that signs client assertions, and the algorithm it signs with.
pub(crate) struct SigningKey {
    alg: SigningAlg,
    key: EncodingKey,
}

impl SigningKey {
    /// The client secret as an HMAC key (`client_secret_jwt`); `alg` must be an HS algorithm.
    pub(crate) fn hmac(secret: &[u8], alg: Option<SigningAlg>) -> Result<Self, String> {
        let alg = alg.unwrap_or(SigningAlg::HS256);
        if !alg.is_hmac() {
            return Err(format!(
                "`signing_alg = \"{}\"` cannot be used with client_secret_jwt, which signs with the client secret \
                 (HS256, HS384 or HS512)",
                alg.as_str()
            ));
        }
        Ok(SigningKey {
            alg,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// A PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`: RSA, EC P-256
    /// or P-384, Ed25519), checked against `alg` (default: from the key) by signing once.
    pub(crate) fn from_pem(pem: &[u8], alg: Option<SigningAlg>) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            if String::from_utf8_lossy(pem).contains("ENCRYPTED PRIVATE KEY") {
                "the private key is encrypted; give broker an unencrypted PKCS#8 key (a { command } source can \
                 decrypt it)"
                    .to_owned()
            } else {
                "not a PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`)"
                    .to_owned()
            }
        })?;
        let unsupported =
            || "an unsupported key type (RSA, EC P-256/P-384 and Ed25519 are)".to_owned();
        let (family, key) = match &der {
            PrivateKeyDer::Pkcs1(k) => {
                (Family::Rsa, EncodingKey::from_rsa_der(k.secret_pkcs1_der()))
            }
            PrivateKeyDer::Pkcs8(k) => {
                let info = pkcs8::PrivateKeyInfo::from_der(k.secret_pkcs8_der())
                    .map_err(|_| "a PKCS#8 key that does not parse".to_owned())?;
                let curve = info.algorithm.parameters_oid().ok();
                match (info.algorithm.oid, curve) {
                    (RSA, _) => (Family::Rsa, EncodingKey::from_rsa_der(info.private_key)),
                    (EC, Some(P256)) => {
                        (Family::P256, EncodingKey::from_ec_der(k.secret_pkcs8_der()))
                    }
                    (EC, Some(P384)) => {
                        (Family::P384, EncodingKey::from_ec_der(k.secret_pkcs8_der()))
                    }
                    (ED25519, _) => (
                        Family::Ed25519,
                        EncodingKey::from_ed_der(k.secret_pkcs8_der()),
                    ),
                    _ => return Err(unsupported()),
                }
            }
            PrivateKeyDer::Sec1(k) => {
                let sec1 = sec1::EcPrivateKey::from_der(k.secret_sec1_der())
                    .map_err(|_| "a SEC1 EC key that does not parse".to_owned())?;
                let curve = sec1
                    .parameters
                    .and_then(|p| p.named_curve())
                    .ok_or_else(unsupported)?;
                let family = match curve {
                    P256 => Family::P256,
                    P384 => Family::P384,
                    _ => return Err(unsupported()),
                };
                // The signer takes PKCS#8: wrap the SEC1 key in a PrivateKeyInfo naming its curve.
                let algorithm = pkcs8::AlgorithmIdentifierRef {
                    oid: EC,
                    parameters: Some((&curve).into()),
                };
                let wrapped = pkcs8::PrivateKeyInfo::new(algorithm, k.secret_sec1_der())
                    .to_der()
                    .map_err(|_| unsupported())?;
                (family, EncodingKey::from_ec_der(&wrapped))
            }
            _ => return Err(unsupported()),
        };
        let alg = match alg {
            None => family.default_alg(),
            Some(a) if family.can_sign(a) => a,
            Some(a) => {
                return Err(format!(
                    "the key is {}, which cannot sign `signing_alg = \"{}\"` (it signs {})",
                    family.name(),
                    a.as_str(),
                    SigningAlg::ALL
                        .iter()
                        .filter(|(_, x)| family.can_sign(*x))
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        let key = SigningKey { alg, key };
        // A key that parses may still not sign (a truncated RSA key, a wrong curve point): find out now.
        key.sign("probe", "probe", SystemTime::UNIX_EPOCH, None)
            .map_err(|_| format!("{} that cannot sign {}", family.name(), alg.as_str()))?;
        Ok(key)
    }

    /// The algorithm.
    pub(crate) fn alg(&self) -> SigningAlg {
        self.alg
    }
}

/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash (32 bytes for HS256, 48 for HS384, 64 for
/// HS512). What is wrong with a `client_secret_jwt` secret of `len` bytes for `alg` (default HS256), if anything;
/// the message names lengths, never the secret.
pub fn short_hmac_key(len: usize, alg: Option<SigningAlg>) -> Option<String> {
    let alg = alg.unwrap_or(SigningAlg::HS256);
    let need = match alg {
        SigningAlg::HS256 => 32,
        SigningAlg::HS384 => 48,
        SigningAlg::HS512 => 64,
        _ => return None,
    };
    (len < need).then(|| {
        format!(
            "the client secret is {len} bytes, shorter than the {need} that {} needs to be secure (RFC 7518 §3.2): \
             ask the provider for a longer one",
            alg.as_str()
        )
    })
}

/// The algorithm a PEM private key signs client assertions with: `alg` when the key can sign it, else the key's
/// default; an error says what is wrong with the key (`broker check`).
pub fn key_algorithm(pem: &[u8], alg: Option<SigningAlg>) -> Result<SigningAlg, String> {
    SigningKey::from_pem(pem, alg).map(|k| k.alg())
}

impl SigningKey {
    /// A client assertion (RFC 7523 §3): `iss` = `sub` = `client_id`, `aud`, a fresh random `jti`, `iat` = `now`,
    /// `exp` = `now` + 60 s.
    pub(crate) fn sign(
        &self,
        client_id: &str,
        aud: &str,
        now: SystemTime,
        kid: Option<&str>,
    ) -> Result<String, String> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        getrandom::getrandom(&mut jti).map_err(|e| format!("no randomness for the jti: {e}"))?;
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "jti": hex::encode(jti),
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let mut header = Header::new(jws(self.alg));
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// A client certificate: what `broker check` and `broker inspect` show of it.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER (RFC 8705 §3.1).
    pub thumbprint: String,
    /// The end of its validity.
    pub not_after: SystemTime,
    /// Its subject, as a distinguished name.
    pub subject: String,
}

impl ClientCert {
    /// The first certificate of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = CertificateDer::from_pem_slice(pem)
            .map_err(|_| "not a PEM certificate (`BEGIN CERTIFICATE`)".to_owned())?;
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|_| "a certificate that does not parse".to_owned())?;
        use base64::Engine as _;
        Ok(ClientCert {
            thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(&der)),
            not_after: SystemTime::UNIX_EPOCH
                + cert.tbs_certificate.validity.not_after.to_unix_duration(),
            subject: cert.tbs_certificate.subject.to_string(),
        })
    }
}

impl ClientCert {
    /// How long it is still valid at `now`; an error, saying when it ended, once it has.
    pub fn left_at(&self, now: SystemTime) -> Result<Duration, String> {
        match self.not_after.duration_since(now) {
            Ok(left) if !left.is_zero() => Ok(left),
            _ => Err(format!(
                "a certificate that expired {}",
                humantime::format_rfc3339_seconds(self.not_after)
            )),
        }
    }
}

/// The rustls identity for mutual TLS: the certificate (chain) and its key, both PEM.
pub(crate) fn identity(cert_pem: &str, key_pem: &str) -> Result<reqwest::Identity, String> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "`client_key` is not a PEM private key".to_owned())?;
    // The joined text holds the private key: kept in a SecretString, so it is wiped when dropped.
    let both = secrecy::SecretString::from(format!("{}\n{}\n", cert_pem.trim(), key_pem.trim()));
    use secrecy::ExposeSecret;
    reqwest::Identity::from_pem(both.expose_secret().as_bytes())
        .map_err(|_| "`client_cert` and `client_key` do not make a TLS identity".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_key_and_the_message_holds_none_of_it() {
        let err = SigningKey::from_pem(b"s3cret-not-a-key", None)
            .err()
            .unwrap_or_default();
        assert!(err.contains("not a PEM private key"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn hmac_refuses_an_asymmetric_alg() {
        assert!(SigningKey::hmac(b"secret", Some(SigningAlg::RS256)).is_err());
        let k = SigningKey::hmac(b"secret", None).unwrap();
        assert_eq!(k.alg(), SigningAlg::HS256);
    }

    #[test]
    fn every_assertion_has_its_own_jti() {
        let k = SigningKey::hmac(b"0123456789abcdef0123456789abcdef", None).unwrap();
        let jti = |t: &str| {
            crate::token::jwt_claims(t)
                .and_then(|c| c.get("jti").and_then(|j| j.as_str()).map(str::to_owned))
                .unwrap_or_default()
        };
        let a = k
            .sign("c", "https://as/token", SystemTime::now(), None)
            .unwrap();
        let b = k
            .sign("c", "https://as/token", SystemTime::now(), None)
            .unwrap();
        assert_eq!(jti(&a).len(), 32);
        assert_ne!(jti(&a), jti(&b));
    }
}
