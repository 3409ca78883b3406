/**
 * The TypeScript client end to end: upload a job's images, publish it, print its events, download.
 *
 *     PVA_CLIENT_S3_ENDPOINT=http://127.0.0.1:9000 ... node clients/typescript/dist/example.js \
 *         examples/job.json --root examples --out out/client
 *
 * Settings come from PVA_CLIENT_* variables (settingsFromEnv). Exits 0 when the job succeeded, 3
 * when it failed (the error is printed).
 */

import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import { Job, JobEvent, JobFailed, PvaClient, settingsFromEnv } from './pvaClient';

function describe(e: JobEvent): string {
  const head = `#${e.sequence} ${e.event}`;
  if (e.event === 'started') return `${head} by ${e.worker_id} (delivery ${e.delivery})`;
  if (e.event === 'progress') return `${head} ${e.stage} ${e.step}/${e.steps}`;
  return head;
}

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const jobFile = args[0];
  if (!jobFile) {
    console.error('usage: example.js JOB.json [--root DIR] [--out DIR] [--timeout SECONDS]');
    return 2;
  }
  const job = JSON.parse(readFileSync(jobFile, 'utf8')) as Job;
  const root = option(args, '--root') ?? path.dirname(jobFile);
  const out = option(args, '--out') ?? 'out/client';
  const timeoutMs = Number(option(args, '--timeout') ?? '600') * 1000;
  const client = new PvaClient(settingsFromEnv());
  try {
    const paths = await client.run(job, root, out, (e) => console.log(describe(e)), timeoutMs);
    for (const p of paths) console.log(`downloaded ${p}`);
    return 0;
  } catch (e) {
    if (e instanceof JobFailed) {
      console.log(`failed: ${e.message}`);
      return 3;
    }
    throw e;
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
