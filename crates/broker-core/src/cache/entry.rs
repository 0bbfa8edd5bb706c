//! A cache entry and its file format: one versioned JSON object (sealed at rest by `mod.rs`).
//! *Invariant: a token with a control character, an unknown version or a malformed entry is never decoded into one.*

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::token::AccessToken;

/// The version written in every entry; other versions are ignored and replaced.
pub const ENTRY_VERSION: u32 = 1;

/// A cached token and what was learned while getting it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The token, if one was ever fetched (an entry may hold only a cool-down).
    pub token: Option<AccessToken>,
    /// The token endpoint actually used (after discovery or the `/auth` fallback).
    pub endpoint: Option<String>,
    /// Do not ask the provider before this (after a rejection, or a 429 that named a time).
    pub cooldown: Option<Cooldown>,
}

/// A period in which the provider is not asked, and the failure that started it.
#[derive(Debug, Clone)]
pub struct Cooldown {
    /// When the provider may be asked again.
    pub until: SystemTime,
    /// The class of the failure that started it.
    pub kind: ErrorKind,
    /// The failure's message (never holds a secret).
    pub message: String,
    /// For an outage (`Unavailable`): how many fetches in a row have failed. It outlives `until`, until a fetch
    /// succeeds: while it is above zero the provider is known to be down, and a fetch makes one attempt, not a
    /// retry round.
    pub streak: u32,
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    version: u32,
    profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default)]
    token_type: String,
    /// Milliseconds since the epoch, rounded down (so a stored expiry is never later than the real one).
    obtained_at_ms: u64,
    expires_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_not_before_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cooldown_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cooldown_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cooldown_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cooldown_streak: Option<u32>,
}

fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_millis(ms: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Parses an entry file. `Err` says why it is unusable.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "not JSON".to_owned())?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(n) if n == u64::from(ENTRY_VERSION) => {}
        Some(n) => return Err(format!("unknown version {n}")),
        None => return Err("no version".into()),
    }
    let f: EntryFile = serde_json::from_value(v).map_err(|_| "malformed".to_owned())?;
    let token = match f.access_token.filter(|t| !t.is_empty()) {
        Some(t) if !crate::token::printable(&t) || !crate::token::printable(&f.token_type) => {
            return Err("a token with a control character".into())
        }
        Some(t) => {
            let obtained = from_millis(f.obtained_at_ms).ok_or("bad obtained_at_ms")?;
            let expires = from_millis(f.expires_at_ms).ok_or("bad expires_at_ms")?;
            Some(
                AccessToken::new(SecretString::from(t), f.token_type, obtained, expires)
                    .with_refresh_not_before(f.refresh_not_before_ms.and_then(from_millis)),
            )
        }
        None => None,
    };
    let cooldown = match (
        f.cooldown_until_ms.and_then(from_millis),
        f.cooldown_class.as_deref().and_then(ErrorKind::parse),
    ) {
        (Some(until), Some(kind)) => Some(Cooldown {
            until,
            kind,
            message: f.cooldown_message.unwrap_or_default(),
            streak: f.cooldown_streak.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(Entry {
        token,
        endpoint: f.endpoint,
        cooldown,
    })
}

/// Serialises an entry file.
pub fn encode_entry(entry: &Entry, profile: &str) -> Vec<u8> {
    let t = entry.token.as_ref();
    let f = EntryFile {
        version: ENTRY_VERSION,
        profile: profile.to_owned(),
        access_token: t.map(|t| t.secret().expose_secret().to_owned()),
        token_type: t.map(|t| t.token_type().to_owned()).unwrap_or_default(),
        obtained_at_ms: t.map_or(0, |t| to_millis(t.obtained_at())),
        expires_at_ms: t.map_or(0, |t| to_millis(t.expires_at())),
        refresh_not_before_ms: t.and_then(AccessToken::refresh_not_before).map(to_millis),
        endpoint: entry.endpoint.clone(),
        cooldown_until_ms: entry.cooldown.as_ref().map(|c| to_millis(c.until)),
        cooldown_class: entry.cooldown.as_ref().map(|c| c.kind.as_str().to_owned()),
        cooldown_message: entry.cooldown.as_ref().map(|c| c.message.clone()),
        cooldown_streak: entry.cooldown.as_ref().map(|c| c.streak).filter(|s| *s > 0),
    };
    serde_json::to_vec(&f).unwrap_or_default()
}
