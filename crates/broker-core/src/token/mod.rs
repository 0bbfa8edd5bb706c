//! Tokens and their lifetimes: parsing a token endpoint's answer, reading a JWT's claims without
//! verifying it, and the expiry rules of docs/reference.md §2.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::clock::{add_saturating, from_unix};

mod response;
pub use response::*;

/// Clocks that disagree by more than this are reported (docs/reference.md §2).
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(60);

/// Shortest pause before asking again after a server handed back the token it had already given.
pub const SAME_TOKEN_PAUSE_FLOOR: Duration = Duration::from_secs(5);

/// An access token with its expiry. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    token_type: String,
    obtained_at: SystemTime,
    expires_at: SystemTime,
    /// Half the lifetime, computed once: the warm path reads it on every call.
    half_life: Duration,
    refresh_not_before: Option<SystemTime>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl AccessToken {
    /// A token valid from `obtained_at` until `expires_at`.
    pub fn new(
        secret: SecretString,
        token_type: impl Into<String>,
        obtained_at: SystemTime,
        expires_at: SystemTime,
    ) -> Self {
        AccessToken {
            secret,
            token_type: token_type.into(),
            obtained_at,
            expires_at,
            half_life: expires_at.duration_since(obtained_at).unwrap_or_default() / 2,
            refresh_not_before: None,
        }
    }

    /// The token itself. Handle with care: never log it.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The `token_type` as the server spelled it (`Bearer` when it sent none).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the request that produced this token was sent.
    pub fn obtained_at(&self) -> SystemTime {
        self.obtained_at
    }

    /// When the token stops being valid.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Before this time the broker does not ask the provider again, even inside the margin:
    /// set when the provider handed back a token it had already given (docs/reference.md §2).
    pub fn refresh_not_before(&self) -> Option<SystemTime> {
        self.refresh_not_before
    }

    /// Sets [`AccessToken::refresh_not_before`].
    pub fn with_refresh_not_before(mut self, at: Option<SystemTime>) -> Self {
        self.refresh_not_before = at;
        self
    }

    /// The whole lifetime, from the request to expiry.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.obtained_at)
            .unwrap_or_default()
    }

    /// Time left at `now`; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    /// `margin = min(min_ttl, lifetime / 2)`.
    pub fn margin(&self, min_ttl: Duration) -> Duration {
        min_ttl.min(self.half_life)
    }

    /// Still usable at `now`: strictly before `expires_at`.
    pub fn is_valid(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    /// Good to serve from cache at `now` without asking the provider: `now + margin < expires_at`,
    /// or inside the pause after the provider handed back the same token.
    pub fn is_fresh(&self, now: SystemTime, min_ttl: Duration) -> bool {
        if !self.is_valid(now) {
            return false;
        }
        if now + self.margin(min_ttl) < self.expires_at {
            return true;
        }
        matches!(self.refresh_not_before, Some(t) if now < t)
    }

    /// [`AccessToken::is_fresh`] for a request: a `min_ttl` asked for per call is honoured whole (a token with less
    /// life left is not fresh, whatever its lifetime), else the profile's `min_ttl` gives the margin.
    pub fn is_fresh_for(
        &self,
        now: SystemTime,
        per_call: Option<Duration>,
        min_ttl: Duration,
    ) -> bool {
        match per_call {
            None => self.is_fresh(now, min_ttl),
            Some(m) => {
                self.is_valid(now)
                    && (add_saturating(now, m) < self.expires_at
                        || matches!(self.refresh_not_before, Some(t) if now < t))
            }
        }
    }

    /// Whether both hold the same token string.
    pub fn same_secret(&self, other: &AccessToken) -> bool {
        self.secret.expose_secret() == other.secret.expose_secret()
    }

    /// A short, non-reversible fingerprint of the token for display: the first 12 hex digits of its SHA-256.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.secret.expose_secret().as_bytes());
        hex::encode(&digest[..6])
    }
}

/// The claims of a JWT-shaped token (three base64url parts whose middle is a JSON object), read without
/// verifying the signature. `None` for any other token: opaque tokens are normal.
pub fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    jwt_part(token, 1)
}

/// The header of a JWT-shaped token, as [`jwt_claims`].
pub fn jwt_header(token: &str) -> Option<Map<String, Value>> {
    jwt_claims(token)?;
    jwt_part(token, 0)
}

fn jwt_part(token: &str, index: usize) -> Option<Map<String, Value>> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let raw = parts[index].trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The `exp` claim of a JWT-shaped token.
pub fn jwt_exp(token: &str) -> Option<SystemTime> {
    jwt_claims(token)?.get("exp")?.as_f64().and_then(from_unix)
}

/// Lifetime settings applied to every new token.
#[derive(Debug, Clone, Copy)]
pub struct LifetimePolicy {
    /// Assumed when the response has neither `expires_in` nor a JWT `exp`.
    pub default_ttl: Duration,
    /// The longest lifetime ever cached.
    pub max_ttl: Duration,
}

/// Something worth a warning that happened while working out a lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifetimeNote {
    /// Neither `expires_in` nor `exp`: the default was used.
    DefaultTtl,
    /// The JWT `exp` is earlier than `expires_in` says by more than [`CLOCK_SKEW_TOLERANCE`].
    ClockSkew {
        /// How far apart they are.
        by: Duration,
    },
    /// The lifetime was cut to `max_ttl`.
    CutToMaxTtl,
}

/// Applies docs/reference.md §2 to a response: `expires_in` from `requested_at` first, the JWT `exp` next,
/// `default_ttl` last; cut to `max_ttl`. Returns the token and what deserves a warning.
pub fn into_token(
    resp: TokenResponse,
    requested_at: SystemTime,
    policy: LifetimePolicy,
) -> (AccessToken, Vec<LifetimeNote>) {
    let mut notes = Vec::new();
    let exp = jwt_exp(resp.access_token.expose_secret());
    let mut expires_at = match (resp.expires_in, exp) {
        (Some(secs), exp) => {
            let by_expires_in = requested_at + Duration::from_secs_f64(secs.min(1e10));
            if let Some(exp) = exp {
                if let Ok(by) = by_expires_in.duration_since(exp) {
                    if by > CLOCK_SKEW_TOLERANCE {
                        notes.push(LifetimeNote::ClockSkew { by });
                    }
                }
            }
            by_expires_in
        }
        (None, Some(exp)) => exp,
        (None, None) => {
            notes.push(LifetimeNote::DefaultTtl);
            add_saturating(requested_at, policy.default_ttl)
        }
    };
    let longest = add_saturating(requested_at, policy.max_ttl);
    if expires_at > longest {
        expires_at = longest;
        notes.push(LifetimeNote::CutToMaxTtl);
    }
    let token_type = resp.token_type.unwrap_or_else(|| "Bearer".to_owned());
    (
        AccessToken::new(resp.access_token, token_type, requested_at, expires_at),
        notes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"RS256","typ":"JWT"}"#), e(claims))
    }

    const POLICY: LifetimePolicy = LifetimePolicy {
        default_ttl: Duration::from_secs(300),
        max_ttl: Duration::from_secs(86_400),
    };

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn lifetime_of(body: &str, requested: u64) -> Result<(u64, Vec<LifetimeNote>), String> {
        let resp = parse_response(body.as_bytes())?;
        let (tok, notes) = into_token(resp, at(requested), POLICY);
        Ok((tok.lifetime().as_secs(), notes))
    }

    #[test]
    fn expires_in_wins_then_exp_then_default() {
        let t = jwt(r#"{"exp":1000300}"#);
        assert_eq!(
            lifetime_of(
                &format!(r#"{{"access_token":"{t}","expires_in":120}}"#),
                1_000_000
            ),
            Ok((120, vec![]))
        );
        assert_eq!(
            lifetime_of(&format!(r#"{{"access_token":"{t}"}}"#), 1_000_000),
            Ok((300, vec![]))
        );
        assert_eq!(
            lifetime_of(r#"{"access_token":"opaque"}"#, 1_000_000),
            Ok((300, vec![LifetimeNote::DefaultTtl]))
        );
    }

    #[test]
    fn fractional_and_string_expires_in_are_accepted() {
        assert_eq!(
            lifetime_of(r#"{"access_token":"a","expires_in":299.5}"#, 10).map(|x| x.0),
            Ok(299)
        );
        assert_eq!(
            lifetime_of(r#"{"access_token":"a","expires_in":"300"}"#, 10).map(|x| x.0),
            Ok(300)
        );
    }

    #[test]
    fn bad_expires_in_is_refused() {
        for body in [
            r#"{"access_token":"a","expires_in":0}"#,
            r#"{"access_token":"a","expires_in":-5}"#,
            r#"{"access_token":"a","expires_in":"abc"}"#,
            r#"{"access_token":"a","expires_in":true}"#,
        ] {
            assert!(parse_response(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn skewed_clock_is_noted_and_expires_in_used() {
        let t = jwt(r#"{"exp":1000}"#);
        let (life, notes) = lifetime_of(
            &format!(r#"{{"access_token":"{t}","expires_in":300}}"#),
            1_000_000,
        )
        .unwrap_or_default();
        assert_eq!(life, 300);
        assert!(
            matches!(notes.as_slice(), [LifetimeNote::ClockSkew { .. }]),
            "{notes:?}"
        );
    }

    #[test]
    fn long_lifetimes_are_cut_to_max_ttl() {
        let (life, notes) =
            lifetime_of(r#"{"access_token":"a","expires_in":315360000}"#, 10).unwrap_or_default();
        assert_eq!(life, 86_400);
        assert_eq!(notes, vec![LifetimeNote::CutToMaxTtl]);
    }

    #[test]
    fn token_type_rules() {
        assert!(parse_response(br#"{"access_token":"a","token_type":"BEARER"}"#).is_ok());
        assert!(parse_response(br#"{"access_token":"a"}"#).is_ok());
        assert!(parse_response(br#"{"access_token":"a","token_type":"mac"}"#).is_err());
        // The provider decides whether a DPoP token fits the profile (kinds/dpop.rs).
        assert!(parse_response(br#"{"access_token":"a","token_type":"DPoP"}"#).is_ok());
    }

    #[test]
    fn non_jwt_tokens_are_opaque() {
        assert!(jwt_claims("a.b.c").is_none());
        assert!(jwt_claims("opaque").is_none());
        assert!(jwt_claims(&jwt("[1]")).is_none());
        assert!(jwt_claims(&jwt(r#"{"sub":"x"}"#)).is_some());
        assert!(jwt_claims("one.two.three.four.five").is_none());
    }

    #[test]
    fn margin_is_min_of_min_ttl_and_half_the_lifetime() {
        let tok = AccessToken::new(SecretString::from("t".to_owned()), "Bearer", at(0), at(300));
        assert_eq!(tok.margin(Duration::from_secs(60)), Duration::from_secs(60));
        assert_eq!(
            tok.margin(Duration::from_secs(600)),
            Duration::from_secs(150)
        );
        assert!(tok.is_fresh(at(239), Duration::from_secs(60)));
        assert!(!tok.is_fresh(at(240), Duration::from_secs(60)));
        assert!(tok.is_valid(at(299)));
        assert!(!tok.is_valid(at(300)));
        let paused = tok.clone().with_refresh_not_before(Some(at(260)));
        assert!(paused.is_fresh(at(250), Duration::from_secs(60)));
        assert!(!paused.is_fresh(at(260), Duration::from_secs(60)));
    }

    #[test]
    fn debug_hides_the_token() {
        let tok = AccessToken::new(
            SecretString::from("s3cr3t-token".to_owned()),
            "Bearer",
            at(0),
            at(300),
        );
        assert!(!format!("{tok:?}").contains("s3cr3t"));
    }

    /// Whether a type implements `Display`, found by method resolution: the inherent method of `Probe<T: Display>`
    /// wins over the blanket trait method when it applies.
    struct Probe<T>(std::marker::PhantomData<T>);
    trait NotDisplay {
        fn is_display(&self) -> bool {
            false
        }
    }
    impl<T> NotDisplay for Probe<T> {}
    impl<T: std::fmt::Display> Probe<T> {
        fn is_display(&self) -> bool {
            true
        }
    }

    #[test]
    fn no_type_that_holds_a_secret_implements_display() {
        assert!(
            Probe::<String>(std::marker::PhantomData).is_display(),
            "the probe works"
        );
        assert!(!Probe::<AccessToken>(std::marker::PhantomData).is_display());
        assert!(!Probe::<SecretString>(std::marker::PhantomData).is_display());
        assert!(!Probe::<crate::secret::SecretSource>(std::marker::PhantomData).is_display());
        assert!(!Probe::<TokenResponse>(std::marker::PhantomData).is_display());
    }
}
