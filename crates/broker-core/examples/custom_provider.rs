//! A token source of your own behind the broker's cache: implement [`Provider`] (a cache key and a fetch), register
//! it, and callers get the same caching, single flight, retries and cool-downs as the built-in kinds. This one asks
//! nothing upstream (it mints numbered tokens), so it runs anywhere:
//!
//! ```sh
//! cargo run -p broker-core --example custom_provider
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use broker_core::cache::CacheKey;
use broker_core::token::TokenResponse;
use broker_core::{Broker, FetchContext, Fetched, Policy, Provider, TokenRequest};
use secrecy::{ExposeSecret, SecretString};

/// Mints `token-1`, `token-2`, ... valid for an hour.
struct Minter {
    minted: AtomicU32,
}

#[async_trait]
impl Provider for Minter {
    fn describe(&self) -> String {
        "the example minter".into()
    }

    /// Everything that decides which token a fetch returns goes into the key: here, only the minter's identity.
    fn cache_key(&self) -> broker_core::Result<CacheKey> {
        Ok(CacheKey::from_parts([b"example-minter".as_slice()]))
    }

    async fn fetch(&self, cx: &FetchContext<'_>) -> broker_core::Result<Fetched> {
        let n = self.minted.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Fetched {
            response: TokenResponse {
                access_token: SecretString::from(format!("token-{n}")),
                token_type: Some("Bearer".into()),
                expires_in: Some(3600.0),
            },
            // `expires_in` counts from when the request was sent: note it on the broker's clock.
            requested_at: cx.clock.now(),
            endpoint: None,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minter = Arc::new(Minter {
        minted: AtomicU32::new(0),
    });
    let broker = Broker::builder()
        .profile("minted", minter.clone(), Policy::default())
        .build();
    let req = TokenRequest::default();
    // A hundred concurrent callers: one fetch.
    let calls = (0..100).map(|_| broker.token("minted", &req));
    let tokens = futures::future::try_join_all(calls).await?;
    assert!(tokens
        .iter()
        .all(|t| t.secret().expose_secret() == "token-1"));
    // Later calls are served from memory while the token is fresh.
    let again = broker.token("minted", &req).await?;
    println!(
        "{} callers and one more got {}; minted {}",
        tokens.len(),
        again.secret().expose_secret(),
        minter.minted.load(Ordering::SeqCst)
    );
    Ok(())
}
