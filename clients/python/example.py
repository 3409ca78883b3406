"""The Python client end to end: upload a job's images, publish it, print its events, download.

    PVA_CLIENT_S3_ENDPOINT=http://127.0.0.1:9000 PVA_CLIENT_S3_ACCESS_KEY_ID=... \\
    PVA_CLIENT_S3_SECRET_ACCESS_KEY=... .venv/bin/python clients/python/example.py \\
        examples/job.json --root examples --out out/client

Settings come from PVA_CLIENT_* variables (pva_client.Settings). Exits 0 when the job succeeded,
3 when it failed (the error is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pva_client import JobFailed, PvaClient, Settings  # noqa: E402


def describe(event: dict) -> str:
    kind = event["event"]
    head = f"#{event['sequence']} {kind}"
    if kind == "started":
        return f"{head} by {event['worker_id']} (delivery {event['delivery']})"
    if kind == "progress":
        return f"{head} {event['stage']} {event['step']}/{event['steps']}"
    return head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path, help="the job JSON")
    parser.add_argument("--root", type=Path, help="where the job's keys are (default: the job's folder)")
    parser.add_argument("--out", type=Path, default=Path("out/client"))
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    job = json.loads(args.job.read_text())
    client = PvaClient(Settings.from_env())
    try:
        paths = client.run(
            job,
            root=args.root or args.job.parent,
            out=args.out,
            timeout=args.timeout,
            on_event=lambda e: print(describe(e), flush=True),
        )
    except JobFailed as e:
        print(f"failed: {e}", flush=True)
        return 3
    for path in paths:
        print(f"downloaded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
