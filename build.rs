//! Links the release `broker` binary as a position-dependent executable on Linux (docs/ARCHITECTURE.md, "Decisions"):
//! a PIE binary's loader must apply some 10,000 relocations and write 160 KiB of relocated data before `main` on
//! every call, which is most of what separates a warm `broker token` from a minimal program (scripts/bench-cli).
//! `BROKER_PIE=1` at build time keeps PIE, for distributions whose policy requires it.
fn main() {
    println!("cargo:rerun-if-env-changed=BROKER_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if linux && release && std::env::var_os("BROKER_PIE").is_none() {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
