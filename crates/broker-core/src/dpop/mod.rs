//! DPoP (RFC 9449, docs/reference.md §10): the key a profile's tokens are bound to, the proofs it signs, and the
//! nonces servers hand out. A proof is a JWT signed with the key, naming the request (`htm`, `htu`), the token it
//! goes with (`ath`), a fresh `jti`, and the server's nonce when it asked for one.
//!
//! *Invariant: the private key never leaves [`DpopKey`] (its `Debug` shows the thumbprint only); a generated key
//! is created once, 0600 in a 0700 directory of ours, and a key file anyone else could have written or read is
//! refused, never used.*

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

mod store;
pub use store::{existing, generated_key_name, load_or_create};

/// The one proof algorithm: ES256 is what every DPoP server supports (RFC 9449 §5, Keycloak, Auth0, oidc-provider).
pub const ALG: &str = "ES256";

const EC: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A P-256 key that signs DPoP proofs. `Debug` shows its thumbprint, never the key.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The proof header (`typ`, `alg`, `jwk`), base64url, the same for every proof of this key.
    header: String,
    /// The public key as a JWK (`kty`, `crv`, `x`, `y`).
    jwk: String,
    /// RFC 7638 thumbprint of the public key: the `cnf.jkt` of tokens bound to it.
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

/// What one proof is for.
#[derive(Debug, Clone, Copy)]
pub struct ProofFor<'a> {
    /// The request's method (`htm`).
    pub method: &'a str,
    /// The request's URL; its query and fragment are left out of `htu` ([`htu`]).
    pub url: &'a str,
    /// The access token sent with it, hashed into `ath`; none at the token endpoint.
    pub token: Option<&'a str>,
    /// The server's nonce (`DPoP-Nonce`), when it gave one.
    pub nonce: Option<&'a str>,
    /// When the proof is made (`iat`).
    pub now: SystemTime,
}

impl DpopKey {
    /// A PEM private key: PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, on P-256, with its public part. The error
    /// says what is wrong with the key, never what it holds.
    pub fn from_pem(pem: &[u8]) -> std::result::Result<Self, String> {
        use pkcs8::der::Decode;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            "not a PEM private key (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY` on P-256)"
                .to_owned()
        })?;
        let not_p256 = || "DPoP keys are EC P-256 keys (ES256); this is another kind".to_owned();
        let sec1 = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                let info = pkcs8::PrivateKeyInfo::from_der(k.secret_pkcs8_der())
                    .map_err(|_| "a PKCS#8 key that does not parse".to_owned())?;
                if info.algorithm.oid != EC || info.algorithm.parameters_oid().ok() != Some(P256) {
                    return Err(not_p256());
                }
                info.private_key.to_vec()
            }
            PrivateKeyDer::Sec1(k) => k.secret_sec1_der().to_vec(),
            _ => return Err(not_p256()),
        };
        let sec1 = secrecy::SecretBox::new(Box::new(sec1));
        let key = sec1::EcPrivateKey::from_der(sec1.expose_secret())
            .map_err(|_| "an EC key that does not parse".to_owned())?;
        if key
            .parameters
            .and_then(|p| p.named_curve())
            .is_some_and(|c| c != P256)
        {
            return Err(not_p256());
        }
        let public = key.public_key.ok_or_else(|| {
            "an EC key without its public part (`openssl pkey -in KEY -out KEY2` writes it with one)".to_owned()
        })?;
        Self::from_parts(key.private_key, public)
    }

    fn from_parts(private: &[u8], public: &[u8]) -> std::result::Result<Self, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            private,
            public,
            &rng,
        )
        .map_err(|_| "an EC P-256 key whose parts do not match".to_owned())?;
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        // RFC 7638 §3.2: the required members in lexicographic order, no whitespace.
        let jwk = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()));
        let header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"dpop+jwt","alg":"{ALG}","jwk":{jwk}}}"#));
        Ok(DpopKey {
            pair,
            rng,
            header,
            jwk,
            thumbprint,
        })
    }

    /// A new random key, and its PKCS#8 PEM to keep.
    pub fn generate() -> std::result::Result<(Self, SecretString), String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "no randomness for a new key".to_owned())?;
        let pem = SecretString::from(pem_of(doc.as_ref()));
        let key = Self::from_pem(pem.expose_secret().as_bytes())?;
        Ok((key, pem))
    }

    /// The RFC 7638 thumbprint (base64url SHA-256 of the public JWK): what a bound token's `cnf.jkt` holds.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &str {
        &self.jwk
    }

    /// A proof for one request (RFC 9449 §4.2): `typ` `dpop+jwt`, the public `jwk`, and claims `jti` (128 random
    /// bits), `htm`, `htu`, `iat`, `ath` when a token goes with it, `nonce` when the server gave one.
    pub fn proof(&self, p: &ProofFor<'_>) -> Result<SecretString> {
        let htu = htu(p.url).map_err(Error::config)?;
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| Error::internal("no randomness for a DPoP proof"))?;
        let iat = p
            .now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = serde_json::Map::with_capacity(6);
        claims.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
        claims.insert("htm".into(), p.method.to_ascii_uppercase().into());
        claims.insert("htu".into(), htu.into());
        claims.insert("iat".into(), iat.into());
        if let Some(t) = p.token {
            claims.insert("ath".into(), ath(t).into());
        }
        if let Some(n) = p.nonce {
            claims.insert("nonce".into(), n.into());
        }
        let claims = serde_json::to_vec(&claims).map_err(|e| Error::internal(e.to_string()))?;
        let mut jwt = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 100);
        jwt.push_str(&self.header);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let sig = self
            .pair
            .sign(&self.rng, jwt.as_bytes())
            .map_err(|_| Error::internal("cannot sign a DPoP proof"))?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut jwt);
        Ok(SecretString::from(jwt))
    }
}

/// `htu` of a URL (RFC 9449 §4.2): without its query and fragment.
pub fn htu(url: &str) -> std::result::Result<String, String> {
    let mut u =
        url::Url::parse(url).map_err(|_| "a DPoP proof needs an absolute URL".to_owned())?;
    u.set_query(None);
    u.set_fragment(None);
    Ok(u.into())
}

/// `ath`: base64url of the SHA-256 of the access token.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A `DPoP-Nonce` header value a server may give (RFC 9449 §8.1: `NQCHAR`, here also at most 1 KiB), else `None`.
pub fn nonce_of(value: &[u8]) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 1024
        && value
            .iter()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e));
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

/// Whether a `WWW-Authenticate` value is a resource server's `DPoP error="use_dpop_nonce"` (RFC 9449 §9).
pub fn asks_for_nonce(www_authenticate: &str) -> bool {
    let v = www_authenticate.trim_start();
    v.len() > 5 && v[..5].eq_ignore_ascii_case("dpop ") && v.contains("error=\"use_dpop_nonce\"")
}

/// The nonces servers gave, by origin (a token endpoint's, a resource server's), so the next request sends one
/// without being refused first. Bounded: a server that hands out nonces cannot grow it without end.
#[derive(Debug, Default)]
pub struct Nonces {
    by_origin: Mutex<HashMap<String, String>>,
}

/// Origins remembered at most; past this the book starts over (a nonce forgotten costs one retry).
const MAX_NONCE_ORIGINS: usize = 1024;

impl Nonces {
    /// The nonce last given by `url`'s origin.
    pub fn get(&self, url: &str) -> Option<String> {
        let origin = origin_of(url)?;
        self.by_origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&origin)
            .cloned()
    }

    /// Keeps the `DPoP-Nonce` of an API's answer to a request to `url`; whether the answer refused the request for
    /// want of it (401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"`, RFC 9449 §9), so it is worth one retry.
    pub fn take_from(&self, url: &str, status: u16, headers: &reqwest::header::HeaderMap) -> bool {
        let Some(n) = headers
            .get("dpop-nonce")
            .and_then(|v| nonce_of(v.as_bytes()))
        else {
            return false;
        };
        self.set(url, &n);
        status == 401
            && headers
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(asks_for_nonce)
    }

    /// Remembers `nonce` for `url`'s origin.
    pub fn set(&self, url: &str, nonce: &str) {
        let Some(origin) = origin_of(url) else { return };
        let mut map = self.by_origin.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_NONCE_ORIGINS && !map.contains_key(&origin) {
            map.clear();
        }
        map.insert(origin, nonce.to_owned());
    }
}

fn origin_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

fn pem_of(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let p = jwt.split('.').nth(i).unwrap_or_default();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn a_proof_names_its_request_and_verifies_with_the_embedded_key() {
        let (key, _) = DpopKey::generate().unwrap();
        let proof = key
            .proof(&ProofFor {
                method: "post",
                url: "https://api.example/v1/runs?page=2#frag",
                token: Some("t0k3n"),
                nonce: Some("n-1"),
                now: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            })
            .unwrap();
        let proof = proof.expose_secret();
        let (header, claims) = (part(proof, 0), part(proof, 1));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://api.example/v1/runs");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["ath"], ath("t0k3n"));
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"t0k3n"))
        );
        // The signature verifies with the public key in the header.
        let jwk = &header["jwk"];
        let xy = [jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap()]
            .map(|c| URL_SAFE_NO_PAD.decode(c).unwrap());
        let point = [&[4u8][..], &xy[0], &xy[1]].concat();
        let (signed, sig) = proof.rsplit_once('.').unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();
        // RFC 7638: the thumbprint is of exactly the required members, sorted.
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            key.thumbprint(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn every_proof_has_its_own_jti() {
        let (key, _) = DpopKey::generate().unwrap();
        let p = ProofFor {
            method: "GET",
            url: "https://api.example/",
            token: None,
            nonce: None,
            now: SystemTime::now(),
        };
        let jtis: std::collections::HashSet<String> = (0..100)
            .map(|_| part(key.proof(&p).unwrap().expose_secret(), 1)["jti"].to_string())
            .collect();
        assert_eq!(jtis.len(), 100);
    }

    #[test]
    fn a_generated_key_reads_back_as_itself_and_debug_shows_no_key() {
        let (key, pem) = DpopKey::generate().unwrap();
        let again = DpopKey::from_pem(pem.expose_secret().as_bytes()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        let shown = format!("{key:?}");
        assert!(shown.contains(key.thumbprint()));
        assert!(!shown.contains("PRIVATE"));
    }

    #[test]
    fn other_keys_are_refused_with_what_they_are() {
        assert!(DpopKey::from_pem(b"s3cret")
            .unwrap_err()
            .contains("not a PEM"));
    }

    #[test]
    fn nonces_are_checked_and_kept_by_origin() {
        assert_eq!(nonce_of(b"abc-123_~"), Some("abc-123_~".into()));
        for bad in [&b""[..], b"a b", b"a\"b", b"a\\b", b"a\nb"] {
            assert_eq!(nonce_of(bad), None, "{bad:?}");
        }
        let n = Nonces::default();
        n.set("https://as.example/token?x=1", "n1");
        assert_eq!(n.get("https://as.example/other").as_deref(), Some("n1"));
        assert_eq!(n.get("https://as.example:8443/token"), None);
        assert!(asks_for_nonce(
            r#"DPoP error="use_dpop_nonce", error_description="x""#
        ));
        assert!(!asks_for_nonce(r#"Bearer error="use_dpop_nonce""#));
        assert!(!asks_for_nonce(r#"DPoP error="invalid_token""#));
    }
}
