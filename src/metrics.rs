//! Prometheus metrics, served at `GET /metrics`.
//!
//! Each `App` owns its recorder rather than installing the process-global one
//! the `metrics` macros write to: tests run many apps in one process, and each
//! must count only its own traffic.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::http::Method;
use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Latency buckets, in seconds: sub-millisecond for the service's own work,
/// up to the upload timeout for upstream calls.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// How often raw histogram samples are folded into their buckets. Every
/// sample is kept (8 bytes) until then: at tens of thousands of requests a
/// second, a second's worth was hundreds of KiB of resident memory.
const UPKEEP_EVERY: Duration = Duration::from_millis(100);

/// The services behind this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Clerk's JWKS.
    Clerk,
    /// Supabase Storage.
    Storage,
    /// The BDD service.
    Bdd,
}

impl Upstream {
    const ALL: [Self; 3] = [Self::Clerk, Self::Storage, Self::Bdd];

    fn label(self) -> &'static str {
        match self {
            Self::Clerk => "clerk",
            Self::Storage => "storage",
            Self::Bdd => "bdd",
        }
    }
}

/// How an upstream call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 4xx: the upstream refused the call.
    Rejected,
    /// 5xx, garbled answer or connection closed.
    Failed,
    /// Could not connect.
    Unavailable,
    /// No answer in time.
    Timeout,
}

impl Outcome {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Rejected,
        Self::Failed,
        Self::Unavailable,
        Self::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
        }
    }
}

/// This app's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    /// The request series seen so far.
    requests: Arc<RwLock<SeriesByRoute>>,
    /// The upstream series, each registered on first use.
    upstreams: Arc<UpstreamSeries>,
}

/// Upstream call series by service (and outcome), resolved once each, as
/// the request series are: a labelled key built per call cost more than
/// the counting.
#[derive(Default)]
struct UpstreamSeries {
    count: [[OnceLock<Counter>; Outcome::ALL.len()]; Upstream::ALL.len()],
    latency: [OnceLock<Histogram>; Upstream::ALL.len()],
}

/// Request series by route template, then method and status. Keys come from
/// small fixed sets (route templates, known methods, statuses), so a fast
/// hash without flood resistance fits: SipHash was two of the lookup's
/// three costs.
type SeriesByRoute = HashMap<String, HashMap<(Method, u16), RequestSeries, FxBuild>, FxBuild>;

type FxBuild = rustc_hash::FxBuildHasher;

/// The two series of one route, method and status, resolved once: building
/// their labelled keys on every request cost about a microsecond.
#[derive(Clone)]
struct RequestSeries {
    count: Counter,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh, empty set of metrics.
    pub fn new() -> Self {
        // Static, valid buckets: this cannot fail; fall back to summaries if it ever did.
        let builder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = Arc::new(builder.build_recorder());
        // Histograms keep every raw sample until drained; the exporter's own
        // upkeep task only exists when it installs the global recorder, so
        // drain here, or memory grows by 8 bytes per request between scrapes.
        let weak = Arc::downgrade(&recorder);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(UPKEEP_EVERY).await;
                    let Some(recorder) = weak.upgrade() else {
                        return;
                    };
                    recorder.handle().run_upkeep();
                }
            });
        }
        Self {
            recorder,
            requests: Arc::default(),
            upstreams: Arc::default(),
        }
    }

    /// Counts a served request under its route template.
    pub fn request(&self, route: &str, method: &Method, status: u16, latency: Duration) {
        // Any client can invent methods: they share one label, so the number
        // of series stays bounded.
        let other;
        let method = match method.as_str() {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" | "CONNECT"
            | "TRACE" => method,
            _ => {
                other = Method::from_bytes(b"OTHER").unwrap_or(Method::GET);
                &other
            }
        };
        let seconds = latency.as_secs_f64();
        {
            let requests = self.requests.read().unwrap_or_else(|e| e.into_inner());
            let known = requests
                .get(route)
                .and_then(|by| by.get(&(method.clone(), status)));
            // Counted under the read lock: no handle cloned per request.
            if let Some(series) = known {
                series.count.increment(1);
                series.latency.record(seconds);
                return;
            }
        }
        // The read guard is gone here: registering takes the write lock.
        let series = self.request_series(route, method, status);
        series.count.increment(1);
        series.latency.record(seconds);
    }

    /// Registers (once) the series of a route, method and status.
    fn request_series(&self, route: &str, method: &Method, status: u16) -> RequestSeries {
        let labels = [
            Label::new("route", route.to_owned()),
            Label::new("method", method.as_str().to_owned()),
        ];
        let mut counted = labels.to_vec();
        counted.push(Label::new("status", status.to_string()));
        let series = RequestSeries {
            count: self
                .recorder
                .register_counter(&Key::from_parts("http_requests_total", counted), &META),
            latency: self.recorder.register_histogram(
                &Key::from_parts("http_request_duration_seconds", labels.to_vec()),
                &META,
            ),
        };
        self.requests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_owned())
            .or_default()
            .insert((method.clone(), status), series.clone());
        series
    }

    /// Counts an upstream call.
    pub fn upstream(&self, service: Upstream, outcome: Outcome, latency: Duration) {
        let label = || Label::from_static_parts("service", service.label());
        self.upstreams.count[service as usize][outcome as usize]
            .get_or_init(|| {
                let outcome = Label::from_static_parts("outcome", outcome.label());
                let key = Key::from_parts("upstream_requests_total", vec![label(), outcome]);
                self.recorder.register_counter(&key, &META)
            })
            .increment(1);
        self.upstreams.latency[service as usize]
            .get_or_init(|| {
                let key = Key::from_parts("upstream_request_duration_seconds", vec![label()]);
                self.recorder.register_histogram(&key, &META)
            })
            .record(latency.as_secs_f64());
    }

    /// Counts a JWKS fetch; `background` ones that fail are refresh failures.
    pub fn jwks_fetch(&self, ok: bool, background: bool) {
        let result = if ok { "ok" } else { "error" };
        self.counter(
            "jwks_fetches_total",
            vec![Label::from_static_parts("result", result)],
            1,
        );
        if !ok && background {
            self.counter("jwks_refresh_failures_total", vec![], 1);
        }
    }

    /// One more (or one fewer) upload in flight.
    pub fn uploads_in_flight(&self, delta: f64) {
        let key = Key::from_static_name("uploads_in_flight");
        self.recorder.register_gauge(&key, &META).increment(delta);
    }

    /// Cleanups waiting or running (`cleanup_pending`).
    pub fn cleanup_pending(&self, pending: usize) {
        let key = Key::from_static_name("cleanup_pending");
        self.recorder
            .register_gauge(&key, &META)
            .set(pending as f64);
    }

    /// One cleanup attempt ended: `removed`, `kept`, `retried` or `abandoned`
    /// (`cleanup_total{result}`).
    pub fn cleanup_done(&self, result: &'static str) {
        self.counter(
            "cleanup_total",
            vec![Label::from_static_parts("result", result)],
            1,
        );
    }

    /// A Redis call failed (`redis_errors_total`).
    pub fn redis_error(&self) {
        self.counter("redis_errors_total", vec![], 1);
    }

    /// Bytes stored in Storage by successful creates.
    pub fn bytes_stored(&self, bytes: u64) {
        self.counter("stored_bytes_total", vec![], bytes);
    }

    /// The Prometheus text exposition of everything counted so far.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>, by: u64) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
            .increment(by);
    }
}
