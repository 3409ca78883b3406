"""The full-size smoke's Python half: every exported graph against the PyTorch stack it came from.

`scripts/full-size-smoke.sh` exports a model directory from checkpoints written in the real formats
(`pva.checkpoints`), then runs this to check each graph of that directory — the adapter tuning step
included — against the modules `build_stack` makes from the same checkpoints, on random well-formed
inputs, at the exported width and resolution. The figure per output is the relative error
`max |onnx - torch| / max |torch|`; the check fails above `--rtol`.

    python -m pva.smoke --model DIR --size sd2 --base B --pva P [--face F] [--resolution R] [--rtol 1e-3]

Two phases: every graph's PyTorch outputs with the stack loaded, then (the stack dropped) each ONNX
Runtime session created, run and dropped in turn, so the peak is the larger of the two, never both.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from .export import example_inputs
from .stack import PvaStack
from .tuning import INPUT_NAMES, OUTPUT_NAMES, TuningStep, stack_example_inputs

#: The relative tolerance the smoke states for fp32 graphs at full width (ONNX Runtime's fused and
#: reordered float32 arithmetic against PyTorch's eager kernels).
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class GraphCheck:
    """One output of one graph: the largest difference, the output's scale and the time both took."""

    graph: str
    output: str
    max_abs: float
    scale: float
    seconds: float

    @property
    def relative(self) -> float:
        """`max_abs` relative to the largest magnitude of the PyTorch output."""
        return self.max_abs / self.scale if self.scale > 0 else float("inf")


def _graph_inputs(stack: PvaStack, name: str) -> dict[str, torch.Tensor]:
    if name == "adapter_step":
        return dict(zip(INPUT_NAMES, stack_example_inputs(stack, TuningStep.from_stack(stack))))
    return example_inputs(stack, name, batch=2, references=3, seed=7)


def _torch_outputs(stack: PvaStack, name: str, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    if name == "adapter_step":
        step = TuningStep.from_stack(stack).eval()
        outputs = step(*inputs.values())
        return {k: v.detach().numpy() for k, v in zip(OUTPUT_NAMES, outputs)}
    with torch.no_grad():
        out = stack.modules()[name](*inputs.values())
    return {"out": out.numpy()}


def torch_run(stack: PvaStack, name: str) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], float]:
    """Graph `name`'s inputs and its PyTorch module's outputs on them, and the seconds that took."""
    inputs = _graph_inputs(stack, name)
    start = time.perf_counter()
    expected = _torch_outputs(stack, name, inputs)
    gc.collect()
    _trim()
    return inputs, expected, time.perf_counter() - start


def check_graph(model_dir: Path, name: str, file: str, inputs: dict[str, torch.Tensor],
                expected: dict[str, np.ndarray], threads: int = 0) -> list[GraphCheck]:
    """Run graph `name` of `model_dir` on `inputs` and compare with the PyTorch outputs."""
    start = time.perf_counter()
    options = ort.SessionOptions()
    # NOTE: without the arena a dropped session's memory goes back (with malloc_trim below), so the
    # peak is one graph's, not the sum of every graph's peak.
    options.enable_cpu_mem_arena = False
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_dir / file), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    del session
    gc.collect()
    _trim()
    seconds = time.perf_counter() - start
    if list(expected) == ["out"]:
        expected = {names[0]: expected["out"]}
    checks = []
    for output, value in zip(names, got):
        want = expected[output]
        if value.shape != want.shape:
            raise AssertionError(f"{name}.{output}: shape {value.shape}, PyTorch gives {want.shape}")
        diff = float(np.abs(value.astype(np.float64) - want.astype(np.float64)).max())
        checks.append(GraphCheck(name, output, diff, float(np.abs(want).max()), seconds))
    return checks


def _trim() -> None:
    """Give freed heap memory back to the system (glibc), so the next graph starts from the stack."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_rss_gb() -> float:
    """This process's peak resident set so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def check_model(build: Callable[[], PvaStack], model_dir: Path, rtol: float, log=print,
                threads: int = 0) -> list[GraphCheck]:
    """Check every graph the manifest lists; raises if one is above `rtol`.

    Two phases, so that the PyTorch stack and an ONNX Runtime session are never in memory together
    (at full width the tuning graph's session alone is ~10 GB): `build()` makes the stack, every
    graph's PyTorch outputs are computed and the stack is dropped, then each session runs alone."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    stack = build()
    if manifest["resolution"] != stack.config.resolution:
        raise ValueError(
            f"{model_dir} is exported at {manifest['resolution']} px, the stack is {stack.config.resolution} px"
        )
    runs = {}
    for name in manifest["graphs"]:
        runs[name] = torch_run(stack, name)
        log(f"torch {name:<14} {runs[name][2]:.1f} s (peak RSS {peak_rss_gb():.1f} GB)")
    del stack
    gc.collect()
    _trim()
    checks: list[GraphCheck] = []
    for name, graph in manifest["graphs"].items():
        inputs, expected, _ = runs.pop(name)
        for check in check_graph(model_dir, name, graph["file"], inputs, expected, threads):
            log(
                f"graph {check.graph:<14} {check.output:<14} max|diff| {check.max_abs:.3e}  "
                f"scale {check.scale:.3e}  relative {check.relative:.2e}  ({check.seconds:.1f} s, "
                f"peak RSS {peak_rss_gb():.1f} GB)"
            )
            checks.append(check)
    worst = max(checks, key=lambda c: c.relative)
    log(f"graphs: worst relative error {worst.relative:.2e} ({worst.graph}.{worst.output}); tolerance {rtol:.0e}")
    failed = [c for c in checks if not c.relative <= rtol]
    if failed:
        raise SystemExit(
            "graphs above the tolerance: " + ", ".join(f"{c.graph}.{c.output} {c.relative:.2e}" for c in failed)
        )
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the exported model directory")
    parser.add_argument("--size", choices=("tiny", "demo", "sd2"), required=True)
    parser.add_argument("--base", type=Path, help="the diffusers directory it was exported from")
    parser.add_argument("--pva", type=Path, action="append", default=[], help="the PVA checkpoint(s)")
    parser.add_argument("--face", type=Path, help="the ArcFace state dict")
    parser.add_argument("--seed", type=int, default=0, help="random-init seed (without --base)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    args = parser.parse_args(argv)

    from .config import get_config
    from .stack import build_stack
    from .weights import load_checkpoints

    resolution = json.loads((args.model / "manifest.json").read_text())["resolution"]

    def build() -> PvaStack:
        weights = None
        if args.base is not None:
            weights = load_checkpoints(get_config(args.size), args.base, args.pva, args.face).weights
        start = time.perf_counter()
        stack = build_stack(args.size, seed=args.seed, weights=weights, resolution=resolution)
        print(f"built {args.size} at {resolution} px in {time.perf_counter() - start:.1f} s "
              f"(peak RSS {peak_rss_gb():.1f} GB)", flush=True)
        return stack

    check_model(build, args.model, args.rtol, log=lambda line: print(line, flush=True), threads=args.threads)

if __name__ == "__main__":
    main()
