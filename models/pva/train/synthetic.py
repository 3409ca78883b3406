"""Deterministic procedural faces for training and benchmarking PVA (issue 8, part 2).

Every person has fixed IDENTITY parameters (skin tone, face shape, eyes, nose, hair, eyebrows), drawn
from ``(seed, person)``; every image of that person has EDITABLE attributes (smile, beard, glasses) and
NUISANCE (shift, scale, background, lighting), drawn from ``(seed, person, image)``. :func:`render`
paints a face with vectorised numpy masks (ellipses and rectangles in normalised coordinates, painted
back to front) and returns, with the RGB image, a map of which :class:`Part` each pixel shows, so
colour errors can be measured per part.

The canonical (unshifted, unscaled) face is centred so that the named mask regions of
``models/CONTRACT.md`` land on it: ``whole_face`` (``[0.1875, 0.25, 0.8125, 0.9375)``) holds the face
below the hairline, ``eyes`` the eyes, ``eyebrows`` the brows and ``lower_face`` the nose tip, mouth and
beard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

#: Nose colour as a fraction of the skin tone (the nose is a shaded patch of skin).
NOSE_SHADE = 0.8
#: Fixed colours of the parts that are not identity parameters.
MOUTH_COLOUR = (170, 40, 50)
GLASSES_COLOUR = (25, 25, 30)


class Part(IntEnum):
    """What a pixel of a rendered face shows; the value is stored in the parts map."""

    BACKGROUND = 0
    SKIN = 1
    HAIR = 2
    LEFT_EYE = 3
    RIGHT_EYE = 4
    EYEBROWS = 5
    NOSE = 6
    MOUTH = 7
    BEARD = 8
    GLASSES = 9


@dataclass(frozen=True)
class IdentityParams:
    """Who a person is: everything fixed across all images of one person.

    Colours are RGB in 0..255; lengths are fractions of the image side.
    """

    skin: tuple[float, float, float]
    face_width: float
    face_aspect: float
    eye_colour: tuple[float, float, float]
    eye_spacing: float
    nose_length: float
    nose_width: float
    hair: tuple[float, float, float]
    hairline: float
    brow_thickness: float
    brow_colour: tuple[float, float, float]

    @classmethod
    def draw(cls, seed: int, person: int) -> "IdentityParams":
        """The identity of ``person`` under ``seed``; the same arguments always give the same person."""
        rng = np.random.default_rng([seed, person, 0])
        # Skin tones along a light-to-dark axis with a little hue jitter, kept away from the
        # clipping ends so lighting never saturates them.
        t = rng.uniform(0.0, 1.0)
        skin = np.array([212, 182, 152]) * (1 - t) + np.array([110, 75, 55]) * t
        skin = skin + rng.uniform(-10, 10, 3)

        def colour(lo: float, hi: float) -> tuple[float, float, float]:
            return tuple(float(c) for c in rng.uniform(lo, hi, 3))

        return cls(
            skin=tuple(float(c) for c in np.clip(skin, 30, 215)),
            face_width=float(rng.uniform(0.27, 0.305)),
            face_aspect=float(rng.uniform(1.1, 1.25)),
            eye_colour=colour(20, 200),
            eye_spacing=float(rng.uniform(0.09, 0.125)),
            nose_length=float(rng.uniform(0.08, 0.14)),
            nose_width=float(rng.uniform(0.018, 0.035)),
            hair=colour(15, 210),
            hairline=float(rng.uniform(0.3, 0.36)),
            brow_thickness=float(rng.uniform(0.008, 0.02)),
            brow_colour=colour(15, 160),
        )


@dataclass(frozen=True)
class EditAttrs:
    """The attributes a caption names and an edit may change."""

    smile: bool
    beard: bool
    glasses: bool

    @classmethod
    def all(cls) -> list["EditAttrs"]:
        """All 8 combinations, in a fixed order (for nearest-render edit accuracy)."""
        return [cls(bool(s), bool(b), bool(g)) for s in (0, 1) for b in (0, 1) for g in (0, 1)]


@dataclass(frozen=True)
class Nuisance:
    """What varies between images of a person but is neither identity nor an edit.

    ``shift`` moves the face by fractions of the side, ``scale`` zooms it about the image centre,
    ``lighting`` is a linear brightness gradient of strength ``lighting_strength`` along
    ``lighting_angle`` (radians): a multiplicative factor of 1 at the image centre and
    ``1 +- lighting_strength`` at the farthest corners. Colours are drawn <= 215 and the strength
    <= 0.15, so lit colours never clip at 255.
    """

    shift: tuple[float, float]
    scale: float
    background: tuple[float, float, float]
    lighting_strength: float
    lighting_angle: float

    @classmethod
    def draw(cls, seed: int, person: int, image: int) -> "Nuisance":
        """The nuisance of image ``image`` of ``person`` under ``seed``."""
        rng = np.random.default_rng([seed, person, image, 1])
        return cls(
            shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.04, 0.04))),
            scale=float(rng.uniform(0.92, 1.06)),
            background=tuple(float(c) for c in rng.uniform(0, 255, 3)),
            lighting_strength=float(rng.uniform(0.0, 0.15)),
            lighting_angle=float(rng.uniform(0, 2 * np.pi)),
        )

    @classmethod
    def neutral(cls, background: tuple[float, float, float] = (128.0, 128.0, 128.0)) -> "Nuisance":
        """No shift, no zoom, even lighting: the canonical face the named regions are fitted to."""
        return cls((0.0, 0.0), 1.0, background, 0.0, 0.0)


def draw_attrs(seed: int, person: int, image: int) -> EditAttrs:
    """The editable attributes of image ``image`` of ``person``: each on with probability 1/2."""
    rng = np.random.default_rng([seed, person, image, 2])
    smile, beard, glasses = (bool(b) for b in rng.integers(0, 2, 3))
    return EditAttrs(smile, beard, glasses)


def _grid(size: int, nuisance: Nuisance) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in canonical face coordinates (undoing the nuisance shift and scale)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u = (c[None, :] - 0.5 - nuisance.shift[0]) / nuisance.scale + 0.5
    v = (c[:, None] - 0.5 - nuisance.shift[1]) / nuisance.scale + 0.5
    return np.broadcast_to(u, (size, size)), np.broadcast_to(v, (size, size))


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Inside of an axis-aligned ellipse (its normalised distance is below 1)."""
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 < 1.0


def lighting(nuisance: Nuisance, size: int) -> np.ndarray:
    """The multiplicative brightness field ``[size, size]`` that :func:`render` applies."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    along = np.cos(nuisance.lighting_angle) * c[None, :] + np.sin(nuisance.lighting_angle) * c[:, None]
    # |along| <= sqrt(1/2) (a corner); normalise so the factor stays within 1 +- strength.
    return (1.0 + nuisance.lighting_strength * along / np.sqrt(0.5)).astype(np.float32)


def part_colours(identity: IdentityParams) -> dict[Part, tuple[float, float, float]]:
    """The unlit colour of every part that the identity (or a fixed constant) determines."""
    skin = identity.skin
    return {
        Part.SKIN: skin,
        Part.HAIR: identity.hair,
        Part.LEFT_EYE: identity.eye_colour,
        Part.RIGHT_EYE: identity.eye_colour,
        Part.EYEBROWS: identity.brow_colour,
        Part.NOSE: tuple(NOSE_SHADE * c for c in skin),
        Part.MOUTH: MOUTH_COLOUR,
        Part.BEARD: identity.hair,
        Part.GLASSES: GLASSES_COLOUR,
    }


def render(
    identity: IdentityParams, attrs: EditAttrs, nuisance: Nuisance, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one face: ``(rgb uint8 [size, size, 3], parts uint8 [size, size])``.

    Parts are painted back to front (later parts cover earlier ones); the RGB image is the part's
    colour times the lighting field, so within a part colours vary only by lighting.
    """
    u, v = _grid(size, nuisance)
    parts = np.full((size, size), Part.BACKGROUND, dtype=np.uint8)
    fw = identity.face_width
    fh = fw * identity.face_aspect
    cx, cy = 0.5, 0.94 - fh  # chin at 0.94 whatever the face's height
    face = _ellipse(u, v, cx, cy, fw, fh)
    head = _ellipse(u, v, cx, cy - 0.04, fw + 0.04, fh + 0.05) & (v < cy + 0.02)
    parts[head] = Part.HAIR
    parts[face] = Part.SKIN
    parts[face & (v < identity.hairline)] = Part.HAIR

    eye_y = 0.45
    sp = identity.eye_spacing
    brow_y = eye_y - 0.065  # brows stay inside CONTRACT.md's eyebrows region
    for side in (-1, 1):
        brow = (np.abs(u - (cx + side * sp)) < 0.055) & (np.abs(v - brow_y) < identity.brow_thickness)
        parts[brow] = Part.EYEBROWS
    parts[_ellipse(u, v, cx - sp, eye_y, 0.04, 0.022)] = Part.LEFT_EYE
    parts[_ellipse(u, v, cx + sp, eye_y, 0.04, 0.022)] = Part.RIGHT_EYE

    nose_top = 0.48
    nose_bottom = nose_top + identity.nose_length
    # A triangle: the half-width grows linearly from a third at the top to full at the tip.
    grow = np.clip((v - nose_top) / identity.nose_length, 0.0, 1.0)
    nose_half = identity.nose_width * (0.35 + 0.65 * grow)
    nose = (v >= nose_top) & (v < nose_bottom) & (np.abs(u - cx) < nose_half)
    parts[nose] = Part.NOSE

    mouth_y = max(0.76, nose_bottom + 0.05)
    if attrs.beard:
        beard = face & (v > nose_bottom + 0.015) & ~(_ellipse(u, v, cx, mouth_y - 0.005, 0.075, 0.05))
        beard |= face & (v > mouth_y + 0.04)
        parts[beard] = Part.BEARD
    if attrs.smile:
        # An open smile: the lower half of a wide ellipse.
        mouth = _ellipse(u, v, cx, mouth_y - 0.01, 0.09, 0.045) & (v >= mouth_y - 0.01)
    else:
        mouth = _ellipse(u, v, cx, mouth_y, 0.065, 0.014)
    parts[mouth] = Part.MOUTH

    if attrs.glasses:
        rims = np.zeros_like(face)
        for ex in (cx - sp, cx + sp):
            rims |= _ellipse(u, v, ex, eye_y, 0.065, 0.048) & ~_ellipse(u, v, ex, eye_y, 0.05, 0.034)
        bridge_half = max(sp - 0.055, 0.0) + 0.004
        rims |= (np.abs(u - cx) < bridge_half) & (np.abs(v - (eye_y - 0.01)) < 0.008)
        parts[rims] = Part.GLASSES

    palette = np.zeros((len(Part), 3), dtype=np.float32)
    palette[Part.BACKGROUND] = nuisance.background
    for part, col in part_colours(identity).items():
        palette[part] = col
    rgb = palette[parts] * lighting(nuisance, size)[:, :, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), parts


def caption(attrs: EditAttrs) -> str:
    """The caption naming the editable attributes, e.g. ``"smiling, with a beard, wearing glasses"``."""
    return ", ".join(
        (
            "smiling" if attrs.smile else "not smiling",
            "with a beard" if attrs.beard else "clean-shaven",
            "wearing glasses" if attrs.glasses else "without glasses",
        )
    )


def part_colour_error(rgb: np.ndarray, parts: np.ndarray, identity: IdentityParams, part: Part) -> float:
    """Mean absolute colour error (0..255, over pixels and channels) of ``part`` against ``identity``.

    ``rgb`` may be any image of the face (a fill, say) and ``parts`` the parts map of its ground
    truth. Returns NaN where the part has no pixels; the background has no identity colour.
    """
    part = Part(part)
    if part == Part.BACKGROUND:
        raise ValueError("the background is nuisance, not identity: it has no identity colour")
    mask = parts == part
    if not mask.any():
        return float("nan")
    expected = np.asarray(part_colours(identity)[part], dtype=np.float64)
    return float(np.abs(rgb[mask].astype(np.float64) - expected).mean())


@dataclass(frozen=True)
class Sample:
    """One rendered image of one person, with everything that produced it."""

    person: int
    image: int
    identity: IdentityParams
    attrs: EditAttrs
    nuisance: Nuisance
    rgb: np.ndarray
    parts: np.ndarray
    caption: str


def dataset(
    seed: int, persons: int, images_per_person: int, size: int = 64, first_person: int = 0
) -> Iterator[Sample]:
    """Every image of persons ``first_person .. first_person + persons``, person by person.

    Writes nothing. Held-out identities are another ``first_person`` range under the same seed.
    """
    for person in range(first_person, first_person + persons):
        identity = IdentityParams.draw(seed, person)
        for image in range(images_per_person):
            attrs = draw_attrs(seed, person, image)
            nuisance = Nuisance.draw(seed, person, image)
            rgb, parts = render(identity, attrs, nuisance, size)
            yield Sample(person, image, identity, attrs, nuisance, rgb, parts, caption(attrs))


def write_dataset(
    directory: str | Path,
    seed: int,
    persons: int,
    images_per_person: int,
    size: int = 64,
    first_person: int = 0,
) -> list[Path]:
    """Write the dataset the trainer reads and return the person folders, in order.

    Layout, one folder per person::

        person_0003/
            000.png, 001.png, ...    the RGB images
            captions.json            {"000.png": "smiling, clean-shaven, without glasses", ...}
            identity.json            the person's IdentityParams
            parts/000.png, ...       the parts maps (8-bit grey, values are Part)
    """
    root = Path(directory)
    folders: list[Path] = []
    captions: dict[str, str] = {}
    for sample in dataset(seed, persons, images_per_person, size, first_person):
        folder = root / f"person_{sample.person:04d}"
        if sample.image == 0:
            (folder / "parts").mkdir(parents=True, exist_ok=True)
            folders.append(folder)
            captions = {}
            (folder / "identity.json").write_text(json.dumps(asdict(sample.identity), indent=1))
        name = f"{sample.image:03d}.png"
        Image.fromarray(sample.rgb, "RGB").save(folder / name)
        Image.fromarray(sample.parts, "L").save(folder / "parts" / name)
        captions[name] = sample.caption
        (folder / "captions.json").write_text(json.dumps(captions, indent=1))
    return folders
