//! The cache at rest: entries sealed under the user's key in the keyring, bound to their directory, so a copied
//! cache directory serves nothing elsewhere; `cache_encryption = "off"` for hosts with no keyring.

use crate::support::*;

const SECRET: &str = "at-rest-secret";

#[test]
fn a_copied_cache_directory_serves_nothing_elsewhere_and_is_quietly_replaced() {
    let idp = auth0_issuer(SECRET, "300");
    let config = format!(
        "[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"cid\"\nclient_secret = {SECRET:?}\n",
        idp.base()
    );
    let a = Home::new();
    a.config(&config);
    let token = a.run(["token", "chili"]).success().token();
    assert_eq!(
        a.run(["token", "chili"]).success().token(),
        token,
        "a warm hit"
    );
    assert_eq!(idp.issued(), 1);
    // At rest the entry holds neither the token nor anything readable of it.
    let entry = a.cache_entries().pop().expect("an entry");
    let raw = std::fs::read(&entry).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains(&token));
    assert!(!String::from_utf8_lossy(&raw).contains("access_token"));
    // The directory copied to another home (a backup restored, an image layer): nothing is served from it, no
    // error, one new fetch, and the copy is replaced by an entry of the new home's.
    let b = Home::new();
    b.config(&config);
    std::fs::create_dir_all(b.cache_dir().parent().unwrap()).unwrap();
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(a.cache_dir())
        .arg(b.cache_dir())
        .status()
        .unwrap();
    assert!(copied.success());
    let run = b.run(["token", "chili"]);
    let again = run.success().token();
    assert_ne!(again, token, "the copied token was served");
    assert!(
        !run.stderr.contains("cache") && !run.stderr.contains("error"),
        "{}",
        run.stderr
    );
    assert_eq!(idp.issued(), 2);
    assert_eq!(
        b.run(["token", "chili"]).success().token(),
        again,
        "the replacement serves"
    );
    // `cache_encryption = "off"`: plain entries, for hosts with no keyring.
    let c = Home::new();
    c.config(&format!("cache_encryption = \"off\"\n{config}"));
    let plain = c.run(["token", "chili"]).success().token();
    let text = std::fs::read_to_string(c.cache_entries().pop().expect("an entry")).unwrap();
    assert!(text.contains(&plain));
}
