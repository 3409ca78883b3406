"""Write the Rust parity fixtures under tests/fixtures/edit/<case>/ from the tiny model (and, with
``--model models/demo --out tests/fixtures/edit-demo``, from the trained demo model).

Each case holds its inputs already at model size (target.png and mask.png 64x64, ref_<i>.png
112x112 face crops made with PIL from the public-domain photos in shared/data/faces), case.json (the
edit settings and the timesteps used), tensors.safetensors (every intermediate of the reference
pipeline, including the noise, so the Rust side can use the same numbers) and expected.png.

    .venv/bin/python -m pva.reference.fixtures [--faces DIR] [--model models/tiny] [--out tests/fixtures/edit]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps
from safetensors.torch import save_file

from pva.config import region_box
from pva.paths import REPO_ROOT as ROOT
from pva.reference.edit import EditRequest, ReferencePipeline


# Square face boxes (left, top, right, bottom) in the EXIF-oriented photos, picked by eye so the
# face sits roughly where the named regions expect an aligned face.
FACE_BOXES = {
    "obama.jpg": (276, 14, 702, 440),
    "obama2.jpg": (141, 159, 591, 609),
    "obama3.jpg": (537, 204, 1004, 671),
}


@dataclass(frozen=True)
class Case:
    """One fixture case."""

    name: str
    scheduler: str
    eta: float
    guidance: float
    references: tuple[str, ...]
    region: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int = 8


# The target is always obama.jpg; "obama.jpg:flip" is its mirror image (the paper's stand-in
# reference when an identity has no other photo).
CASES = (
    Case("ddim_g1_r1", "ddim", 1.0, 1.0, ("obama2.jpg",), "whole_face", "smiling", "", 11),
    Case("ddim_g3_r3", "ddim", 0.0, 3.0, ("obama2.jpg", "obama3.jpg", "obama.jpg:flip"), "lower_face",
         "with a  short   beard", "blurry, low quality", 22),
    Case("dpm_g1_r3", "dpm", 0.0, 1.0, ("obama3.jpg", "obama2.jpg", "obama.jpg:flip"), "eyes",
         "wearing glasses", "", 33),
    Case("dpm_g3_r1", "dpm", 0.0, 3.0, ("obama3.jpg",), "mouth", "with an open mouth, laughing",
         "closed mouth", 44),
)


def face_crop(faces: Path, spec: str, size: int) -> Image.Image:
    """The square face crop of a photo (`name` or `name:flip`), resized with Lanczos."""
    name, _, option = spec.partition(":")
    photo = ImageOps.exif_transpose(Image.open(faces / name)).convert("RGB")
    crop = photo.crop(FACE_BOXES[name]).resize((size, size), Image.Resampling.LANCZOS)
    return ImageOps.mirror(crop) if option == "flip" else crop


def region_mask(region: str, size: int) -> Image.Image:
    """A binary mask image (255 = repaint) of a named region (bounds: `pva.config.region_box`)."""
    x0, y0, x1, y1 = region_box(region, size)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (x0, y0, x1, y1))
    return mask


def write_case(pipeline: ReferencePipeline, case: Case, faces: Path, out: Path) -> None:
    """Write one case directory."""
    manifest = pipeline.manifest
    res, crop = manifest["resolution"], manifest["face"]["crop_size"]
    out.mkdir(parents=True, exist_ok=True)
    target = face_crop(faces, "obama.jpg", res)
    mask = region_mask(case.region, res)
    refs = [face_crop(faces, spec, crop) for spec in case.references]
    target.save(out / "target.png")
    mask.save(out / "mask.png")
    for i, ref in enumerate(refs):
        ref.save(out / f"ref_{i}.png")
    # Re-read the written PNGs so the fixture's inputs are exactly the files' pixels.
    result = pipeline.edit(
        EditRequest(
            target=Image.open(out / "target.png"),
            mask=Image.open(out / "mask.png"),
            references=[Image.open(out / f"ref_{i}.png") for i in range(len(refs))],
            prompt=case.prompt,
            negative_prompt=case.negative_prompt,
            scheduler=case.scheduler,
            eta=case.eta,
            steps=case.steps,
            guidance=case.guidance,
            seed=case.seed,
        )
    )
    save_file({k: v.contiguous() for k, v in result.tensors.items()}, str(out / "tensors.safetensors"))
    Image.fromarray(result.image).save(out / "expected.png")
    info = {
        "model": str(pipeline.model_dir.resolve().relative_to(ROOT)) if pipeline.model_dir.resolve().is_relative_to(ROOT) else str(pipeline.model_dir),
        "prompt": case.prompt,
        "negative_prompt": case.negative_prompt,
        "scheduler": case.scheduler,
        "eta": case.eta,
        "steps": case.steps,
        "guidance": case.guidance,
        "seed": case.seed,
        "timesteps": result.timesteps,
        "mask_region": case.region,
        "target": "target.png",
        "mask": "mask.png",
        "references": [f"ref_{i}.png" for i in range(len(refs))],
        "sources": {"target": "obama.jpg", "references": list(case.references)},
    }
    (out / "case.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.reference.fixtures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "edit")
    args = parser.parse_args(argv)
    pipeline = ReferencePipeline(args.model)
    for case in CASES:
        write_case(pipeline, case, args.faces, args.out / case.name)
        print(f"wrote {args.out / case.name}")


if __name__ == "__main__":
    main()
