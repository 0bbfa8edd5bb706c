//! The daemon's Prometheus metrics (contract §6), kept in one mutex-guarded map and rendered as text.

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

#[derive(Default)]
struct Inner {
    /// (metric name, rendered labels) → value.
    counters: BTreeMap<(&'static str, String), f64>,
    gauges: BTreeMap<(&'static str, String), f64>,
    histograms: BTreeMap<String, Histogram>,
}

/// All metrics of one daemon.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        *self
            .lock()
            .counters
            .entry((name, labels(pairs)))
            .or_default() += 1.0;
    }

    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.lock().gauges.insert((name, labels(pairs)), value);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let typed = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        for (name, help) in [
            (
                "broker_requests_total",
                "Token requests served, by profile and outcome.",
            ),
            (
                "broker_cache_hits_total",
                "Token requests answered from the cache.",
            ),
            (
                "broker_cache_misses_total",
                "Token requests that needed the provider.",
            ),
            (
                "broker_upstream_requests_total",
                "Requests to token endpoints, by profile and status.",
            ),
            (
                "broker_refresh_failures_total",
                "Background refreshes that failed.",
            ),
        ] {
            typed(&mut out, name, "counter", help);
            for ((n, l), v) in &inner.counters {
                if *n == name {
                    let _ = writeln!(out, "{n}{l} {v}");
                }
            }
        }
        typed(
            &mut out,
            "broker_token_remaining_seconds",
            "gauge",
            "Seconds left on the cached token.",
        );
        for ((n, l), v) in &inner.gauges {
            let _ = writeln!(out, "{n}{l} {v}");
        }
        typed(
            &mut out,
            "broker_upstream_duration_seconds",
            "histogram",
            "Duration of requests to token endpoints.",
        );
        for (profile, h) in &inner.histograms {
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "broker_upstream_duration_seconds_bucket{} {cumulative}",
                    labels(&[("profile", profile), ("le", &le.to_string())])
                );
            }
            let _ = writeln!(
                out,
                "broker_upstream_duration_seconds_bucket{} {}",
                labels(&[("profile", profile), ("le", "+Inf")]),
                h.count
            );
            let _ = writeln!(
                out,
                "broker_upstream_duration_seconds_sum{} {}",
                labels(&[("profile", profile)]),
                h.sum
            );
            let _ = writeln!(
                out,
                "broker_upstream_duration_seconds_count{} {}",
                labels(&[("profile", profile)]),
                h.count
            );
        }
        out
    }
}

impl Observer for Metrics {
    fn upstream(&self, profile: &str, outcome: Result<(), ErrorKind>, took: Duration) {
        let status = match outcome {
            Ok(()) => "ok",
            Err(k) => k.as_str(),
        };
        let mut inner = self.lock();
        *inner
            .counters
            .entry((
                "broker_upstream_requests_total",
                labels(&[("profile", profile), ("status", status)]),
            ))
            .or_default() += 1.0;
        let h = inner.histograms.entry(profile.to_owned()).or_default();
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += secs;
    }
}
