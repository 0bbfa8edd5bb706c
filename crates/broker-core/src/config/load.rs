//! Loading: reading the files (with the trust checks of docs/reference.md §1) and walking their TOML.

use super::*;

pub(super) fn parse_toml<'a>(file: &'a Arc<SourceFile>) -> Result<Spanned<DeTable<'a>>> {
    DeTable::parse(&file.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        file.error(span, format!("TOML syntax error: {msg}"), None)
    })
}

pub(super) fn parse_provider(name: &str, file: &Arc<SourceFile>) -> Result<(ProviderDef, bool)> {
    let doc = parse_toml(file)?;
    let cx = Ctx {
        file,
        literal_secret: Default::default(),
    };
    let mut def = ProviderDef {
        name: name.to_owned(),
        description: None,
        source: file.name.clone(),
        fields: Fields::default(),
        default_environment: None,
        environments: BTreeMap::new(),
    };
    let top_keys: Vec<&str> = Fields::NAMES
        .iter()
        .copied()
        .chain(["description", "default_environment", "environments"])
        .collect();
    for (k, v) in doc.get_ref().iter() {
        match k.get_ref().as_ref() {
            "description" => def.description = Some(p_str(&cx, "description", v)?),
            "default_environment" => {
                def.default_environment = Some(Located {
                    value: p_str(&cx, "default_environment", v)?,
                    origin: cx.origin(v.span()),
                })
            }
            "environments" => {
                for (env_name, env) in cx.table("environments", v)?.iter() {
                    let mut e = EnvironmentDef {
                        aliases: Vec::new(),
                        fields: Fields::default(),
                    };
                    for (ek, ev) in cx.table(env_name.get_ref(), env)?.iter() {
                        if ek.get_ref() == "aliases" {
                            let arr = ev.get_ref().as_array().ok_or_else(|| {
                                cx.wrong_type("aliases", ev, "an array of strings")
                            })?;
                            e.aliases = arr
                                .iter()
                                .map(|a| p_str(&cx, "aliases", a))
                                .collect::<Result<_>>()?;
                        } else if !e.fields.take(&cx, ek, ev)? {
                            let valid: Vec<&str> =
                                Fields::NAMES.iter().copied().chain(["aliases"]).collect();
                            return Err(cx.unknown_key(
                                ek,
                                &valid,
                                &format!("environment `{}`", env_name.get_ref()),
                            ));
                        }
                    }
                    def.environments.insert(env_name.get_ref().to_string(), e);
                }
            }
            _ => {
                if !def.fields.take(&cx, k, v)? {
                    return Err(cx.unknown_key(k, &top_keys, &format!("provider `{name}`")));
                }
            }
        }
    }
    if let Some(d) = &def.default_environment {
        if def.environment(&d.value).is_none() {
            let names: Vec<&str> = def.environments.keys().map(String::as_str).collect();
            return Err(d.origin.error(
                format!(
                    "default_environment `{}` is not one of this provider's environments",
                    d.value
                ),
                Some(format!("environments: {}", names.join(", "))),
            ));
        }
    }
    Ok((def, cx.literal_secret.get()))
}

pub(super) fn parse_config_file(
    file: &Arc<SourceFile>,
    defaults: &mut Fields,
    profiles: &mut BTreeMap<String, ProfileDef>,
    tables: &mut Tables,
) -> Result<bool> {
    let doc = parse_toml(file)?;
    let cx = Ctx {
        file,
        literal_secret: Default::default(),
    };
    for (k, v) in doc.get_ref().iter() {
        match k.get_ref().as_ref() {
            "defaults" => {
                for (dk, dv) in cx.table("defaults", v)?.iter() {
                    if !defaults.take(&cx, dk, dv)? {
                        return Err(cx.unknown_key(dk, Fields::NAMES, "[defaults]"));
                    }
                }
            }
            "profiles" => {
                for (name, table) in cx.table("profiles", v)?.iter() {
                    let mut p = ProfileDef {
                        name: name.get_ref().to_string(),
                        origin: cx.origin(name.span()),
                        provider: None,
                        environment: None,
                        fields: Fields::default(),
                    };
                    for (pk, pv) in cx.table(name.get_ref(), table)?.iter() {
                        match pk.get_ref().as_ref() {
                            "provider" => {
                                p.provider = Some(Located {
                                    value: p_str(&cx, "provider", pv)?,
                                    origin: cx.origin(pv.span()),
                                })
                            }
                            "environment" => {
                                p.environment = Some(Located {
                                    value: p_str(&cx, "environment", pv)?,
                                    origin: cx.origin(pv.span()),
                                })
                            }
                            _ => {
                                if !p.fields.take(&cx, pk, pv)? {
                                    let valid: Vec<&str> = Fields::NAMES
                                        .iter()
                                        .copied()
                                        .chain(["provider", "environment"])
                                        .collect();
                                    return Err(cx.unknown_key(
                                        pk,
                                        &valid,
                                        &format!("profile `{}`", name.get_ref()),
                                    ));
                                }
                            }
                        }
                    }
                    profiles.insert(p.name.clone(), p);
                }
            }
            "shared_cache" => tables.shared_cache = Some(p_shared_cache(&cx, v)?),
            "proxy" => tables.proxy = Some(p_proxy(&cx, v)?),
            "audit" => tables.audit = Some(p_audit(&cx, v)?),
            "cache_encryption" => {
                tables.cache_encryption = Some(p_choice(
                    &cx,
                    "cache_encryption",
                    v,
                    &[
                        ("keyring", CacheEncryption::Keyring),
                        ("off", CacheEncryption::Off),
                    ],
                )?)
            }
            _ => {
                return Err(cx.unknown_key(
                    k,
                    &[
                        "defaults",
                        "profiles",
                        "shared_cache",
                        "proxy",
                        "audit",
                        "cache_encryption",
                    ],
                    "the config file",
                ))
            }
        }
    }
    Ok(cx.literal_secret.get())
}

/// Warns when a file holding a literal secret can be read by group or others.
pub(super) fn warn_if_exposed(file: &SourceFile) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(&file.name) else {
        return;
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "{} holds a literal client_secret and is readable by group or others: run `chmod 600 {}`, or use \
             an env, file or command secret source",
            file.name,
            file.name
        );
    }
}

/// Reads a config or provider file the user trusts (docs/security.md, "trust in files"): one that another user
/// (other than root) owns, or that others may write, could plant a `{ command }` that then runs as this user, so it
/// is refused, naming the command that fixes it. A group-writable file gets a warning.
pub(super) fn read_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let me = crate::paths::euid();
    let shown = path.display();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::config(format!(
            "{shown} belongs to uid {}, not to you (uid {me}): refusing to load it, since its owner could make \
             broker run commands as you; if you trust it, take it over: `chown {me} {shown}`",
            meta.uid()
        )));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(Error::config(format!(
            "{shown} is writable by others: refusing to load it, since anyone could make broker run commands as \
             you; fix it with `chmod o-w {shown}`"
        )));
    }
    if meta.mode() & 0o020 != 0 {
        tracing::warn!(
            "{shown} is writable by its group: its members could make broker run commands as you; `chmod g-w \
             {shown}` unless that is intended"
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::config(format!("cannot read {shown}: {e}")))?;
    Ok(text)
}

impl LoadOptions {
    /// What the CLI loads: the built-in providers, `$XDG_CONFIG_HOME/broker/providers/`, and the config file
    /// named by `BROKER_CONFIG` (required to exist when set) or else `$XDG_CONFIG_HOME/broker/config.toml`.
    pub fn user_default() -> Self {
        LoadOptions {
            builtin_providers: crate::BUILTIN_PROVIDERS
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
            providers_dir: crate::paths::config_dir().map(|d| d.join("providers")),
            config_file: crate::paths::config_file(),
            config_file_required: crate::paths::config_file_is_explicit(),
        }
    }
}

impl Config {
    /// Loads built-in providers, the user's providers and the config file (docs/reference.md §1).
    pub fn load(opts: &LoadOptions) -> Result<Config> {
        let mut files = Vec::new();
        for (name, text) in &opts.builtin_providers {
            files.push((
                name.clone(),
                Arc::new(SourceFile::new(
                    format!("<built-in>/{name}.toml"),
                    text.clone(),
                )),
                true,
            ));
        }
        if let Some(dir) = &opts.providers_dir {
            if dir.is_dir() {
                let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| Error::config(format!("cannot read {}: {e}", dir.display())))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                paths.sort();
                for path in paths {
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let text = read_file(&path)?;
                    files.push((
                        name,
                        Arc::new(SourceFile::new(path.display().to_string(), text)),
                        true,
                    ));
                }
            }
        }
        if let Some(path) = &opts.config_file {
            if path.exists() || opts.config_file_required {
                let text = read_file(path)?;
                files.push((
                    String::new(),
                    Arc::new(SourceFile::new(path.display().to_string(), text)),
                    false,
                ));
            }
        }
        Self::from_sources(files)
    }

    /// A config of the built-in providers and `text` as the config file (named `<inline>` in errors): for
    /// embedders that build their config in code, and for tests.
    ///
    /// ```
    /// use broker_core::Config;
    ///
    /// let config = Config::parse("[profiles.ion-prod]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secret = \"s\"\n")?;
    /// let settings = config.resolve("ion-prod", &Default::default())?;
    /// assert_eq!(settings.header(), "Authorization: {token}"); // ION takes the raw token
    /// assert_eq!(settings.environment(), Some("production"));
    /// # Ok::<(), broker_core::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Config> {
        let mut files: Vec<(String, Arc<SourceFile>, bool)> = crate::BUILTIN_PROVIDERS
            .iter()
            .map(|(n, t)| {
                (
                    (*n).to_owned(),
                    Arc::new(SourceFile::new(
                        format!("<built-in>/{n}.toml"),
                        (*t).to_owned(),
                    )),
                    true,
                )
            })
            .collect();
        files.push((
            String::new(),
            Arc::new(SourceFile::new("<inline>".into(), text.to_owned())),
            false,
        ));
        Self::from_sources(files)
    }

    /// Parses provider files (`true`) and config files (`false`) in precedence order.
    fn from_sources(files: Vec<(String, Arc<SourceFile>, bool)>) -> Result<Config> {
        let mut config = Config::default();
        let mut hasher = Sha256::new();
        for (name, file, is_provider) in &files {
            hasher.update(file.name.as_bytes());
            hasher.update([0]);
            hasher.update(file.text.as_bytes());
            hasher.update([0]);
            let literal = if *is_provider {
                // A user file with a built-in's name replaces it whole.
                let (def, literal) = parse_provider(name, file)?;
                config.providers.insert(name.clone(), def);
                literal
            } else {
                parse_config_file(
                    file,
                    &mut config.defaults,
                    &mut config.profiles,
                    &mut config.tables,
                )?
            };
            if literal {
                warn_if_exposed(file);
            }
            config.files.push(file.name.clone());
        }
        config.fingerprint = hex::encode(&hasher.finalize()[..16]);
        config.check_exchanges()?;
        Ok(config)
    }

    /// Names of all profiles.
    pub fn profile_names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// All provider definitions.
    pub fn providers(&self) -> impl Iterator<Item = &ProviderDef> {
        self.providers.values()
    }

    /// The files that were read, in order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The `[shared_cache]` table, if the config file has one (docs/reference.md §9).
    pub fn shared_cache(&self) -> Option<&SharedCacheDef> {
        self.tables.shared_cache.as_ref()
    }

    /// The `[proxy]` table, if the config file has one: `broker daemon` serves the proxy too.
    pub fn proxy(&self) -> Option<&ProxyDef> {
        self.tables.proxy.as_ref()
    }

    /// The `[audit]` table, or its defaults (docs/reference.md §11).
    pub fn audit(&self) -> AuditDef {
        self.tables.audit.clone().unwrap_or_default()
    }

    /// `cache_encryption`: `keyring` unless the config file says `off` (docs/reference.md §11).
    pub fn cache_encryption(&self) -> CacheEncryption {
        self.tables
            .cache_encryption
            .unwrap_or(CacheEncryption::Keyring)
    }

    /// A hash of the loaded files' names and contents.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(super) fn unknown_profile(&self, name: &str) -> Error {
        let names: Vec<&str> = self.profile_names().collect();
        crate::error::unknown_profile(name, &names, &self.files)
    }
}
