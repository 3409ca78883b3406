//! Traces (issue 19): a job message's W3C `traceparent`/`tracestate` continued through the job's
//! spans (one per stage, named as the metrics' stages, plus `publish`), exported over OTLP/HTTP
//! (protobuf) to a small collector in the test and flushed at shutdown; the trace context in the
//! published events' and result's AMQP headers, the trace id in the result and in every log line of
//! the job. A job without `traceparent` gets a trace of its own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use pva_worker::job::{JobResult, JobStatus};

use crate::common::service::{Env, SERIAL};

/// The caller's trace and span (the CMS request the job belongs to).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
}

/// An OTLP/HTTP trace receiver on a free loopback port: decodes each `POST /v1/traces` body as an
/// `ExportTraceServiceRequest` and answers 200 with an empty `ExportTraceServiceResponse`.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Anything the receiver did not expect (path, content type, undecodable body).
    problems: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p, halt) = (spans.clone(), problems.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, p) = (s.clone(), p.clone());
                        std::thread::spawn(move || serve(conn, &s, &p));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            spans,
            problems,
            stop,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answers the requests of one connection (keep-alive) until it closes.
fn serve(conn: TcpStream, spans: &Mutex<Vec<Received>>, problems: &Mutex<Vec<String>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !request_line.starts_with("POST /v1/traces ") {
            problems
                .lock()
                .unwrap()
                .push(format!("request {request_line:?}"));
        }
        if headers.get("content-type").map(String::as_str) != Some("application/x-protobuf") {
            problems
                .lock()
                .unwrap()
                .push(format!("headers {headers:?}"));
        }
        match ExportTraceServiceRequest::decode(body.as_slice()) {
            Ok(request) => spans.lock().unwrap().extend(received(&request)),
            Err(e) => problems.lock().unwrap().push(format!("body: {e}")),
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn received(request: &ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                out.push(Received {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    name: span.name.clone(),
                });
            }
        }
    }
    out
}

/// A header's string value.
fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// What the result exchange carried: (routing key, traceparent header, tracestate header, body).
type Published = (String, Option<String>, Option<String>, serde_json::Value);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_spans_continue_its_traceparent_and_reach_the_collector() {
    let _serial = SERIAL.lock().await;
    let collector = Collector::start();
    let mut env = Env::new("tracing").await;
    env.signing = false;
    // The standard variables (mapped onto [telemetry]), not the settings file.
    env.worker_env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{}", collector.port),
        ),
        ("OTEL_SERVICE_NAME".into(), "pva-tracing-test".into()),
    ];
    env.start_worker().await;

    // Job A comes with the caller's trace and tunes (so every stage runs); job B has no trace.
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01")),
        ("tracestate", "cms=checkout".to_string()),
    ] {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    let job_a = env.job("trace-a", |v| v["tuning"] = "auto".into());
    env.channel
        .basic_publish(
            "".into(),
            env.settings.amqp.job_queue.as_str().into(),
            BasicPublishOptions::default(),
            &job_a,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    env.publish(&env.job("trace-b", |_| {})).await;

    // Everything on the result exchange until both final results.
    let mut got: Vec<Published> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let finals = |got: &Vec<Published>| {
        got.iter()
            .filter(|(key, ..)| *key == env.settings.amqp.result_routing_key)
            .count()
    };
    while finals(&got) < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = match tokio::time::timeout(left, env.results.next()).await {
            Ok(Some(Ok(d))) => d,
            _ => panic!("no results; got {got:?}; log:\n{}", env.log(0)),
        };
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        got.push((
            delivery.routing_key.as_str().to_string(),
            header(&delivery.properties, "traceparent"),
            header(&delivery.properties, "tracestate"),
            serde_json::from_slice(&delivery.data).unwrap(),
        ));
    }
    // Spans are flushed when the worker stops.
    env.signal(0, "TERM");
    assert!(env.wait_exit(0, Duration::from_secs(60)).success());
    let log = env.log(0);
    let final_of = |job: &str| {
        got.iter()
            .find(|(key, _, _, v)| {
                *key == env.settings.amqp.result_routing_key && v["job_id"] == job
            })
            .cloned()
            .unwrap()
    };

    // Job A: its result carries the caller's trace; the result's and the events' headers carry it
    // on, with the worker's spans as parents and the caller's tracestate.
    let (_, parent_a, state_a, body_a) = final_of("trace-a");
    let result_a: JobResult = serde_json::from_value(body_a).unwrap();
    assert_eq!(result_a.status, JobStatus::Succeeded, "{result_a:?}");
    assert_eq!(result_a.trace_id.as_deref(), Some(TRACE));
    assert_eq!(super::stored_result(&env, "trace-a").await, result_a);
    let parent_a = parent_a.expect("the result has a traceparent");
    let parts: Vec<&str> = parent_a.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{parent_a}"
    );
    assert_ne!(parts[2], CALLER_SPAN);
    let publish_span = parts[2].to_string();
    assert_eq!(state_a.as_deref(), Some("cms=checkout"));
    let events_a: Vec<&Published> = got
        .iter()
        .filter(|(key, _, _, v)| {
            *key != env.settings.amqp.result_routing_key && v["job_id"] == "trace-a"
        })
        .collect();
    assert!(events_a.iter().any(|(_, _, _, v)| v["event"] == "started"));
    for (_, parent, state, v) in &events_a {
        let parent = parent
            .as_deref()
            .unwrap_or_else(|| panic!("no traceparent on {v}"));
        assert!(
            parent.starts_with(&format!("00-{TRACE}-")),
            "{parent} on {v}"
        );
        assert_eq!(state.as_deref(), Some("cms=checkout"), "{v}");
    }

    // Job B: a trace of its own.
    let (_, parent_b, _, body_b) = final_of("trace-b");
    let result_b: JobResult = serde_json::from_value(body_b).unwrap();
    let trace_b = result_b
        .trace_id
        .clone()
        .expect("a trace id without traceparent");
    assert_eq!(trace_b.len(), 32, "{trace_b}");
    assert!(trace_b.chars().all(|c| c.is_ascii_hexdigit()), "{trace_b}");
    assert_ne!(trace_b, TRACE);
    assert_ne!(trace_b, "0".repeat(32));
    assert!(parent_b.unwrap().starts_with(&format!("00-{trace_b}-")));

    // The exported spans: A's job span is the caller's span's child, every stage and `publish` the
    // job span's; B's job span starts its trace.
    let spans = collector.spans();
    let problems = collector.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
    let in_trace = |trace: &str| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect()
    };
    let spans_a = in_trace(TRACE);
    let names: Vec<&str> = spans_a.iter().map(|s| s.name.as_str()).collect();
    let job = spans_a
        .iter()
        .find(|s| s.name == "job")
        .unwrap_or_else(|| panic!("no job span in {names:?}; log:\n{log}"));
    assert_eq!(job.parent, CALLER_SPAN);
    assert_eq!(job.service, "pva-tracing-test");
    for stage in [
        "fetch",
        "preprocess",
        "encode",
        "tune",
        "denoise",
        "decode",
        "upload",
        "publish",
    ] {
        let span = spans_a
            .iter()
            .find(|s| s.name == stage)
            .unwrap_or_else(|| panic!("no `{stage}` span in {names:?}"));
        assert_eq!(span.parent, job.span_id, "{stage}: {span:?}");
    }
    let publish = spans_a.iter().find(|s| s.name == "publish").unwrap();
    assert_eq!(
        publish.span_id, publish_span,
        "the result's traceparent names `publish`"
    );
    let spans_b = in_trace(&trace_b);
    let job_b = spans_b
        .iter()
        .find(|s| s.name == "job")
        .unwrap_or_else(|| panic!("no job span of trace {trace_b} in {spans:?}"));
    assert_eq!(job_b.parent, "", "a root span");
    assert!(spans_b
        .iter()
        .any(|s| s.name == "denoise" && s.parent == job_b.span_id));

    // Every log line inside a job's span carries its trace id.
    let mut lines = 0;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(job) = v["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "job"))
        else {
            continue;
        };
        let want = match job["job_id"].as_str() {
            Some("trace-a") => TRACE,
            Some("trace-b") => trace_b.as_str(),
            other => panic!("a job span of {other:?}: {line}"),
        };
        assert_eq!(job["trace_id"], want, "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "no job log lines in:\n{log}");
}
