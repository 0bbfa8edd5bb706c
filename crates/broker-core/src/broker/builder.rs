//! [`BrokerBuilder`]: profiles from a config or from your own providers, the caches, the clock and the observer.

use super::*;

/// Builds a [`Broker`].
pub struct BrokerBuilder {
    pool: Arc<crate::kinds::ClientPool>,
    observer: Option<Arc<dyn Observer>>,
    clock: Arc<dyn Clock>,
    http: Option<reqwest::Client>,
    disk: Option<PathBuf>,
    encryption: crate::config::CacheEncryption,
    #[cfg(feature = "shared-cache")]
    shared: Option<Arc<crate::shared::SharedCache>>,
    profiles: Map<String, std::result::Result<Arc<Profile>, Error>>,
    /// The built-in providers of profiles that cache on disk: their generated DPoP keys are kept beside the cache.
    disk_profiles: Vec<Arc<HttpProvider>>,
}

impl BrokerBuilder {
    /// Shares tokens, cool-downs and fetches with a fleet through `shared` (docs/reference.md §9), for profiles
    /// that cache on disk or in memory. Defaults to none.
    #[cfg(feature = "shared-cache")]
    pub fn shared_cache(mut self, shared: Arc<crate::shared::SharedCache>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Uses `clock` instead of the system clock. Defaults to [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Reports every upstream request to `observer`.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Caches on disk in `dir` for profiles whose policy says disk. Defaults to no disk cache
    /// (disk profiles then cache in memory only). Generated DPoP keys of disk profiles are kept in its `dpop/`
    /// (without it, in memory, as the tokens are).
    pub fn disk_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.disk = Some(dir.into());
        self
    }

    /// Whether disk cache entries are sealed under a key kept in the keyring (the default) or written plain
    /// (docs/reference.md §11). [`BrokerBuilder::config`] takes it from the config's `cache_encryption`. A build
    /// without the `keyring` feature, or a host without a keyring, needs `CacheEncryption::Off` for a disk cache:
    /// sealing never falls back to plain entries (each write fails with a warning instead).
    pub fn cache_encryption(mut self, mode: crate::config::CacheEncryption) -> Self {
        self.encryption = mode;
        self
    }

    /// Registers a profile served by `provider`.
    pub fn profile(
        mut self,
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
        policy: Policy,
    ) -> Self {
        let name = name.into();
        let p = Profile {
            name: name.clone(),
            provider,
            policy,
            keyed: OnceLock::new(),
            skew_warned: std::sync::atomic::AtomicBool::new(false),
        };
        self.profiles.insert(name, Ok(Arc::new(p)));
        self
    }

    /// Registers every profile of `config` with the built-in HTTP provider. A profile whose settings do not
    /// resolve is kept as its error, returned when it is asked for, so one broken profile spoils no other.
    pub fn config(mut self, config: &Config, overrides: &Overrides) -> Self {
        self.encryption = config.cache_encryption();
        for name in config.profile_names() {
            match config.resolve(name, overrides) {
                Ok(s) => self = self.settings(s),
                Err(e) => self = self.broken(name, e),
            }
        }
        self
    }

    /// Registers `profile` as broken: asking for it returns `error`.
    pub fn broken(mut self, profile: &str, error: Error) -> Self {
        self.profiles.insert(profile.to_owned(), Err(error));
        self
    }

    /// Uses the caller's `reqwest::Client` for the built-in HTTP profiles registered after this call, instead of
    /// one built from each profile's timeouts and `ca_file`. It should not follow redirects
    /// (`redirect::Policy::none()`): a redirected token request would carry the secret elsewhere.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Registers one resolved profile with the built-in HTTP provider.
    pub fn settings(self, s: Settings) -> Self {
        let policy = Policy::from_settings(&s);
        let name = s.profile.clone();
        let provider = Arc::new(match &self.http {
            Some(c) => HttpProvider::new(s).with_client(c.clone()),
            None => HttpProvider::new(s).with_pool(self.pool.clone()),
        });
        let mut b = self.profile(name, provider.clone(), policy.clone());
        if policy.cache == CacheMode::Disk {
            b.disk_profiles.push(provider);
        }
        b
    }

    /// The broker.
    pub fn build(self) -> Broker {
        if let Some(dir) = &self.disk {
            for p in &self.disk_profiles {
                p.keep_dpop_key_in(dir.join("dpop"));
            }
        }
        Broker {
            observer: self.observer,
            clock: self.clock,
            disk: self
                .disk
                .map(|d| DiskCache::new(d).with_encryption(self.encryption)),
            #[cfg(feature = "shared-cache")]
            shared: self.shared,
            profiles: self.profiles,
            // A fixed shard count: `DashMap::new()` sizes by `available_parallelism()`, which reads cgroup files on
            // Linux, a cost every warm CLI call would pay (scripts/bench-cli).
            slots: DashMap::with_shard_amount(SLOT_SHARDS),
        }
    }
}

impl Broker {
    /// A builder with the system clock and no profiles.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            pool: Arc::default(),
            observer: None,
            clock: Arc::new(SystemClock),
            http: None,
            disk: None,
            encryption: crate::config::CacheEncryption::Keyring,
            #[cfg(feature = "shared-cache")]
            shared: None,
            profiles: Map::default(),
            disk_profiles: Vec::new(),
        }
    }
}
