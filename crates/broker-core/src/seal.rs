//! Sealing with XChaCha20-Poly1305: the fleet's values in Redis (`shared.rs`) and disk cache entries at rest
//! (`cache/`, docs/reference.md §11), each under its own key, with the name it is stored under as associated data.
//! The disk cache's key is 32 random bytes kept in the kernel (or OS) keyring, made on first use.
//!
//! *Invariant: `open` returns the plaintext only for what `seal` made under the same key and name; the cache key
//! never touches a file.*

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
pub(crate) use chacha20poly1305::XChaCha20Poly1305 as Cipher;
use chacha20poly1305::XNonce;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::secret::{SecretSource, Shape};

/// Bytes of the random nonce that starts every sealed value.
pub(crate) const NONCE: usize = 24;

/// A cipher for a 32-byte key.
pub(crate) fn cipher(key: &[u8; 32]) -> Cipher {
    Cipher::new(key.into())
}

/// `plain` sealed with a fresh random nonce and `aad` as associated data: `nonce || ciphertext`.
pub(crate) fn seal(cipher: &Cipher, aad: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
    let mut nonce = [0u8; NONCE];
    getrandom::getrandom(&mut nonce).ok()?;
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad })
        .ok()?;
    Some([nonce.as_slice(), &sealed].concat())
}

/// What [`seal`] made under this cipher and `aad`; `None` for anything else.
pub(crate) fn open(cipher: &Cipher, aad: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < NONCE {
        return None;
    }
    let (nonce, sealed) = value.split_at(NONCE);
    let nonce: [u8; NONCE] = nonce.try_into().ok()?;
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad })
        .ok()
}

/// The keyring entry that holds the user's disk cache key: service `broker`, account `cache-key`. One key per user
/// (and keyring): each entry is sealed with its cache directory and name as associated data, so an entry opens only
/// in the directory it was written in.
pub fn cache_key_entry() -> SecretSource {
    SecretSource::Keyring {
        service: "broker".into(),
        account: "cache-key".into(),
    }
}

/// The disk cache's cipher: its key from the keyring, made and stored there first when `create` (a write). `None`
/// when there is no key yet and `create` is false (a read: nothing sealed can be opened then).
pub(crate) fn cache_cipher(create: bool) -> Result<Option<Cipher>> {
    let entry = cache_key_entry();
    let decode = |text: &SecretString| -> Result<Cipher> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.expose_secret().trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::config(format!(
                    "the cache key in {} is not 32 bytes of base64: remove it (the cache is refilled)",
                    entry.describe()
                ))
            })?;
        Ok(cipher(&bytes))
    };
    if let Some(text) = entry.read_if_present(Shape::Line)? {
        return decode(&text).map(Some);
    }
    if !create {
        return Ok(None);
    }
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key)
        .map_err(|e| Error::internal(format!("no randomness for the cache key: {e}")))?;
    let text = SecretString::from(base64::engine::general_purpose::STANDARD.encode(key));
    entry.store(&text)?;
    tracing::info!("made the disk cache's key, kept in {}", entry.describe());
    // Two processes making it at once: the one stored last is everyone's from now on.
    match entry.read_if_present(Shape::Line)? {
        Some(stored) => decode(&stored).map(Some),
        None => decode(&text).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_name() {
        let (a, b) = (cipher(&[1; 32]), cipher(&[2; 32]));
        let sealed = seal(&a, b"name", b"plain").unwrap();
        assert_eq!(open(&a, b"name", &sealed).as_deref(), Some(&b"plain"[..]));
        assert_eq!(open(&a, b"other", &sealed), None);
        assert_eq!(open(&b, b"name", &sealed), None);
        assert_eq!(open(&a, b"name", &sealed[..10]), None);
    }
}
