//! The config file's tables beside `[defaults]` and `[profiles]`: `[proxy]`, `[audit]`, `[shared_cache]`, each
//! checked where it is written.

use super::*;

/// `[proxy]`: `listen` (a loopback address), `socket`, `retry_body_limit` (bytes), `upstream_timeout`.
pub(super) fn p_proxy(cx: &Ctx, v: &Val) -> Result<ProxyDef> {
    let t = cx.table("proxy", v)?;
    let mut def = ProxyDef {
        listen: None,
        socket: None,
        retry_body_limit: 1 << 20,
        upstream_timeout: Duration::from_secs(60),
    };
    for (k, val) in t.iter() {
        match k.get_ref().as_ref() {
            "listen" => {
                let addr: std::net::SocketAddr =
                    cx.string("listen", val)?.parse().map_err(|_| {
                        cx.err(
                            val.span(),
                            "`listen` is an address and port, like \"127.0.0.1:8081\"",
                            None,
                        )
                    })?;
                if !addr.ip().is_loopback() {
                    return Err(cx.err(
                        val.span(),
                        "`listen` must be a loopback address: the proxy hands out tokens to whoever reaches it",
                        None,
                    ));
                }
                def.listen = Some(addr);
            }
            "socket" => def.socket = Some(p_path(cx, "socket", val)?),
            "retry_body_limit" => {
                def.retry_body_limit = match val.get_ref() {
                    DeValue::Integer(i) => i.as_str().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| cx.wrong_type("retry_body_limit", val, "a number of bytes"))?;
            }
            "upstream_timeout" => def.upstream_timeout = p_duration(cx, "upstream_timeout", val)?,
            _ => {
                return Err(cx.unknown_key(
                    k,
                    &["listen", "socket", "retry_body_limit", "upstream_timeout"],
                    "[proxy]",
                ))
            }
        }
    }
    Ok(def)
}

const AUDIT_MODES: [(&str, AuditMode); 3] = [
    ("on", AuditMode::On),
    ("off", AuditMode::Off),
    ("required", AuditMode::Required),
];

/// `audit = "on" | "off" | "required"`, or the `[audit]` table: `mode` (`on`, `off`, `required`), `to` (`file`, `syslog`), `syslog_socket`, `max_size` (bytes),
/// `keep`.
pub(super) fn p_audit(cx: &Ctx, v: &Val) -> Result<AuditDef> {
    let mut def = AuditDef::default();
    // `audit = "required"`: the mode alone, the rest as by default.
    if v.get_ref().as_str().is_some() {
        def.mode = p_choice(cx, "audit", v, &AUDIT_MODES)?;
        return Ok(def);
    }
    let t = cx.table("audit", v)?;
    let mut to_syslog = false;
    let mut socket = PathBuf::from("/dev/log");
    let number = |key: &str, val: &Val| -> Result<u64> {
        match val.get_ref() {
            DeValue::Integer(i) => i.as_str().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| cx.wrong_type(key, val, "a positive number"))
    };
    for (k, val) in t.iter() {
        match k.get_ref().as_ref() {
            "mode" => {
                def.mode = p_choice(
                    cx,
                    "mode",
                    val,
                    &[
                        ("on", AuditMode::On),
                        ("off", AuditMode::Off),
                        ("required", AuditMode::Required),
                    ],
                )?
            }
            "to" => to_syslog = p_choice(cx, "to", val, &[("file", false), ("syslog", true)])?,
            "syslog_socket" => socket = p_path(cx, "syslog_socket", val)?,
            "max_size" => def.max_size = number("max_size", val)?.max(4096),
            "keep" => {
                def.keep = usize::try_from(number("keep", val)?)
                    .unwrap_or(usize::MAX)
                    .clamp(1, 100)
            }
            _ => {
                return Err(cx.unknown_key(
                    k,
                    &["mode", "to", "syslog_socket", "max_size", "keep"],
                    "[audit]",
                ))
            }
        }
    }
    if to_syslog {
        def.sink = AuditSink::Syslog(socket);
    }
    Ok(def)
}

/// `[shared_cache]`: `url` (`redis://`, `rediss://`, `redis+unix://`), `key` (a secret source), `prefix`.
pub(super) fn p_shared_cache(cx: &Ctx, v: &Val) -> Result<SharedCacheDef> {
    let t = cx.table("shared_cache", v)?;
    let mut url = None;
    let mut key = None;
    let mut prefix = "broker".to_owned();
    let mut timeout = DEFAULT_SHARED_CACHE_TIMEOUT;
    for (k, val) in t.iter() {
        match k.get_ref().as_ref() {
            "url" => {
                let s = cx.string("url", val)?;
                let parsed = Url::parse(s).map_err(|e| {
                    cx.err(val.span(), format!("`url` is not a valid URL: {e}"), None)
                })?;
                if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                    return Err(cx.err(
                        val.span(),
                        "`url` must be a redis://, rediss:// or redis+unix:// URL",
                        None,
                    ));
                }
                url = Some(s.to_owned());
            }
            "key" => key = Some(p_secret(cx, "key", val)?),
            "prefix" => {
                prefix = p_str(cx, "prefix", val)?;
                if prefix.is_empty() || prefix.contains(char::is_whitespace) {
                    return Err(cx.err(val.span(), "`prefix` must be a non-empty word", None));
                }
            }
            "timeout" => timeout = p_duration(cx, "timeout", val)?,
            _ => {
                return Err(cx.unknown_key(
                    k,
                    &["url", "key", "prefix", "timeout"],
                    "[shared_cache]",
                ))
            }
        }
    }
    let need = |what: &str, example: &str| {
        cx.err(
            v.span(),
            format!("[shared_cache] needs `{what}`"),
            Some(format!("for example {example}")),
        )
    };
    Ok(SharedCacheDef {
        url: url.ok_or_else(|| need("url", "url = \"redis://127.0.0.1:6379/0\""))?,
        key: key.ok_or_else(|| need("key", "key = { file = \"/etc/broker/fleet.key\" }"))?,
        prefix,
        timeout,
        position: cx.origin(v.span()).position(),
    })
}
