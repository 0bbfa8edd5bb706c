//! One-shot: load the user's configuration as `broker` does, get one profile's token (from the shared disk cache while
//! it is fresh, with no HTTP client or runtime built for it), and print its header line.
//!
//! ```sh
//! cargo run -p broker-core --example one_shot -- ion-prod
//! ```

use broker_core::{paths, Broker, Config, LoadOptions, TokenRequest};
use secrecy::ExposeSecret;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let profile = std::env::args().nth(1).ok_or("usage: one_shot <profile>")?;
    let config = Config::load(&LoadOptions::user_default())?;
    let mut builder = Broker::builder().config(&config, &Default::default());
    if let Some(dir) = paths::cache_dir() {
        // The same cache the `broker` command uses: a token it fetched is served here, and the other way round.
        builder = builder.disk_cache(dir);
    }
    let broker = builder.build();
    let req = TokenRequest::default();
    let token = match broker.cached(&profile, &req)? {
        Some(t) => t,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(broker.token(&profile, &req))?,
    };
    let (name, value) = broker.header(&profile, &token)?;
    println!("{name}: {}", value.expose_secret());
    Ok(())
}
