"""Write the README's example job for the demo model: a held-out synthetic person (never seen in
training: another seed and person range than ``python -m pva.train data``), clean-shaven in the
target, three reference renders of the same person, and a job that asks for a beard in the lower face.

    .venv/bin/python -m pva.train.make_example [--out examples]

Writes ``OUT/synthetic/target.png``, ``OUT/synthetic/ref_{0,1,2}.png`` (64x64 renders, the demo
model's resolution, enlarged 4x with nearest-neighbour so they are easy to look at; the worker
scales them back down) and ``OUT/demo-job.json``. Deterministic: rerunning rewrites the same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from pva.paths import REPO_ROOT as ROOT
from pva.train.synthetic import EditAttrs, IdentityParams, Nuisance, caption, render

SEED = 2026
PERSON = 500_000
TARGET = EditAttrs(smile=False, beard=False, glasses=False)
REFERENCES = (EditAttrs(True, False, False), EditAttrs(False, True, True), EditAttrs(True, True, False))
ENLARGE = 4


def write_example(out: Path) -> dict:
    """Write the photos and the job; returns the job."""
    identity = IdentityParams.draw(SEED, PERSON)
    photos = out / "synthetic"
    photos.mkdir(parents=True, exist_ok=True)
    names = []
    for image, (name, attrs) in enumerate([("target.png", TARGET)] + [(f"ref_{i}.png", a) for i, a in enumerate(REFERENCES)]):
        rgb, _ = render(identity, attrs, Nuisance.draw(SEED, PERSON, image), 64)
        big = Image.fromarray(rgb).resize((64 * ENLARGE, 64 * ENLARGE), Image.Resampling.NEAREST)
        big.save(photos / name)
        names.append(name)
    edited = EditAttrs(TARGET.smile, True, TARGET.glasses)
    job = {
        "schema_version": 1,
        "job_id": "example-demo-beard",
        "identity": {
            "id": "synthetic-person",
            "references": [{"key": f"synthetic/{n}"} for n in names[1:]],
        },
        "target": {"key": "synthetic/target.png"},
        "mask": {"region": "lower_face"},
        # The demo model learnt captions that name all three attributes (synthetic.caption).
        "prompt": caption(edited),
        "steps": 25,
        "guidance": 1.0,
        "scheduler": "ddim",
        "eta": 0.0,
        "seed": 42,
        "num_outputs": 2,
        "output": {"prefix": "example-demo", "format": "png"},
        "consent": {"id": "synthetic-example", "version": "1"},
    }
    (out / "demo-job.json").write_text(json.dumps(job, indent=2) + "\n")
    return job


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.train.make_example", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "examples")
    args = parser.parse_args(argv)
    job = write_example(args.out)
    print(f"wrote {args.out / 'demo-job.json'}: {job['prompt']!r}")


if __name__ == "__main__":
    main()
