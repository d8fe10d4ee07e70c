//! Telemetry shared by the Huddle services: structured `tracing` logs, OTLP trace export
//! and W3C trace context across tasks and gRPC calls, metrics through the OpenTelemetry
//! API ([`metrics`]: a Prometheus scrape and OTLP export), what readiness means, and the
//! shutdown signal.
//!
//! It serves nothing: the gateway mounts `/healthz`, `/readyz` and `/metrics` in its own
//! actix-web app, the workers on their ops port (crates/worker), both from [`Readiness`],
//! [`status_body`] and [`metrics_text`]. So a service depends on no HTTP stack it does
//! not use.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

pub mod metrics;

/// Keeps the OpenTelemetry exporter alive; [`TelemetryGuard::shutdown`] flushes the
/// spans still buffered (call it on the way out).
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct TelemetryGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl TelemetryGuard {
    /// Flushes and stops the span and metric exporters, if they were started (the last
    /// metric values are pushed once more). The flushes block, so they run off the async
    /// threads, which keep driving the exporters' connections.
    pub async fn shutdown(self) {
        if let Some(provider) = self.0 {
            let flushed = tokio::task::spawn_blocking(move || {
                let spans = provider.shutdown().map_err(|e| format!("last spans not exported: {e}"));
                let metrics = metrics::provider(None).shutdown().map_err(|e| format!("last metrics not exported: {e}"));
                spans.and(metrics)
            });
            match flushed.await {
                Ok(Err(error)) => {
                    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
                    eprintln!("opentelemetry shutdown: {error} (OTEL_EXPORTER_OTLP_ENDPOINT={endpoint})")
                }
                Err(error) => eprintln!("opentelemetry shutdown: {error}"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// A logging or tracing setting that cannot be used: the service stops at start with it,
/// rather than logging at a level nobody asked for.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` or `HUDDLE_TRACE_FILTER` is not a filter `tracing` understands.
    #[error("{variable}={value:?} is not a filter (e.g. `info` or `info,huddle_gateway=debug`): {reason}")]
    Filter {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// `HUDDLE_LOG_FORMAT` is neither `json` nor `pretty`.
    #[error("HUDDLE_LOG_FORMAT={0:?} is not a log format: json (the default) or pretty")]
    LogFormat(String),
}

/// The filter `spec` (the value of `variable`, `default` when unset).
fn filter(variable: &'static str, spec: Option<&str>, default: &str) -> Result<EnvFilter, TelemetryError> {
    let spec = spec.unwrap_or(default);
    EnvFilter::try_new(spec).map_err(|error| TelemetryError::Filter {
        variable,
        value: spec.to_owned(),
        reason: error.to_string(),
    })
}

/// The log filter `rust_log` (the `RUST_LOG` value, `info` when unset), and whether
/// actix-http's lines about clients' malformed input are dropped ([`ClientFaults`]):
/// unless `rust_log` names `actix_http`.
fn log_filter(rust_log: Option<&str>) -> Result<(EnvFilter, ClientFaults), TelemetryError> {
    let filter = filter("RUST_LOG", rust_log, "info")?;
    Ok((filter, ClientFaults { dropped: !rust_log.unwrap_or_default().contains("actix_http") }))
}

/// actix-http logs some malformed input from clients at ERROR, without the client's
/// address: an HTTP request it cannot parse (answered 400 or 431) and a fragmented
/// WebSocket control frame (the gateway closes that connection with 1002 and logs it at
/// INFO). Any client could fill the error log with them, so those lines (by target and
/// message) are dropped; every other line of actix-http passes.
const CLIENT_FAULT_LINES: [(&str, &str); 2] = [
    ("actix_http::h1::dispatcher", "stream error: request parse error"),
    ("actix_http::ws::codec", "Unfinished fragment"),
];

/// Whether the log leaves out [`CLIENT_FAULT_LINES`].
#[derive(Debug, Clone, Copy)]
struct ClientFaults {
    dropped: bool,
}

impl ClientFaults {
    /// The log layer's event format `format`, writing nothing for a client-fault line when
    /// they are dropped. The lines are left out where they would be written, not refused
    /// as events: a filter that refuses them (per layer or as a layer of its own) makes
    /// tracing ask about every callsite, disabled `debug!`/`trace!` lines of every library
    /// included, each time it is reached, or leaves tracing-subscriber's per-layer filter
    /// state stale after a refused event, so that the next line on that thread is lost.
    fn left_out_of<F>(self, format: F) -> WithoutClientFaults<F> {
        WithoutClientFaults { format, dropped: self.dropped }
    }
}

/// An event format that writes nothing for [`CLIENT_FAULT_LINES`] ([`ClientFaults::left_out_of`]).
struct WithoutClientFaults<F> {
    format: F,
    dropped: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithoutClientFaults<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        cx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.dropped && is_client_fault(event) {
            return Ok(());
        }
        self.format.format_event(cx, writer, event)
    }
}

/// Whether `event` is one of [`CLIENT_FAULT_LINES`] (by target and message).
fn is_client_fault(event: &tracing::Event<'_>) -> bool {
    let target = event.metadata().target();
    let Some(&(_, prefix)) = CLIENT_FAULT_LINES.iter().find(|(fault_target, _)| *fault_target == target) else {
        return false;
    };
    let mut message = MessageStarts { prefix, matched: false };
    event.record(&mut message);
    message.matched
}

/// Finds whether an event's message starts with `prefix`.
struct MessageStarts {
    prefix: &'static str,
    matched: bool,
}

impl tracing::field::Visit for MessageStarts {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.matched = format!("{value:?}").starts_with(self.prefix);
        }
    }
}

/// Initialises logging (and tracing export) once; later calls do nothing, so tests may
/// call it freely.
///
/// * Logs: JSON lines on stdout (`HUDDLE_LOG_FORMAT=pretty` for text), filtered by
///   `RUST_LOG` (default `info`); actix-http's ERROR lines about clients' malformed
///   requests and frames are dropped unless `RUST_LOG` names `actix_http`.
/// * Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP/gRPC
///   with `service.name` = `service` (the standard `OTEL_*` variables apply), filtered by
///   `HUDDLE_TRACE_FILTER` (default `info`), and W3C trace context crosses RabbitMQ in task
///   headers and gRPC in metadata ([`trace_headers`], [`continue_trace`]).
/// * Metrics: always on the Prometheus scrape; with the same variable also pushed over
///   OTLP ([`metrics`]).
///
/// Needs a Tokio runtime when export is on (the OTLP client is a tonic channel). Fails,
/// before anything is set up, on a `RUST_LOG`, `HUDDLE_TRACE_FILTER` or
/// `HUDDLE_LOG_FORMAT` it cannot use.
pub fn init(service: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    use tracing_subscriber::Layer as _;

    // Logs and exported spans are filtered separately: quiet logs must not silence traces.
    let (log_filter, client_faults) = log_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let span_filter = filter(
        "HUDDLE_TRACE_FILTER",
        std::env::var("HUDDLE_TRACE_FILTER").ok().as_deref(),
        "info,lapin=warn,h2=warn,tower=warn",
    )?;
    let pretty = match std::env::var("HUDDLE_LOG_FORMAT") {
        Err(_) => false,
        Ok(format) if format == "json" => false,
        Ok(format) if format == "pretty" => true,
        Ok(other) => return Err(TelemetryError::LogFormat(other)),
    };
    let otlp = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    // The first caller picks the meter provider: here, one with OTLP export if asked for.
    let _ = metrics::provider(otlp.then_some(service));
    let provider = match otlp.then(|| otlp_provider(service)) {
        Some(Ok(provider)) => Some(provider),
        Some(Err(error)) => {
            eprintln!("OpenTelemetry export disabled: {error}");
            None
        }
        None => None,
    };
    let spans = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(span_filter)
    });
    let logs = log_layer(pretty, std::io::stdout, log_filter, client_faults);
    let result = tracing_subscriber::registry().with(logs).with(spans).try_init();
    if result.is_err() {
        // Already initialised (tests): keep the first subscriber and drop this exporter.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(TelemetryGuard(None));
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), otlp = provider.is_some(), "telemetry initialised");
    Ok(TelemetryGuard(provider))
}

/// The log layer: JSON lines (text when `pretty`) to `writer`, filtered by `filter`, the
/// client-fault lines left out as `client_faults` says.
fn log_layer<S, W, F>(
    pretty: bool,
    writer: W,
    filter: F,
    client_faults: ClientFaults,
) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    F: tracing_subscriber::layer::Filter<S> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    let layer = if pretty {
        tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_writer(writer)
            .map_event_format(|format| client_faults.left_out_of(format))
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .map_event_format(|format| client_faults.left_out_of(format))
            .boxed()
    };
    layer.with_filter(filter)
}

fn otlp_provider(service: &'static str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_protocol(opentelemetry_otlp::Protocol::Grpc)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build())
}

/// The current span's W3C trace context as header pairs (`traceparent`, `tracestate`),
/// to attach to a task; empty when tracing export is off.
pub fn trace_headers() -> Vec<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut headers));
    headers.into_iter().collect()
}

/// Makes `span` a child of the trace whose W3C context is in `headers` (from a task).
pub fn continue_trace<'a>(span: &tracing::Span, headers: impl IntoIterator<Item = (&'a str, String)>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let headers: std::collections::HashMap<String, String> =
        headers.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
    if headers.is_empty() {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&headers));
    let _ = span.set_parent(context);
}

/// The future a readiness check returns: `Err` carries the reason, shown by `/readyz`.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A readiness check: can this instance do its job right now (dependencies reachable)?
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> CheckFuture + Send + Sync>);

impl Readiness {
    /// Wraps a closure that probes the service's dependencies.
    pub fn new(check: impl Fn() -> CheckFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }
}

impl Readiness {
    /// Runs the check: `Err` carries the reason the instance is not ready.
    pub async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

/// The JSON body of `/healthz` and `/readyz`: `{"status": ..., "reason": ...}`.
pub fn status_body(status: &str, reason: Option<String>) -> std::collections::BTreeMap<&'static str, String> {
    let mut body = std::collections::BTreeMap::new();
    body.insert("status", status.to_owned());
    if let Some(reason) = reason {
        body.insert("reason", reason);
    }
    body
}

/// Everything in the default Prometheus registry, in the text exposition format.
pub fn metrics_text() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder.encode_to_string(&prometheus::gather()).unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// Resolves on SIGTERM or Ctrl-C: the moment a service starts its graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{log_filter, log_layer, TelemetryError};

    #[test]
    fn a_log_filter_it_cannot_parse_is_an_error_not_a_silent_default() {
        let error = log_filter(Some("info,foo=notalevel")).expect_err("an invalid RUST_LOG was accepted");
        assert!(matches!(error, TelemetryError::Filter { variable: "RUST_LOG", .. }), "{error}");
        assert!(error.to_string().contains("info,foo=notalevel"), "{error}");
        assert!(log_filter(None).is_ok() && log_filter(Some("warn,huddle_gateway=debug")).is_ok());
    }

    /// The lines `rust_log` lets through when `events` run, in both log formats.
    fn logged_by(rust_log: Option<&str>, events: impl Fn()) -> String {
        let mut text = String::new();
        for pretty in [false, true] {
            let (filter, client_faults) = log_filter(rust_log).unwrap();
            let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
            let writer = {
                let out = out.clone();
                move || Sink(out.clone())
            };
            let subscriber = tracing_subscriber::registry().with(log_layer(pretty, writer, filter, client_faults));
            tracing::subscriber::with_default(subscriber, &events);
            text.push_str(&String::from_utf8(out.lock().unwrap().clone()).unwrap());
        }
        text
    }

    fn logged(rust_log: Option<&str>) -> String {
        logged_by(rust_log, || {
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: request parse error: invalid Header provided");
            tracing::error!(target: "actix_http::ws::codec", "Unfinished fragment Ping");
            tracing::error!(target: "actix_http::h1::dispatcher", "Upgrade handler error: broken");
            tracing::info!(target: "huddle_gateway", "a line of our own");
        })
    }

    #[test]
    fn a_line_after_a_dropped_client_fault_line_is_logged() {
        // A filter that disables actix-http's errors by target, so its callsites are
        // checked each time: a dropped line must not leave the next one unlogged.
        for rust_log in ["huddle_gateway=info", "huddle_gateway=debug,lapin=warn"] {
            let text = logged_by(Some(rust_log), || {
                for round in 0..3 {
                    tracing::error!(target: "actix_http::ws::codec", "Unfinished fragment Ping");
                    tracing::info!(target: "huddle_gateway", round, "the line after it");
                }
            });
            assert_eq!(text.matches("the line after it").count(), 6, "{rust_log}: {text}");
            assert!(!text.contains("Unfinished fragment"), "{rust_log}: {text}");
        }
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Counts how often the log filter is asked about a callsite or an event.
    struct Counted(tracing_subscriber::EnvFilter, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
        tracing_subscriber::layer::Filter<S> for Counted
    {
        fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing_subscriber::layer::Filter::<S>::enabled(&self.0, meta, cx)
        }

        fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
            tracing_subscriber::layer::Filter::<S>::callsite_enabled(&self.0, meta)
        }

        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.0)
        }
    }

    #[test]
    fn disabled_lines_cost_no_filtering_each_time_they_are_reached() {
        let (filter, client_faults) = log_filter(Some("info")).unwrap();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(log_layer(
            false,
            std::io::sink,
            Counted(filter, asked.clone()),
            client_faults,
        ));
        assert_eq!(
            tracing::Subscriber::max_level_hint(&subscriber),
            Some(tracing::level_filters::LevelFilter::INFO),
            "the subscriber tells tracing which levels it never logs"
        );
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                tracing::debug!(target: "some_library::hot_path", "a line RUST_LOG=info drops");
            }
        });
        let asked = asked.load(std::sync::atomic::Ordering::Relaxed);
        assert!(asked <= 1, "the filter was asked {asked} times about one disabled callsite");
    }

    #[test]
    fn client_fault_lines_of_actix_http_are_dropped_unless_the_filter_names_actix_http() {
        for spec in [None, Some("info")] {
            let text = logged(spec);
            assert!(!text.contains("request parse error"), "{spec:?}: {text}");
            assert!(!text.contains("Unfinished fragment"), "{spec:?}: {text}");
            assert!(text.contains("Upgrade handler error"), "{spec:?}: other actix-http errors pass: {text}");
            assert!(text.contains("a line of our own"), "{spec:?}: {text}");
        }
        let asked = logged(Some("info,actix_http=debug"));
        assert!(asked.contains("request parse error") && asked.contains("Unfinished fragment"), "{asked}");
        assert!(!logged(Some("warn")).contains("a line of our own"), "RUST_LOG=warn still filters");
    }
}
