"""PVA's 40-step adapter tuning at full size on a GPU, in PyTorch: time and peak GPU memory.

The sd2 stack (SD-2-inpainting geometry, 512x512, latents 4x64x64) with random weights, and random
well-formed batches of 2; `pva.tuning.TuningStep.loss` with `torch.optim.AdamW` on the visual and
token groups (lr 1e-5 / 1e-3, weight decay 0.01), in two loops over the same batches:

- `paper`: batch 1 x gradient accumulation 2 per step (as pva.reference.tune.tune_torch does);
- `batched`: the batch of 2 in one forward and backward (the same optimisation, fewer calls).

Each loop runs one untimed warm-up step, then `--repeats` timed runs of `--steps` steps. Run by
scripts/gpu/tune_full.sh; `--device cpu --steps 1 --latent-size 8` is a quick check that it runs.

    python3 -m pva.bench.tune_full [--size sd2] [--device cuda] [--steps 40] [--loops paper,batched]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pva import build_stack
from pva.tuning import TuningBatch, TuningStep

#: The paper's (and the manifests') tuning settings.
LR_VISUAL, LR_TOKEN, WEIGHT_DECAY, BATCH = 1e-5, 1e-3, 0.01, 2
#: The id of `<new1>` (one past CLIP's vocabulary).
NEW_TOKEN_ID = 49408


def random_batches(step_module: TuningStep, latent_size: int, steps: int) -> list[TuningBatch]:
    """`steps` random well-formed batches: CLIP-range ids with `<new1>` at position 2, scaled-latent
    sized Gaussians, timesteps over the whole schedule, the `whole_face` box as the mask."""
    generator = torch.Generator().manual_seed(0)
    shape = (BATCH, 4, latent_size, latent_size)
    mask = torch.zeros((BATCH, 1, latent_size, latent_size))
    x0, y0, x1, y1 = (round(f * latent_size) for f in (0.1875, 0.25, 0.8125, 0.9375))
    mask[:, :, y0:y1, x0:x1] = 1.0
    num_timesteps = step_module.alphas_cumprod.shape[0]
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, NEW_TOKEN_ID, (BATCH, 77), generator=generator)
        ids[:, 0], ids[:, 2], ids[:, -1] = 49406, NEW_TOKEN_ID, 49407
        latents = torch.randn(shape, generator=generator)
        batches.append(
            TuningBatch(
                input_ids=ids,
                latents=latents,
                noise=torch.randn(shape, generator=generator),
                timesteps=torch.randint(0, num_timesteps, (BATCH,), generator=generator),
                mask=mask.clone(),
                masked_latents=latents * (1 - mask),
                id_tokens=torch.randn((BATCH, 10, step_module.token_length), generator=generator),
            )
        )
    return batches


def tune(
    step_module: TuningStep, params: torch.Tensor, batches: list[TuningBatch], micro: int
) -> list[float]:
    """AdamW over `batches`, each split into micro-batches of `micro` samples; returns the losses."""
    n = step_module.visual_length
    visual = torch.nn.Parameter(params[:n].clone())
    token = torch.nn.Parameter(params[n:].clone())
    optimizer = torch.optim.AdamW(
        [{"params": [visual], "lr": LR_VISUAL}, {"params": [token], "lr": LR_TOKEN}],
        weight_decay=WEIGHT_DECAY,
    )
    losses = []
    for batch in batches:
        optimizer.zero_grad()
        parts = [torch.split(t, micro) for t in batch]
        count = len(parts[0])
        total = torch.zeros((), device=params.device)
        for i in range(count):
            loss = step_module.loss(torch.cat([visual, token]), TuningBatch(*(p[i] for p in parts))) / count
            loss.backward()
            total += loss.detach()
        optimizer.step()
        losses.append(total)
    return [float(x) for x in losses]


def timed(device: torch.device, fn) -> tuple[float, object]:
    """Seconds `fn()` takes, the device synchronised on both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.bench.tune_full", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "sd2"), default="sd2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--latent-size", type=int, default=0, help="override the latent side (a quick CPU check)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of every loop (best and median kept)")
    parser.add_argument("--loops", default="paper,batched", help="which loops: paper, batched or both")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    t0 = time.perf_counter()
    stack = build_stack(args.size, seed=0)
    step_module = TuningStep.from_stack(stack).to(device)
    params = stack.initial_params.to(device)
    batches = random_batches(step_module, args.latent_size or stack.config.latent_size, args.steps)
    batches = [TuningBatch(*(t.to(device) for t in b)) for b in batches]
    build_s = time.perf_counter() - t0

    report: dict[str, object] = {
        "size": args.size,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": len(batches),
        "build_s": build_s,
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    micro = {"paper": 1, "batched": BATCH}
    for name in [x.strip() for x in args.loops.split(",") if x.strip()]:
        # One untimed step first: allocator, kernels and autotuning warm up as they would in a worker.
        tune(step_module, params, batches[:1], micro[name])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        totals, losses = [], []
        for _ in range(args.repeats):
            seconds, losses = timed(device, lambda: tune(step_module, params, batches, micro[name]))
            totals.append(seconds)
        entry: dict[str, object] = {
            "best_s": min(totals),
            "median_s": statistics.median(totals),
            "per_step_ms": 1e3 * min(totals) / len(batches),
            "first_loss": losses[0],
            "last_loss": losses[-1],
        }
        if device.type == "cuda":
            entry["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
        report[name] = entry

    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.size} on {report.get('gpu', device)} (torch {torch.__version__}, {report['threads']} threads); "
          f"building the model and batches took {build_s:.1f} s")
    for name in micro:
        if name in report:
            e = report[name]
            line = (f"{name:>8}: {len(batches)} steps in {e['best_s']:.3f} s (median {e['median_s']:.3f} s), "
                    f"{e['per_step_ms']:.1f} ms per step, loss {e['first_loss']:.4f} -> {e['last_loss']:.4f}")
            if "peak_gpu_bytes" in e:
                line += f", peak GPU memory {e['peak_gpu_bytes'] / 2**30:.2f} GiB"
            print(line)


if __name__ == "__main__":
    main()
