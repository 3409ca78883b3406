//! A job's lifecycle events on the result exchange (issue 17): `started` (worker id, delivery
//! number), `progress` (tuning and denoising steps, thinned by [`ProgressGate`]) and the final
//! `succeeded` / `failed` (the result message with the event fields added). Every event of a
//! delivery carries `event`, `job_id`, `delivery` (1 for the first delivery), `sequence` (from 1 at
//! `started`, one more for each event of the delivery) and `timestamp` (RFC 3339, UTC). `started`
//! and `progress` are best effort (sent unconfirmed under `{amqp.event_routing_key_prefix}.{event}`);
//! the final result is confirmed and mandatory under `amqp.result_routing_key`, and goes out only
//! once the broker has taken the delivery's earlier events, so they arrive in sequence order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::job::{
    EventStamp, JobEvent, JobResult, ProgressEvent, ProgressStage, StartedEvent,
    EVENT_SCHEMA_VERSION,
};
use crate::model::Stage;
use crate::queue::{AmqpSettings, Events};

/// At most this many progress events per second per job (the last step is always sent).
const PROGRESS_PER_SECOND: u32 = 2;

/// How long a final result waits for the delivery's earlier events to be taken by the broker.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// Where a running job reports its steps: `(stage, step, steps)`, `step` from 1 to `steps`.
pub type ProgressSink = Arc<dyn Fn(Stage, usize, usize) + Send + Sync>;

tokio::task_local! {
    /// The progress sink of the job the current task runs (set by the delivery handler around the
    /// job runner; the inference pool hands it to the inference thread with each request).
    pub static PROGRESS: ProgressSink;
}

/// Which steps become progress events: each step that reaches another tenth of the steps, at most
/// [`PROGRESS_PER_SECOND`] per second, and always the last step.
#[derive(Debug)]
pub struct ProgressGate {
    min_interval: Duration,
    last: Option<Instant>,
}

impl Default for ProgressGate {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1) / PROGRESS_PER_SECOND,
            last: None,
        }
    }
}

impl ProgressGate {
    /// Whether step `step` of `steps` (1-based), reached at `now`, is reported.
    pub fn admit(&mut self, step: usize, steps: usize, now: Instant) -> bool {
        if step == 0 || steps == 0 {
            return false;
        }
        if step < steps {
            if step * 10 / steps == (step - 1) * 10 / steps {
                return false;
            }
            if self
                .last
                .is_some_and(|last| now.duration_since(last) < self.min_interval)
            {
                return false;
            }
        }
        self.last = Some(now);
        true
    }
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-29T21:04:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The events of one delivery of a job.
pub struct JobEvents {
    events: Events,
    exchange: String,
    prefix: String,
    job_id: String,
    delivery: u32,
    /// The trace-context headers every event carries (the job's span as their parent).
    headers: Arc<[(String, String)]>,
    sequence: Arc<AtomicU64>,
    sink: Option<ProgressSink>,
    progress: Option<JoinHandle<()>>,
}

impl JobEvents {
    /// The events of delivery `delivery` (1-based) of job `job_id`, each sent with `headers` (the
    /// W3C trace context).
    pub fn new(
        events: Events,
        amqp: &AmqpSettings,
        (job_id, delivery): (&str, u32),
        headers: Vec<(String, String)>,
    ) -> Self {
        Self {
            events,
            exchange: amqp.result_exchange.clone(),
            prefix: amqp.event_routing_key_prefix.clone(),
            job_id: job_id.to_string(),
            delivery,
            headers: headers.into(),
            sequence: Arc::default(),
            sink: None,
            progress: None,
        }
    }

    /// The stamp of the delivery's next event.
    fn next(&self) -> EventStamp {
        stamp(self.delivery, &self.sequence)
    }

    /// Sends `started` (best effort).
    pub async fn started(&self, worker_id: &str) {
        let event = JobEvent::Started(StartedEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            job_id: self.job_id.clone(),
            stamp: self.next(),
            worker_id: worker_id.to_string(),
        });
        let body = serde_json::to_vec(&event).expect("an event serialises");
        let key = format!("{}.started", self.prefix);
        if let Err(e) = self
            .events
            .publish(&self.exchange, &key, body, &self.job_id, &self.headers)
            .await
        {
            tracing::debug!(error = %e, "started event not sent");
        }
    }

    /// The sink the job's steps are reported to; its events are sent (best effort, in order) by a
    /// task of their own.
    pub fn progress_sink(&mut self) -> ProgressSink {
        if let Some(sink) = &self.sink {
            return Arc::clone(sink);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<(Stage, usize, usize)>();
        let gate = Mutex::new(ProgressGate::default());
        let sink: ProgressSink = Arc::new(move |stage, step, steps| {
            let admitted = gate
                .lock()
                .map(|mut g| g.admit(step, steps, Instant::now()))
                .unwrap_or(false);
            if admitted {
                let _ = tx.send((stage, step, steps));
            }
        });
        let events = self.events.clone();
        let (exchange, job_id, delivery) =
            (self.exchange.clone(), self.job_id.clone(), self.delivery);
        let key = format!("{}.progress", self.prefix);
        let sequence = Arc::clone(&self.sequence);
        let headers = Arc::clone(&self.headers);
        self.progress = Some(tokio::spawn(async move {
            while let Some((stage, step, steps)) = rx.recv().await {
                let Some(stage) = ProgressStage::of(stage) else {
                    continue;
                };
                let event = JobEvent::Progress(ProgressEvent {
                    schema_version: EVENT_SCHEMA_VERSION,
                    job_id: job_id.clone(),
                    stamp: stamp(delivery, &sequence),
                    stage,
                    step: u32::try_from(step).unwrap_or(u32::MAX),
                    steps: u32::try_from(steps).unwrap_or(u32::MAX),
                });
                let body = serde_json::to_vec(&event).expect("an event serialises");
                if let Err(e) = events
                    .publish(&exchange, &key, body, &job_id, &headers)
                    .await
                {
                    tracing::debug!(error = %e, "progress event not sent");
                }
            }
        }));
        self.sink = Some(Arc::clone(&sink));
        sink
    }

    /// Ends the progress events: waits (bounded) until the last one is sent and the broker has
    /// taken every event sent, so that the final result comes after them.
    async fn settle(&mut self) {
        self.sink = None;
        if let Some(task) = self.progress.take() {
            let _ = tokio::time::timeout(SETTLE_WITHIN, task).await;
        }
        self.events.settle(SETTLE_WITHIN).await;
    }

    /// The final result message: `result` with `event` (its status), `delivery`, `sequence` and
    /// `timestamp` added, once the delivery's earlier events are out.
    pub async fn final_message(&mut self, result: &JobResult) -> Vec<u8> {
        self.settle().await;
        let event = JobEvent::finished(result.clone(), self.next());
        serde_json::to_vec(&event).expect("a result serialises")
    }
}

/// The stamp of delivery `delivery`'s next event (its sequence number taken from `sequence`), made now.
fn stamp(delivery: u32, sequence: &AtomicU64) -> EventStamp {
    EventStamp {
        delivery,
        sequence: sequence.fetch_add(1, Ordering::SeqCst) + 1,
        timestamp: rfc3339(SystemTime::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_reported_at_each_tenth_at_most_twice_a_second_and_always_at_the_end() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 50 steps, one every 100 ms: a tenth every 5 steps (500 ms apart) passes the rate limit.
        let mut gate = ProgressGate::default();
        let sent: Vec<usize> = (1..=50)
            .filter(|&s| gate.admit(s, 50, ms(100 * s as u64)))
            .collect();
        assert_eq!(sent, vec![5, 10, 15, 20, 25, 30, 35, 40, 45, 50]);
        // The same steps 10 ms apart: the rate limit keeps one event per 500 ms, and the last.
        let mut gate = ProgressGate::default();
        let sent: Vec<usize> = (1..=50)
            .filter(|&s| gate.admit(s, 50, ms(10 * s as u64)))
            .collect();
        assert_eq!(sent, vec![5, 50]);
        // Three steps at once: the first and the last.
        let mut gate = ProgressGate::default();
        let sent: Vec<usize> = (1..=3).filter(|&s| gate.admit(s, 3, ms(0))).collect();
        assert_eq!(sent, vec![1, 3]);
        assert!(!ProgressGate::default().admit(0, 3, t0));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_987_445_123);
        let s = rfc3339(t);
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(
            crate::job::parse_rfc3339(&s),
            Some(1_795_987_445),
            "{s} parses back"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
