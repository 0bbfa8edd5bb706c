//! A profile's `dpop` (RFC 9449, docs/reference.md §10): the setting and its parser. The key and proofs are
//! `crate::dpop`'s.

use super::*;

/// `dpop`: whether a profile's tokens are bound to a key (RFC 9449, docs/reference.md §10), and which key.
#[derive(Debug, Clone, Default)]
pub struct Dpop {
    /// Off, required, or optional.
    pub mode: DpopMode,
    /// The key; generated unless the profile names one.
    pub key: DpopKeySource,
}

/// Whether DPoP is asked for, and whether a bearer token is then accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopMode {
    /// Plain bearer tokens (default).
    #[default]
    Off,
    /// Proofs are sent, and a token that is not `token_type = DPoP` is an error.
    Required,
    /// Proofs are sent; a bearer token is accepted and used as one.
    Optional,
}

/// Where a DPoP key comes from.
#[derive(Debug, Clone, Default)]
pub enum DpopKeySource {
    /// Made once and kept where the profile's tokens are (beside the disk cache; in memory otherwise).
    #[default]
    Generated,
    /// A PEM EC P-256 private key from a secret source (read whole, with a file's ownership checks).
    Source(SecretSource),
}

impl Dpop {
    /// Whether proofs are sent.
    pub fn enabled(&self) -> bool {
        self.mode != DpopMode::Off
    }
}

/// `dpop = true | false | "optional"`, or `{ key = "generated" | { file = ... }, alg = "ES256", optional = bool }`.
pub(super) fn p_dpop(cx: &Ctx, key: &str, v: &Val) -> Result<Dpop> {
    let mode_of = |optional: bool| {
        if optional {
            DpopMode::Optional
        } else {
            DpopMode::Required
        }
    };
    match v.get_ref() {
        DeValue::Boolean(b) => Ok(Dpop {
            mode: if *b {
                DpopMode::Required
            } else {
                DpopMode::Off
            },
            key: DpopKeySource::Generated,
        }),
        DeValue::String(s) if s == "optional" || s == "required" => Ok(Dpop {
            mode: mode_of(s == "optional"),
            key: DpopKeySource::Generated,
        }),
        DeValue::Table(t) => {
            let mut dpop = Dpop {
                mode: DpopMode::Required,
                key: DpopKeySource::Generated,
            };
            for (k, val) in t.iter() {
                match k.get_ref().as_ref() {
                    "key" => dpop.key = match val.get_ref() {
                        DeValue::String(s) if s == "generated" => DpopKeySource::Generated,
                        DeValue::Table(_) => DpopKeySource::Source(p_secret(cx, "key", val)?),
                        _ => return Err(cx.err(
                            val.span(),
                            "`key` is \"generated\" or a secret source naming a PEM EC P-256 key",
                            Some(
                                "for example key = { file = \"~/.config/broker/dpop.pem\" }".into(),
                            ),
                        )),
                    },
                    "alg" => {
                        if cx.string("alg", val)? != crate::dpop::ALG {
                            return Err(cx.err(
                                val.span(),
                                format!("DPoP proofs are signed with {} only", crate::dpop::ALG),
                                None,
                            ));
                        }
                    }
                    "optional" => dpop.mode = mode_of(p_bool(cx, "optional", val)?),
                    _ => return Err(cx.unknown_key(k, &["key", "alg", "optional"], "`dpop`")),
                }
            }
            Ok(dpop)
        }
        _ => Err(cx.err(
            v.span(),
            format!(
                "`{key}` must be true, false, \"optional\" or a table {{ key, alg, optional }}"
            ),
            None,
        )),
    }
}
