"""The paper's per-identity adapter tuning, twice: PyTorch AdamW (ground truth) and adapter_step.onnx.

PVA tunes the `to_visual_q/k/v` weights (lr 1e-5) and the `<new1>` token (lr 1e-3) with AdamW
(weight decay 0.01) for 40 steps of batch 1 x gradient accumulation 2 on the identity's own
references, leave-one-out: each sample picks one reference as the inpainting target (its `whole_face`
region masked) and the other references as the identity; the loss is the noise-prediction MSE at a
random timestep.

- `LeaveOneOut.build` turns the references (64x64 images and 112x112 face crops, already at model
  size) into per-target tensors through the model directory's own graphs on ONNX Runtime
  (vae_encoder; face_embedder + id_former on the other references).
- `make_batches` draws the 40 batches (targets, timesteps, noise) from one seeded generator.
- `tune_torch` runs them through `pva.tuning.TuningStep.loss` with a real `torch.optim.AdamW` with two
  parameter groups, one micro-batch of 1 at a time (the paper's loop); `tune_onnx` runs them through
  `adapter_step.onnx`, one batch of 2 per call.

    .venv/bin/python models/export/reference_tune.py [--model models/tiny] [--seed 0] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pva.tokenizer import encode, render_prompt  # noqa: E402
from pva.tuning import INPUT_NAMES, TuningBatch, TuningStep  # noqa: E402
from reference import ReferencePipeline, image_tensor, mask_tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

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

    input_ids: torch.Tensor  # int64 [77], "a <new1> person"
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
        res, lat, crop = m["resolution"], m["latent"]["size"], m["face"]["crop_size"]
        if any(i.size != (res, res) for i in images) or any(f.size != (crop, crop) for f in faces):
            raise ValueError(f"images must be {res}x{res} and face crops {crop}x{crop}")
        scale = m["vae"]["scaling_factor"]
        mask = mask_tensor(whole_face_mask(res))
        pixels = torch.cat([image_tensor(i) for i in images])
        latents = pipeline.run_graph("vae_encoder", image=pixels) * scale
        masked_latents = pipeline.run_graph("vae_encoder", image=pixels * (1 - mask)) * scale
        embeddings = pipeline.run_graph("face_embedder", faces=torch.cat([image_tensor(f) for f in faces]))
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


def main(argv: list[str] | None = None) -> None:
    import make_fixtures  # the face crops of the committed fixtures

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tiny")
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="default: the manifest's tuning.steps")
    args = parser.parse_args(argv)

    from pva import build_stack

    pipeline = ReferencePipeline(args.model)
    hyper = Hyper.from_manifest(pipeline.manifest)
    steps = args.steps or hyper.steps
    names = sorted(make_fixtures.FACE_BOXES)
    res, crop = pipeline.manifest["resolution"], pipeline.manifest["face"]["crop_size"]
    data = LeaveOneOut.build(
        pipeline,
        [make_fixtures.face_crop(args.faces, n, res) for n in names],
        [make_fixtures.face_crop(args.faces, n, crop) for n in names],
    )
    num_timesteps = pipeline.manifest["scheduler"]["num_train_timesteps"]
    batches, _ = make_batches(data, steps, hyper.batch_size, args.seed, num_timesteps)
    if pipeline.manifest["name"] != "pva-tiny":
        raise SystemExit("the PyTorch side rebuilds the model with build_stack: only the tiny model")
    stack = build_stack("tiny", seed=0)
    torch_losses, torch_params = tune_torch(TuningStep.from_stack(stack), pipeline.params, batches, hyper)
    onnx_losses, onnx_params = tune_onnx(adapter_step_session(args.model), pipeline.params, batches, hyper)
    for i, (a, b) in enumerate(zip(torch_losses, onnx_losses)):
        print(f"step {i + 1:3d}  torch {a:.7f}  onnx {b:.7f}  diff {abs(a - b):.2e}")
    print(f"final params: max |torch - onnx| = {(torch_params - onnx_params).abs().max().item():.3e}, "
          f"moved {(torch_params - pipeline.params).abs().max().item():.3e} from the initial params")


if __name__ == "__main__":
    main()
