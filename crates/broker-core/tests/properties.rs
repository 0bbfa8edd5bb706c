//! Property tests: arbitrary input never panics the parsers, and every well-formed token response round-trips
//! through the cache entry format.
// A test crate: its helpers, like its tests, may panic on what the test set up (clippy.toml covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use broker_core::cache::{decode_entry, encode_entry, Entry};
use broker_core::config::{Config, LoadOptions};
use broker_core::token::{into_token, jwt_claims, parse_response, LifetimePolicy};
use proptest::prelude::*;
use secrecy::ExposeSecret;

const POLICY: LifetimePolicy = LifetimePolicy {
    default_ttl: Duration::from_secs(300),
    max_ttl: Duration::from_secs(86_400),
};

fn load(text: &str) -> Result<Config, broker_core::Error> {
    let dir = tempfile::tempdir().map_err(|e| broker_core::Error::internal(e.to_string()))?;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).map_err(|e| broker_core::Error::internal(e.to_string()))?;
    Config::load(&LoadOptions {
        builtin_providers: vec![(
            "ion".into(),
            include_str!("../../../providers/ion.toml").into(),
        )],
        config_file: Some(path),
        config_file_required: true,
        ..Default::default()
    })
}

/// Config-shaped text: known and unknown keys, values of every TOML type, broken lines.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("provider"),
        Just("environment"),
        Just("kind"),
        Just("token_url"),
        Just("client_id"),
        Just("client_secret"),
        Just("min_ttl"),
        Just("header"),
        Just("params"),
        Just("auth"),
        Just("bogus"),
        Just("issuer"),
        Just("cache"),
    ];
    let value = prop_oneof![
        "\"[a-z:/.{}0-9 ]{0,20}\"".prop_map(|s| s),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("{ env = \"X\" }".to_owned()),
        Just("{ command = [] }".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("{ a = 1, b = 2 }".to_owned()),
        "[^\n]{0,10}".prop_map(|s| s),
    ];
    let line = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
    let table = prop_oneof![
        Just("[profiles.p]"),
        Just("[defaults]"),
        Just("[profiles]"),
        Just("[x.y.z]"),
        Just("[[profiles.q]]")
    ];
    prop::collection::vec(prop_oneof![line, table.prop_map(str::to_owned)], 0..12)
        .prop_map(|v| v.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics(text in config_text()) {
        if let Ok(c) = load(&text) {
            for name in c.profile_names() {
                let _ = c.resolve(name, &Default::default());
            }
        }
    }

    #[test]
    fn arbitrary_text_as_config_never_panics(text in "\\PC{0,200}") {
        let _ = load(&text);
    }

    #[test]
    fn jwt_reading_never_panics(token in "\\PC{0,200}", payload in "\\PC{0,100}") {
        let _ = jwt_claims(&token);
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.as_bytes());
        let claims = jwt_claims(&format!("eyJhbGciOiJub25lIn0.{e}.sig"));
        let is_object = matches!(serde_json::from_str::<serde_json::Value>(&payload), Ok(serde_json::Value::Object(_)));
        prop_assert_eq!(claims.is_some(), is_object);
    }

    #[test]
    fn response_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_response(&body);
        let _ = decode_entry(&body);
    }

    #[test]
    fn well_formed_responses_round_trip_through_the_cache_entry(
        token in "[A-Za-z0-9._~+/-]{1,200}",
        expires_in in prop::option::of(1u32..10_000_000),
        fractional in any::<bool>(),
        token_type in prop::option::of(prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER")]),
        requested_ms in 1_000_000_000_000u64..4_000_000_000_000,
    ) {
        let mut body = serde_json::json!({"access_token": token});
        if let Some(e) = expires_in {
            body["expires_in"] = if fractional { serde_json::json!(f64::from(e) + 0.5) } else { serde_json::json!(e) };
        }
        if let Some(t) = token_type {
            body["token_type"] = serde_json::json!(t);
        }
        let resp = parse_response(body.to_string().as_bytes()).map_err(TestCaseError::fail)?;
        let requested = SystemTime::UNIX_EPOCH + Duration::from_millis(requested_ms);
        let (tok, _) = into_token(resp, requested, POLICY);
        let entry = Entry { token: Some(tok.clone()), endpoint: Some("https://x/token".into()), cooldown: None };
        let back = decode_entry(&encode_entry(&entry, "p")).map_err(TestCaseError::fail)?;
        let b = back.token.ok_or_else(|| TestCaseError::fail("no token"))?;
        prop_assert_eq!(b.secret().expose_secret(), tok.secret().expose_secret());
        prop_assert_eq!(b.token_type(), tok.token_type());
        prop_assert!(b.expires_at() <= tok.expires_at(), "a stored expiry is never later");
        prop_assert!(tok.expires_at().duration_since(b.expires_at()).unwrap_or_default() < Duration::from_millis(1));
        prop_assert_eq!(b.obtained_at(), requested);
    }
}
