"""Train PVA on a dataset directory of identities, with checkpoints that resume, and export it.

The command line (`python -m pva.train`); the loop is `pva.train.trainer`, the stages `pva.train.stages`.

    # the synthetic faces the demo model learns from (one folder per person)
    .venv/bin/python -m pva.train data --out /tmp/faces --persons 2000 --images 8
    # every stage of the small size from scratch, into a work directory (rerun = resume)
    .venv/bin/python -m pva.train run --size demo --data /tmp/faces --work /tmp/pva-train
    # the trained weights -> a model directory the worker loads (the unchanged graph contract)
    .venv/bin/python -m pva.train export --size demo --work /tmp/pva-train --out models/demo

Stages, in order (``--stages`` picks some; each one freezes everything it does not list):

- ``vae``   the autoencoder (small size only; full size uses SD-2's VAE). Afterwards the latent scale is
  calibrated so that ``latent * scaling_factor`` has unit variance, without changing what it decodes.
- ``face``  the face embedder, ArcFace-style (additive-margin softmax over identities). Small size only:
  the paper uses a pretrained ArcFace, which a full-size run loads with ``--face`` (or swaps).
- ``base``  the inpainting UNet and the text encoder (small size only; full size uses SD-2 inpainting),
  identity branch off (``id_switch`` 0).
- ``pva1``  the paper's stage 1: identity former, ``to_visual_q/k/v`` and the ``<new1>`` token; base UNet,
  VAE, text encoder and face embedder frozen.
- ``pva2``  the paper's stage 2: as stage 1, plus the face embedder.
- ``decoder`` (only when asked for) the VAE decoder alone, for the frozen encoder: the latent space the
  UNet was trained in stays as it is, so a better decoder sharpens every output without retraining the
  stages before it (small size only; Stable Diffusion's ft-MSE decoder was made the same way).

``import`` recovers ``WORK/weights.safetensors`` from an exported model directory
(``pva.train.recover``), so a shipped model can be trained further without the run that made it, and
``tuning-graph`` gives such a directory the tuning graph it was shipped without (its frozen weights
shared with the edit graphs, ``pva.share``):

    .venv/bin/python -m pva.train import --size demo --model models/demo --work /tmp/demo-work
    .venv/bin/python -m pva.train tuning-graph --size demo --work /tmp/demo-work --model models/demo

Every stage optimises the model's own parameterisation (epsilon or v, from the size's scheduler
config) with the loss weighted towards the masked region, keeps an EMA of what it trains where
configured, checkpoints to ``WORK/<stage>.pt`` every few hundred steps and at the end, and after
finishing writes all current weights to ``WORK/weights.safetensors``. Rerunning resumes the stage
bit-for-bit where it stopped (all randomness comes from one checkpointed generator); asking for more
steps than a finished stage had extends it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pva import build_stack
from pva.train.stages import BUDGET_SHARE, DEFAULT_STAGES, STAGES, hyper_for, parse_overrides
from pva.train.trainer import Trainer
from pva.weights import load_trained, save_trained


def _write_chunk(job: tuple[Path, int, int, int, int, int]) -> None:
    from pva.train.synthetic import write_dataset

    out, seed, first, count, images, size = job
    write_dataset(out, seed=seed, persons=count, images_per_person=images, size=size, first_person=first)


def write_dataset_parallel(out: Path, seed: int, persons: int, images: int, size: int, jobs: int) -> None:
    """`synthetic.write_dataset` split into person ranges over `jobs` processes (same files)."""
    chunk = math.ceil(persons / max(1, jobs))
    work = [(out, seed, first, min(chunk, persons - first), images, size) for first in range(0, persons, chunk)]
    if jobs <= 1:
        for job in work:
            _write_chunk(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        pool.map(_write_chunk, work)


def export(size: str, work: Path, out: Path, adapter_step: bool = True, resolution: int | None = None) -> None:
    """Export `WORK/weights.safetensors` through the exporter into a model directory (at the size's
    resolution, or `resolution`)."""
    from pva.export import export_all

    weights = load_trained(work / "weights.safetensors")
    stack = build_stack(size, weights=weights, resolution=resolution)
    export_all(stack, out, adapter_step=adapter_step)
    print(f"wrote {out}")


def add_tuning_graph(size: str, work: Path, model: Path) -> None:
    """Export the tuning graph of `WORK/weights.safetensors` into `model`, a directory exported from
    the same weights without one (e.g. recovered by `import`), and share the frozen weights
    (`pva.share`): the directory gains tuning for little more than the graph's structure."""
    from pva.export import describe_graph
    from pva.share import share_frozen_weights
    from pva.tuning import export_adapter_step

    manifest_path = Path(model) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if "adapter_step" in manifest["graphs"]:
        raise SystemExit(f"{model} has a tuning graph already")
    stack = build_stack(size, weights=load_trained(work / "weights.safetensors"), resolution=manifest["resolution"])
    path = Path(model) / "adapter_step.onnx"
    export_adapter_step(stack, path)
    manifest["graphs"]["adapter_step"] = describe_graph(path)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    counts = share_frozen_weights(model)
    own, shared = counts["adapter_step"]["stored"], counts["adapter_step"]["reused"] + counts["adapter_step"]["transposed"]
    # NOTE: the tuning graph's own weights are a few constants (the noise schedule, position ids);
    # anything more means the weights are not the ones the directory's graphs were exported from.
    if own > 0.01 * shared:
        raise SystemExit(f"{model}: the tuning graph shares only {shared} bytes of frozen weights with the "
                         f"edit graphs and brings {own} of its own: WORK's weights are not this model's")
    print(f"added {path} ({path.stat().st_size} bytes) sharing {shared} bytes of frozen weights")


def import_model(size: str, model: Path, work: Path, force: bool = False) -> None:
    """`WORK/weights.safetensors` recovered from the graphs of `model` (see `pva.train.recover`)."""
    from pva.train.recover import compare, recover

    path = Path(work) / "weights.safetensors"
    if path.exists() and not force:
        raise SystemExit(f"{path} exists: training there would lose it (--force replaces it)")
    start = time.perf_counter()
    result = recover(model, size)
    errors = compare(model, build_stack(size, weights=result.weights))
    worst = max(errors.values())
    if worst > 1e-4:
        raise SystemExit(f"recovered weights do not reproduce {model}: relative errors {errors}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trained(path, result.weights)
    print(f"recovered {result.recovered} tensors from {model} ({len(result.folded)} BatchNorms folded into "
          f"their layers came back as identity + shift; unrecoverable: {result.missing or 'none'}); "
          f"graphs reproduced within {worst:.1e} (relative); wrote {path} in {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write the synthetic-face dataset directory")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--persons", type=int, default=2000)
    data.add_argument("--images", type=int, default=8)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--size", type=int, default=64)
    data.add_argument("--jobs", type=int, default=1, help="processes writing persons in parallel")

    run = sub.add_parser("run", help="train stages into a work directory (rerun resumes)")
    run.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    run.add_argument("--data", type=Path, required=True, help="dataset directory (one folder per person)")
    run.add_argument("--work", type=Path, required=True, help="checkpoints, log and weights go here")
    run.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    run.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                     help="override a hyper-parameter, e.g. base.steps=8000")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu")
    run.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    run.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    run.add_argument("--max-persons", type=int, default=None)
    run.add_argument("--log-every", type=int, default=50)
    run.add_argument("--save-seconds", type=float, default=120.0)
    run.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this long per stage")
    run.add_argument("--compile", choices=("off", "default", "reduce-overhead"), default="off",
                     help="torch.compile the UNet and text encoder (reduce-overhead: CUDA graphs)")
    run.add_argument("--budget-minutes", type=float, default=None,
                     help="fit the stages' step counts into this much time (shares: BUDGET_SHARE)")
    run.add_argument("--base", help="sd2: local stable-diffusion-2-inpainting directory")
    run.add_argument("--face", help="sd2: ArcFace iresnet50 weights (or your own embedder's)")
    run.add_argument("--export", type=Path, default=None, help="export a model directory when done")
    run.add_argument("--resolution", type=int, default=None,
                     help="train (and export) at this image resolution instead of the size's, e.g. 256 for "
                          "sd2 on a machine where 512 px does not fit (the weights do not depend on it)")

    exp = sub.add_parser("export", help="export WORK/weights.safetensors to a model directory")
    exp.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    exp.add_argument("--work", type=Path, required=True)
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--no-adapter-step", action="store_true",
                     help="leave out adapter_step.onnx (the worker edits but refuses to tune)")
    exp.add_argument("--resolution", type=int, default=None, help="export at this resolution instead of the size's")
    tg = sub.add_parser("tuning-graph", help="add the tuning graph of WORK/weights.safetensors to a model "
                                             "directory exported from them without one")
    tg.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    tg.add_argument("--work", type=Path, required=True)
    tg.add_argument("--model", type=Path, required=True, help="the model directory to extend")
    imp = sub.add_parser("import", help="recover WORK/weights.safetensors from an exported model directory")
    imp.add_argument("--size", choices=("demo", "tiny", "sd2"), default="demo")
    imp.add_argument("--model", type=Path, required=True, help="a model directory (manifest.json + graphs)")
    imp.add_argument("--work", type=Path, required=True)
    imp.add_argument("--force", action="store_true", help="replace an existing WORK/weights.safetensors")

    args = parser.parse_args(argv)
    if args.command == "data":
        start = time.perf_counter()
        write_dataset_parallel(args.out, args.seed, args.persons, args.images, args.size, args.jobs)
        print(f"wrote {args.persons} x {args.images} images to {args.out} in {time.perf_counter() - start:.0f} s")
    elif args.command == "run":
        if args.threads:
            torch.set_num_threads(args.threads)
        stages = DEFAULT_STAGES if args.stages is None else tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = set(stages) - set(STAGES)
        if unknown:
            parser.error(f"unknown stages {sorted(unknown)}; expected some of {STAGES}")
        if args.size == "sd2" and args.stages is None:
            stages = ("pva1", "pva2")
        overrides = parse_overrides(args.set)
        trainer = Trainer(args)
        share = sum(BUDGET_SHARE[s] for s in stages)
        for stage in STAGES:
            if stage in stages:
                seconds = None if args.budget_minutes is None else 60 * args.budget_minutes * BUDGET_SHARE[stage] / share
                trainer.run_stage(stage, hyper_for(args.size, stage, overrides), seconds)
        if args.export is not None:
            export(args.size, args.work, args.export, resolution=args.resolution)
    elif args.command == "import":
        import_model(args.size, args.model, args.work, args.force)
    elif args.command == "tuning-graph":
        add_tuning_graph(args.size, args.work, args.model)
    else:
        export(args.size, args.work, args.out, adapter_step=not args.no_adapter_step, resolution=args.resolution)


if __name__ == "__main__":
    main()
