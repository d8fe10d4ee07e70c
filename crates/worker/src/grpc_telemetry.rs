//! What every internal gRPC call leaves behind on the server: a `grpc` span that
//! continues the caller's trace (W3C `traceparent` in the request metadata) and one
//! observation of `huddle_grpc_server_seconds{method, code}`.

use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use huddle_telemetry::metrics::{seconds, Histogram, KeyValue};
use tonic::codegen::http;
use tonic::codegen::Service;
use tracing::Instrument;

static GRPC_SERVER_SECONDS: LazyLock<Histogram<f64>> =
    LazyLock::new(|| seconds("huddle_grpc_server", "Internal gRPC calls served, by method and status code"));

/// The tower layer that wraps the gRPC server's routes in [`GrpcTelemetry`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTelemetryLayer;

impl<S> tower_layer::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner }
    }
}

/// Traces and times each call of the service it wraps.
#[derive(Debug, Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let span = tracing::info_span!("grpc", rpc.method = method);
        let context = ["traceparent", "tracestate"].into_iter().filter_map(|key| {
            let value = request.headers().get(key)?.to_str().ok()?;
            Some((key, value.to_owned()))
        });
        huddle_telemetry::continue_trace(&span, context);
        // The service that was polled ready is the one that must take the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let call = span.in_scope(|| inner.call(request));
        Box::pin(
            async move {
                let result = call.await;
                let code = match &result {
                    // A call that failed early answers "trailers-only": its status is in the
                    // headers. Otherwise it succeeded (a unary handler's error is always an
                    // early answer).
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .map(|status| tonic::Code::from_bytes(status.as_bytes()))
                        .unwrap_or(tonic::Code::Ok),
                    Err(_) => tonic::Code::Unknown,
                };
                GRPC_SERVER_SECONDS.record(
                    huddle_telemetry::metrics::elapsed(started),
                    &[KeyValue::new("method", method), KeyValue::new("code", format!("{code:?}"))],
                );
                result
            }
            .instrument(span),
        )
    }
}

/// The method's `service/Method` name for Huddle's own and the standard services; any
/// other path (a caller probing) is `other`, so strangers cannot grow the label set.
fn method_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "huddle.v1.Hydrator/HydrateRoom",
        "huddle.v1.Hydrator/GetHistory",
        "huddle.v1.Persister/FlushRoom",
        "huddle.v1.Persister/RoomStatus",
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ];
    let path = path.strip_prefix('/').unwrap_or(path);
    KNOWN.iter().find(|known| **known == path).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn only_known_methods_get_their_own_label() {
        assert_eq!(method_label("/huddle.v1.Hydrator/HydrateRoom"), "huddle.v1.Hydrator/HydrateRoom");
        assert_eq!(method_label("/huddle.v1.Hydrator/Nope"), "other");
        assert_eq!(method_label("/x".repeat(1000).as_str()), "other");
    }
}
