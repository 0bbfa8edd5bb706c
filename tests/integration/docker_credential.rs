//! `docker-credential-broker` with the real skopeo, through `credHelpers` in its auth file, against a registry front
//! (tests/servers/registry-front.mjs) that accepts only a JWT the issuer signed; the helper protocol's other
//! actions, and registries no profile names.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::support::*;

const SECRET: &str = "registry-secret";

struct Setup {
    home: Home,
    _idp: NodeServer,
    front: NodeServer,
    bin_dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let idp = auth0_issuer(SECRET, "300");
    let front = NodeServer::start(
        "registry-front.mjs",
        &[
            ("ISSUER", &idp.base()),
            ("AUDIENCE", "https://chiligrafx.com"),
        ],
    );
    let home = Home::new();
    home.config(&format!(
        "[profiles.other]\nprovider = \"chili\"\ntoken_url = \"{0}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {SECRET:?}\n\n\
         [profiles.registry]\nprovider = \"chili\"\ntoken_url = \"{0}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {SECRET:?}\nregistries = [\"127.0.0.1:{1}\"]\nusername = \"robot\"\n",
        idp.base(),
        front.port
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    // Installed as the docs say: a link named docker-credential-broker on PATH.
    let bin_dir = home.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.join("docker-credential-broker")).unwrap();
    Setup {
        home,
        _idp: idp,
        front,
        bin_dir,
    }
}

impl Setup {
    fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// `docker-credential-broker ACTION` with `input` on stdin: exit code and stdout.
    fn helper(&self, action: &str, input: &str) -> (Option<i32>, String) {
        let mut child = self
            .home
            .program(self.bin_dir.join("docker-credential-broker"))
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn skopeo(&self, auth: &serde_json::Value) -> std::process::Output {
        let auth_file = self.home.path().join("auth.json");
        std::fs::write(&auth_file, auth.to_string()).unwrap();
        self.home
            .program("skopeo")
            .env("PATH", self.path_var())
            .args(["list-tags", "--tls-verify=false", "--authfile"])
            .arg(&auth_file)
            .arg(format!("docker://127.0.0.1:{}/team/app", self.front.port))
            .output()
            .unwrap()
    }
}

#[test]
fn skopeo_lists_tags_with_the_token_from_the_credential_helper() {
    let s = setup();
    let registry = format!("127.0.0.1:{}", s.front.port);
    // Without the helper the registry refuses: it really asks for credentials.
    let refused = s.skopeo(&serde_json::json!({}));
    assert!(
        !refused.status.success(),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let out = s.skopeo(&serde_json::json!({ "credHelpers": { registry.clone(): "broker" } }));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&http_get(s.front.port, "/__seen")).unwrap()[0],
        "robot"
    );

    let (code, got) = s.helper("get", &format!("https://{registry}/v2/\n"));
    assert_eq!(code, Some(0));
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    let token = s.home.run(["token", "registry"]).success().token();
    assert_eq!(got["Secret"], token.as_str());
    assert_eq!(got["Username"], "robot");
    assert_eq!(got["ServerURL"], format!("https://{registry}/v2/"));
}

#[test]
fn the_helper_answers_only_for_registries_a_profile_names_and_stores_nothing() {
    let s = setup();
    let (code, out) = s.helper("get", "registry.example.com\n");
    assert_eq!(code, Some(1));
    assert_eq!(out.trim(), "credentials not found in native keychain");

    let (code, out) = s.helper("list", "");
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed,
        serde_json::json!({ format!("127.0.0.1:{}", s.front.port): "robot" })
    );

    let (code, out) = s.helper(
        "store",
        r#"{"ServerURL":"registry.example.com","Username":"u","Secret":"s3cr3t"}"#,
    );
    assert_ne!(code, Some(0));
    assert!(
        out.contains("does not store credentials") && !out.contains("s3cr3t"),
        "{out}"
    );
    let (code, _) = s.helper("erase", "registry.example.com\n");
    assert_ne!(code, Some(0));
    assert!(s.home.cache_entries().is_empty(), "nothing was fetched");
}
