//! Traces: the W3C trace context a job message brings in its AMQP headers (`traceparent`,
//! `tracestate`) continued by the job's span, written into the messages the worker publishes, and
//! the spans exported over OTLP/HTTP (protobuf) when `[telemetry]` names a collector. The only
//! module that uses `opentelemetry`, `opentelemetry_sdk`, `opentelemetry_otlp` and
//! `tracing_opentelemetry`.
//!
//! The OpenTelemetry layer is installed whether or not spans are exported, so every job has a trace
//! id (the incoming one, else a new one) for its result and its log lines; without an endpoint the
//! spans end in no exporter.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

mod settings;

pub use settings::TelemetrySettings;

/// The W3C trace-context headers, as read from and written to AMQP message headers.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Why telemetry could not be set up or flushed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("telemetry: cannot build the OTLP/HTTP exporter for `{url}`: {source}")]
    Exporter {
        /// Where spans were to be posted.
        url: String,
        /// The exporter's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Spans could not be flushed at shutdown (the collector is unreachable or too slow).
    #[error("telemetry: flushing spans at shutdown: {0}")]
    Flush(opentelemetry_sdk::error::OTelSdkError),
}

/// The process's tracer: spans to the OTLP exporter (when configured), flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    exports: bool,
    flush_within: Duration,
}

impl Telemetry {
    /// The tracer of `settings`: a batch exporter to `{endpoint}/v1/traces` when it exports.
    pub fn new(settings: &TelemetrySettings) -> Result<Self, TelemetryError> {
        let timeout = Duration::from_secs(settings.export_timeout_secs);
        let mut builder = SdkTracerProvider::builder().with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        );
        if settings.exports() {
            let url = settings.traces_url();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .with_timeout(timeout)
                .build()
                .map_err(|source| TelemetryError::Exporter { url, source })?;
            builder = builder.with_batch_exporter(exporter);
        }
        Ok(Self {
            provider: builder.build(),
            exports: settings.exports(),
            flush_within: timeout + Duration::from_secs(1),
        })
    }

    /// Whether spans are exported.
    pub fn exports(&self) -> bool {
        self.exports
    }

    /// The `tracing` layer that turns this crate's spans (info and above) into OpenTelemetry spans,
    /// their events into span events; other crates' spans stay out of traces.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("pva-worker"))
            .with_filter(Targets::new().with_target("pva_worker", tracing::Level::INFO))
    }

    /// Exports the spans not yet sent and stops the exporter (bounded by the export timeout).
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.provider
            .shutdown_with_timeout(self.flush_within)
            .map_err(TelemetryError::Flush)
    }
}

/// Makes `span` continue the trace of an incoming message's `traceparent`/`tracestate` (read by
/// `header`); a missing or malformed `traceparent` starts a new trace. Call it before `span` is
/// first entered. Records the trace id in the span's `trace_id` field (so every log line inside it
/// carries it) and returns it; `None` when no OpenTelemetry layer is installed.
pub fn continue_trace(
    span: &tracing::Span,
    header: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let carrier: HashMap<String, String> = TRACE_HEADERS
        .iter()
        .filter_map(|name| header(name).map(|value| (name.to_string(), value)))
        .collect();
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // NOTE: the only error is a span already started or no layer; either way the span keeps
        // the trace it has, which trace_id reports.
        let _ = span.set_parent(parent);
    }
    let id = trace_id(span)?;
    span.record("trace_id", id.as_str());
    Some(id)
}

/// Whether `value` is a valid W3C `traceparent` (version 00: `00-<trace id>-<parent id>-<flags>`,
/// neither id all zeros).
pub fn is_traceparent(value: &str) -> bool {
    let carrier = HashMap::from([("traceparent".to_string(), value.to_string())]);
    TraceContextPropagator::new()
        .extract(&carrier)
        .span()
        .span_context()
        .is_valid()
}

/// The trace id of `span` (32 lowercase hex digits); `None` without an OpenTelemetry layer.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The `traceparent` (with `span` as the parent) and `tracestate` headers for a message published
/// inside `span`; empty without an OpenTelemetry layer.
pub fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let mut headers: Vec<(String, String)> = carrier.into_iter().collect();
    headers.sort();
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_layer(test: impl FnOnce()) {
        let settings = TelemetrySettings {
            endpoint: String::new(),
            service_name: "pva-worker".into(),
            disabled: false,
            export_timeout_secs: 1,
        };
        let telemetry = Telemetry::new(&settings).unwrap();
        assert!(!telemetry.exports());
        let subscriber = tracing_subscriber::registry().with(telemetry.layer());
        tracing::subscriber::with_default(subscriber, test);
        telemetry.shutdown().unwrap();
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_traceparent_is_continued_and_written_out_with_the_new_parent() {
        with_layer(|| {
            let span = tracing::info_span!("job", trace_id = tracing::field::Empty);
            let id = continue_trace(
                &span,
                headers(&[("traceparent", PARENT), ("tracestate", "vendor=x")]),
            );
            assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            let out = trace_headers(&span);
            assert_eq!(out[0].0, "traceparent");
            let parts: Vec<&str> = out[0].1.split('-').collect();
            assert_eq!(parts.len(), 4, "{out:?}");
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(
                parts[2], "00f067aa0ba902b7",
                "the worker's span is the new parent"
            );
            assert_eq!(parts[3], "01");
            assert_eq!(out[1], ("tracestate".to_string(), "vendor=x".to_string()));
            // A child span stays in the trace.
            let child = span.in_scope(|| tracing::info_span!("fetch"));
            assert_eq!(trace_id(&child), id);
        });
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        with_layer(|| {
            let a = tracing::info_span!("job", trace_id = tracing::field::Empty);
            let b = tracing::info_span!("job", trace_id = tracing::field::Empty);
            let a = continue_trace(&a, headers(&[])).unwrap();
            let b = continue_trace(&b, headers(&[("traceparent", "00-zz-not-a-trace")])).unwrap();
            for id in [&a, &b] {
                assert_eq!(id.len(), 32, "{id}");
                assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
                assert_ne!(id, &"0".repeat(32));
            }
            assert_ne!(a, b);
        });
        assert!(is_traceparent(PARENT));
        for bad in [
            "",
            "00-zz-not-a-trace",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn without_the_layer_there_is_no_trace() {
        let span = tracing::info_span!("job", trace_id = tracing::field::Empty);
        assert_eq!(continue_trace(&span, |_| Some(PARENT.to_string())), None);
        assert!(trace_headers(&span).is_empty());
    }
}
