"""The synthetic-face benchmark of a PVA model directory (issue 8, part 4).

Held-out synthetic identities (``synthetic.dataset`` from person ``FIRST_PERSON`` upward; training uses
low person numbers), each with ``--refs`` reference images and one target image, are inpainted in three
of CONTRACT.md's named regions (``lower_face``, ``eyebrows``, ``whole_face``, as in the paper's
CelebAHQ-IDI) under five conditions:

- ``a`` the person's references, the true caption;
- ``b`` no references: ``pva.reference.edit`` refuses an empty reference list, so the UNet's ``id_switch`` is
  forced to 0 in every row, which CONTRACT.md defines as removing the identity keys exactly (the
  paper's 77-token-only pass); the references passed along cannot change the output;
- ``c`` the next person's references, the true caption;
- ``d`` the person's references, every attribute of the caption negated (ground truth: the same face
  rendered with the negated attributes);
- ``e`` as ``a`` after ``--tune-steps`` steps of ``adapter_step.onnx`` on the person's references
  (``pva.reference.tune``'s leave-one-out batches).

A sixth row, ``vae``, is no edit: the ground truth encoded and decoded by the model's VAE, scored like
the others. It is the floor of every image measure (a perfect latent still decodes to it), so it shows
how much of an error is the autoencoder's.

Edits run through ``pva.reference.edit.ReferencePipeline`` (ONNX Runtime); the same edit seed is used for all
five conditions of one (person, region) sample. Metrics: masked MSE to the ground truth; colour error of
the identity parts (skin, hair, eyes, eyebrows, nose) over the masked pixels, against the person's and
the other person's parameters; edit accuracy (nearest of the face's 8 attribute renders); identity score
(CONTRACT.md: cosine of the output's face embedding with the mean reference embedding).

    .venv/bin/python -m pva.train.benchmark --model models/tiny --out out/bench [--persons 8] \
        [--seed 1000] [--steps 25] [--scheduler ddim] [--refs 3] [--tune-steps 40] [--guidance 1.0] [--threads 0] \
        [--tune-lr-visual X] [--tune-lr-token Y]

Every measure is also reported per skin-tone group (``skin_group``: light / medium / dark by the
luminance of the person's skin parameter) with the worst/best group ratio of the identity colour error
and the identity score (goal <= ``MAX_GROUP_RATIO`` for (a) and (e)).

Another ``--seed`` draws other held-out identities: pick settings (e.g. the tuning rates) on one seed
and report them on the default one.

Writes ``OUT/results.json`` (every number, per region and per sample), ``OUT/results.md`` and
``OUT/grid.png`` (a row per sample: ground truth | through the VAE | masked input | a | b | c | d | e |
references).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from pva.config import region_box
from pva.reference import tune as rt
from pva.reference.edit import SCHEDULERS, EditRequest, EditResult, ReferencePipeline, image_tensor, to_bytes
from pva.train.synthetic import (
    EditAttrs,
    IdentityParams,
    Nuisance,
    Part,
    Sample,
    caption,
    dataset,
    lighting,
    part_colours,
    render,
)

#: Held-out persons start here; training datasets use person numbers from 0.
FIRST_PERSON = 100_000
#: The benchmark's regions, as in the paper's CelebAHQ-IDI.
BENCH_REGIONS = ("lower_face", "eyebrows", "whole_face")
CONDITIONS = {
    "a": "right references, true caption",
    "b": "no references (id_switch 0)",
    "c": "another person's references",
    "d": "right references, flipped caption",
    "e": "right references, tuned",
}
#: The rows of every table: the conditions, then the VAE floor (the ground truth encoded and decoded).
ROWS = {**CONDITIONS, "vae": "ground truth through the VAE (floor)"}
#: The identity parts whose colour the person's parameters fix.
IDENTITY_PARTS = {
    "skin": (Part.SKIN,),
    "hair": (Part.HAIR,),
    "eyes": (Part.LEFT_EYE, Part.RIGHT_EYE),
    "eyebrows": (Part.EYEBROWS,),
    "nose": (Part.NOSE,),
}
#: The part that shows each editable attribute.
ATTRIBUTE_PARTS = {"smile": Part.MOUTH, "beard": Part.BEARD, "glasses": Part.GLASSES}
#: An attribute is scored in a region whose mask covers at least this share of its pixels.
MIN_COVERAGE = 0.5
#: Goal thresholds of the issue.
MIN_REDUCTION_PERCENT = 30.0
MIN_EDIT_ACCURACY = 0.9
#: The tuning hyper-parameters a run may override (``--tune-lr-visual``, ``--tune-lr-token``).
TUNING_RATES = ("lr_visual", "lr_token")
#: Skin-tone groups by the relative luminance (Rec. 709 weights on 0..255 sRGB values, no gamma) of the
#: person's skin parameter. ``synthetic.IdentityParams.draw`` spreads skin tones uniformly between
#: (212, 182, 152) (luminance 186.2) and (110, 75, 55) (81.0), plus a +-10 jitter per channel; the
#: thresholds cut that axis into thirds: dark below 116, light from 151 up.
SKIN_GROUPS = ("light", "medium", "dark")
SKIN_LIGHT_FROM = 151.0
SKIN_DARK_BELOW = 116.0
#: Goal of the fairness measures: the worst group's value over the best group's, for the identity
#: colour error (lower is better) and the identity score (higher is better).
MAX_GROUP_RATIO = 1.2
#: The rows the fairness goal is judged on: the product's edit (a) and the tuned edit (e).
FAIRNESS_ROWS = ("a", "e")


# ---------------------------------------------------------------------------------------------------
# Masks and metrics (pure numpy on uint8 HWC images)


def region_mask(region: str, size: int) -> np.ndarray:
    """The named region as a bool [size, size] mask (True = repaint); bounds: `pva.config.region_box`,
    which rounds as the Rust worker does."""
    x0, y0, x1, y1 = region_box(region, size)
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def mask_image(mask: np.ndarray) -> Image.Image:
    """The 8-bit mask image the pipeline reads (255 = repaint)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def masked_mse(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error over the masked pixels (and channels), pixels scaled to [0, 1]."""
    diff = output[mask].astype(np.float64) / 255.0 - truth[mask].astype(np.float64) / 255.0
    return float(np.mean(diff**2))


def expected_colours(identity: IdentityParams, nuisance: Nuisance, size: int) -> np.ndarray:
    """[len(Part), size, size, 3]: each part's colour under ``identity`` lit as ``render`` lights it."""
    palette = np.zeros((len(Part), 3), dtype=np.float64)
    for part, colour in part_colours(identity).items():
        palette[part] = colour
    return palette[:, None, None, :] * lighting(nuisance, size)[None, :, :, None]


def part_colour_errors(
    output: np.ndarray, parts: np.ndarray, mask: np.ndarray, identity: IdentityParams, nuisance: Nuisance
) -> dict[str, float]:
    """Mean absolute colour error (0..255) of each identity part over its masked pixels.

    Like ``synthetic.part_colour_error``, but only over the masked pixels and against the part's colour
    times the image's lighting field (so the ground truth itself scores ~0, only rounding). ``parts``
    is the ground truth's parts map; a part with no masked pixels is NaN.
    """
    size = parts.shape[0]
    expected = expected_colours(identity, nuisance, size)
    errors = {}
    for name, members in IDENTITY_PARTS.items():
        where = np.isin(parts, [int(p) for p in members]) & mask
        if not where.any():
            errors[name] = math.nan
            continue
        want = expected[(parts[where], *np.nonzero(where))]
        errors[name] = float(np.abs(output[where].astype(np.float64) - want).mean())
    return errors


def mean_error(errors: dict[str, float]) -> float:
    """The identity-part colour error of one image: the mean over the parts the mask covers."""
    values = [v for v in errors.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def flipped(attrs: EditAttrs) -> EditAttrs:
    """Every attribute negated."""
    return EditAttrs(not attrs.smile, not attrs.beard, not attrs.glasses)


@dataclass
class AttributeRenders:
    """The 8 attribute combinations of one face (same identity and nuisance), for edit accuracy."""

    attrs: list[EditAttrs]
    rgb: np.ndarray  # [8, s, s, 3] uint8
    parts: np.ndarray  # [8, s, s] uint8

    @classmethod
    def of(cls, identity: IdentityParams, nuisance: Nuisance, size: int) -> AttributeRenders:
        """Render every combination of ``EditAttrs.all()``."""
        attrs = EditAttrs.all()
        renders = [render(identity, a, nuisance, size) for a in attrs]
        return cls(attrs, np.stack([r[0] for r in renders]), np.stack([r[1] for r in renders]))

    def coverage(self, mask: np.ndarray) -> dict[str, float]:
        """Per attribute: the share of its pixels (the union over all renders) that ``mask`` covers."""
        result = {}
        for name, part in ATTRIBUTE_PARTS.items():
            union = (self.parts == part).any(axis=0)
            result[name] = float((union & mask).sum() / union.sum()) if union.any() else 0.0
        return result

    def nearest(self, output: np.ndarray, mask: np.ndarray) -> EditAttrs:
        """The attributes of the render closest to ``output`` (MSE over the masked pixels; ties: first)."""
        errors = [masked_mse(output, rgb, mask) for rgb in self.rgb]
        return self.attrs[int(np.argmin(errors))]

    def accuracy(self, output: np.ndarray, mask: np.ndarray, expected: EditAttrs) -> dict[str, float | None]:
        """Per attribute 1.0 / 0.0 whether the nearest render has ``expected``'s value; None where the
        mask covers less than ``MIN_COVERAGE`` of the attribute's pixels."""
        coverage = self.coverage(mask)
        nearest = self.nearest(output, mask)
        return {
            name: float(getattr(nearest, name) == getattr(expected, name)) if coverage[name] >= MIN_COVERAGE else None
            for name in ATTRIBUTE_PARTS
        }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ---------------------------------------------------------------------------------------------------
# The pipeline and the data


class BenchmarkPipeline(ReferencePipeline):
    """The reference pipeline with a switch for condition (b): every UNet row gets ``id_switch`` 0."""

    identity_on = True

    def run_graph(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        if name == "unet" and not self.identity_on:
            inputs["id_switch"] = torch.zeros_like(inputs["id_switch"])
        return super().run_graph(name, **inputs)

    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        """An HWC uint8 image encoded and decoded by the model's VAE (the floor of every edit)."""
        latent = self.run_graph("vae_encoder", image=image_tensor(Image.fromarray(image)))
        return to_bytes(self.run_graph("vae_decoder", latent=latent))

    def edit_without_identity(self, request: EditRequest) -> EditResult:
        """The edit with the identity keys removed from every row (the references are ignored)."""
        self.identity_on = False
        try:
            return self.edit(request)
        finally:
            self.identity_on = True

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Face embeddings [N, 512] of face crops (already at the crop size)."""
        return self.run_graph("face_embedder", faces=torch.cat([image_tensor(i) for i in images])).numpy()


@dataclass
class Person:
    """One held-out identity: reference renders, their face crops and the target render."""

    number: int
    identity: IdentityParams
    references: list[Sample]
    faces: list[Image.Image]
    target: Sample


def held_out_persons(seed: int, count: int, refs: int, size: int, crop: int) -> list[Person]:
    """Persons ``FIRST_PERSON ..``: images ``0 .. refs - 1`` are the references, image ``refs`` the target.

    The renders are already face crops; the references' crops are the renders resized (PIL bilinear) to
    the face embedder's crop size.
    """
    samples = list(dataset(seed, count, refs + 1, size, first_person=FIRST_PERSON))
    persons = []
    for i in range(count):
        own = samples[i * (refs + 1) : (i + 1) * (refs + 1)]
        faces = [Image.fromarray(s.rgb).resize((crop, crop), Image.Resampling.BILINEAR) for s in own[:refs]]
        persons.append(Person(own[0].person, own[0].identity, own[:refs], faces, own[refs]))
    return persons


def skin_luminance(identity: IdentityParams) -> float:
    """The relative luminance (0..255) of the person's skin parameter: Rec. 709 weights, no gamma."""
    r, g, b = identity.skin
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def skin_group(identity: IdentityParams) -> str:
    """``light``, ``medium`` or ``dark``: the person's skin luminance against ``SKIN_LIGHT_FROM`` and
    ``SKIN_DARK_BELOW``."""
    y = skin_luminance(identity)
    return "light" if y >= SKIN_LIGHT_FROM else "dark" if y < SKIN_DARK_BELOW else "medium"


def sub_seed(*words: int) -> int:
    """A 32-bit seed from a tuple of integers (the same tuple always gives the same seed)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def tuning_hyper(manifest: dict[str, Any], rates: dict[str, float] | None = None) -> rt.Hyper:
    """The manifest's tuning hyper-parameters with ``rates`` (some of ``TUNING_RATES``) replacing theirs."""
    return replace(rt.Hyper.from_manifest(manifest), **(rates or {}))


def tune(
    pipeline: BenchmarkPipeline,
    session: ort.InferenceSession,
    person: Person,
    steps: int,
    seed: int,
    hyper: rt.Hyper | None = None,
) -> torch.Tensor:
    """The adapter params after ``steps`` steps of ``adapter_step.onnx`` on the person's references, at
    ``hyper`` (default: the manifest's)."""
    manifest = pipeline.manifest
    hyper = hyper or tuning_hyper(manifest)
    images = [Image.fromarray(s.rgb) for s in person.references]
    data = rt.LeaveOneOut.build(pipeline, images, person.faces)
    batches, _ = rt.make_batches(
        data, steps, hyper.batch_size, seed, manifest["scheduler"]["num_train_timesteps"]
    )
    _, params = rt.tune_onnx(session, pipeline.params, batches, hyper)
    return params


# ---------------------------------------------------------------------------------------------------
# Aggregation and reporting


def _nanmean(values: list[float]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row (condition or floor): the means over ``records`` (one per sample) of every metric."""
    summary = {}
    for cond in ROWS:
        rows = [r["conditions"][cond] for r in records]
        accuracy = {}
        for name in ATTRIBUTE_PARTS:
            scored = [r["accuracy"][name] for r in rows if r["accuracy"][name] is not None]
            accuracy[name] = {"value": _nanmean(scored), "scored": len(scored)}
        summary[cond] = {
            "masked_mse": _nanmean([r["masked_mse"] for r in rows]),
            "own_colour_error": _nanmean([r["own_colour_error"] for r in rows]),
            "other_colour_error": _nanmean([r["other_colour_error"] for r in rows]),
            "own_part_errors": {p: _nanmean([r["own_parts"][p] for r in rows]) for p in IDENTITY_PARTS},
            "other_part_errors": {p: _nanmean([r["other_parts"][p] for r in rows]) for p in IDENTITY_PARTS},
            "identity_score": _nanmean([r["identity_score"] for r in rows]),
            "identity_score_other": _nanmean([r["identity_score_other"] for r in rows]),
            "accuracy": accuracy,
        }
    return summary


def group_ratios(by_group: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row: the worst group's value over the best group's, for the identity colour error
    (max / min) and the identity score (max / min, higher is better), over the groups that have samples.
    None where fewer than two groups have a value (or the best is 0)."""

    def ratio(values: dict[str, float | None], higher_is_better: bool) -> dict[str, Any]:
        kept = {g: v for g, v in values.items() if v is not None and not math.isnan(v)}
        if len(kept) < 2:
            return {"ratio": None, "worst": None, "best": None}
        best = (max if higher_is_better else min)(kept, key=kept.get)
        worst = (min if higher_is_better else max)(kept, key=kept.get)
        num, den = (kept[best], kept[worst]) if higher_is_better else (kept[worst], kept[best])
        return {"ratio": None if den <= 0 else float(num / den), "worst": worst, "best": best}

    out = {}
    for row in ROWS:
        groups = {g: s[row] for g, s in by_group.items()}
        out[row] = {
            "own_colour_error": ratio({g: s["own_colour_error"] for g, s in groups.items()}, False),
            "identity_score": ratio({g: s["identity_score"] for g, s in groups.items()}, True),
        }
    return out


def fairness_goals(ratios: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One goal per ``FAIRNESS_ROWS`` row and measure: worst/best group ratio <= ``MAX_GROUP_RATIO``."""
    goal_list = []
    for row in FAIRNESS_ROWS:
        for measure in ("own_colour_error", "identity_score"):
            r = ratios[row][measure]
            floor = ratios["vae"][measure]["ratio"]
            goal_list.append(
                {
                    "goal": f"({row}) skin-tone groups: worst/best {measure.replace('_', ' ')} <= {MAX_GROUP_RATIO}",
                    "pass": r["ratio"] is not None and r["ratio"] <= MAX_GROUP_RATIO,
                    "detail": f"{_fmt(r['ratio'], 2)} ({r['worst']} vs {r['best']}; VAE floor {_fmt(floor, 2)})",
                    "floor_passes": None if floor is None else floor <= MAX_GROUP_RATIO,
                }
            )
    return goal_list


def goals(summary: dict[str, dict[str, Any]]) -> tuple[float | None, list[dict[str, Any]]]:
    """The identity-part colour error reduction of (a) vs (b) in percent, and the issue's goals.

    Goals 1 and 3 also say whether the VAE floor (the ground truth encoded and decoded) would pass
    them: ``floor_passes`` is False where the true latent itself decodes to an image that fails the
    goal, i.e. the autoencoder, more than the diffusion model, is what must change. None for the other
    goals (they compare conditions with each other).
    """
    a, b, c, d, e = (summary[k] for k in CONDITIONS)
    floor = summary["vae"]
    reduction = None
    if a["own_colour_error"] is not None and b["own_colour_error"]:
        reduction = 100.0 * (b["own_colour_error"] - a["own_colour_error"]) / b["own_colour_error"]

    def less(x: float | None, y: float | None) -> bool:
        return x is not None and y is not None and x < y

    accuracies = {
        f"{cond} {name}": s["accuracy"][name]["value"] for cond, s in (("a", a), ("d", d)) for name in ATTRIBUTE_PARTS
    }
    low = [f"{k}={_fmt(v, 2)}" for k, v in accuracies.items() if v is None or v < MIN_EDIT_ACCURACY]
    # A 30% cut of (b)'s error needs (a) at or below `needed`; the floor says whether any edit can get there.
    needed = None if b["own_colour_error"] is None else b["own_colour_error"] * (1 - MIN_REDUCTION_PERCENT / 100)
    floor_colour = floor["own_colour_error"]
    floor_accuracies = {name: floor["accuracy"][name]["value"] for name in ATTRIBUTE_PARTS}
    floor_low = [f"{k}={_fmt(v, 2)}" for k, v in floor_accuracies.items() if v is not None and v < MIN_EDIT_ACCURACY]
    results = [
        {
            "goal": f"(a) lowers the identity-part colour error by >= {MIN_REDUCTION_PERCENT:.0f}% vs (b)",
            "pass": reduction is not None and reduction >= MIN_REDUCTION_PERCENT,
            "detail": "n/a" if reduction is None else f"{reduction:.1f}% (needs (a) <= {_fmt(needed, 2)}; "
            f"the VAE floor is {_fmt(floor_colour, 2)})",
            "floor_passes": None if needed is None or floor_colour is None else floor_colour <= needed,
        },
        {
            "goal": "(c) moves colours toward the other person (error vs the other person: (c) < (a))",
            "pass": less(c["other_colour_error"], a["other_colour_error"]),
            "detail": f"{_fmt(c['other_colour_error'], 2)} vs {_fmt(a['other_colour_error'], 2)}",
            "floor_passes": None,
        },
        {
            "goal": f"edit accuracy >= {MIN_EDIT_ACCURACY} for smile, beard, glasses under (a) and (d)",
            "pass": not low,
            "detail": ("all met" if not low else "below: " + ", ".join(low))
            + (f" (the VAE floor scores {', '.join(floor_low)})" if floor_low else ""),
            "floor_passes": not floor_low,
        },
        {
            "goal": "(e) better than (a) on identity (lower own colour error and higher identity score)",
            "pass": less(e["own_colour_error"], a["own_colour_error"])
            and less(a["identity_score"], e["identity_score"]),
            "detail": f"colour error {_fmt(e['own_colour_error'], 2)} vs {_fmt(a['own_colour_error'], 2)}, "
            f"identity score {_fmt(e['identity_score'], 4)} vs {_fmt(a['identity_score'], 4)}",
            "floor_passes": None,
        },
    ]
    return reduction, results


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The markdown table: a row per condition."""
    header = (
        "| condition | masked MSE | own colour err | other colour err | identity score "
        "| smile acc | beard acc | glasses acc |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    for cond, label in ROWS.items():
        s = summary[cond]
        acc = [_fmt(s["accuracy"][n]["value"], 2) for n in ATTRIBUTE_PARTS]
        rows.append(
            f"| ({cond}) {label} | {_fmt(s['masked_mse'], 4)} | {_fmt(s['own_colour_error'], 2)} "
            f"| {_fmt(s['other_colour_error'], 2)} | {_fmt(s['identity_score'], 3)} | " + " | ".join(acc) + " |"
        )
    return "\n".join(rows)


def grid_scale(resolution: int) -> int:
    """Nearest-neighbour upscale of the grid: 2x for small models, none from 128 pixels up."""
    return max(1, 128 // resolution)


def write_grid(path: Path, rows: list[list[np.ndarray]], resolution: int) -> Image.Image:
    """Tile equal-sized HWC images row by row, upscale with ``grid_scale`` and save."""
    image = Image.fromarray(np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0))
    scale = grid_scale(resolution)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    image.save(path)
    return image


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# The run


def sample_metrics(
    output: np.ndarray,
    truth: Sample,
    mask: np.ndarray,
    other: IdentityParams,
    renders: AttributeRenders,
    expected: EditAttrs,
    embedding: np.ndarray,
    mean_own: np.ndarray,
    mean_other: np.ndarray,
) -> dict[str, Any]:
    """Every metric of one output against its ground truth ``truth``."""
    own_parts = part_colour_errors(output, truth.parts, mask, truth.identity, truth.nuisance)
    other_parts = part_colour_errors(output, truth.parts, mask, other, truth.nuisance)
    return {
        "masked_mse": masked_mse(output, truth.rgb, mask),
        "own_colour_error": mean_error(own_parts),
        "other_colour_error": mean_error(other_parts),
        "own_parts": own_parts,
        "other_parts": other_parts,
        "identity_score": cosine(embedding, mean_own),
        "identity_score_other": cosine(embedding, mean_other),
        "accuracy": renders.accuracy(output, mask, expected),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and write its files; returns the results (as written to results.json)."""
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = BenchmarkPipeline(args.model, args.threads)
    manifest = pipeline.manifest
    res, crop = manifest["resolution"], manifest["face"]["crop_size"]
    if not 2 <= args.refs <= manifest["max_references"]:
        raise SystemExit(f"--refs must be 2..{manifest['max_references']} (tuning leaves one out)")
    if args.persons < 2:
        raise SystemExit("--persons must be at least 2 (condition c uses the next person's references)")
    if "adapter_step" not in manifest["graphs"]:
        raise SystemExit(f"{args.model} has no adapter_step graph, which condition (e) needs: export the same "
                         "weights with it (python -m pva.train export without --no-adapter-step)")
    session = rt.adapter_step_session(args.model, args.threads)
    hyper = tuning_hyper(manifest, {k: getattr(args, k) for k in TUNING_RATES if getattr(args, k) is not None})
    persons = held_out_persons(args.seed, args.persons, args.refs, res, crop)
    embeddings = [pipeline.embed(p.faces).mean(axis=0) for p in persons]
    masks = {region: region_mask(region, res) for region in BENCH_REGIONS}

    records: list[dict[str, Any]] = []
    grid_rows: list[list[np.ndarray]] = []
    for index, person in enumerate(persons):
        other_index = (index + 1) % len(persons)
        other = persons[other_index]
        target = person.target
        flip = flipped(target.attrs)
        flip_rgb, flip_parts = render(person.identity, flip, target.nuisance, res)
        flip_truth = Sample(
            target.person, target.image, person.identity, flip, target.nuisance, flip_rgb, flip_parts, caption(flip)
        )
        renders = AttributeRenders.of(person.identity, target.nuisance, res)
        tuned = tune(pipeline, session, person, args.tune_steps, sub_seed(args.seed, person.number, 1), hyper)
        through_vae = pipeline.reconstruct(target.rgb)
        for region_index, region in enumerate(BENCH_REGIONS):
            mask = masks[region]
            seed = sub_seed(args.seed, person.number, 0, region_index)

            def request(references: list[Image.Image], attrs: EditAttrs, params: torch.Tensor | None = None):
                return EditRequest(
                    target=Image.fromarray(target.rgb),
                    mask=mask_image(mask),
                    references=references,
                    prompt=caption(attrs),
                    scheduler=args.scheduler,
                    steps=args.steps,
                    guidance=args.guidance,
                    seed=seed,
                    params=params,
                )

            outputs = {
                "a": pipeline.edit(request(person.faces, target.attrs)).image,
                "b": pipeline.edit_without_identity(request(person.faces, target.attrs)).image,
                "c": pipeline.edit(request(other.faces, target.attrs)).image,
                "d": pipeline.edit(request(person.faces, flip)).image,
                "e": pipeline.edit(request(person.faces, target.attrs, tuned)).image,
                "vae": through_vae,
            }
            crops = [Image.fromarray(o).resize((crop, crop), Image.Resampling.BILINEAR) for o in outputs.values()]
            output_embeddings = pipeline.embed(crops)
            conditions = {}
            for (cond, output), embedding in zip(outputs.items(), output_embeddings):
                truth, expected = (flip_truth, flip) if cond == "d" else (target, target.attrs)
                conditions[cond] = sample_metrics(
                    output, truth, mask, other.identity, renders, expected,
                    embedding, embeddings[index], embeddings[other_index],
                )
            records.append(
                {
                    "person": person.number,
                    "skin_luminance": skin_luminance(person.identity),
                    "skin_group": skin_group(person.identity),
                    "other_person": other.number,
                    "region": region,
                    "edit_seed": seed,
                    "attrs": asdict(target.attrs),
                    "caption": caption(target.attrs),
                    "flipped_caption": caption(flip),
                    "coverage": renders.coverage(mask),
                    "conditions": conditions,
                }
            )
            masked_input = np.where(mask[:, :, None], 128, target.rgb).astype(np.uint8)
            grid_rows.append(
                [target.rgb, through_vae, masked_input, *(outputs[c] for c in CONDITIONS),
                 *(s.rgb for s in person.references)]
            )

    summary = summarise(records)
    by_region = {region: summarise([r for r in records if r["region"] == region]) for region in BENCH_REGIONS}
    by_group = {
        group: summarise([r for r in records if r["skin_group"] == group])
        for group in SKIN_GROUPS
        if any(r["skin_group"] == group for r in records)
    }
    ratios = group_ratios(by_group)
    reduction, goal_list = goals(summary)
    goal_list += fairness_goals(ratios)
    elapsed = time.perf_counter() - start
    results = {
        "model": str(args.model),
        "model_name": manifest.get("name"),
        "settings": {
            k: getattr(args, k)
            for k in ("persons", "seed", "steps", "scheduler", "refs", "tune_steps", "guidance", "threads")
        },
        "tuning_rates": {k: getattr(hyper, k) for k in TUNING_RATES},
        "first_person": FIRST_PERSON,
        "regions": list(BENCH_REGIONS),
        "conditions": CONDITIONS,
        "rows": ROWS,
        "summary": summary,
        "by_region": by_region,
        "skin_groups": {
            "thresholds": {"light_from": SKIN_LIGHT_FROM, "dark_below": SKIN_DARK_BELOW},
            "persons": {g: sorted({r["person"] for r in records if r["skin_group"] == g}) for g in by_group},
            "summary": by_group,
            "worst_best_ratios": ratios,
        },
        "colour_error_reduction_a_vs_b_percent": reduction,
        "goals": goal_list,
        "samples": records,
        "grid_columns": ["ground truth", "through the VAE", "masked input", *CONDITIONS,
                         *(f"reference {i}" for i in range(args.refs))],
        "seconds": elapsed,
    }

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(_json_safe(results), indent=1) + "\n")
    write_grid(args.out / "grid.png", grid_rows, res)
    report = render_report(results)
    (args.out / "results.md").write_text(report)
    print(table(summary))
    print()
    print(summary_lines(results))
    print(f"total time {elapsed:.1f} s; wrote {args.out}/results.json, results.md, grid.png")
    return results


def summary_lines(results: dict[str, Any]) -> str:
    """The reduction line and one PASS/FAIL line per goal."""
    reduction = results["colour_error_reduction_a_vs_b_percent"]
    lines = [f"identity-part colour error reduction of (a) vs (b): {_fmt(reduction, 1)}%"]
    lines += [
        f"{'PASS' if g['pass'] else 'FAIL'} {g['goal']}: {g['detail']}"
        + (" - the VAE floor fails it too" if g["floor_passes"] is False else "")
        for g in results["goals"]
    ]
    return "\n".join(lines)


def render_report(results: dict[str, Any]) -> str:
    """results.md: settings, the overall table, the goals, a table per region."""
    s = results["settings"]
    parts = [
        f"# Synthetic-face benchmark: {results['model_name']} ({results['model']})",
        "",
        f"{s['persons']} held-out persons from {results['first_person']} (seed {s['seed']}), {s['refs']} references, "
        f"{s['scheduler']} {s['steps']} steps, guidance {s['guidance']}, tuning {s['tune_steps']} steps "
        f"(lr_visual {results['tuning_rates']['lr_visual']:g}, lr_token {results['tuning_rates']['lr_token']:g}); "
        f"regions {', '.join(results['regions'])}. Colour errors are 0..255 over the masked identity-part "
        "pixels; accuracies only where the region covers >= 50% of the attribute's pixels.",
        "",
        "## All regions",
        "",
        table(results["summary"]),
        "",
        summary_lines(results).replace("\n", "  \n"),
        "",
    ]
    groups = results["skin_groups"]
    t = groups["thresholds"]
    parts += [
        "## Skin-tone groups",
        "",
        f"By the luminance of the person's skin parameter (Rec. 709 weights, 0..255): light >= {t['light_from']:g}, "
        f"dark < {t['dark_below']:g}, medium between. Persons: "
        + ", ".join(f"{g} {len(p)}" for g, p in groups["persons"].items()) + ".",
        "",
        "| row | colour error worst/best | identity score best/worst |",
        "|---|---|---|",
        *(
            f"| ({row}) | {_fmt(r['own_colour_error']['ratio'], 2)} ({r['own_colour_error']['worst']} vs "
            f"{r['own_colour_error']['best']}) | {_fmt(r['identity_score']['ratio'], 2)} "
            f"({r['identity_score']['worst']} vs {r['identity_score']['best']}) |"
            for row, r in groups["worst_best_ratios"].items()
        ),
        "",
    ]
    for group, summary in groups["summary"].items():
        parts += [f"### {group} skin", "", table(summary), ""]
    for region, summary in results["by_region"].items():
        parts += [f"## {region}", "", table(summary), ""]
    parts.append(f"Total time {results['seconds']:.1f} s.")
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pva.train.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model directory (CONTRACT.md)")
    parser.add_argument("--out", type=Path, required=True, help="where results.json, results.md, grid.png go")
    parser.add_argument("--persons", type=int, default=8, help="held-out persons (>= 2)")
    parser.add_argument("--seed", type=int, default=1000, help="synthetic-face seed; also seeds edits and tuning")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps per edit")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    parser.add_argument("--refs", type=int, default=3, help="references per person (2..max_references)")
    parser.add_argument("--tune-steps", type=int, default=40, help="adapter_step steps for condition (e)")
    for name in TUNING_RATES:
        parser.add_argument(f"--tune-{name.replace('_', '-')}", dest=name, type=float, default=None,
                            help=f"condition (e)'s {name} instead of the manifest's tuning.{name}")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (paper: 1.0)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.tune_steps < 1:
        parser.error("--steps and --tune-steps must be at least 1")
    if any(getattr(args, k) is not None and getattr(args, k) < 0 for k in TUNING_RATES):
        parser.error("tuning rates must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
