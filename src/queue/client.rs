//! [`JobClient`]: the publishing side of the job queue, as a CMS uses it (`pva-worker enqueue`, the
//! throughput benchmark): jobs published persistently with confirms, results received on a queue of
//! the client's own.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::{
    bind_queue, broker, confirm_channel, connect, declare_topology, publish_confirmed,
    AmqpSettings, Outgoing, QueueError,
};

/// A connection with one channel in confirm mode, after declaring the worker's topology.
pub struct JobClient {
    connection: Connection,
    channel: Channel,
}

/// Where a client's results arrive.
#[derive(Debug, Clone, Copy)]
pub enum ResultsQueue<'a> {
    /// A server-named queue only this connection uses (for `reply_to`), deleted with it.
    Private,
    /// A named queue, deleted when its consumer goes, bound to `exchange` with `routing_key`.
    Bound {
        /// The queue's name.
        queue: &'a str,
        /// The result exchange.
        exchange: &'a str,
        /// The binding's routing key (`#` for every result).
        routing_key: &'a str,
    },
}

/// Results as they arrive (each is acknowledged when taken).
pub struct Results {
    name: String,
    consumer: Consumer,
}

impl JobClient {
    /// Connects and declares the topology (idempotent: the same declarations the worker makes).
    pub async fn connect(
        settings: &AmqpSettings,
        delivery_limit: u32,
        name: &str,
    ) -> Result<Self, QueueError> {
        let connection = connect(settings, name).await?;
        let channel = confirm_channel(&connection).await?;
        declare_topology(&channel, settings, delivery_limit).await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Declares a results queue and starts consuming it.
    pub async fn results(&self, queue: ResultsQueue<'_>) -> Result<Results, QueueError> {
        let (name, options) = match queue {
            ResultsQueue::Private => (
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
            ),
            ResultsQueue::Bound { queue, .. } => (
                queue,
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
            ),
        };
        let declared = self
            .channel
            .queue_declare(name.into(), options, FieldTable::default())
            .await
            .map_err(broker("declaring the results queue"))?;
        if let ResultsQueue::Bound {
            queue,
            exchange,
            routing_key,
        } = queue
        {
            bind_queue(
                &self.channel,
                queue,
                (exchange, routing_key),
                "binding the results queue",
            )
            .await?;
        }
        let consumer = self
            .channel
            .basic_consume(
                declared.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("consuming the results queue"))?;
        Ok(Results {
            name: declared.name().as_str().to_string(),
            consumer,
        })
    }

    /// Publishes a job persistently to `queue` with string `headers` (e.g. the W3C `traceparent`)
    /// and waits for the broker's confirm.
    pub async fn publish_job(
        &self,
        queue: &str,
        body: &[u8],
        correlation_id: Option<&str>,
        reply_to: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<(), QueueError> {
        let message = Outgoing {
            body: body.to_vec(),
            correlation_id: correlation_id.map(str::to_string),
            headers: headers.to_vec(),
            reply_to: reply_to.map(str::to_string),
        };
        publish_confirmed(&self.channel, "", queue, &message, false).await
    }

    /// Deletes queues and exchanges, best effort (e.g. a benchmark's own topology).
    pub async fn delete(&self, queues: &[&str], exchanges: &[&str]) {
        for queue in queues {
            let _ = self
                .channel
                .queue_delete((*queue).into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in exchanges {
            let _ = self
                .channel
                .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    /// Closes the connection (errors ignored: it may be gone).
    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

impl Results {
    /// The queue's name (the `reply_to` of a private queue).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next result's body, acknowledged; `None` when the consumer ended.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, QueueError>> {
        let delivery = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(broker("receiving a result")(e))),
        };
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            return Some(Err(broker("acknowledging a result")(e)));
        }
        Some(Ok(delivery.data))
    }
}
