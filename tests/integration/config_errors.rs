//! Broken configs, each snapshotted (insta): the message names file, line and column where they exist, gives a
//! hint, and the exit code is 3.

use crate::support::*;

const CREDS: &str = "client_id = \"id\"\nclient_secret = \"s\"\n";

fn run_broken(name: &str, config: Option<&str>, args: &[&str]) {
    let home = Home::new();
    if let Some(c) = config {
        std::fs::write(home.path().join("config.toml"), c).unwrap();
        std::fs::set_permissions(
            home.path().join("config.toml"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    std::fs::create_dir_all(home.path().join("a-directory")).unwrap();
    let out = Run::from(home.cmd(args).current_dir(home.path()).output().unwrap());
    assert_eq!(out.code, 3, "{name}: {}", out.stderr);
    insta::assert_snapshot!(name, out.stderr);
}

fn broken(name: &str, config: &str) {
    run_broken(
        name,
        Some(config),
        &["token", "p", "--config", "config.toml"],
    );
}

#[test]
fn broken_configs() {
    broken("syntax_error", "[profiles.p\nprovider = \"ion\"\n");
    broken(
        "unknown_key",
        &format!("[profiles.p]\nprovider = \"ion\"\n{CREDS}scopes = \"read\"\n"),
    );
    broken(
        "wrong_type",
        &format!("[profiles.p]\nprovider = \"ion\"\n{CREDS}legacy_path = \"yes\"\n"),
    );
    broken(
        "unknown_provider",
        &format!("[profiles.p]\nprovider = \"chilli\"\n{CREDS}"),
    );
    broken(
        "unknown_environment",
        &format!("[profiles.p]\nprovider = \"ion\"\nenvironment = \"govv\"\n{CREDS}"),
    );
    broken(
        "missing_client_id",
        "[profiles.p]\nprovider = \"ion\"\nclient_secret = \"s\"\n",
    );
    broken("env_unset", "[profiles.p]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secret = { env = \"BROKER_TEST_UNSET_VAR\" }\n");
    broken("file_missing", "[profiles.p]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secret = { file = \"missing-secret\" }\n");
    broken("command_failing", "[profiles.p]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secret = { command = [\"sh\", \"-c\", \"echo oops; exit 7\"] }\n");
    broken(
        "bad_duration",
        &format!("[profiles.p]\nprovider = \"ion\"\n{CREDS}min_ttl = \"5 minutes-ish\"\n"),
    );
    broken(
        "bad_url",
        &format!(
            "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"login.example.com/token\"\n{CREDS}"
        ),
    );
    broken("non_loopback_http", &format!("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"http://login.example.com/token\"\n{CREDS}"));
    broken(
        "header_without_token",
        &format!("[profiles.p]\nprovider = \"chili\"\n{CREDS}header = \"Authorization: Bearer\"\n"),
    );
    broken(
        "unknown_kind",
        &format!("[profiles.p]\nkind = \"keycloack\"\n{CREDS}"),
    );
    broken(
        "unknown_top_level_table",
        &format!("[profile.p]\nprovider = \"ion\"\n{CREDS}"),
    );
    broken("bad_secret_source", "[profiles.p]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secret = { enviroment = \"X\" }\n");
    run_broken(
        "config_is_a_directory",
        None,
        &["token", "p", "--config", "a-directory"],
    );
    run_broken(
        "unknown_profile",
        Some(&format!("[profiles.ion-prod]\nprovider = \"ion\"\n{CREDS}")),
        &["token", "ion-prd", "--config", "config.toml"],
    );
}

#[test]
fn config_excerpts_never_show_a_literal_secret() {
    let home = Home::new();
    home.config("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"https://x.example/t\"\nclient_id = \"id\"\nclient_secret = \"hunter2\", bogus = 1\n");
    let r = home.run(["token", "p"]);
    r.code(3).stderr_has("[redacted]");
    assert!(!r.stderr.contains("hunter2"), "{}", r.stderr);
}
