//! `broker demo` runs by itself, shows a cold fetch and a warm hit per profile, and never prints a token.

use crate::support::*;

#[test]
fn demo_shows_one_upstream_call_then_none_and_no_token() {
    let home = Home::new();
    let out = home.run(["demo"]);
    out.success();
    assert_eq!(
        out.stdout.matches("upstream calls: 1").count(),
        2,
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("upstream calls: 0").count(),
        2,
        "{}",
        out.stdout
    );
    out.stdout_has("ion-demo")
        .stdout_has("chili-demo")
        .stdout_has("fingerprint")
        .stdout_has("\"aud\":\"https://chiligrafx.com\"");
    assert!(
        !out.stdout.contains("eyJ"),
        "a token was printed:\n{}",
        out.stdout
    );
    // Nothing was written to the user's directories.
    assert!(!home.path().join("cache").exists() && !home.path().join("config").exists());
}
