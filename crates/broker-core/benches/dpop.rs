//! The cost of one DPoP proof (RFC 9449): what the proxy, the middleware and `broker curl` pay per request on top of
//! a warm token. Target: under 50 µs for ES256 on this machine. Measured beside the floor it is built on, one
//! ES256 signature of the same bytes, in the same run.

use std::hint::black_box;
use std::time::SystemTime;

use broker_core::dpop::{DpopKey, ProofFor};
use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

fn proof(c: &mut Criterion) {
    let Ok((key, _)) = DpopKey::generate() else {
        panic!("no key");
    };
    let token =
        "eyJhbGciOiJFUzI1NiJ9.eyJjbmYiOnsiamt0IjoiYWJjIn0sImV4cCI6MTl9.c2lnbmF0dXJl".repeat(4);
    let url = "https://api.example.com/v1/runs?first=10&after=abc";
    c.bench_function("dpop proof (ES256, with ath)", |b| {
        b.iter(|| {
            black_box(key.proof(black_box(&ProofFor {
                method: "GET",
                url,
                token: Some(&token),
                nonce: None,
                now: SystemTime::now(),
            })))
        })
    });
    let rng = SystemRandom::new();
    let Ok(doc) = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng) else {
        panic!("no key");
    };
    let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
    else {
        panic!("no key");
    };
    let input = [b'a'; 330];
    c.bench_function("baseline: one ES256 signature", |b| {
        b.iter(|| black_box(pair.sign(&rng, black_box(&input))))
    });
}

criterion_group!(benches, proof);
criterion_main!(benches);
