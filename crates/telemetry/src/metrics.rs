//! Metrics through the OpenTelemetry API: one meter provider per process, read by the
//! Prometheus registry (the `/metrics` scrape, [`crate::metrics_text`]) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set at [`crate::init`], pushed over OTLP/gRPC every
//! `OTEL_METRIC_EXPORT_INTERVAL` ms (default 60 s).
//!
//! Instruments are named the OpenTelemetry way (`huddle_gateway_messages_accepted`, unit
//! `s` for durations); the scrape shows them the Prometheus way
//! (`huddle_gateway_messages_accepted_total`, `huddle_gateway_append_seconds`), as an
//! OpenTelemetry Collector's Prometheus exporter would.

use std::sync::{Arc, Mutex, OnceLock, Weak};

pub use opentelemetry::metrics::{Counter, Gauge, Histogram, UpDownCounter};
use opentelemetry::metrics::{Meter, MeterProvider as _};
pub use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

static PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();

/// Latency buckets (seconds) shared by every duration histogram: 100 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The meter every Huddle instrument comes from. Instruments made before [`crate::init`]
/// still reach the scrape, but OTLP export starts only for a provider that `init` built,
/// so binaries call `init` first.
pub fn meter() -> Meter {
    provider(None).meter("huddle")
}

/// The process's provider; the first caller decides whether OTLP export is on.
pub(crate) fn provider(otlp: Option<&'static str>) -> &'static SdkMeterProvider {
    PROVIDER.get_or_init(|| build(otlp))
}

fn build(otlp_service: Option<&'static str>) -> SdkMeterProvider {
    let mut builder = SdkMeterProvider::builder();
    match opentelemetry_prometheus::exporter()
        .with_registry(prometheus::default_registry().clone())
        .without_target_info()
        .scope_info_enabled(false)
        .build()
    {
        Ok(exporter) => builder = builder.with_reader(exporter),
        Err(error) => eprintln!("Prometheus metrics disabled: {error}"),
    }
    if let Some(service) = otlp_service {
        match opentelemetry_otlp::MetricExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                builder = builder
                    .with_periodic_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build());
            }
            Err(error) => eprintln!("OpenTelemetry metrics export disabled: {error}"),
        }
    }
    builder.build()
}

/// Connections of one pool, as a pool's `status()` tells them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolUse {
    /// Connections handed out right now.
    pub in_use: u64,
    /// Connections open and waiting in the pool.
    pub idle: u64,
    /// The pool's cap.
    pub max: u64,
}

impl PoolUse {
    /// From a deadpool status: `size` connections open, `available` of them idle, at most
    /// `max_size`.
    pub fn of_deadpool(size: usize, available: usize, max_size: usize) -> Self {
        Self { in_use: size.saturating_sub(available) as u64, idle: available as u64, max: max_size as u64 }
    }
}

type PoolProbe = dyn Fn() -> PoolUse + Send + Sync;

/// Every registered pool by kind; a pool whose [`PoolReport`] was dropped is forgotten.
static POOLS: Mutex<Vec<(&'static str, Weak<PoolProbe>)>> = Mutex::new(Vec::new());

/// Reports a connection pool in `huddle_pool_connections{pool, state}` and
/// `huddle_pool_max_connections{pool}` (summed over the process's pools of one kind).
/// The pool is reported while the returned handle lives: keep it next to the pool.
#[must_use = "the pool is reported only while the handle lives"]
pub fn observe_pool(kind: &'static str, probe: impl Fn() -> PoolUse + Send + Sync + 'static) -> PoolReport {
    use opentelemetry::metrics::ObservableGauge;
    static GAUGES: OnceLock<(ObservableGauge<u64>, ObservableGauge<u64>)> = OnceLock::new();
    GAUGES.get_or_init(|| {
        let meter = meter();
        let connections = meter
            .u64_observable_gauge("huddle_pool_connections")
            .with_description(
                "Connections of the process's Redis and PostgreSQL pools, by pool and state (in_use, idle)",
            )
            .with_callback(|observer| {
                for (kind, total) in pool_totals() {
                    use opentelemetry::KeyValue;
                    observer.observe(total.in_use, &[KeyValue::new("pool", kind), KeyValue::new("state", "in_use")]);
                    observer.observe(total.idle, &[KeyValue::new("pool", kind), KeyValue::new("state", "idle")]);
                }
            })
            .build();
        let max = meter
            .u64_observable_gauge("huddle_pool_max_connections")
            .with_description("The cap of the process's Redis and PostgreSQL pools (summed over its pools of a kind)")
            .with_callback(|observer| {
                for (kind, total) in pool_totals() {
                    observer.observe(total.max, &[opentelemetry::KeyValue::new("pool", kind)]);
                }
            })
            .build();
        (connections, max)
    });
    let probe: Arc<PoolProbe> = Arc::new(probe);
    POOLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((kind, Arc::downgrade(&probe)));
    PoolReport(probe)
}

/// Keeps a pool reported by [`observe_pool`]; dropping it stops the reports.
#[derive(Clone)]
pub struct PoolReport(#[allow(dead_code)] Arc<PoolProbe>);

impl std::fmt::Debug for PoolReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolReport")
    }
}

fn pool_totals() -> Vec<(&'static str, PoolUse)> {
    let mut pools = POOLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut totals: Vec<(&'static str, PoolUse)> = Vec::new();
    pools.retain(|(kind, probe)| {
        let Some(probe) = probe.upgrade() else { return false };
        let use_now = probe();
        match totals.iter_mut().find(|(k, _)| k == kind) {
            Some((_, total)) => {
                total.in_use += use_now.in_use;
                total.idle += use_now.idle;
                total.max += use_now.max;
            }
            None => totals.push((kind, use_now)),
        }
        true
    });
    totals
}

/// A counter; the scrape names it `{name}_total`.
pub fn counter(name: &'static str, description: &'static str) -> Counter<u64> {
    meter().u64_counter(name).with_description(description).build()
}

/// A duration histogram in seconds over [`SECONDS_BUCKETS`]; the scrape names it
/// `{name}_seconds`.
pub fn seconds(name: &'static str, description: &'static str) -> Histogram<f64> {
    meter()
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS_BUCKETS.to_vec())
        .build()
}

/// A count that goes up and down (open connections, joined rooms).
pub fn up_down(name: &'static str, description: &'static str) -> UpDownCounter<i64> {
    meter().i64_up_down_counter(name).with_description(description).build()
}

/// A value set from time to time (the persist lag a sweep saw).
pub fn gauge(name: &'static str, description: &'static str) -> Gauge<f64> {
    meter().f64_gauge(name).with_description(description).build()
}

/// Seconds since `start`, for a [`seconds`] histogram.
pub fn elapsed(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
