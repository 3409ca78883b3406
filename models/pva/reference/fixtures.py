"""Write the Rust parity fixtures under tests/fixtures/edit/<case>/ from the tiny model (and, with
``--model models/demo --out tests/fixtures/edit-demo``, from the trained demo model).

Each case holds its inputs already at model size (target.png and mask.png 64x64, ref_<i>.png
112x112 face crops made with PIL from the public-domain photos in shared/data/faces), case.json (the
edit settings and the timesteps used), tensors.safetensors (every intermediate of the reference
pipeline, including the noise, so the Rust side can use the same numbers) and expected.png.

``--paper`` writes tests/fixtures/edit-paper instead: the tiny model with the paper's model settings
(`PAPER_OVERLAY`: its prompt template, its unconditional row and default negative prompt, its face
window) written over its manifest.json in a temporary directory; overlay.json records the overlay, so the
Rust test builds the same model directory. Those cases leave out the two image-sized tensors (`image`,
`decoded`; the PNGs hold them) to keep the repository small. leave_one_out.safetensors holds the
tuning data (`pva.reference.tune.LeaveOneOut`) of tests/fixtures/tune's references under those settings.

    .venv/bin/python -m pva.reference.fixtures [--faces DIR] [--model models/tiny] [--out tests/fixtures/edit]
    .venv/bin/python -m pva.reference.fixtures --paper [--out tests/fixtures/edit-paper]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from safetensors.torch import save_file

from pva.config import PAPER_EMBED_WINDOW, PAPER_GUIDANCE, PAPER_PROMPT_TEMPLATE, region_box
from pva.paths import REPO_ROOT as ROOT
from pva.reference.edit import EditRequest, ReferencePipeline, face_source_size
from pva.reference.tune import LeaveOneOut, load_fixture_references


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


# The paper's model settings over the tiny model's manifest (its face window starting from the 112x112
# reference crops the other fixtures use, so the same PNGs serve).
PAPER_OVERLAY: dict[str, Any] = {
    "prompt_template": PAPER_PROMPT_TEMPLATE,
    "guidance": dict(PAPER_GUIDANCE),
    "face": {"embed_window": {**PAPER_EMBED_WINDOW, "source_size": 112}},
}

# Guidance 3 with the identity-keeping unconditional row and the default negative prompt (the job
# gives none); the prompt holds the exact `<new1>` (the identity token) and `<NEW1>` (plain text).
PAPER_CASES = (
    Case("paper_ddim_g3_r2", "ddim", 1.0, 3.0, ("obama2.jpg", "obama3.jpg"), "whole_face",
         "with a beard, like <NEW1> and <new1>", "", 55),
)

# Tensors the paper cases leave out (the PNGs hold the same pixels).
PAPER_DROPPED = ("image", "decoded")


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` written over it, objects merged key by key."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def overlay_model(model_dir: Path, overlay: dict[str, Any], out: Path) -> Path:
    """A model directory at `out`: links to every file of `model_dir`, and its manifest.json with
    `overlay` merged in (the manifest's hashes cover the graphs and the adapter, not itself)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in Path(model_dir).resolve().iterdir():
        if path.name != "manifest.json":
            (out / path.name).symlink_to(path)
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(merge(manifest, overlay), indent=2) + "\n")
    return out


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


def write_case(pipeline: ReferencePipeline, case: Case, faces: Path, out: Path,
               model: str | None = None, drop: tuple[str, ...] = ()) -> None:
    """Write one case directory (without the tensors named in `drop`)."""
    manifest = pipeline.manifest
    res, crop = manifest["resolution"], face_source_size(manifest)
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
    tensors = {k: v.contiguous() for k, v in result.tensors.items() if k not in drop}
    save_file(tensors, str(out / "tensors.safetensors"))
    Image.fromarray(result.image).save(out / "expected.png")
    if model is None:
        resolved = pipeline.model_dir.resolve()
        model = str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(pipeline.model_dir)
    info = {
        "model": model,
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
    parser.add_argument("--out", type=Path, help="default tests/fixtures/edit (--paper: tests/fixtures/edit-paper)")
    parser.add_argument("--paper", action="store_true", help="the tiny model with the paper's model settings")
    parser.add_argument("--steps", type=int, help="denoising steps of every case (default: each case's own)")
    args = parser.parse_args(argv)
    if not args.paper:
        out = args.out or ROOT / "tests" / "fixtures" / "edit"
        pipeline = ReferencePipeline(args.model)
        for case in CASES:
            case = dataclasses.replace(case, steps=args.steps) if args.steps else case
            write_case(pipeline, case, args.faces, out / case.name)
            print(f"wrote {out / case.name}")
        return
    out = args.out or ROOT / "tests" / "fixtures" / "edit-paper"
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlay.json").write_text(json.dumps(PAPER_OVERLAY, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = ReferencePipeline(overlay_model(args.model, PAPER_OVERLAY, Path(tmp) / "model"))
        for case in PAPER_CASES:
            write_case(pipeline, case, args.faces, out / case.name, model="models/tiny + overlay.json",
                       drop=PAPER_DROPPED)
            print(f"wrote {out / case.name}")
        data = LeaveOneOut.build(pipeline, *load_fixture_references(ROOT / "tests" / "fixtures" / "tune"))
        tensors = {k: getattr(data, k).contiguous() for k in ("input_ids", "latents", "masked_latents", "id_tokens")}
        save_file(tensors, str(out / "leave_one_out.safetensors"))
        print(f"wrote {out / 'leave_one_out.safetensors'}")


if __name__ == "__main__":
    main()
