//! A warm `Broker::token()` (a fresh token in memory) against the floor it is built on: a bare
//! `DashMap::get` + `Arc::clone`, measured in the same run. Target: within 2x of the baseline.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use broker_core::cache::CacheKey;
use broker_core::config::CacheMode;
use broker_core::token::TokenResponse;
use broker_core::{AccessToken, Broker, FetchContext, Fetched, Policy, Provider, TokenRequest};
use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use futures::FutureExt;
use secrecy::SecretString;

/// A provider that answers from memory, so the bench measures the broker and not a network.
struct Local;

#[async_trait]
impl Provider for Local {
    fn describe(&self) -> String {
        "bench".into()
    }
    fn cache_key(&self) -> broker_core::Result<CacheKey> {
        Ok(CacheKey::from_parts([b"bench".as_slice()]))
    }
    async fn fetch(&self, cx: &FetchContext<'_>) -> broker_core::Result<Fetched> {
        Ok(Fetched {
            response: TokenResponse {
                access_token: SecretString::from("token".to_owned()),
                token_type: Some("Bearer".into()),
                expires_in: Some(3600.0),
            },
            requested_at: cx.clock.now(),
            endpoint: None,
        })
    }
}

fn warm(c: &mut Criterion) {
    let policy = Policy {
        cache: CacheMode::Memory,
        ..Policy::default()
    };
    let broker = Broker::builder()
        .profile("p", Arc::new(Local), policy)
        .build();
    let req = TokenRequest::default();
    // Fill the cache; afterwards every `token()` completes on its first poll.
    let first = broker.token("p", &req).now_or_never();
    assert!(
        matches!(first, Some(Ok(_))),
        "the first fetch completes at once"
    );

    let map: DashMap<String, Arc<AccessToken>> = DashMap::new();
    let now = SystemTime::now();
    map.insert(
        "p".into(),
        Arc::new(AccessToken::new(
            SecretString::from("token".to_owned()),
            "Bearer",
            now,
            now + Duration::from_secs(3600),
        )),
    );

    let mut g = c.benchmark_group("warm");
    g.bench_function("baseline: DashMap::get + Arc::clone", |b| {
        b.iter(|| black_box(map.get(black_box("p")).map(|v| Arc::clone(v.value()))))
    });
    g.bench_function("Broker::token (fresh in memory)", |b| {
        b.iter(|| black_box(broker.token(black_box("p"), &req).now_or_never()))
    });
    g.finish();
}

/// A warm read of the disk cache (what every `broker token` process does) against `std::fs::read` of the same
/// entry: the trust checks on the open file (docs/reference.md §3, trust) must cost next to nothing.
fn disk(c: &mut Criterion) {
    use broker_core::cache::{DiskCache, Entry};
    let dir = tempfile::tempdir().map_err(|e| e.to_string());
    let Ok(dir) = dir else { return };
    let cache = DiskCache::new(dir.path().join("broker"));
    let key = CacheKey::from_parts([b"bench".as_slice()]);
    let now = SystemTime::now();
    let entry = Entry {
        token: Some(AccessToken::new(
            SecretString::from("x".repeat(900)),
            "Bearer",
            now,
            now + Duration::from_secs(3600),
        )),
        endpoint: Some("https://idp.example/token".into()),
        cooldown: None,
    };
    assert!(cache.write(&key, &entry, "p").is_ok(), "entry written");
    let path = cache.dir().join(format!("{}.json", key.hex()));
    let mut g = c.benchmark_group("disk");
    g.bench_function("baseline: std::fs::read of the entry", |b| {
        b.iter(|| black_box(std::fs::read(black_box(&path)).map(|v| v.len())))
    });
    g.bench_function("DiskCache::read (checked open + parse)", |b| {
        b.iter(|| black_box(cache.read(black_box(&key))))
    });
    g.finish();
}

criterion_group!(benches, warm, disk);
criterion_main!(benches);
