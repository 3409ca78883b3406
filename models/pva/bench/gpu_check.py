"""The one-shot GPU check's measuring side (scripts/gpu/check.sh runs it; nothing here asserts a time).

Builds, from one stack, three model directories that differ only in the UNet, the other edit graphs
in fp16 (`pva.precision`) and shared between them by hard links:

    fp32        the UNet as exported (explicit attention, float32)
    fp16        the same UNet converted to fp16
    fp16-fused  the UNet with fused attention (`pva.fused`), converted to fp16

then measures, in one run, and prints ONE JSON object (also written to WORK/check.json):

- `unet_step_ms`: per variant, one UNet step at batch 1 inside the worker's own sampling loop:
  `pva-worker edit` of examples/job.json at guidance 1 and one output (one UNet row) at `--steps` and
  at `--short-steps`; (denoise_long - denoise_short) / (steps - short_steps), so model load, warm-up
  (kernel selection) and the per-job encoders cancel out;
- `torch_eager_step_ms`: the same UNet in PyTorch eager (fused processors: scaled_dot_product_attention)
  at batch 1, in `torch_dtype` (float16 on CUDA, float32 on the CPU), median of timed steps;
- `edit`: the whole `--steps`-step edit of the fp16-fused variant: per-stage seconds as the worker
  prints them (model_load among them) and the wall time of the process;
- `peak_memory_mib`: on CUDA the most device memory `nvidia-smi` saw in use during each worker run
  (polled every 100 ms); on the CPU the largest peak RSS of the worker processes run so far.

`--priority 2` measures instead: the fused fp16 variant at 2 and 4 outputs (UNet batch 2 and 4),
guidance 7.5, with `engine.cuda_graph` on, the PyTorch UNet under `torch.compile`, and (with
`--tune`) 40 tuning steps of `pva-worker tune` (exports the fp32 tuning graph first).

    python -m pva.bench.gpu_check --size sd2 --device cuda --worker BIN --ort-library LIB --work DIR
    python -m pva.bench.gpu_check --size tiny --device cpu --worker BIN --fp32-from models/tiny --work DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import onnx
import torch
from safetensors.torch import save_file

from pva import PvaStack, build_stack
from pva.export import GRAPH_ORDER, build_manifest, describe_graph, example_inputs, export_graph
from pva.fused import fused_attention
from pva.paths import REPO_ROOT
from pva.precision import to_fp16

VARIANTS = ("fp32", "fp16", "fp16-fused")
#: A stage line of `pva-worker edit`'s output: `      denoise:    1.234 s`.
_STAGE = re.compile(r"^\s*([a-z_]+):\s+([0-9.]+) s$")


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external:
        data = path.parent / (path.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
    else:
        onnx.save(model, str(path))


def _link(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_variants(stack: PvaStack, work: Path, fp32_from: Path | None, external: bool) -> dict[str, Path]:
    """The three model directories under `work` (module doc). With `fp32_from` (an fp32 model
    directory of the same stack, e.g. models/tiny) its graphs are converted instead of exporting them
    again; the fused UNet is always exported."""
    graphs_dir = work / "graphs"
    graphs_dir.mkdir(parents=True, exist_ok=True)

    def fp32_graph(name: str) -> Path:
        path = graphs_dir / f"{name}.fp32.onnx"
        start = time.perf_counter()
        if fp32_from is not None:
            _save(onnx.load(str(fp32_from / f"{name}.onnx")), path, external)
        else:
            export_graph(stack, name, path, external)
        _log(f"{name}: fp32 in {time.perf_counter() - start:.1f} s")
        return path

    def fp16_of(src: Path, dst: Path) -> Path:
        start = time.perf_counter()
        to_fp16(src, dst, external)
        _log(f"{dst.name}: fp16 in {time.perf_counter() - start:.1f} s")
        return dst

    files: dict[str, Path] = {}
    for name in GRAPH_ORDER:
        if name == "unet":
            continue
        src = fp32_graph(name)
        files[name] = fp16_of(src, graphs_dir / f"{name}.onnx")
        src.unlink()
        (src.parent / (src.name + ".data")).unlink(missing_ok=True)
    unets = {"fp32": fp32_graph("unet")}
    unets["fp16"] = fp16_of(unets["fp32"], graphs_dir / "unet.fp16.onnx")
    fused32 = graphs_dir / "unet.fused32.onnx"
    start = time.perf_counter()
    export_graph(stack, "unet", fused32, external, attention="fused")
    _log(f"unet fused: exported in {time.perf_counter() - start:.1f} s")
    unets["fp16-fused"] = fp16_of(fused32, graphs_dir / "unet.fused.onnx")

    adapter = graphs_dir / "adapter_init.safetensors"
    save_file({"params": stack.initial_params.contiguous()}, str(adapter))
    dirs = {}
    for variant, unet in unets.items():
        d = work / variant
        d.mkdir(exist_ok=True)
        entries: dict[str, dict[str, Any]] = {}
        for name in GRAPH_ORDER:
            src = unet if name == "unet" else files[name]
            _link(src, d / f"{name}.onnx")
            if (src.parent / (src.name + ".data")).exists():
                # The graph names its data file by the name it was saved under.
                _link(src.parent / (src.name + ".data"), d / (src.name + ".data"))
            entries[name] = describe_graph(d / f"{name}.onnx")
            entries[name]["precision"] = "fp32" if (name == "unet" and variant == "fp32") else "fp16"
        entries["unet"]["attention"] = "fused" if variant == "fp16-fused" else "explicit"
        _link(adapter, d / adapter.name)
        manifest = build_manifest(stack, d, entries, d / adapter.name)
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        dirs[variant] = d
    return dirs


def torch_step_ms(stack: PvaStack, device: str, batch: int, steps: int, compile_mode: str | None = None) -> dict:
    """The PyTorch UNet (fused processors: SDPA) at `batch`, one step timed `steps` times after warm-up:
    median and spread in ms. float16 on CUDA, float32 on the CPU."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = stack.unet_graph.to(device=device, dtype=dtype)
    inputs = {k: v.to(device=device, dtype=dtype) for k, v in example_inputs(stack, "unet", batch).items()}
    inputs["id_switch"] = torch.ones(batch, device=device, dtype=dtype)
    times = []
    with torch.no_grad(), fused_attention(stack.unet):
        run = torch.compile(unet, mode=compile_mode) if compile_mode else unet
        for i in range(steps + 3):
            if device == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                run(**inputs)
                end.record()
                torch.cuda.synchronize()
                ms = begin.elapsed_time(end)
            else:
                t = time.perf_counter()
                run(**inputs)
                ms = (time.perf_counter() - t) * 1000
            if i >= 3:
                times.append(ms)
    result = {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
              "dtype": str(dtype).removeprefix("torch."), "batch": batch, "compile": compile_mode}
    if device == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    stack.unet_graph.to(device="cpu", dtype=torch.float32)
    return result


class _GpuMemory:
    """The most device memory in use while it runs (nvidia-smi every 100 ms), in MiB."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self.stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.split()
                self.peak = max([self.peak, *(int(x) for x in out)])
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self.stop.wait(0.1)

    def __enter__(self) -> "_GpuMemory":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_edit(args, model_dir: Path, steps: int, tag: str, guidance: float = 1.0, outputs: int = 1,
             extra_env: dict[str, str] | None = None) -> dict:
    """`pva-worker edit` of examples/job.json on `model_dir`: the printed stage seconds, the process's
    wall time and peak memory (module doc)."""
    job = json.loads((REPO_ROOT / "examples" / "job.json").read_text())
    job.update(job_id=f"gpu-check-{tag}", steps=steps, guidance=guidance, num_outputs=outputs)
    job_path = args.work / f"job-{tag}.json"
    job_path.write_text(json.dumps(job))
    out = args.work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.update({
        "PVA__ENGINE__MODEL_DIR": str(model_dir),
        "PVA__ENGINE__EXECUTION_PROVIDER": args.device,
        "PVA__ENGINE__VERIFY_HASHES": "false",
        "PVA__ENGINE__FACE_MODEL_DIR": str(REPO_ROOT / "models" / "faces"),
    })
    if args.ort_library:
        env["PVA__ENGINE__ORT_LIBRARY"] = str(args.ort_library)
    env.update(extra_env or {})
    cmd = [str(args.worker), "edit", str(job_path), "--root", str(REPO_ROOT / "examples"), "--out", str(out)]
    start = time.perf_counter()
    memory = _GpuMemory() if args.device == "cuda" else None
    if memory:
        memory.__enter__()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.edit_timeout)
    finally:
        if memory:
            memory.__exit__()
    wall = time.perf_counter() - start
    (args.work / f"edit-{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        _log(f"edit {tag} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return {"error": f"exit {proc.returncode}", "log": proc.stderr.strip()[-500:]}
    stages = {m[1]: float(m[2]) for m in map(_STAGE.match, proc.stdout.splitlines()) if m}
    peak = memory.peak if memory else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    _log(f"edit {tag}: {steps} steps, denoise {stages.get('denoise')} s, wall {wall:.1f} s")
    return {"steps": steps, "stages_s": stages, "wall_s": round(wall, 3), "peak_memory_mib": round(peak)}


def unet_step_ms(args, model_dir: Path, variant: str) -> dict:
    """One UNet step inside the worker's loop, from two edits (module doc)."""
    short = run_edit(args, model_dir, args.short_steps, f"{variant}-{args.short_steps}")
    long = run_edit(args, model_dir, args.steps, f"{variant}-{args.steps}")
    if "error" in short or "error" in long:
        return {"error": short.get("error") or long.get("error"), "short": short, "long": long}
    ms = (long["stages_s"]["denoise"] - short["stages_s"]["denoise"]) / (args.steps - args.short_steps) * 1000
    return {"ms": round(ms, 3), "short": short, "long": long}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "demo", "sd2"), required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--worker", type=Path, required=True, help="the pva-worker binary")
    parser.add_argument("--ort-library", type=Path, help="libonnxruntime.so (default: the worker's setting)")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (model directories, logs)")
    parser.add_argument("--fp32-from", type=Path, help="an fp32 model directory of the same stack (tiny: models/tiny)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--short-steps", type=int, default=10)
    parser.add_argument("--torch-steps", type=int, default=20)
    parser.add_argument("--priority", type=int, choices=(1, 2), default=1)
    parser.add_argument("--tune", action="store_true", help="priority 2: also 40 tuning steps")
    parser.add_argument("--edit-timeout", type=float, default=240)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.work = args.work.resolve()
    started = time.perf_counter()
    report: dict[str, Any] = {"size": args.size, "device": args.device, "priority": args.priority,
                              "torch": torch.__version__}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    with torch.random.fork_rng(devices=[]):
        stack = build_stack(args.size, seed=0)
    _log(f"stack {args.size} built")
    dirs = {v: args.work / v for v in VARIANTS}
    if all((d / "manifest.json").is_file() for d in dirs.values()):
        # A second run on the same WORK (after one that ran out of time) measures what the first built.
        _log(f"reusing the model directories in {args.work}")
    else:
        # NOTE: the exporter prints its progress to stdout: stdout carries the one JSON only.
        with contextlib.redirect_stdout(sys.stderr):
            dirs = build_variants(stack, args.work, args.fp32_from, external=args.size == "sd2")
    report["export_s"] = round(time.perf_counter() - started, 1)
    if args.priority == 1:
        report["unet_step_ms"] = {}
        for variant in VARIANTS:
            report["unet_step_ms"][variant] = unet_step_ms(args, dirs[variant], variant)
        report["torch_eager_step_ms"] = torch_step_ms(stack, args.device, 1, args.torch_steps)
        long = report["unet_step_ms"]["fp16-fused"].get("long", {})
        report["edit"] = {"variant": "fp16-fused", "guidance": 1.0, **long}
        report["model_load_s"] = {v: r.get("long", {}).get("stages_s", {}).get("model_load")
                                  for v, r in report["unet_step_ms"].items()}
        report["peak_memory_mib"] = {v: r.get("long", {}).get("peak_memory_mib")
                                     for v, r in report["unet_step_ms"].items()}
    else:
        fused = dirs["fp16-fused"]
        report["batch"] = {str(n): run_edit(args, fused, args.steps, f"batch{n}", outputs=n) for n in (2, 4)}
        report["guidance_7_5"] = run_edit(args, fused, args.steps, "g75", guidance=7.5)
        report["cuda_graph"] = run_edit(args, fused, args.steps, "cudagraph",
                                        extra_env={"PVA__ENGINE__CUDA_GRAPH": "true"})
        report["torch_compile_step_ms"] = {
            mode: torch_step_ms(stack, args.device, 1, args.torch_steps, compile_mode=mode)
            for mode in ("default", "reduce-overhead")
        }
        if args.tune:
            with contextlib.redirect_stdout(sys.stderr):
                report["tune_40"] = run_tune(args, stack, fused)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    (args.work / "check.json").write_text(text + "\n")
    print(text)


def run_tune(args, stack: PvaStack, model_dir: Path) -> dict:
    """40 steps of `pva-worker tune` on the fp16 edit graphs plus the fp32 tuning graph."""
    from pva.tuning import export_adapter_step

    d = args.work / "tune-model"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(model_dir, d, copy_function=os.link)
    start = time.perf_counter()
    export_adapter_step(stack, d / "adapter_step.onnx")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["graphs"]["adapter_step"] = {**describe_graph(d / "adapter_step.onnx"), "precision": "fp32"}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _log(f"adapter_step exported in {time.perf_counter() - start:.1f} s")
    photos = REPO_ROOT / "examples" / "photos"
    env = dict(os.environ, PVA__ENGINE__MODEL_DIR=str(d), PVA__ENGINE__EXECUTION_PROVIDER=args.device,
               PVA__ENGINE__VERIFY_HASHES="false", PVA__ENGINE__FACE_MODEL_DIR=str(REPO_ROOT / "models" / "faces"))
    if args.ort_library:
        env["PVA__ENGINE__ORT_LIBRARY"] = str(args.ort_library)
    cmd = [str(args.worker), "tune", "--identity", "gpu-check", "--steps", "40", "--out", str(args.work / "adapter.safetensors"),
           "--reference", str(photos / "obama2.jpg"), "--face-box", "200,185,330,395",
           "--reference", str(photos / "obama3.jpg"), "--face-box", "600,240,330,420"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.edit_timeout)
    (args.work / "tune.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "log": proc.stderr.strip()[-500:]}
    return {"stages_s": {m[1]: float(m[2]) for m in map(_STAGE.match, proc.stdout.splitlines()) if m}}


if __name__ == "__main__":
    main()
