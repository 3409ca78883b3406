//! `[amqp]`: the broker's connection and topology (a section of `crate::config::Settings`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::model::Secret;

/// RabbitMQ topology and connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost` (a secret: it holds the password).
    pub url: Secret,
    /// Durable quorum queue the jobs arrive on.
    pub job_queue: String,
    /// Exchange the job queue dead-letters to.
    pub dead_letter_exchange: String,
    /// Queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// Exchange result messages are published to.
    pub result_exchange: String,
    /// Routing key of final result messages (`succeeded` / `failed`); published with `mandatory`, so
    /// a result no queue is bound for is returned by the broker and the job retried, never dropped.
    pub result_routing_key: String,
    /// Durable quorum queue the worker declares and binds to `result_exchange` with
    /// `result_routing_key` (when `declare_results_queue`), so final results have a queue to go to
    /// before any consumer binds one.
    pub results_queue: String,
    /// Declare `results_queue` and its binding at start; off for deployments that bind their own.
    pub declare_results_queue: bool,
    /// Routing-key prefix of lifecycle events on `result_exchange`: `{prefix}.started`,
    /// `{prefix}.progress` (best effort, unconfirmed). Final results keep `result_routing_key`.
    pub event_routing_key_prefix: String,
    /// AMQP heartbeat interval in seconds.
    pub heartbeat_secs: u16,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
    /// PEM bundle of CA certificates trusted for an `amqps://` URL, in addition to the system's
    /// roots (empty: the system's roots only). Read at each connection, so a renewed file is used
    /// on the next reconnect.
    pub tls_ca_file: PathBuf,
    /// PEM client certificate (chain) presented to the broker for mutual TLS (empty: none); needs
    /// `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file` (PKCS#8, RSA or EC).
    pub tls_key_file: PathBuf,
}
