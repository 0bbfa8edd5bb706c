//! Token files any program can read, kept fresh by the daemon: the presets (`netrc` read by the real curl, `npmrc`,
//! `docker`, `env` sourced by sh), a template, `on_change` run without a shell or the secret's variable, and
//! templates with unknown placeholders refused at their line.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;

use crate::daemon::{poll, Daemon};
use crate::support::*;

const SECRET: &str = "sink-secret";

fn issuer() -> NodeServer {
    auth0_issuer(SECRET, "300")
}

fn profile(name: &str, idp: &NodeServer, api: &str, sink: &str) -> String {
    format!(
        "[profiles.{name}]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {{ env = \"SINK_SECRET\" }}\napi = \"{api}\"\ntoken_env = \"CHILI_ACCESS_TOKEN\"\n\
         sink = {{ {sink} }}\n",
        idp.base()
    )
}

#[test]
fn presets_and_templates_are_written_for_real_clients_and_on_change_runs_without_the_secret() {
    let idp = issuer();
    let api = NodeServer::start("echo-api.mjs", &[]);
    let home = Home::new();
    let dir = home.path().join("sinks");
    std::fs::create_dir(&dir).unwrap();
    let at = |f: &str| dir.join(f);
    let api_url = format!("http://127.0.0.1:{}", api.ports[0]);
    let on_change = format!(
        "on_change = [\"sh\", \"-c\", \"env > {}; echo reloaded the app\"]",
        at("on_change.env").display()
    );
    let config = [
        profile("netrc", &idp, &api_url, &format!("path = \"{}\", format = \"netrc\"", at("netrc").display())),
        profile(
            "npm",
            &idp,
            &format!("{api_url}/npm/"),
            &format!("path = \"{}\", format = \"npmrc\"", at("npmrc").display()),
        ),
        profile(
            "docker",
            &idp,
            &api_url,
            &format!("path = \"{}\", format = \"docker\"", at("docker.json").display()),
        ) + "registries = [\"registry.example.com:5000\"]\nusername = \"robot\"\n",
        profile("env", &idp, &api_url, &format!("path = \"{}\", format = \"env\"", at("env").display())),
        profile(
            "tmpl",
            &idp,
            &api_url,
            &format!(
                "path = \"{}\", template = \"{{{{ {{header_name}}: {{header_value}} }}}} until {{expires_at}} for {{profile}}\\n\", {on_change}",
                at("tmpl").display()
            ),
        ),
    ]
    .join("\n");
    home.config(&config);
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let _d = Daemon::start_with(
        &home,
        &[],
        &[("SINK_SECRET", SECRET), ("BROKER_LOG", "info")],
    );
    for f in [
        "netrc",
        "npmrc",
        "docker.json",
        "env",
        "tmpl",
        "on_change.env",
    ] {
        poll(f, || at(f).exists());
    }
    let token = |p: &str| {
        home.cmd(["token", p])
            .env("SINK_SECRET", SECRET)
            .output()
            .map(|o| {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                String::from_utf8_lossy(&o.stdout).trim().to_owned()
            })
    };

    // curl reads the netrc file: the api gets Basic username:token for its host.
    let out = home
        .program("curl")
        .args(["-sS", "--netrc-file"])
        .arg(at("netrc"))
        .arg(format!("{api_url}/echo"))
        .output()
        .unwrap();
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("oauth2accesstoken:{}", token("netrc").unwrap()));
    assert_eq!(echo["headers"]["authorization"], format!("Basic {basic}"));
    assert_eq!(
        std::fs::metadata(at("netrc")).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let npmrc = std::fs::read_to_string(at("npmrc")).unwrap();
    assert_eq!(
        npmrc,
        format!(
            "//127.0.0.1:{}/npm/:_authToken={}\n",
            api.ports[0],
            token("npm").unwrap()
        )
    );

    let docker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(at("docker.json")).unwrap()).unwrap();
    let auth = docker["auths"]["registry.example.com:5000"]["auth"]
        .as_str()
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        format!("robot:{}", token("docker").unwrap())
    );

    // The env file is read by sh as it is (and by systemd's EnvironmentFile=).
    let out = home
        .program("sh")
        .arg("-c")
        .arg(format!(
            ". {}; printf '%s %s' \"$BROKER_TOKEN\" \"$CHILI_ACCESS_TOKEN\"",
            at("env").display()
        ))
        .output()
        .unwrap();
    let env_token = token("env").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{env_token} {env_token}")
    );

    let tmpl = std::fs::read_to_string(at("tmpl")).unwrap();
    let t = token("tmpl").unwrap();
    assert!(
        tmpl.starts_with(&format!("{{ Authorization: Bearer {t} }} until 20"))
            && tmpl.ends_with(" for tmpl\n"),
        "{tmpl}"
    );
    // on_change ran without a shell of ours, with neither the secret's variable nor the token in its environment,
    // and what it printed is in the daemon's log.
    let env = std::fs::read_to_string(at("on_change.env")).unwrap();
    assert!(
        !env.contains("SINK_SECRET") && !env.contains(SECRET) && !env.contains(&t),
        "{env}"
    );
    poll("on_change's output in the log", || {
        std::fs::read_to_string(home.path().join("daemon.log"))
            .is_ok_and(|l| l.contains("reloaded the app"))
    });
}

#[test]
fn a_template_with_an_unknown_placeholder_is_refused_at_its_line() {
    let home = Home::new();
    home.config(
        "[profiles.p]\nprovider = \"chili\"\nclient_id = \"cid\"\nclient_secret = { env = \"S\" }\n\
         sink = { path = \"/tmp/x\", template = \"{token} {secret}\" }\n",
    );
    let run = home.run(["check"]);
    run.code(3)
        .stderr_has("config.toml:5:")
        .stderr_has("unknown placeholder `{secret}`")
        .stderr_has("{token}");
    let home = Home::new();
    home.config(
        "[profiles.p]\nprovider = \"chili\"\nclient_id = \"cid\"\nclient_secret = { env = \"S\" }\n\
         sink = { path = \"/tmp/x\", format = \"netrc\", template = \"{token}\" }\n",
    );
    home.run(["check"]).code(3).stderr_has("not both");
}
