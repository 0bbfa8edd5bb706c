use super::*;

fn load(provider: &str, config: &str) -> Result<Config> {
    let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).map_err(|e| Error::internal(e.to_string()))?;
    Config::load(&LoadOptions {
        builtin_providers: vec![("p".into(), provider.into())],
        providers_dir: None,
        config_file: Some(path),
        config_file_required: true,
    })
}

const PROVIDER: &str = r#"
kind = "keycloak"
realm = "api-keys"
default_environment = "production"
header = "Authorization: {token}"
[environments.production]
auth_server = "https://auth.example.com"
[environments.staging]
aliases = ["sandbox"]
auth_server = "https://staging-auth.example.com"
min_ttl = "2m"
"#;

/// The error's line, with its hint.
fn err(provider: &str, config: &str) -> String {
    load(provider, config)
        .and_then(|c| c.resolve("x", &Overrides::default()))
        .err()
        .map(|e| {
            let hint = e
                .diagnostic()
                .and_then(|d| d.hint.clone())
                .unwrap_or_default();
            format!("{e} (hint: {hint})")
        })
        .unwrap_or_default()
}

#[test]
fn precedence_is_provider_env_defaults_profile_cli() {
    let c = load(
        PROVIDER,
        r#"
[defaults]
min_ttl = "3m"
max_ttl = "1h"
[profiles.x]
provider = "p"
environment = "sandbox"
client_id = "id"
client_secret = "s"
max_ttl = "2h"
"#,
    );
    let s = c.and_then(|c| {
        c.resolve(
            "x",
            &Overrides {
                scope: Some("a b".into()),
                ..Default::default()
            },
        )
    });
    let s = s.map_err(|e| e.to_string());
    let s = match s {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(s.environment.as_deref(), Some("staging"));
    assert_eq!(
        s.auth_server.as_ref().map(Url::as_str),
        Some("https://staging-auth.example.com/")
    );
    assert_eq!(s.min_ttl, Duration::from_secs(180));
    assert_eq!(s.max_ttl, Duration::from_secs(7200));
    assert_eq!(s.scope.as_deref(), Some("a b"));
    assert_eq!(s.header, "Authorization: {token}");
    assert_eq!(
        s.configured_endpoint(),
        "https://staging-auth.example.com/realms/api-keys/protocol/openid-connect/token"
    );
}

#[test]
fn unknown_key_names_file_line_column_and_closest() {
    let e = err(
        PROVIDER,
        "[profiles.x]\nprovider = \"p\"\nclinet_id = \"a\"\n",
    );
    assert!(
        e.contains("config.toml:3:1: unknown key `clinet_id`"),
        "{e}"
    );
    assert!(e.contains("did you mean `client_id`?"), "{e}");
}

#[test]
fn unknown_environment_suggests() {
    let e = err(PROVIDER, "[profiles.x]\nprovider = \"p\"\nenvironment = \"stagin\"\nclient_id = \"a\"\nclient_secret = \"b\"\n");
    assert!(e.contains("config.toml:3:15:"), "{e}");
    assert!(e.contains("did you mean `staging`?"), "{e}");
}

#[test]
fn dpop_values_are_checked_where_they_are_written() {
    let base = "[profiles.x]\nprovider = \"p\"\nclient_id = \"a\"\nclient_secret = \"b\"\n";
    for (line, want) in [
        (
            "dpop = \"yes\"",
            "config.toml:5:8: `dpop` must be true, false, \"optional\"",
        ),
        (
            "dpop = { alg = \"RS256\" }",
            "config.toml:5:16: DPoP proofs are signed with ES256 only",
        ),
        (
            "dpop = { key = \"-----BEGIN\" }",
            "config.toml:5:16: `key` is \"generated\" or a secret source",
        ),
        ("dpop = { optinal = true }", "did you mean `optional`?"),
    ] {
        let e = err(PROVIDER, &format!("{base}{line}\n"));
        assert!(e.contains(want), "{line}: {e}");
        assert!(!e.contains("-----BEGIN"), "{e}");
    }
    let c = load(
        PROVIDER,
        &format!("{base}dpop = {{ key = {{ file = \"/k.pem\" }}, optional = true }}\n"),
    )
    .unwrap();
    let s = c.resolve("x", &Overrides::default()).unwrap();
    assert_eq!(s.dpop().mode, DpopMode::Optional);
    assert!(s.secret_sources().iter().any(|(f, _, _)| *f == "dpop"));
}

#[test]
fn allow_rules_name_users_and_groups_that_exist() {
    let base = "[profiles.x]\nprovider = \"p\"\nclient_id = \"a\"\nclient_secret = \"b\"\n";
    for (line, want) in [
        (
            "allow = { uids = [\"no-such-user-zz\"] }",
            "config.toml:5:19: no such user on this machine",
        ),
        (
            "allow = { gids = [4000000000] }",
            "config.toml:5:19: no such group on this machine",
        ),
        (
            "allow = { exe = [\"kubectl\"] }",
            "config.toml:5:18: `exe` holds absolute paths",
        ),
        (
            "allow = { unit = [\"a.service\"] }",
            "did you mean `units`?",
        ),
    ] {
        let e = err(PROVIDER, &format!("{base}{line}\n"));
        assert!(e.contains(want), "{line}: {e}");
    }
    let c = load(PROVIDER, &format!("{base}allow = {{ uids = [\"root\", 0], gids = [\"root\"], units = [\"b.service\"] }}\n")).unwrap();
    let s = c.resolve("x", &Overrides::default()).unwrap();
    let allow = s.allow().unwrap();
    assert_eq!(
        (allow.uids.as_slice(), allow.gids.as_slice()),
        (&[0, 0][..], &[0][..])
    );
}

#[test]
fn audit_is_a_mode_or_a_table() {
    let c = load(PROVIDER, "audit = \"required\"\n").unwrap();
    assert_eq!(c.audit().mode, AuditMode::Required);
    assert_eq!(c.audit().sink, AuditSink::File);
    let c = load(PROVIDER, "[audit]\nto = \"syslog\"\nkeep = 3\n").unwrap();
    assert_eq!((c.audit().mode, c.audit().keep), (AuditMode::On, 3));
    assert_eq!(c.audit().sink, AuditSink::Syslog("/dev/log".into()));
    let e = load(PROVIDER, "audit = \"sometimes\"\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("config.toml:1:9: unknown audit `sometimes`"),
        "{e}"
    );
    assert_eq!(
        load(PROVIDER, "").unwrap().cache_encryption(),
        CacheEncryption::Keyring
    );
}

#[test]
fn wrong_type_and_syntax_errors_have_positions() {
    let e = err(PROVIDER, "[profiles.x]\nmin_ttl = 5\n");
    assert!(
        e.contains("config.toml:2:11: `min_ttl` must be a duration"),
        "{e}"
    );
    let e = err(PROVIDER, "[profiles.x\n");
    assert!(
        e.contains("config.toml:1:") && e.contains("TOML syntax error"),
        "{e}"
    );
}

#[test]
fn plain_http_to_remote_hosts_is_refused() {
    let e = err("", "[profiles.x]\nkind = \"oauth2\"\ntoken_url = \"http://example.com/token\"\nclient_id = \"a\"\nclient_secret = \"b\"\n");
    assert!(
        e.contains("config.toml:3:13:") && e.contains("allow_http"),
        "{e}"
    );
    let ok = load("", "[profiles.x]\nkind = \"oauth2\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"a\"\nclient_secret = \"b\"\n")
        .and_then(|c| c.resolve("x", &Overrides::default()));
    assert!(ok.is_ok());
}

/// docs/providers.md's field table names exactly the fields the code accepts (docs/reference.md §1).
#[test]
fn the_field_reference_lists_every_field_and_no_other() {
    let doc = include_str!("../../../../docs/providers.md");
    let table = doc
        .split("## Fields")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or("");
    let mut documented: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .flat_map(|cell| cell.split(", "))
        .filter_map(|name| name.strip_prefix('`')?.strip_suffix('`'))
        .collect();
    documented.sort_unstable();
    let mut accepted: Vec<&str> = Fields::NAMES
        .iter()
        .copied()
        .chain(["provider", "environment"]) // profile tables
        .chain(["description", "default_environment", "environments"]) // provider files
        .collect();
    accepted.sort_unstable();
    assert_eq!(
        documented, accepted,
        "docs/providers.md's field table is stale"
    );
}

#[test]
fn excerpts_never_show_a_literal_secret() {
    let check = |line: &str, col: usize, width: usize, want: (&str, usize, usize)| {
        let (l, c, w) = redact_line_of(line, 1, col, width);
        assert_eq!((l.as_str(), c, w), want, "{line}");
    };
    check(
        r#"client_secret = "hunter2", bogus = 1"#,
        27,
        5,
        (r#"client_secret = "[redacted]", bogus = 1"#, 30, 5),
    );
    check(
        r#"client_id = 'abc"#,
        12,
        4,
        (r#"client_id = '[redacted]"#, 12, 11),
    );
    check(
        r#""private_key"="a\"b" x"#,
        0,
        1,
        (r#""private_key"="[redacted]" x"#, 0, 1),
    );
    check(
        "client_secret = { env = \"X\" }",
        0,
        1,
        ("client_secret = { env = \"X\" }", 0, 1),
    );
    // A multi-line string is redacted whole, on its first line, its last and any between.
    check(
        r#"client_secret = """hunter2hunter2""" junk"#,
        36,
        4,
        (r#"client_secret = """[redacted]""" junk"#, 32, 4),
    );
    let pem =
        "[profiles.p]\nprivate_key = '''-----BEGIN\nMIIEsecret\nsecret-----END''' junk\nx = 1\n";
    for (line, want) in [
        (2, "private_key = '''[redacted]"),
        (3, "[redacted]"),
        (4, "[redacted]''' junk"),
        (5, "x = 1"),
    ] {
        assert_eq!(redact_line_of(pem, line, 0, 1).0, want, "line {line}");
    }
    // Whole words only: `token_url`'s value is not a secret, `[shared_cache] url`'s may hold a password.
    check(
        r#"token_url = "https://a/t" url = "redis://:pw@h""#,
        0,
        1,
        (r#"token_url = "https://a/t" url = "[redacted]""#, 0, 1),
    );
    let err = Config::parse("[profiles.p]\nkind = \"oauth2\"\nclient_secret = \"hunter2\nx = 1\n")
        .err()
        .and_then(|e| e.diagnostic().map(|d| d.excerpt.clone()))
        .unwrap_or_default();
    assert!(err.starts_with("client_secret = \"[redacted]"), "{err}");
}

#[test]
fn unknown_profile_lists_known_ones() {
    let e = load(PROVIDER, "[profiles.ion-prod]\nprovider = \"p\"\n")
        .and_then(|c| c.resolve("ion-prd", &Overrides::default()))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("did you mean `ion-prod`?") && e.contains("known profiles: ion-prod"),
        "{e}"
    );
}

#[test]
fn shared_cache_tables_are_checked_where_they_are_written() {
    let ok = load(
        PROVIDER,
        "[shared_cache]\nurl = \"redis://:pw@127.0.0.1:6379/0\"\nkey = { env = \"FLEET_KEY\" }\n",
    )
    .unwrap();
    let def = ok.shared_cache().unwrap();
    assert_eq!(def.prefix, "broker");
    assert_eq!(def.shown_url(), "redis://:***@127.0.0.1:6379/0");
    for (text, says) in [
        (
            "[shared_cache]\nurl = \"http://x\"\nkey = \"k\"\n",
            "must be a redis://",
        ),
        ("[shared_cache]\nurl = \"redis://x\"\n", "needs `key`"),
        (
            "[shared_cache]\nurl = \"redis://x\"\nkey = \"k\"\nprefx = \"a\"\n",
            "did you mean `prefix`?",
        ),
    ] {
        let e = err(PROVIDER, text);
        assert!(e.contains(says), "{e}");
        assert!(e.contains("config.toml:"), "names the file and line: {e}");
    }
}

#[test]
fn every_declared_field_is_a_row_of_broker_check() {
    let config = Config::parse(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"https://a.example/t\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    let settings = config.resolve("p", &Default::default()).unwrap();
    let rows = settings.describe();
    let shown: Vec<&str> = rows.iter().map(|(name, _)| *name).collect();
    for field in Fields::NAMES {
        assert!(
            shown.contains(field),
            "`{field}` is declared but `broker check` does not show it"
        );
    }
    assert!(
        !rows.iter().any(|(_, v)| v.contains('s') && v == "s"),
        "a literal secret is shown: {rows:?}"
    );
}
