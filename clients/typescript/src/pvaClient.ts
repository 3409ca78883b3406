/**
 * A small client of pva-worker's queue service for a CMS written in TypeScript (amqplib +
 * @aws-sdk/client-s3), the counterpart of clients/python/pva_client.py.
 *
 * It uploads a job's images to the input bucket under the job's keys, publishes the job to the job
 * queue (persistent, confirmed, mandatory: a job queue that does not exist is an error, not a
 * silent drop), follows the job's lifecycle events on the result exchange (`started`, `progress`,
 * then the final `succeeded` or `failed`, schemas/event.v1.schema.json) and downloads the outputs.
 * The worker declares the topology; the client declares only a private queue, bound to the job's
 * events and final results before the job is published, so none is missed.
 */

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';

import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import * as amqp from 'amqplib';

/** Where the worker's broker and store are (names as in the worker's `[amqp]` and `[s3]`). */
export interface Settings {
  amqpUrl: string;
  s3Endpoint?: string;
  s3Region: string;
  s3AccessKeyId?: string;
  s3SecretAccessKey?: string;
  inputBucket: string;
  outputBucket: string;
  jobQueue: string;
  resultExchange: string;
  resultRoutingKey: string;
  eventRoutingKeyPrefix: string;
}

export const DEFAULTS: Settings = {
  amqpUrl: 'amqp://guest:guest@127.0.0.1:5672/%2f',
  s3Region: 'us-east-1',
  inputBucket: 'pva-inputs',
  outputBucket: 'pva-outputs',
  jobQueue: 'pva.jobs',
  resultExchange: 'pva.results',
  resultRoutingKey: 'pva.result',
  eventRoutingKeyPrefix: 'pva.event',
};

/** Settings from `PVA_CLIENT_<FIELD>` variables (as the Python client: `PVA_CLIENT_AMQP_URL`, ...). */
export function settingsFromEnv(env: NodeJS.ProcessEnv = process.env): Settings {
  const settings: Settings = { ...DEFAULTS };
  const record = settings as unknown as Record<string, string>;
  const names: Record<string, string> = {
    amqpUrl: 'AMQP_URL',
    s3Endpoint: 'S3_ENDPOINT',
    s3Region: 'S3_REGION',
    s3AccessKeyId: 'S3_ACCESS_KEY_ID',
    s3SecretAccessKey: 'S3_SECRET_ACCESS_KEY',
    inputBucket: 'INPUT_BUCKET',
    outputBucket: 'OUTPUT_BUCKET',
    jobQueue: 'JOB_QUEUE',
    resultExchange: 'RESULT_EXCHANGE',
    resultRoutingKey: 'RESULT_ROUTING_KEY',
    eventRoutingKeyPrefix: 'EVENT_ROUTING_KEY_PREFIX',
  };
  for (const [field, name] of Object.entries(names)) {
    const value = env[`PVA_CLIENT_${name}`];
    if (value) record[field] = value;
  }
  return settings;
}

/** A job as the worker reads it (schemas/job.v1.schema.json); only the fields the client uses. */
export interface Job {
  job_id: string;
  target: { key: string };
  mask: { key?: string };
  identity: { references: { key: string }[] };
  output?: { bucket?: string };
  [field: string]: unknown;
}

/** An event or the final result (schemas/event.v1.schema.json). */
export interface JobEvent {
  event: 'started' | 'progress' | 'succeeded' | 'failed';
  job_id: string;
  delivery: number;
  sequence: number;
  timestamp: string;
  worker_id?: string;
  stage?: string;
  step?: number;
  steps?: number;
  status?: string;
  outputs?: { key: string; identity_score: number; identity_check_passed: boolean }[];
  error?: { code: string; message: string; retryable: boolean } | null;
  /** The W3C trace id the job ran in (final results). */
  trace_id?: string;
  [field: string]: unknown;
}

/** The worker answered the job with `failed`. */
export class JobFailed extends Error {
  constructor(public readonly result: JobEvent) {
    super(`${result.error?.code}: ${result.error?.message}`);
  }
}

/** Every object key the job reads: the target, a mask image, the references. */
export function inputKeys(job: Job): string[] {
  const keys = [job.target.key];
  if (job.mask.key) keys.push(job.mask.key);
  for (const r of job.identity.references) keys.push(r.key);
  return keys;
}

export class PvaClient {
  readonly s3: S3Client;

  constructor(readonly settings: Settings) {
    this.s3 = new S3Client({
      endpoint: settings.s3Endpoint || undefined,
      region: settings.s3Region,
      forcePathStyle: true,
      credentials: settings.s3AccessKeyId
        ? { accessKeyId: settings.s3AccessKeyId, secretAccessKey: settings.s3SecretAccessKey ?? '' }
        : undefined,
    });
  }

  /** Uploads `root/KEY` for each of the job's input keys; returns the keys. */
  async upload(job: Job, root: string): Promise<string[]> {
    const keys = inputKeys(job);
    for (const key of keys) {
      const body = await readFile(path.join(root, key));
      await this.s3.send(new PutObjectCommand({ Bucket: this.settings.inputBucket, Key: key, Body: body }));
    }
    return keys;
  }

  /**
   * Publishes the job and calls `onEvent` for each of its events in order; resolves with the final result.
   * `trace`: the caller's W3C trace context (e.g. from the CMS request), sent as AMQP headers so that
   * the worker's spans join that trace; the final result's `trace_id` names it.
   */
  async submit(
    job: Job,
    onEvent: (e: JobEvent) => void = () => {},
    timeoutMs = 600_000,
    trace?: { traceparent: string; tracestate?: string },
  ): Promise<JobEvent> {
    const s = this.settings;
    const connection = await amqp.connect(s.amqpUrl);
    try {
      const channel = await connection.createConfirmChannel();
      const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
      for (const key of [`${s.eventRoutingKeyPrefix}.#`, s.resultRoutingKey]) {
        await channel.bindQueue(queue, s.resultExchange, key);
      }
      const final = new Promise<JobEvent>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no result for job ${job.job_id} within ${timeoutMs} ms`)), timeoutMs);
        channel.on('return', () => {
          clearTimeout(timer);
          reject(new Error(`the job queue \`${s.jobQueue}\` does not exist (the message was returned)`));
        });
        channel.consume(queue, (message) => {
          if (message === null) return;
          const event = JSON.parse(message.content.toString()) as JobEvent;
          if (event.job_id !== job.job_id) return;
          onEvent(event);
          if (event.event === 'succeeded' || event.event === 'failed') {
            clearTimeout(timer);
            resolve(event);
          }
        }, { noAck: true }).catch(reject);
      });
      channel.sendToQueue(s.jobQueue, Buffer.from(JSON.stringify(job)), {
        persistent: true,
        mandatory: true,
        contentType: 'application/json',
        correlationId: job.job_id,
        timestamp: Math.floor(Date.now() / 1000),
        headers: trace ? { ...trace } : undefined,
      });
      await channel.waitForConfirms();
      return await final;
    } finally {
      await connection.close().catch(() => {});
    }
  }

  /** Downloads a succeeded job's outputs to `out/KEY`; throws JobFailed for a failed one. */
  async download(result: JobEvent, job: Job, out: string): Promise<string[]> {
    if (result.status !== 'succeeded') throw new JobFailed(result);
    const bucket = job.output?.bucket || this.settings.outputBucket;
    const paths: string[] = [];
    for (const output of result.outputs ?? []) {
      const object = await this.s3.send(new GetObjectCommand({ Bucket: bucket, Key: output.key }));
      const file = path.join(out, output.key);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, await object.Body!.transformToByteArray());
      paths.push(file);
    }
    return paths;
  }

  /** upload + submit + download. */
  async run(job: Job, root: string, out: string, onEvent?: (e: JobEvent) => void, timeoutMs?: number): Promise<string[]> {
    await this.upload(job, root);
    const final = await this.submit(job, onEvent, timeoutMs);
    return this.download(final, job, out);
  }
}
