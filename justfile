# Conveniences only: the README's commands do not need `just`.

demo:
    cargo run --release -- demo

test:
    scripts/test

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --all-features -- -D warnings

bench:
    cargo bench -p broker-core
    scripts/bench-cli
