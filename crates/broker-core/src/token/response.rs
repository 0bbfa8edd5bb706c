//! A token endpoint's answer (RFC 6749 §5.1): its shape checked, its text made safe to show.
//! *Invariant: an error says what is wrong with the body, never what it holds; a token with a control character is
//! never accepted.*

use super::*;

/// What a token endpoint returned, checked for shape (RFC 6749 §5.1).
#[derive(Debug)]
pub struct TokenResponse {
    /// The `access_token`.
    pub access_token: SecretString,
    /// The `token_type`, `None` when absent (bearer is assumed).
    pub token_type: Option<String>,
    /// `expires_in` in seconds, when present.
    pub expires_in: Option<f64>,
}

/// Parses a 2xx body as a token response. The error string says what is wrong, without the body.
pub fn parse_response(body: &[u8]) -> Result<TokenResponse, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        if body.iter().take(512).any(|b| *b == b'<') {
            "the body is not JSON (it looks like HTML)".to_owned()
        } else if body.is_empty() {
            "the body is empty".to_owned()
        } else {
            "the body is not JSON".to_owned()
        }
    })?;
    let Value::Object(obj) = value else {
        return Err("the body is JSON but not an object".into());
    };
    if let Some(err) = obj.get("error") {
        return Err(format!(
            "the body carries an OAuth error: {}",
            oauth_error_text(&obj, err)
        ));
    }
    let access_token = match obj.get("access_token") {
        Some(Value::String(s)) if !printable(s) => {
            return Err(
                "`access_token` holds a control character or a byte outside printable ASCII".into(),
            )
        }
        Some(Value::String(s)) if !s.is_empty() => SecretString::from(s.clone()),
        Some(Value::String(_)) => return Err("`access_token` is empty".into()),
        Some(_) => return Err("`access_token` is not a string".into()),
        None => return Err("`access_token` is missing".into()),
    };
    let token_type = match obj.get("token_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t))
            if t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("dpop") =>
        {
            Some(t.clone())
        }
        Some(Value::String(t)) => {
            return Err(format!(
                "`token_type` is `{}`, not bearer or DPoP",
                crate::http::provider_text(t)
            ))
        }
        Some(_) => return Err("`token_type` is not a string".into()),
    };
    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_f64().ok_or("`expires_in` is not a usable number")?),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<f64>()
                .map_err(|_| "`expires_in` is a string that is not a number".to_owned())?,
        ),
        Some(_) => return Err("`expires_in` is not a number".into()),
    };
    if let Some(e) = expires_in {
        if !e.is_finite() || e <= 0.0 {
            return Err(format!(
                "`expires_in` is {e}, not a positive number of seconds"
            ));
        }
    }
    Ok(TokenResponse {
        access_token,
        token_type,
        expires_in,
    })
}

/// Whether `s` is made only of printable ASCII (0x20-0x7e): what a token or token type may hold, so it
/// can never add a header line, a credential attribute or a terminal escape (docs/reference.md §2).
pub fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// `error` and `error_description` of an OAuth error object, for messages.
pub fn oauth_error_text(obj: &Map<String, Value>, err: &Value) -> String {
    let code = match err {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let code = crate::http::provider_text(&code.chars().take(100).collect::<String>());
    match obj.get("error_description").and_then(Value::as_str) {
        Some(d) => format!("{code} ({})", crate::http::provider_text(d)),
        None => code,
    }
}
