"""A small client of pva-worker's queue service for a CMS written in Python (pika + boto3).

It uploads a job's images to the input bucket under the job's keys, publishes the job to the job
queue (persistent, confirmed, mandatory: a job queue that does not exist is an error, not a silent
drop), follows the job's lifecycle events on the result exchange (`started`, `progress`, then the
final `succeeded` or `failed`, schemas/event.v1.schema.json) and downloads the outputs.

    client = PvaClient(Settings.from_env())
    client.upload(job, root="examples")
    for event in client.submit(job):
        print(event["event"], event.get("stage"), event.get("step"), event.get("steps"))
    client.download(event, job, out="out")          # event: the final result

The worker declares the topology (job queue, result exchange, its own results queue); the client
declares only a private queue, bound to the job's events and final results before the job is
published, so none is missed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import botocore.config
import pika

FINAL_EVENTS = ("succeeded", "failed")


@dataclasses.dataclass
class Settings:
    """Where the worker's broker and store are (names as in the worker's `[amqp]` and `[s3]`)."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2f"
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    input_bucket: str = "pva-inputs"
    output_bucket: str = "pva-outputs"
    job_queue: str = "pva.jobs"
    result_exchange: str = "pva.results"
    result_routing_key: str = "pva.result"
    event_routing_key_prefix: str = "pva.event"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        """Reads `PVA_CLIENT_<FIELD>` variables (e.g. `PVA_CLIENT_AMQP_URL`); unset ones keep defaults."""
        env = os.environ if env is None else env
        values = {}
        for field in dataclasses.fields(cls):
            value = env.get(f"PVA_CLIENT_{field.name.upper()}")
            if value:
                values[field.name] = value
        return cls(**values)


class JobFailed(Exception):
    """The worker answered the job with `failed` (the result is in `result`)."""

    def __init__(self, result: dict):
        error = result.get("error") or {}
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.result = result


def input_keys(job: dict) -> list[str]:
    """Every object key the job reads: the target, a mask image, the references."""
    keys = [job["target"]["key"]]
    if "key" in job.get("mask", {}):
        keys.append(job["mask"]["key"])
    keys.extend(r["key"] for r in job["identity"]["references"])
    return keys


class PvaClient:
    """Uploads, publishes, follows and downloads one job at a time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.s3 = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def upload(self, job: dict, root: str | Path) -> list[str]:
        """Uploads `root/KEY` for each of the job's input keys; returns the keys."""
        keys = input_keys(job)
        for key in keys:
            with open(Path(root) / key, "rb") as f:
                self.s3.put_object(Bucket=self.settings.input_bucket, Key=key, Body=f.read())
        return keys

    def submit(
        self, job: dict, timeout: float = 600.0, traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Iterator[dict]:
        """Publishes the job and yields its events in order, the final result last.

        `traceparent`/`tracestate`: the caller's W3C trace context (e.g. from the CMS request), sent as
        AMQP headers so that the worker's spans join that trace; the final result's `trace_id` names it.
        Raises TimeoutError when no final result arrives within `timeout` seconds."""
        trace = {k: v for k, v in (("traceparent", traceparent), ("tracestate", tracestate)) if v}
        s = self.settings
        connection = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
        try:
            channel = connection.channel()
            queue = channel.queue_declare(
                queue=f"pva-client.{uuid.uuid4()}", exclusive=True, auto_delete=True
            ).method.queue
            for key in (f"{s.event_routing_key_prefix}.#", s.result_routing_key):
                channel.queue_bind(queue=queue, exchange=s.result_exchange, routing_key=key)
            channel.confirm_delivery()
            channel.basic_publish(
                exchange="",
                routing_key=s.job_queue,
                body=json.dumps(job).encode(),
                properties=pika.BasicProperties(
                    delivery_mode=2,
                    content_type="application/json",
                    correlation_id=job["job_id"],
                    timestamp=int(time.time()),
                    headers=trace or None,
                ),
                mandatory=True,
            )
            deadline = time.monotonic() + timeout
            for method, _, body in channel.consume(queue, auto_ack=True, inactivity_timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no result for job {job['job_id']} within {timeout} s")
                if method is None:
                    continue
                event = json.loads(body)
                if event.get("job_id") != job["job_id"]:
                    continue
                yield event
                if event.get("event") in FINAL_EVENTS:
                    return
        finally:
            if connection.is_open:
                connection.close()

    def run(self, job: dict, root: str | Path, out: str | Path, timeout: float = 600.0,
            on_event=lambda event: None) -> list[Path]:
        """upload + submit + download; raises JobFailed when the job failed."""
        self.upload(job, root)
        final = None
        for event in self.submit(job, timeout):
            on_event(event)
            final = event
        return self.download(final, job, out)

    def download(self, result: dict, job: dict, out: str | Path) -> list[Path]:
        """Downloads a succeeded job's outputs to `out/KEY`; raises JobFailed for a failed one."""
        if result.get("status") != "succeeded":
            raise JobFailed(result)
        bucket = job.get("output", {}).get("bucket") or self.settings.output_bucket
        paths = []
        for output in result["outputs"]:
            path = Path(out) / output["key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, output["key"], str(path))
            paths.append(path)
        return paths
