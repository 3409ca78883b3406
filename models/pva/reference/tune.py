"""The paper's per-identity adapter tuning, twice: PyTorch AdamW (ground truth) and adapter_step.onnx.

PVA tunes the `to_visual_q/k/v` weights (lr 1e-5) and the `<new1>` token (lr 1e-3) with AdamW
(weight decay 0.01) for 40 steps of batch 1 x gradient accumulation 2 on the identity's own
references, leave-one-out: each sample picks one reference as the inpainting target (its `whole_face`
region masked) and the other references as the identity; the loss is the noise-prediction MSE at a
random timestep.

- `LeaveOneOut.build` turns the references (images at the model resolution and face crops at the
  face path's source size, `face_source_size`: 64x64 and 112x112 for tiny) into per-target tensors through the model directory's own graphs on ONNX Runtime
  (vae_encoder; face_embedder + id_former on the other references).
- `make_batches` draws the 40 batches (targets, timesteps, noise) from one seeded generator.
- `tune_torch` runs them through `pva.tuning.TuningStep.loss` with a real `torch.optim.AdamW` with two
  parameter groups, one micro-batch of 1 at a time (the paper's loop); `tune_onnx` runs them through
  `adapter_step.onnx`, one batch of 2 per call.

    .venv/bin/python -m pva.reference.tune [--model models/tiny] [--seed 0]
    .venv/bin/python -m pva.reference.tune --fixtures tests/fixtures/tune   # rewrite them
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

from pva.paths import REPO_ROOT as ROOT
from pva.reference.edit import ReferencePipeline, embed_window, face_source_size, image_tensor, mask_tensor
from pva.tokenizer import encode, render_prompt
from pva.tuning import INPUT_NAMES, TuningBatch, TuningStep

#: CONTRACT.md's `whole_face` region, [x0, y0, x1, y1) as fractions of the aligned crop.
WHOLE_FACE = (0.1875, 0.25, 0.8125, 0.9375)


def whole_face_mask(size: int) -> Image.Image:
    """The leave-one-out target mask (255 = repaint): `whole_face`, bounds `round(f * size)`."""
    x0, y0, x1, y1 = (int(np.floor(f * size + 0.5)) for f in WHOLE_FACE)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (x0, y0, x1, y1))
    return mask


@dataclass
class Hyper:
    """The tuning hyper-parameters of a manifest's `tuning` section."""

    steps: int
    batch_size: int
    lr_visual: float
    lr_token: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float

    @classmethod
    def from_manifest(cls, manifest: dict) -> Hyper:
        """Read `manifest["tuning"]`."""
        return cls(**{k: manifest["tuning"][k] for k in cls.__dataclass_fields__})


@dataclass
class LeaveOneOut:
    """Per-target tensors of one identity: row i = reference i as the target, the others as identity."""

    input_ids: torch.Tensor  # int64 [77], the template with an empty prompt ("a <new1> person")
    latents: torch.Tensor  # [n, 4, h, w], scaled
    mask: torch.Tensor  # [1, h, w], the latent-resolution whole_face mask
    masked_latents: torch.Tensor  # [n, 4, h, w], scaled
    id_tokens: torch.Tensor  # [n, 10, D], from the n - 1 other references

    @property
    def count(self) -> int:
        """Number of references."""
        return self.latents.shape[0]

    @classmethod
    def build(
        cls, pipeline: ReferencePipeline, images: list[Image.Image], faces: list[Image.Image]
    ) -> LeaveOneOut:
        """Encode `images` (model resolution) and `faces` (aligned crops), reference by reference."""
        if len(images) != len(faces) or len(images) < 2:
            raise ValueError("leave-one-out needs at least 2 references, each as image and face crop")
        m = pipeline.manifest
        res, lat, crop = m["resolution"], m["latent"]["size"], face_source_size(m)
        if any(i.size != (res, res) for i in images) or any(f.size != (crop, crop) for f in faces):
            raise ValueError(f"images must be {res}x{res} and face crops {crop}x{crop}")
        scale = m["vae"]["scaling_factor"]
        mask = mask_tensor(whole_face_mask(res))
        pixels = torch.cat([image_tensor(i) for i in images])
        latents = pipeline.run_graph("vae_encoder", image=pixels) * scale
        masked_latents = pipeline.run_graph("vae_encoder", image=pixels * (1 - mask)) * scale
        faces_in = embed_window(torch.cat([image_tensor(f) for f in faces]), m)
        embeddings = pipeline.run_graph("face_embedder", faces=faces_in)
        others = [[j for j in range(len(faces)) if j != i] for i in range(len(faces))]
        id_tokens = torch.cat(
            [pipeline.run_graph("id_former", embeddings=embeddings[rows][None]) for rows in others]
        )
        text = render_prompt(m["prompt_template"], "")
        return cls(
            input_ids=torch.tensor(encode(text, m["tokenizer"]), dtype=torch.int64),
            latents=latents,
            mask=F.interpolate(mask, size=(lat, lat), mode="nearest")[0],
            masked_latents=masked_latents,
            id_tokens=id_tokens,
        )


def make_batches(
    data: LeaveOneOut, steps: int, batch_size: int, seed: int, num_train_timesteps: int
) -> tuple[list[TuningBatch], torch.Tensor]:
    """`steps` batches of `batch_size` samples and their target indices [steps, batch_size].

    Per step, from one `torch.Generator` seeded with `seed`: the targets (uniform over the
    references), then the timesteps (uniform in [0, num_train_timesteps)), then the noise.
    """
    generator = torch.Generator().manual_seed(seed)
    batches, targets = [], []
    shape = (batch_size, *data.latents.shape[1:])
    for _ in range(steps):
        target = torch.randint(0, data.count, (batch_size,), generator=generator)
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(shape, generator=generator)
        batches.append(
            TuningBatch(
                input_ids=data.input_ids.expand(batch_size, -1).clone(),
                latents=data.latents[target],
                noise=noise,
                timesteps=timesteps,
                mask=data.mask.expand(batch_size, -1, -1, -1).clone(),
                masked_latents=data.masked_latents[target],
                id_tokens=data.id_tokens[target],
            )
        )
        targets.append(target)
    return batches, torch.stack(targets)


def _micro_batches(batch: TuningBatch, count: int) -> list[TuningBatch]:
    """Split a batch into `count` equal micro-batches along the batch axis."""
    parts = [torch.chunk(t, count) for t in batch]
    return [TuningBatch(*(p[i] for p in parts)) for i in range(count)]


def tune_torch(
    step_module: TuningStep,
    params: torch.Tensor,
    batches: list[TuningBatch],
    hyper: Hyper,
    accumulation: int | None = None,
) -> tuple[list[float], torch.Tensor]:
    """The ground truth: `torch.optim.AdamW`, visual and token groups, gradient accumulation.

    Each batch is split into `accumulation` micro-batches (default: one sample each); each
    micro-batch's loss is divided by `accumulation` and back-propagated, then the optimizer steps.
    Returns the per-step losses (the batch mean, before the update) and the final params.
    """
    visual_length = step_module.visual_length
    visual = torch.nn.Parameter(params[:visual_length].clone())
    token = torch.nn.Parameter(params[visual_length:].clone())
    optimizer = torch.optim.AdamW(
        [{"params": [visual], "lr": hyper.lr_visual}, {"params": [token], "lr": hyper.lr_token}],
        betas=(hyper.beta1, hyper.beta2),
        eps=hyper.eps,
        weight_decay=hyper.weight_decay,
    )
    losses = []
    for batch in batches:
        count = accumulation or batch.latents.shape[0]
        optimizer.zero_grad()
        total = 0.0
        for micro in _micro_batches(batch, count):
            loss = step_module.loss(torch.cat([visual, token]), micro) / count
            loss.backward()
            total += loss.item()
        optimizer.step()
        losses.append(total)
    return losses, torch.cat([visual.detach(), token.detach()])


def adapter_step_session(model_dir: Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of the model directory's `adapter_step.onnx`."""
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    path = Path(model_dir) / manifest["graphs"]["adapter_step"]["file"]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def tune_onnx(
    session: ort.InferenceSession, params: torch.Tensor, batches: list[TuningBatch], hyper: Hyper
) -> tuple[list[float], torch.Tensor]:
    """The same tuning through `adapter_step.onnx`: one call per batch, moments carried along."""
    state = {
        "params": params.numpy().astype(np.float32),
        "adam_m": np.zeros(params.shape, np.float32),
        "adam_v": np.zeros(params.shape, np.float32),
    }
    scalars = {
        "lr_visual": np.float32(hyper.lr_visual),
        "lr_token": np.float32(hyper.lr_token),
        "weight_decay": np.float32(hyper.weight_decay),
    }
    losses = []
    for index, batch in enumerate(batches):
        feeds = {**state, **{k: np.asarray(v) for k, v in scalars.items()}}
        feeds["step"] = np.asarray(np.float32(index + 1))
        feeds.update({name: t.contiguous().numpy() for name, t in zip(TuningBatch._fields, batch)})
        assert set(feeds) == set(INPUT_NAMES)
        new_params, new_m, new_v, loss = session.run(None, feeds)
        state = {"params": new_params, "adam_m": new_m, "adam_v": new_v}
        losses.append(float(loss))
    return losses, torch.from_numpy(state["params"])


#: The identity of the fixtures: three photos of one person, in this order.
FIXTURE_PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg")


def fixture_references(faces_dir: Path, manifest: dict) -> tuple[list[Image.Image], list[Image.Image]]:
    """The fixture identity's images (model resolution) and face crops, from the photos."""
    from pva.reference import fixtures  # the hand-picked face boxes of the edit fixtures

    res, crop = manifest["resolution"], face_source_size(manifest)
    images = [fixtures.face_crop(faces_dir, name, res) for name in FIXTURE_PHOTOS]
    faces = [fixtures.face_crop(faces_dir, name, crop) for name in FIXTURE_PHOTOS]
    return images, faces


def load_fixture_references(fixture_dir: Path) -> tuple[list[Image.Image], list[Image.Image]]:
    """The images and face crops stored in a fixture directory (`image_<i>.png`, `face_<i>.png`)."""
    info = json.loads((fixture_dir / "tune.json").read_text())
    images = [Image.open(fixture_dir / r["image"]).convert("RGB") for r in info["references"]]
    faces = [Image.open(fixture_dir / r["face"]).convert("RGB") for r in info["references"]]
    return images, faces


def stack_batches(batches: list[TuningBatch]) -> dict[str, torch.Tensor]:
    """Per-field tensors with a leading step axis: `latents` [steps, b, 4, h, w], ..."""
    return {name: torch.stack([getattr(b, name) for b in batches]).contiguous() for name in TuningBatch._fields}


def unstack_batches(tensors: dict[str, torch.Tensor]) -> list[TuningBatch]:
    """The inverse of `stack_batches`."""
    steps = tensors["latents"].shape[0]
    return [TuningBatch(*(tensors[name][i] for name in TuningBatch._fields)) for i in range(steps)]


@dataclass
class FixtureRun:
    """Everything the tuning fixtures hold, computed from the reference images."""

    data: LeaveOneOut
    batches: list[TuningBatch]
    targets: torch.Tensor
    initial_params: torch.Tensor
    losses: list[float]
    final_params: torch.Tensor


def run_fixture(
    model_dir: Path, images: list[Image.Image], faces: list[Image.Image], seed: int
) -> FixtureRun:
    """Build the batches from the images through the model's graphs and tune with PyTorch AdamW."""
    from pva import build_stack

    pipeline = ReferencePipeline(model_dir)
    manifest = pipeline.manifest
    if manifest["name"] != "pva-tiny":
        raise ValueError("the PyTorch side rebuilds the model with build_stack: tiny models only")
    hyper = Hyper.from_manifest(manifest)
    data = LeaveOneOut.build(pipeline, images, faces)
    num_timesteps = manifest["scheduler"]["num_train_timesteps"]
    batches, targets = make_batches(data, hyper.steps, hyper.batch_size, seed, num_timesteps)
    step_module = TuningStep.from_stack(build_stack("tiny", seed=0))
    losses, final = tune_torch(step_module, pipeline.params, batches, hyper)
    return FixtureRun(data, batches, targets, pipeline.params.clone(), losses, final)


def write_fixtures(model_dir: Path, faces_dir: Path, out: Path, seed: int) -> FixtureRun:
    """Write tests/fixtures/tune: reference PNGs, batches and expected results, tune.json."""
    from safetensors.torch import save_file

    manifest = json.loads((model_dir / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    images, faces = fixture_references(faces_dir, manifest)
    references = []
    for i, (image, face) in enumerate(zip(images, faces)):
        image.save(out / f"image_{i}.png")
        face.save(out / f"face_{i}.png")
        references.append({"image": f"image_{i}.png", "face": f"face_{i}.png", "source": FIXTURE_PHOTOS[i]})
    whole_face_mask(manifest["resolution"]).save(out / "mask.png")
    info = {
        "model": "models/tiny",
        "adapter_step_sha256": manifest["graphs"]["adapter_step"]["sha256"],
        "seed": seed,
        **{k: manifest["tuning"][k] for k in ("steps", "batch_size", "lr_visual", "lr_token", "weight_decay")},
        "mask_region": "whole_face",
        "mask": "mask.png",
        "prompt": render_prompt(manifest["prompt_template"], ""),
        "references": references,
        "expected": "torch.optim.AdamW (visual and token groups), batch 1 x gradient accumulation 2",
    }
    (out / "tune.json").write_text(json.dumps(info, indent=2) + "\n")
    # Re-read the written PNGs so the fixture's tensors come from exactly the files' pixels.
    run = run_fixture(model_dir, *load_fixture_references(out), seed)
    tensors = stack_batches(run.batches)
    tensors.update(
        targets=run.targets,
        reference_latents=run.data.latents,
        reference_masked_latents=run.data.masked_latents,
        reference_id_tokens=run.data.id_tokens,
        initial_params=run.initial_params,
        losses=torch.tensor(run.losses, dtype=torch.float32),
        final_params=run.final_params,
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "tune.safetensors"))
    info["losses"] = run.losses
    (out / "tune.json").write_text(json.dumps(info, indent=2) + "\n")
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.reference.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tiny")
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixtures", type=Path, help="write the tuning fixtures into this directory")
    args = parser.parse_args(argv)

    if args.fixtures is not None:
        run = write_fixtures(args.model, args.faces, args.fixtures, args.seed)
        print(f"wrote {args.fixtures}")
    else:
        manifest = json.loads((args.model / "manifest.json").read_text())
        run = run_fixture(args.model, *fixture_references(args.faces, manifest), args.seed)
    hyper = Hyper.from_manifest(json.loads((args.model / "manifest.json").read_text()))
    onnx_losses, onnx_params = tune_onnx(adapter_step_session(args.model), run.initial_params, run.batches, hyper)
    for i, (a, b) in enumerate(zip(run.losses, onnx_losses)):
        print(f"step {i + 1:3d}  torch {a:.7f}  onnx {b:.7f}  diff {abs(a - b):.2e}")
    print(
        f"max loss diff {max(abs(a - b) for a, b in zip(run.losses, onnx_losses)):.3e}; final params: "
        f"max |torch - onnx| {(run.final_params - onnx_params).abs().max().item():.3e}, "
        f"moved {(run.final_params - run.initial_params).abs().max().item():.3e} from the initial params"
    )


if __name__ == "__main__":
    main()
