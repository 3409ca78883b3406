"""Time the Python reference edit (pva.reference.edit's ReferencePipeline on ONNX Runtime) stage by stage.

The Python half of `pva-bench edit`: the Rust benchmark decodes the job's photos, writes them as PNG
(so both sides start from the same pixels) with the crop rectangles and the model-size mask it
computed, and a spec JSON naming the cases; this script runs the same job the Rust `Pipeline::edit`
runs, with the same work around the graphs:

- `preprocess`: square crops of the target (to the model resolution) and the references (to the face
  embedder's size) with a Lanczos filter (PIL);
- `encode` .. `denoise` .. `decode`: `ReferencePipeline.edit` (tokenize, text encoder, face embedder,
  id former, VAE encode, the sampler loop with diffusers' scheduler, VAE decode);
- `decode` also holds the post-processing the Rust edit does: the identity score (face embedder on the
  output crop, cosine to the mean reference embedding) and the feathered paste-back into the photo.

Each ONNX Runtime `session.run` is timed, per graph and per stage, so the time outside ORT is known
for Python too. Prints one JSON object (per case, per repetition: stage seconds, total, ORT seconds
per graph and per stage). A benchmark, not a test; `pva-bench edit` runs it in `--serve` mode (one
edit per request, so that the two sides' repetitions alternate under the same machine load) and
compares.

    .venv/bin/python -m pva.bench.edit --spec target/bench/edit/spec.json [--out python.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from pva.reference.edit import EditRequest, ReferencePipeline, embed_window, face_source_size

STAGES = ("preprocess", "encode", "denoise", "decode")


@dataclass
class GraphCall:
    """One timed `session.run`: graph name, start and end (perf_counter seconds)."""

    graph: str
    start: float
    end: float


class TimedPipeline(ReferencePipeline):
    """The reference pipeline with every graph run timed (sessions and the edit itself unchanged)."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        super().__init__(model_dir, threads=threads)
        self.calls: list[GraphCall] = []

    def run_graph(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        # NOTE: the whole of the parent's run_graph is timed (tensor -> numpy feed, run, numpy ->
        # tensor), as the Rust side times the whole Engine call.
        start = time.perf_counter()
        out = super().run_graph(name, **inputs)
        self.calls.append(GraphCall(name, start, time.perf_counter()))
        return out


@dataclass
class Photo:
    """A decoded photo (HWC uint8) and the square crop the Rust side chose for it."""

    pixels: np.ndarray
    x: int
    y: int
    size: int

    def crop(self, out: int) -> Image.Image:
        """The crop resized to `out` x `out` with a Lanczos filter."""
        image = Image.fromarray(self.pixels[self.y : self.y + self.size, self.x : self.x + self.size])
        return image if self.size == out else image.resize((out, out), Image.Resampling.LANCZOS)


@dataclass
class Inputs:
    """Everything decoded once, outside the timing: the same pixels the Rust edit starts from."""

    target: Photo
    mask: Image.Image
    mask_values: np.ndarray
    references: list[Photo]
    prompt: str
    negative_prompt: str
    feather_px: int


def load_photo(root: Path, entry: dict[str, Any]) -> Photo:
    """A photo entry of the spec: `{"image": "x.png", "crop": {"x", "y", "size"}}`."""
    pixels = np.asarray(Image.open(root / entry["image"]).convert("RGB")).copy()
    crop = entry["crop"]
    return Photo(pixels, int(crop["x"]), int(crop["y"]), int(crop["size"]))


def load_inputs(spec: dict[str, Any], root: Path) -> Inputs:
    """Reads the decoded inputs the Rust benchmark wrote."""
    mask = Image.open(root / spec["mask"]).convert("RGB")
    values = (np.asarray(mask, dtype=np.float32)[:, :, 0] / 255.0 >= 0.5).astype(np.float32)
    return Inputs(
        target=load_photo(root, spec["target"]),
        mask=mask,
        mask_values=values,
        references=[load_photo(root, r) for r in spec["references"]],
        prompt=spec["prompt"],
        negative_prompt=spec.get("negative_prompt", ""),
        feather_px=int(spec["feather_px"]),
    )


def face_tensor(image: Image.Image) -> np.ndarray:
    """RGB image -> float32 [3, H, W] in [-1, 1]."""
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def feather_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """Blend weight per pixel: 1 on the mask, `smoothstep(1 - d / (feather + 1))` at Euclidean
    distance `0 < d <= feather` from it, 0 beyond (the Rust paste-back's rule)."""
    h, w = mask.shape
    on = mask != 0
    dist2 = np.where(on, 0.0, np.inf)
    padded = np.pad(on, feather)
    for dy in range(-feather, feather + 1):
        for dx in range(-feather, feather + 1):
            d2 = dy * dy + dx * dx
            if d2 == 0 or d2 > feather * feather:
                continue
            shifted = padded[feather + dy : feather + dy + h, feather + dx : feather + dx + w]
            dist2 = np.where(shifted & (dist2 > d2), float(d2), dist2)
    d = np.sqrt(dist2)
    t = 1.0 - d / (feather + 1.0)
    ramp = t * t * (3.0 - 2.0 * t)
    return np.where(d == 0, 1.0, np.where(d <= feather, ramp, 0.0)).astype(np.float32)


def paste_back(target: Photo, edited: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """The edited crop stretched to the target's crop (Lanczos), blended in through the feathered,
    nearest-upsampled mask, within the mask's bounding box plus the feather only."""
    out = target.pixels.copy()
    side = target.size
    src = np.arange(side) * mask.shape[0] // side
    big_mask = mask[src][:, src]
    ys, xs = np.nonzero(big_mask)
    if len(ys) == 0:
        return out
    y0, y1 = max(ys.min() - feather, 0), min(ys.max() + feather + 1, side)
    x0, x1 = max(xs.min() - feather, 0), min(xs.max() + feather + 1, side)
    alpha = feather_alpha(big_mask[y0:y1, x0:x1], feather)[:, :, None]
    big = Image.fromarray(edited)
    if big.size != (side, side):
        big = big.resize((side, side), Image.Resampling.LANCZOS)
    patch = np.asarray(big, dtype=np.float32)[y0:y1, x0:x1]
    region = out[target.y + y0 : target.y + y1, target.x + x0 : target.x + x1]
    mixed = alpha * patch + (1.0 - alpha) * region.astype(np.float32)
    region[...] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity (0 when either vector is zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))


@dataclass
class Run:
    """One timed edit."""

    stages: dict[str, float]
    total: float
    ort: dict[str, float] = field(default_factory=dict)
    ort_by_stage: dict[str, float] = field(default_factory=dict)
    identity_score: float = 0.0


def run_once(pipe: TimedPipeline, inputs: Inputs, case: dict[str, Any]) -> Run:
    """One whole edit, as the Rust `Pipeline::edit` does it, timed by stage."""
    m = pipe.manifest
    res, crop_size = m["resolution"], face_source_size(m)
    pipe.calls.clear()
    t0 = time.perf_counter()
    target = inputs.target.crop(res)
    references = [r.crop(crop_size) for r in inputs.references]
    t1 = time.perf_counter()
    result = pipe.edit(
        EditRequest(
            target=target,
            mask=inputs.mask,
            references=references,
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            scheduler=case["scheduler"],
            eta=float(case["eta"]),
            steps=int(case["steps"]),
            guidance=float(case["guidance"]),
            seed=int(case["seed"]),
        )
    )
    # Post-processing the Rust edit does inside its `decode` stage.
    small = Image.fromarray(result.image).resize((crop_size, crop_size), Image.Resampling.LANCZOS)
    faces = embed_window(torch.from_numpy(face_tensor(small)[None]), m)
    embedding = pipe.run_graph("face_embedder", faces=faces)
    mean_ref = result.tensors["ref_embeddings"].mean(dim=0).numpy()
    score = cosine(embedding[0].numpy(), mean_ref)
    paste_back(inputs.target, result.image, inputs.mask_values, inputs.feather_px)
    t4 = time.perf_counter()

    unet = [c for c in pipe.calls if c.graph == "unet"]
    decoder = [c for c in pipe.calls if c.graph == "vae_decoder"]
    t2 = unet[0].start if unet else t1
    t3 = decoder[0].start if decoder else t4
    ort_secs: dict[str, float] = {}
    by_stage = dict.fromkeys(STAGES, 0.0)
    bounds = list(zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4)))
    for c in pipe.calls:
        ort_secs[c.graph] = ort_secs.get(c.graph, 0.0) + (c.end - c.start)
        stage = next(name for name, _, end in bounds if c.start < end or name == "decode")
        by_stage[stage] += c.end - c.start
    return Run(
        stages={"preprocess": t1 - t0, "encode": t2 - t1, "denoise": t3 - t2, "decode": t4 - t3},
        total=t4 - t0,
        ort=ort_secs,
        ort_by_stage=by_stage,
        identity_score=score,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.bench.edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="spec JSON written by pva-bench edit")
    parser.add_argument("--out", type=Path, help="write the results JSON here (default: stdout)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="load once, print a `ready` line, then run one edit per case JSON line read from stdin "
        "and answer each with one result JSON line (how pva-bench interleaves the two sides)",
    )
    args = parser.parse_args(argv)

    spec = json.loads(args.spec.read_text())
    root = args.spec.parent
    threads = int(spec["threads"])
    # NOTE: torch's own ops (scheduler steps, concatenations) get the same thread budget as ORT.
    torch.set_num_threads(threads)
    pipe = TimedPipeline(Path(spec["model"]), threads=threads)
    inputs = load_inputs(spec, root)
    versions = {"onnxruntime": ort.__version__, "torch": torch.__version__, "threads": threads}
    if args.serve:
        print(json.dumps({"ready": True, **versions}), flush=True)
        for line in sys.stdin:
            if line.strip():
                run = run_once(pipe, inputs, json.loads(line))
                print(json.dumps(run.__dict__), flush=True)
        return
    cases = []
    for case in spec["cases"]:
        for _ in range(int(spec["warmup"])):
            run_once(pipe, inputs, case)
        runs = [run_once(pipe, inputs, case) for _ in range(int(spec["reps"]))]
        cases.append({"case": case, "runs": [r.__dict__ for r in runs]})
    text = json.dumps({**versions, "cases": cases}, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
