//! Loads your config, gets an ION token (from the cache while it is good) and runs the GraphQL query of ION's
//! "Access Tokens" page, with the header ION wants (`Authorization: <token>`, no `Bearer`).
//!
//! ```sh
//! cargo run -p broker-core --features middleware --example ion_graphql -- ion-prod
//! ```

use std::sync::Arc;

use broker_core::middleware::TokenMiddleware;
use broker_core::{paths, Broker, Config, LoadOptions};

const QUERY: &str =
    r#"{"query":"{ runs(first: 10) { edges { node { id title steps { id title } } } } }"}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let profile = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ion-prod".to_owned());
    let config = Config::load(&LoadOptions::user_default())?;
    let settings = config.resolve(&profile, &Default::default())?;
    let api = settings
        .api()
        .cloned()
        .ok_or("the profile has no `api` endpoint")?;
    let mut builder = Broker::builder().settings(settings);
    if let Some(dir) = paths::cache_dir() {
        builder = builder.disk_cache(dir);
    }
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(Arc::new(builder.build()), &profile))
        .build();
    let response = client
        .post(api.join("graphql")?)
        .header("content-type", "application/json")
        .body(QUERY)
        .send()
        .await?;
    println!("{} {}", response.status(), response.text().await?);
    Ok(())
}
