"""What a trained autoencoder keeps: attribute probes on its latents and the benchmark's floor row.

An edit can only show what the VAE's latents carry: the diffusion model learns to steer latents, and a
caption cannot bring back an attribute the encoder dropped. Run this on a weights file after the `vae`
stage, before spending a GPU on `base` and `pva*`:

    .venv/bin/python -m pva.train.probe --weights W/weights.safetensors --data /tmp/faces \
        [--size demo] [--images 12000] [--persons 48] [--steps 600]

- **Probes.** For each editable attribute (smile, beard, glasses), a small conv net (2 conv layers, max
  pool, linear) learns to read it from the latent posterior means of the first 3/4 of ``--images``
  dataset images (captions give the labels) and is scored on the last 1/4. Near 1.0: the latents carry
  the attribute; near 0.5: they do not.
- **Floor.** The benchmark's VAE row (``pva.train.benchmark``) without the rest of the model: held-out persons
  encoded and decoded, scored per identity part (colour error) and per attribute (nearest of the 8
  renders), over the benchmark's three regions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pva.config import get_config
from pva.stack import build_stack
from pva.train import benchmark as bench
from pva.train.data import FaceDataset
from pva.train.stages import posterior_moments
from pva.train.synthetic import EditAttrs, caption, dataset
from pva.weights import load_trained

#: The editable attributes the probes read (`synthetic.EditAttrs` fields).
ATTRIBUTES = tuple(bench.ATTRIBUTE_PARTS)
#: Each of the 8 captions `synthetic.caption` writes, and the attributes it names.
CAPTIONED = {caption(a): a for a in EditAttrs.all()}


def labels(captions: list[str]) -> dict[str, torch.Tensor]:
    """Per attribute, float 0/1 labels of dataset captions (each one of `synthetic.caption`'s)."""
    unknown = sorted({c for c in captions if c not in CAPTIONED})
    if unknown:
        raise ValueError(f"not captions of synthetic.caption: {unknown[:3]}")
    return {name: torch.tensor([getattr(CAPTIONED[c], name) for c in captions], dtype=torch.float32)
            for name in ATTRIBUTES}


def probe_accuracy(latents: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> float:
    """Held-out accuracy of a small conv probe trained on the first 3/4 of ``latents`` to predict ``y``."""
    n = latents.shape[0]
    cut = n * 3 // 4
    x = (latents - latents[:cut].mean()) / latents[:cut].std()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c = x.shape[1]
    net = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(),
                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        index = torch.randint(0, cut, (min(256, cut),), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(x[index]).squeeze(1), y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((net(x[cut:]).squeeze(1) > 0).float() == y[cut:]).float().mean())


@torch.no_grad()
def floor(vae: nn.Module, channels: int, persons: int, resolution: int, seed: int = 1000) -> dict[str, float]:
    """The benchmark's floor row: held-out targets encoded and decoded, scored as ``pva.train.benchmark`` does."""
    samples = list(dataset(seed, persons, 1, resolution, first_person=bench.FIRST_PERSON))
    images = torch.from_numpy(np.stack([s.rgb for s in samples])).permute(0, 3, 1, 2)
    decoded = vae.decode(posterior_moments(vae, images, channels), return_dict=False)[0]
    outputs = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    colour: list[float] = []
    parts: dict[str, list[float]] = {p: [] for p in bench.IDENTITY_PARTS}
    accuracy: dict[str, list[float]] = {a: [] for a in bench.ATTRIBUTE_PARTS}
    for sample, image in zip(samples, outputs):
        renders = bench.AttributeRenders.of(sample.identity, sample.nuisance, resolution)
        for region in bench.BENCH_REGIONS:
            mask = bench.region_mask(region, resolution)
            errors = bench.part_colour_errors(image, sample.parts, mask, sample.identity, sample.nuisance)
            colour.append(bench.mean_error(errors))
            for part, value in errors.items():
                parts[part].append(value)
            for name, value in renders.accuracy(image, mask, sample.attrs).items():
                if value is not None:
                    accuracy[name].append(value)
    return {
        "own_colour_error": float(np.nanmean(colour)),
        **{f"{p}_colour_error": float(np.nanmean(v)) for p, v in parts.items()},
        **{f"{a}_accuracy": float(np.mean(v)) for a, v in accuracy.items()},
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    config = get_config(args.size)
    stack = build_stack(args.size, weights=load_trained(args.weights))
    vae = stack.vae.eval()
    data = FaceDataset.load(args.data, config.resolution)
    count = min(args.images, len(data))
    # Spread over the whole dataset (it is stored person by person).
    index = torch.linspace(0, len(data) - 1, count).round().long().unique()
    latents = posterior_moments(vae, data.images[index], config.latent_channels)
    try:
        targets = labels([data.captions[i] for i in index.tolist()])
    except ValueError as err:
        raise SystemExit(f"{args.data}: the probes need synthetic captions ({err})") from None
    if any(len(set(y.tolist())) < 2 for y in targets.values()):
        raise SystemExit(f"{args.data}: the probes need captions that name every attribute both ways")
    result = {
        "weights": str(args.weights),
        "images": int(index.numel()),
        "probe_accuracy": {name: probe_accuracy(latents, y, args.steps) for name, y in targets.items()},
        "floor": floor(vae, config.latent_channels, args.persons, config.resolution),
    }
    print(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m pva.train.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="a weights.safetensors (pva.train run/import)")
    parser.add_argument("--data", type=Path, required=True, help="a synthetic dataset (pva.train data)")
    parser.add_argument("--size", choices=("demo", "tiny"), default="demo")
    parser.add_argument("--images", type=int, default=12000, help="dataset images the probes use")
    parser.add_argument("--persons", type=int, default=48, help="held-out persons of the floor row")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per probe")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
