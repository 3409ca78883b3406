//! RabbitMQ through lapin: connection, idempotent topology, confirmed publishing and the
//! per-delivery facts the worker needs (delivery count, queue wait, reply-to). The only module that
//! uses `lapin` types.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

mod client;
mod settings;

pub use client::{JobClient, Results, ResultsQueue};
pub use settings::AmqpSettings;

/// Why a broker operation failed. Messages never contain the connection URL (it holds a password).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The URL in `amqp.url` is not valid.
    #[error("amqp.url is not a valid AMQP URL: {0}")]
    Url(String),
    /// A TLS file of the settings (CA bundle, client certificate or key) cannot be used.
    #[error("broker TLS: {0}")]
    Tls(#[from] crate::model::pem::PemError),
    /// The connection to the broker could not be made (refused, TLS handshake failed, wrong
    /// credentials); names the endpoint, never the URL.
    #[error("broker at {endpoint}: cannot connect: {source}")]
    Connect {
        /// `host:port` of the broker.
        endpoint: String,
        /// lapin's error (for a refused certificate: the TLS alert, e.g. `UnknownIssuer`).
        source: lapin::Error,
    },
    /// Declaring, consuming or publishing failed.
    #[error("broker: {what}: {source}")]
    Broker {
        /// What was being done.
        what: &'static str,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The broker returned a `mandatory` message: no queue is bound for its routing key (a transient
    /// failure: the caller retries later, once a queue is bound).
    #[error("broker returned the message published to `{exchange}`/`{routing_key}`: no queue is bound for it ({reply})")]
    Returned {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The broker's reply code and text (e.g. `312 NO_ROUTE`).
        reply: String,
    },
    /// The broker refused (nacked) a published message.
    #[error("broker refused the message published to `{exchange}`/`{routing_key}`")]
    Nacked {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
}

fn broker(what: &'static str) -> impl FnOnce(lapin::Error) -> QueueError {
    move |source| QueueError::Broker { what, source }
}

/// A connection with one channel for consuming and one (in confirm mode) for publishing.
pub struct Broker {
    connection: Connection,
    /// Channel the job consumer runs on.
    consume: Channel,
    /// Channel results and dead letters are published on, with publisher confirms.
    publish: Channel,
    /// One confirmed publish at a time on `publish`, so a returned message and its confirm belong
    /// to the publish that waits for them.
    publish_lock: Arc<tokio::sync::Mutex<()>>,
    /// Channel lifecycle events are published on (confirm mode, but nobody waits for a single
    /// event's confirm: see [`Events`]).
    events: Channel,
}

/// Publishes lifecycle events, best effort: each is sent without waiting for its confirm; before a
/// job's final result, [`Events::settle`] waits (bounded) until the broker has taken every event
/// sent, so a job's events are routed before its final result. Cheap to clone (one channel).
#[derive(Clone)]
pub struct Events(Channel);

impl Events {
    /// Sends an event (transient, not mandatory) with string `headers` (e.g. the trace context);
    /// does not wait for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        correlation_id: &str,
        headers: &[(String, String)],
    ) -> Result<(), QueueError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into())
            .with_correlation_id(correlation_id.into())
            .with_headers(string_headers(headers));
        // NOTE: the confirm is dropped; `settle` waits for every confirm of the channel.
        self.0
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .map(drop)
            .map_err(broker("publishing an event"))
    }

    /// Waits up to `within` for the broker's confirms of every event sent so far on this channel.
    pub async fn settle(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.0.wait_for_confirms()).await;
    }
}

/// A job message as delivered, answered with [`Delivery::ack`] or [`Delivery::requeue`].
pub struct Delivery(lapin::message::Delivery);

/// The job queue's deliveries as they arrive.
pub struct Jobs(Consumer);

/// Publishes results and dead letters with confirms; cheap to clone (one channel, whose confirmed
/// publishes take turns).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Jobs {
    /// The next delivery; `None` when the broker cancelled the consumer.
    pub async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        use futures_util::StreamExt;
        Some(
            self.0
                .next()
                .await?
                .map(Delivery)
                .map_err(broker("receiving a job")),
        )
    }
}

impl Delivery {
    /// The message body (the job JSON).
    pub fn body(&self) -> &[u8] {
        &self.0.data
    }

    /// Acknowledges the message: the broker forgets it.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.0
            .acker
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(broker("acknowledging a job"))
    }

    /// Returns the message to the queue for another delivery.
    pub async fn requeue(&self) -> Result<(), QueueError> {
        let options = lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        self.0
            .acker
            .nack(options)
            .await
            .map(|_| ())
            .map_err(broker("requeueing a job"))
    }

    /// How many times this message was delivered before (0 on the first delivery), from the quorum
    /// queue's `x-delivery-count` header.
    pub fn previous_deliveries(&self) -> u32 {
        previous_deliveries(&self.0)
    }

    /// When the message was published, from its `timestamp` property.
    pub fn published_at(&self) -> Option<SystemTime> {
        self.0
            .properties
            .timestamp()
            .map(|ts| UNIX_EPOCH + Duration::from_secs(ts))
    }

    /// Publishes this message to the dead-letter `exchange` (confirmed) with why it failed in
    /// `x-pva-error-code` / `x-pva-error-message` and its delivery count in `x-pva-deliveries`;
    /// the caller acknowledges it afterwards.
    pub async fn dead_letter(
        &self,
        publisher: &Publisher,
        (exchange, routing_key): (&str, &str),
        job_id: &str,
        (code, message): (&str, &str),
    ) -> Result<(), QueueError> {
        let dead = Outgoing {
            body: self.0.data.clone(),
            correlation_id: Some(job_id.to_string()),
            headers: vec![
                ("x-pva-error-code".into(), code.to_string()),
                ("x-pva-error-message".into(), message.to_string()),
                (
                    "x-pva-deliveries".into(),
                    (self.previous_deliveries() + 1).to_string(),
                ),
            ],
            reply_to: None,
        };
        publisher
            .publish_confirmed(exchange, routing_key, &dead)
            .await
    }

    /// The string value of header `name` (a long or short string; e.g. `traceparent`), when present.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.0.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    /// The AMQP `reply_to` and `correlation_id` of a request, when present.
    pub fn reply_to(&self) -> (Option<String>, Option<String>) {
        let p = &self.0.properties;
        (
            p.reply_to().as_ref().map(|s| s.as_str().to_string()),
            p.correlation_id().as_ref().map(|s| s.as_str().to_string()),
        )
    }
}

/// The arguments of a quorum queue (the job queue adds its dead-lettering to them).
fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declares the durable queue `queue` with `args` and binds it to `(exchange, routing key)`;
/// `what` names the two steps in errors.
async fn declare_bound_quorum_queue(
    channel: &Channel,
    args: FieldTable,
    queue: &str,
    (exchange, routing_key): (&str, &str),
    what: (&'static str, &'static str),
) -> Result<(), QueueError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(broker(what.0))?;
    bind_queue(channel, queue, (exchange, routing_key), what.1).await
}

/// Binds `queue` to `(exchange, routing key)`; `what` names the step in errors.
async fn bind_queue(
    channel: &Channel,
    queue: &str,
    (exchange, routing_key): (&str, &str),
    what: &'static str,
) -> Result<(), QueueError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker(what))
}

impl Publisher {
    /// Publishes persistently and waits for the broker's confirm.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), QueueError> {
        let _turn = self.lock.lock().await;
        publish_confirmed(&self.channel, exchange, routing_key, message, false).await
    }

    /// Publishes persistently with `mandatory` and waits for the broker's confirm: a message no
    /// queue is bound for is [`QueueError::Returned`], never a success.
    pub async fn publish_mandatory(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), QueueError> {
        let _turn = self.lock.lock().await;
        publish_confirmed(&self.channel, exchange, routing_key, message, true).await
    }
}

impl Broker {
    /// Connects, declares the topology, sets the prefetch and enables confirms.
    pub async fn connect(
        settings: &AmqpSettings,
        prefetch: u16,
        delivery_limit: u32,
        name: &str,
    ) -> Result<Self, QueueError> {
        let connection = connect(settings, name).await?;
        let consume = connection
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        let publish = confirm_channel(&connection).await?;
        let events = confirm_channel(&connection).await?;
        declare_topology(&consume, settings, delivery_limit).await?;
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker("setting the prefetch"))?;
        Ok(Self {
            connection,
            consume,
            publish,
            publish_lock: Arc::default(),
            events,
        })
    }

    /// Starts consuming the job queue with manual acknowledgements.
    pub async fn consume_jobs(
        &self,
        settings: &AmqpSettings,
        tag: &str,
    ) -> Result<Jobs, QueueError> {
        self.consume
            .basic_consume(
                settings.job_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map(Jobs)
            .map_err(broker("starting the consumer"))
    }

    /// The publisher on this connection's confirm channel.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            channel: self.publish.clone(),
            lock: Arc::clone(&self.publish_lock),
        }
    }

    /// The lifecycle-event publisher on this connection's events channel.
    pub fn events(&self) -> Events {
        Events(self.events.clone())
    }

    /// Stops the job consumer `tag` (in-flight deliveries stay with this worker until answered).
    pub async fn cancel(&self, tag: &str) {
        let _ = self
            .consume
            .basic_cancel(tag.into(), lapin::options::BasicCancelOptions::default())
            .await;
    }

    /// Closes channels and connection politely (errors ignored: the connection may be gone).
    pub async fn close(&self) {
        let _ = self.consume.close(200, "shutdown".into()).await;
        let _ = self.publish.close(200, "shutdown".into()).await;
        let _ = self.events.close(200, "shutdown".into()).await;
        let _ = self.connection.close(200, "shutdown".into()).await;
    }
}

/// A new channel on `connection` in publisher-confirm mode.
async fn confirm_channel(connection: &Connection) -> Result<Channel, QueueError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(broker("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker("enabling publisher confirms"))?;
    Ok(channel)
}

/// Opens a connection with the configured heartbeat.
pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Connection, QueueError> {
    let mut uri: lapin::uri::AMQPUri = settings
        .url
        .expose()
        .parse()
        // NOTE: the parser's message may quote the URL; report only that it is invalid.
        .map_err(|_| QueueError::Url("cannot parse it".into()))?;
    uri.query.heartbeat = Some(settings.heartbeat_secs);
    let endpoint = format!("{}:{}", uri.authority.host, uri.authority.port);
    let tls = tls_config(settings)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    lapin::DefaultConnectionBuilder::new()
        .map_err(broker("starting the AMQP runtime"))?
        .with_uri(uri)
        .with_properties(properties)
        .with_tls_config(tls)
        .connect()
        .await
        .map_err(|source| QueueError::Connect { endpoint, source })
}

/// The TLS configuration of an `amqps://` connection: the CA bundle trusted besides the system's
/// roots and the client certificate, from the files of the settings (read at each connection, so
/// renewed files are picked up on reconnect). Unused by plain `amqp://` URLs.
fn tls_config(settings: &AmqpSettings) -> Result<lapin::tcp::OwnedTLSConfig, QueueError> {
    use crate::model::pem;
    let set = |path: &std::path::Path| !path.as_os_str().is_empty();
    let mut tls = lapin::tcp::OwnedTLSConfig::default();
    if set(&settings.tls_ca_file) {
        let bundle = pem::certificates("amqp.tls_ca_file", &settings.tls_ca_file)?;
        // NOTE: checked as PEM certificates just above, so valid UTF-8 (PEM is ASCII).
        tls.cert_chain = Some(String::from_utf8_lossy(&bundle).into_owned());
    }
    if set(&settings.tls_cert_file) || set(&settings.tls_key_file) {
        tls.identity = Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: pem::certificates("amqp.tls_cert_file", &settings.tls_cert_file)?,
            key: pem::private_key("amqp.tls_key_file", &settings.tls_key_file)?,
        });
    }
    Ok(tls)
}

/// Declares (idempotently) the dead-letter exchange and queue, the durable quorum job queue with
/// its dead-letter exchange and delivery limit, the result exchange and (when
/// `declare_results_queue`) the durable quorum results queue bound to it with the final results'
/// routing key.
pub async fn declare_topology(
    channel: &Channel,
    settings: &AmqpSettings,
    delivery_limit: u32,
) -> Result<(), QueueError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(broker("declaring the dead-letter exchange"))?;
    declare_bound_quorum_queue(
        channel,
        quorum_args(),
        &settings.dead_letter_queue,
        (&settings.dead_letter_exchange, &settings.job_queue),
        (
            "declaring the dead-letter queue",
            "binding the dead-letter queue",
        ),
    )
    .await?;
    let mut args = quorum_args();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(settings.dead_letter_exchange.as_str().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(settings.job_queue.as_str().into()),
    );
    // NOTE: the broker's own limit is a safety net for deliveries the worker never answers (it
    // crashed mid-job each time); the worker dead-letters transient failures itself one delivery
    // earlier, with the reason.
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(delivery_limit as i32),
    );
    channel
        .queue_declare(
            settings.job_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(broker("declaring the job queue (an existing queue with other arguments is refused: delete it or align the settings)"))?;
    channel
        .exchange_declare(
            settings.result_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(broker("declaring the result exchange"))?;
    if settings.declare_results_queue {
        declare_bound_quorum_queue(
            channel,
            quorum_args(),
            &settings.results_queue,
            (&settings.result_exchange, &settings.result_routing_key),
            (
                "declaring the results queue (an existing queue with other arguments is refused: \
                 delete it, or set amqp.declare_results_queue = false)",
                "binding the results queue",
            ),
        )
        .await?;
    }
    Ok(())
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// JSON body.
    pub body: Vec<u8>,
    /// Correlation id (the job id, or the request's own correlation id).
    pub correlation_id: Option<String>,
    /// Extra string headers.
    pub headers: Vec<(String, String)>,
    /// Queue the answer goes to (a request's `reply_to`).
    pub reply_to: Option<String>,
}

/// String headers as an AMQP field table (long strings).
fn string_headers(headers: &[(String, String)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            ShortString::from(k.as_str()),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    table
}

/// Publishes persistently (with `mandatory` when asked) and waits for the broker's confirm; a
/// returned message is [`QueueError::Returned`]. The caller makes sure no other confirmed publish
/// is in flight on `channel` (the return travels just before its confirm, unnumbered).
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &Outgoing,
    mandatory: bool,
) -> Result<(), QueueError> {
    let headers = string_headers(&message.headers);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        )
        .with_headers(headers);
    if let Some(id) = &message.correlation_id {
        properties = properties.with_correlation_id(id.as_str().into());
    }
    if let Some(reply_to) = &message.reply_to {
        properties = properties.with_reply_to(reply_to.as_str().into());
    }
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            &message.body,
            properties,
        )
        .await
        .map_err(broker("publishing"))?
        .await
        .map_err(broker("waiting for the publisher confirm"))?;
    if let lapin::Confirmation::Ack(Some(returned)) | lapin::Confirmation::Nack(Some(returned)) =
        &confirm
    {
        return Err(QueueError::Returned {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            reply: format!("{} {}", returned.reply_code, returned.reply_text.as_str()),
        });
    }
    if confirm.is_nack() {
        return Err(QueueError::Nacked {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        });
    }
    Ok(())
}

/// How many times this message was delivered before (0 on the first delivery), from the quorum
/// queue's `x-delivery-count` header.
fn previous_deliveries(delivery: &lapin::message::Delivery) -> u32 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n.max(0) as u32),
            AMQPValue::LongInt(n) => Some(n.max(0) as u32),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::ShortInt(n) => Some(n.max(0) as u32),
            _ => None,
        })
        .unwrap_or(0)
}
