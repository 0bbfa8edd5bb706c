//! The Prometheus metrics of the daemon (docs/reference.md §6) and the proxy (docs/integrations.md), kept in one
//! mutex-guarded map and rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use broker_core::{ErrorKind, Observer};

/// Upper bounds of the upstream duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    /// The `_bucket` (cumulative), `_sum` and `_count` lines of `profile`'s durations.
    fn render(&self, out: &mut String, name: &str, profile: &str) {
        let mut cumulative = 0;
        let bounds = BUCKETS
            .iter()
            .map(|le| le.to_string())
            .chain(["+Inf".to_owned()]);
        let counts = self.counts.iter().copied().chain([0]);
        for (le, n) in bounds.zip(counts) {
            cumulative += n;
            let count = if le == "+Inf" { self.count } else { cumulative };
            let l = labels(&[("profile", profile), ("le", &le)]);
            let _ = writeln!(out, "{name}_bucket{l} {count}");
        }
        let l = labels(&[("profile", profile)]);
        let _ = writeln!(out, "{name}_sum{l} {}", self.sum);
        let _ = writeln!(out, "{name}_count{l} {}", self.count);
    }
}

/// Everything counted for one profile. Labels other than the profile are `&'static str`, so counting allocates
/// nothing once the profile has an entry, and a daemon with many profiles keeps one small record each.
#[derive(Default)]
struct ProfileMetrics {
    /// `broker_requests_total` by outcome.
    requests: Vec<(&'static str, u64)>,
    hits: u64,
    misses: u64,
    /// `broker_upstream_requests_total` by status.
    upstream: Vec<(&'static str, u64)>,
    refresh_failures: u64,
    remaining: Option<f64>,
    duration: Option<Box<Histogram>>,
    /// What the proxy did for this profile: `broker_proxy_requests_total` by status class, its 401 retries and
    /// how long requests took (boxed: most profiles of a daemon are never proxied).
    proxied: Option<Box<Proxied>>,
}

#[derive(Default)]
struct Proxied {
    requests: Vec<(&'static str, u64)>,
    retries: u64,
    duration: Histogram,
}

/// Reads one per-profile counter.
type Count = fn(&ProfileMetrics) -> u64;
/// Reads one per-profile counter split by a second label.
type Split = fn(&ProfileMetrics) -> &[(&'static str, u64)];

fn bump(counts: &mut Vec<(&'static str, u64)>, label: &'static str) {
    match counts.iter_mut().find(|(l, _)| *l == label) {
        Some((_, n)) => *n += 1,
        None => counts.push((label, 1)),
    }
}

/// All metrics of one daemon, by profile (sorted, for a stable rendering).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<BTreeMap<String, ProfileMetrics>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

impl Metrics {
    /// Runs `f` on `profile`'s record, creating it on first use.
    fn with(&self, profile: &str, f: impl FnOnce(&mut ProfileMetrics)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.get_mut(profile) {
            Some(m) => f(m),
            None => f(inner.entry(profile.to_owned()).or_default()),
        }
    }

    /// A token request answered with `outcome` (`ok` or an error class).
    pub fn request(&self, profile: &str, outcome: &'static str) {
        self.with(profile, |m| bump(&mut m.requests, outcome));
    }

    /// A token served from the cache (`hit`) or fetched for this request.
    pub fn served(&self, profile: &str, hit: bool, remaining: Duration) {
        self.with(profile, |m| {
            if hit {
                m.hits += 1;
            } else {
                m.misses += 1;
            }
            m.remaining = Some(remaining.as_secs_f64());
        });
    }

    /// A background refresh that failed.
    pub fn refresh_failed(&self, profile: &str) {
        self.with(profile, |m| m.refresh_failures += 1);
    }

    /// A request the proxy answered: `class` is the upstream status class (`2xx` ...) or an error class of its own;
    /// `retried`: sent again after a 401 with a new token.
    pub fn proxied(&self, profile: &str, class: &'static str, retried: bool, took: Duration) {
        self.with(profile, |m| {
            let p = m.proxied.get_or_insert_with(Box::default);
            bump(&mut p.requests, class);
            p.retries += u64::from(retried);
            p.duration.observe(took.as_secs_f64());
        });
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let typed = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let split: [(&str, &str, &str, Split); 2] = [
            (
                "broker_requests_total",
                "Token requests served, by profile and outcome.",
                "outcome",
                |m| &m.requests,
            ),
            (
                "broker_upstream_requests_total",
                "Requests to token endpoints, by profile and status.",
                "status",
                |m| &m.upstream,
            ),
        ];
        for (name, help, key, get) in split {
            typed(&mut out, name, "counter", help);
            for (p, m) in inner.iter() {
                for (value, n) in get(m) {
                    let l = labels(&[("profile", p), (key, value)]);
                    let _ = writeln!(out, "{name}{l} {n}");
                }
            }
        }
        let per_profile: [(&str, &str, Count); 3] = [
            (
                "broker_cache_hits_total",
                "Token requests answered from the cache.",
                |m| m.hits,
            ),
            (
                "broker_cache_misses_total",
                "Token requests that needed the provider.",
                |m| m.misses,
            ),
            (
                "broker_refresh_failures_total",
                "Background refreshes that failed.",
                |m| m.refresh_failures,
            ),
        ];
        for (name, help, get) in per_profile {
            typed(&mut out, name, "counter", help);
            for (p, m) in inner.iter().filter(|(_, m)| get(m) > 0) {
                let _ = writeln!(out, "{name}{} {}", labels(&[("profile", p)]), get(m));
            }
        }
        typed(
            &mut out,
            "broker_token_remaining_seconds",
            "gauge",
            "Seconds left on the cached token.",
        );
        for (p, m) in inner.iter() {
            if let Some(v) = m.remaining {
                let l = labels(&[("profile", p)]);
                let _ = writeln!(out, "broker_token_remaining_seconds{l} {v}");
            }
        }
        typed(
            &mut out,
            "broker_upstream_duration_seconds",
            "histogram",
            "Duration of requests to token endpoints.",
        );
        for (profile, h) in inner
            .iter()
            .filter_map(|(p, m)| m.duration.as_ref().map(|h| (p, h)))
        {
            h.render(&mut out, "broker_upstream_duration_seconds", profile);
        }
        if inner.values().any(|m| m.proxied.is_some()) {
            render_proxied(&mut out, &inner);
        }
        out
    }
}

/// The proxy's series, for the profiles it served.
fn render_proxied(out: &mut String, inner: &BTreeMap<String, ProfileMetrics>) {
    let proxied = || {
        inner
            .iter()
            .filter_map(|(p, m)| m.proxied.as_ref().map(|x| (p, x)))
    };
    let _ = writeln!(out, "# HELP broker_proxy_requests_total Requests the proxy answered, by profile and upstream status class.\n# TYPE broker_proxy_requests_total counter");
    for (p, x) in proxied() {
        for (class, n) in &x.requests {
            let l = labels(&[("profile", p), ("class", class)]);
            let _ = writeln!(out, "broker_proxy_requests_total{l} {n}");
        }
    }
    let _ = writeln!(out, "# HELP broker_proxy_retries_total Requests sent again with a new token after a 401.\n# TYPE broker_proxy_retries_total counter");
    for (p, x) in proxied() {
        let l = labels(&[("profile", p)]);
        let _ = writeln!(out, "broker_proxy_retries_total{l} {}", x.retries);
    }
    let _ = writeln!(out, "# HELP broker_proxy_duration_seconds Time to the upstream's answer headers, retries included.\n# TYPE broker_proxy_duration_seconds histogram");
    for (p, x) in proxied() {
        x.duration.render(out, "broker_proxy_duration_seconds", p);
    }
}

impl Observer for Metrics {
    fn upstream(&self, profile: &str, outcome: Result<(), ErrorKind>, took: Duration) {
        let status = match outcome {
            Ok(()) => "ok",
            Err(k) => k.as_str(),
        };
        let secs = took.as_secs_f64();
        self.with(profile, |m| {
            bump(&mut m.upstream, status);
            m.duration.get_or_insert_with(Box::default).observe(secs);
        });
    }
}

/// The shared cache's metrics (docs/daemon-api.md): up, and its hits, misses, errors and lock waits.
pub fn render_shared(out: &mut String, stats: &broker_core::shared::SharedStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let up = u8::from(stats.up.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP broker_shared_cache_up Whether the shared cache (Redis) answered its last command.\n\
         # TYPE broker_shared_cache_up gauge\nbroker_shared_cache_up {up}"
    );
    for (name, help, n) in [
        (
            "hits",
            "Local misses answered by the shared cache.",
            &stats.hits,
        ),
        (
            "misses",
            "Local misses the shared cache could not answer.",
            &stats.misses,
        ),
        (
            "errors",
            "Shared cache commands that failed or were late.",
            &stats.errors,
        ),
        (
            "lock_waits",
            "Fetches that waited for another host's.",
            &stats.lock_waits,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP broker_shared_cache_{name}_total {help}\n# TYPE broker_shared_cache_{name}_total counter\n\
             broker_shared_cache_{name}_total {}",
            n.load(Relaxed)
        );
    }
}
