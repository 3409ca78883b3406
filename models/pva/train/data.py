"""What the trainer reads and feeds: a dataset directory of identities, region masks, face crops.

A dataset directory holds one folder per person with two or more RGB images and, optionally, a
``captions.json`` mapping file names to captions (``synthetic.write_dataset`` writes this layout;
other files and sub-folders are ignored). Images are resized to the model resolution on load.

Masks follow CelebAHQ-IDI, as the paper trains: lower face, eyebrows, whole face and random boxes,
here the named regions of ``models/CONTRACT.md`` with a little jitter (a real face is never exactly
where the aligned crop expects it), plus the eyes and mouth regions that the worker also offers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pva.config import region_box  # CONTRACT.md's named regions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: How often each kind of training mask is drawn (the rest of the probability: a random box).
MASK_MIX = {"whole_face": 0.3, "lower_face": 0.2, "eyebrows": 0.1, "eyes": 0.1, "mouth": 0.05}


@dataclass
class FaceDataset:
    """All images of a dataset directory in memory."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    person: torch.Tensor  # int64 [N], 0..persons-1
    captions: list[str]  # N captions ("" where the dataset has none)
    names: list[str]  # person folder names, indexed by `person`

    @property
    def persons(self) -> int:
        """Number of identities."""
        return len(self.names)

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def load(cls, root: Path, size: int, max_persons: int | None = None) -> FaceDataset:
        """Read `root` (one folder per person); persons with fewer than 2 images are skipped."""
        root = Path(root)
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        images, person, captions, names = [], [], [], []
        for folder in folders:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) < 2:
                continue
            if max_persons is not None and len(names) >= max_persons:
                break
            caption_file = folder / "captions.json"
            texts = json.loads(caption_file.read_text()) if caption_file.is_file() else {}
            for file in files:
                with Image.open(file) as image:
                    rgb = image.convert("RGB")
                    if rgb.size != (size, size):
                        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
                    images.append(np.asarray(rgb, dtype=np.uint8))
                person.append(len(names))
                captions.append(str(texts.get(file.name, "")))
            names.append(folder.name)
        if not names:
            raise ValueError(f"{root}: no person folder with 2 or more images")
        array = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return cls(array, torch.tensor(person, dtype=torch.int64), captions, names)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] (`x / 127.5 - 1`, as the worker feeds the graphs)."""
    return images.float() / 127.5 - 1.0


def face_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Float images [N, 3, S, S] (already aligned face crops) -> the face embedder's input size."""
    if images.shape[-1] == crop_size:
        return images
    return F.interpolate(images, size=(crop_size, crop_size), mode="bilinear", align_corners=False, antialias=True)


def region_mask(region: str, size: int) -> torch.Tensor:
    """A named region as a float mask [1, S, S] (1 = repaint)."""
    x0, y0, x1, y1 = region_box(region, size)
    mask = torch.zeros(1, size, size)
    mask[:, y0:y1, x0:x1] = 1.0
    return mask


def random_masks(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` training masks [count, 1, S, S]: jittered named regions or random boxes (one batched draw)."""
    kinds = list(MASK_MIX)
    edges = torch.tensor(list(MASK_MIX.values())).cumsum(0)
    jitter = max(1, size // 16)
    pick = torch.searchsorted(edges, torch.rand(count, generator=generator), right=True)
    shift = torch.randint(-jitter, jitter + 1, (count, 2), generator=generator)
    extent = torch.randint(size // 4, size * 3 // 4 + 1, (count, 2), generator=generator)
    corner = (torch.rand(count, 2, generator=generator) * (size - extent + 1)).floor().long()
    boxes = torch.tensor([region_box(k, size) for k in kinds] + [(0, 0, 0, 0)])[pick]  # [count, 4]
    named = pick < len(kinds)
    x0 = torch.where(named, (boxes[:, 0] + shift[:, 0]).clamp(min=0), corner[:, 0])
    x1 = torch.where(named, (boxes[:, 2] + shift[:, 0]).clamp(max=size), corner[:, 0] + extent[:, 0])
    y0 = torch.where(named, (boxes[:, 1] + shift[:, 1]).clamp(min=0), corner[:, 1])
    y1 = torch.where(named, (boxes[:, 3] + shift[:, 1]).clamp(max=size), corner[:, 1] + extent[:, 1])
    grid = torch.arange(size)
    cols = (grid >= x0[:, None]) & (grid < x1[:, None])  # [count, S]
    rows = (grid >= y0[:, None]) & (grid < y1[:, None])
    return (rows[:, :, None] & cols[:, None, :]).float().unsqueeze(1)


def latent_mask(masks: torch.Tensor, latent_size: int) -> torch.Tensor:
    """Pixel masks [B, 1, S, S] -> the UNet's mask channel, nearest, as the pipeline computes it."""
    return F.interpolate(masks, size=(latent_size, latent_size), mode="nearest")
