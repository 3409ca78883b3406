"""Time one adapter-tuning step: PyTorch (eager, autograd) vs adapter_step.onnx on ONNX Runtime.

Three ways of doing the same step on the same batches (the committed tuning fixtures), side by side
in one run, with the same thread count:
- `torch step`: `TuningStep` in eager PyTorch (forward, `autograd.grad`, the graph's AdamW math),
  one batch of 2;
- `torch paper loop`: the paper's loop, `torch.optim.AdamW` with two groups, batch 1 x gradient
  accumulation 2 (`pva.reference.tune.tune_torch`);
- `onnx step`: one `adapter_step.onnx` call.
Prints the median milliseconds per step and the ratio to the ONNX step. A benchmark, not a test.

    .venv/bin/python -m pva.bench.tune [--model models/tiny] [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from pva import build_stack
from pva.paths import REPO_ROOT as ROOT
from pva.reference import tune as rt
from pva.tuning import TuningStep


def median_ms(run: Callable[[int], None], steps: int, warmup: int) -> float:
    """Median wall time of `run(i)` in milliseconds over `steps` calls after `warmup` calls."""
    for i in range(warmup):
        run(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.bench.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tiny")
    parser.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures" / "tune")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    stored = load_file(str(args.fixtures / "tune.safetensors"))
    batches = rt.unstack_batches(stored)
    params = stored["initial_params"]
    session = rt.adapter_step_session(args.model, threads=args.threads)
    hyper = rt.Hyper.from_manifest(json.loads((args.model / "manifest.json").read_text()))
    step_module = TuningStep.from_stack(build_stack("tiny", seed=0))
    zeros = torch.zeros_like(params)
    scalars = (
        torch.tensor(hyper.lr_visual),
        torch.tensor(hyper.lr_token),
        torch.tensor(hyper.weight_decay),
    )

    def torch_step(i: int) -> None:
        batch = batches[i % len(batches)]
        step_module(params, zeros, zeros, torch.tensor(1.0), *scalars, *batch)

    def torch_paper_loop(i: int) -> None:
        rt.tune_torch(step_module, params, [batches[i % len(batches)]], hyper)

    def onnx_step(i: int) -> None:
        rt.tune_onnx(session, params, [batches[i % len(batches)]], hyper)

    results = {
        "torch step (eager + autograd)": median_ms(torch_step, args.steps, args.warmup),
        "torch paper loop (AdamW, 1 x accum 2)": median_ms(torch_paper_loop, args.steps, args.warmup),
        "onnx step (adapter_step.onnx)": median_ms(onnx_step, args.steps, args.warmup),
    }
    onnx = results["onnx step (adapter_step.onnx)"]
    print(f"tiny model, batch {hyper.batch_size}, {args.threads} threads, median of {args.steps} steps")
    for name, ms in results.items():
        print(f"  {name:40s} {ms:8.2f} ms/step   {ms / onnx:5.2f}x the ONNX step")


if __name__ == "__main__":
    main()
