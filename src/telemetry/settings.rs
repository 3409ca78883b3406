//! `[telemetry]`: OpenTelemetry trace export (a section of `crate::config::Settings`; the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and `OTEL_SDK_DISABLED` variables set it too).

use serde::Deserialize;

/// Trace export over OTLP/HTTP (protobuf). Trace context (W3C `traceparent`/`tracestate` in the AMQP
/// headers, the trace id in results and logs) works whether or not spans are exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318`; spans are posted to
    /// `{endpoint}/v1/traces`. Empty: no export (the default).
    pub endpoint: String,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// Export nothing, whatever `endpoint` says (`OTEL_SDK_DISABLED=true`).
    pub disabled: bool,
    /// Seconds one export request may take (also the bound of the flush at shutdown).
    pub export_timeout_secs: u64,
}

impl TelemetrySettings {
    /// Whether spans are exported.
    pub fn exports(&self) -> bool {
        !self.disabled && !self.endpoint.trim().is_empty()
    }

    /// The URL spans are posted to: `{endpoint}/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim().trim_end_matches('/'))
    }

    /// Why the settings cannot work, naming the setting.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.exports() && !self.endpoint.trim().starts_with("http://") {
            // NOTE: the exporter's HTTP client is built without TLS; a collector agent beside the
            // worker (a sidecar or the node's agent) takes plain HTTP.
            return Some((
                "telemetry.endpoint",
                "must be an http:// URL (e.g. http://otel-collector:4318); the exporter has no TLS"
                    .into(),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Some(("telemetry.service_name", "must not be empty".into()));
        }
        if self.export_timeout_secs == 0 {
            return Some(("telemetry.export_timeout_secs", "must be > 0".into()));
        }
        None
    }
}
