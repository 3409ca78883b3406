"""The full-size smoke's Python half: every exported graph against the PyTorch stack it came from.

`scripts/full-size-smoke.sh` exports a model directory from checkpoints written in the real formats
(`pva.checkpoints`), then runs this to check each graph of that directory — the adapter tuning step
included — against the modules `build_stack` makes from the same checkpoints, on random well-formed
inputs, at the exported width and resolution. The figure per output is the relative error
`max |onnx - torch| / max |torch|`; the check fails above `--rtol`.

    python -m pva.smoke --model DIR --size sd2 --base B --pva P [--face F] [--resolution R] [--rtol 1e-3]

One graph at a time: the torch stack stays loaded, each ONNX Runtime session is created, run and
dropped, so the peak is the stack plus the largest session.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

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


def check_graph(stack: PvaStack, model_dir: Path, name: str, file: str, threads: int = 0) -> list[GraphCheck]:
    """Run graph `name` of `model_dir` and its PyTorch module on the same inputs."""
    inputs = _graph_inputs(stack, name)
    start = time.perf_counter()
    expected = _torch_outputs(stack, name, inputs)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_dir / file), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    del session
    gc.collect()
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


def peak_rss_gb() -> float:
    """This process's peak resident set so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def check_model(stack: PvaStack, model_dir: Path, rtol: float, log=print, threads: int = 0) -> list[GraphCheck]:
    """Check every graph the manifest lists; raises if one is above `rtol`."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    if manifest["resolution"] != stack.config.resolution:
        raise ValueError(
            f"{model_dir} is exported at {manifest['resolution']} px, the stack is {stack.config.resolution} px"
        )
    checks: list[GraphCheck] = []
    for name, graph in manifest["graphs"].items():
        for check in check_graph(stack, model_dir, name, graph["file"], threads):
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
    weights = None
    if args.base is not None:
        loaded = load_checkpoints(get_config(args.size), args.base, args.pva, args.face)
        weights = loaded.weights
    start = time.perf_counter()
    stack = build_stack(args.size, seed=args.seed, weights=weights, resolution=resolution)
    print(f"built {args.size} at {resolution} px in {time.perf_counter() - start:.1f} s "
          f"(peak RSS {peak_rss_gb():.1f} GB)", flush=True)
    check_model(stack, args.model, args.rtol, log=lambda line: print(line, flush=True), threads=args.threads)


if __name__ == "__main__":
    main()
