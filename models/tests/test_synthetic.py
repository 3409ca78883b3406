"""Tests of the deterministic synthetic-face generator (pva.train.synthetic)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pva.config import region_box
from pva.train.synthetic import (
    EditAttrs,
    IdentityParams,
    Nuisance,
    Part,
    caption,
    dataset,
    lighting,
    part_colour_error,
    render,
    write_dataset,
)

#: whole_face of models/CONTRACT.md as pixel bounds at 64: cols 12..52, rows 16..60.
WHOLE_FACE_64 = (slice(16, 60), slice(12, 52))


def _bytes(seed: int) -> bytes:
    return b"".join(s.rgb.tobytes() + s.parts.tobytes() for s in dataset(seed, 3, 3, 32))


def test_same_seed_gives_identical_bytes_and_another_seed_differs() -> None:
    assert _bytes(7) == _bytes(7)
    assert _bytes(7) != _bytes(8)
    assert IdentityParams.draw(7, 0) != IdentityParams.draw(8, 0)


def test_identity_is_fixed_per_person_while_nuisance_and_attrs_vary() -> None:
    samples = list(dataset(3, 2, 8, 32))
    for person in (0, 1):
        own = [s for s in samples if s.person == person]
        assert len({s.identity for s in own}) == 1
        assert len({s.nuisance for s in own}) == len(own)
        assert len({s.attrs for s in own}) > 1
    assert samples[0].identity != samples[8].identity
    assert all(s.caption == caption(s.attrs) for s in samples)


def test_captions_name_every_attribute() -> None:
    assert caption(EditAttrs(True, True, True)) == "smiling, with a beard, wearing glasses"
    assert caption(EditAttrs(False, False, False)) == "not smiling, clean-shaven, without glasses"
    assert len({caption(a) for a in EditAttrs.all()}) == 8


@pytest.mark.parametrize("person", range(6))
def test_each_attribute_changes_its_parts(person: int) -> None:
    identity = IdentityParams.draw(11, person)
    nuisance = Nuisance.draw(11, person, 0)
    plain_rgb, plain = render(identity, EditAttrs(False, False, False), nuisance)
    _, bearded = render(identity, EditAttrs(False, True, False), nuisance)
    _, glasses = render(identity, EditAttrs(False, False, True), nuisance)
    smile_rgb, smiling = render(identity, EditAttrs(True, False, False), nuisance)
    assert not (plain == Part.BEARD).any() and not (plain == Part.GLASSES).any()
    assert (bearded == Part.BEARD).sum() > 50
    assert not (bearded == Part.GLASSES).any()
    assert (glasses == Part.GLASSES).sum() > 20
    assert not (glasses == Part.BEARD).any()
    # The smile is a different mouth shape (an open, wider one), and only the mouth changes.
    assert (smiling == Part.MOUTH).sum() > (plain == Part.MOUTH).sum()
    changed = (smiling != plain) | (smile_rgb != plain_rgb).any(-1)
    assert ((smiling == Part.MOUTH) | (plain == Part.MOUTH))[changed].all()
    # Beard and glasses keep everything but their own pixels.
    for edited, part in ((bearded, Part.BEARD), (glasses, Part.GLASSES)):
        assert ((edited == part) == (edited != plain)).all()


@pytest.mark.parametrize("person", range(5))
def test_parts_cover_the_image_and_colours_match_identity_up_to_lighting(person: int) -> None:
    identity = IdentityParams.draw(5, person)
    attrs = EditAttrs(True, True, True)
    nuisance = Nuisance.draw(5, person, 1)
    rgb, parts = render(identity, attrs, nuisance)
    assert parts.shape == (64, 64) and rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert set(np.unique(parts)) <= {int(p) for p in Part}
    assert {Part.BACKGROUND, Part.SKIN, Part.HAIR, Part.LEFT_EYE, Part.RIGHT_EYE} <= set(np.unique(parts))
    light = lighting(nuisance, 64)[:, :, None].astype(np.float64)
    assert np.abs(light - 1).max() <= nuisance.lighting_strength + 1e-6
    skin = parts == Part.SKIN
    lit = np.array(identity.skin) * light
    # Equal up to rounding to uint8 (no clipping: lit colours stay below 255).
    assert np.abs(rgb.astype(np.float64) - lit)[skin].max() <= 0.5 + 1e-3
    # Without lighting, each identity part has exactly its colour (up to rounding).
    flat_rgb, flat_parts = render(identity, attrs, Nuisance.neutral())
    for part in (Part.SKIN, Part.HAIR, Part.LEFT_EYE, Part.EYEBROWS, Part.NOSE, Part.BEARD):
        assert part_colour_error(flat_rgb, flat_parts, identity, part) <= 0.5
    # Another person's colours are measurably wrong.
    other = IdentityParams.draw(5, person + 100)
    assert part_colour_error(flat_rgb, flat_parts, other, Part.SKIN) > 2.0
    with pytest.raises(ValueError):
        part_colour_error(flat_rgb, flat_parts, identity, Part.BACKGROUND)


@pytest.mark.parametrize("person", range(10))
def test_whole_face_region_holds_most_skin_of_an_unshifted_face(person: int) -> None:
    identity = IdentityParams.draw(2, person)
    _, parts = render(identity, EditAttrs(False, False, False), Nuisance.neutral())
    skin = parts == Part.SKIN
    inside = skin[WHOLE_FACE_64].sum()
    assert inside / skin.sum() > 0.9
    # And the region is mostly face: an ellipse fills pi/4 of its bounding box, so some
    # background in the region's corners is unavoidable.
    assert (parts[WHOLE_FACE_64] == Part.BACKGROUND).mean() < 0.3


def _region(name: str, size: int) -> np.ndarray:
    """A named region of models/CONTRACT.md as a bool mask."""
    x0, y0, x1, y1 = region_box(name, size)
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("person", range(10))
def test_named_regions_cover_their_parts_of_an_unshifted_face(person: int) -> None:
    identity = IdentityParams.draw(9, person)
    _, parts = render(identity, EditAttrs(True, True, True), Nuisance.neutral())
    _, plain = render(identity, EditAttrs(False, False, False), Nuisance.neutral())
    for name, region_parts, grid in (
        ("eyes", (Part.LEFT_EYE, Part.RIGHT_EYE), plain),
        ("eyes", (Part.GLASSES,), parts),
        ("eyebrows", (Part.EYEBROWS,), plain),
        ("lower_face", (Part.MOUTH,), parts),
        ("lower_face", (Part.MOUTH,), plain),
        ("lower_face", (Part.BEARD,), parts),
    ):
        pixels = np.isin(grid, region_parts)
        assert pixels.any()
        assert pixels[_region(name, 64)].sum() / pixels.sum() > 0.95, (name, region_parts)


def test_render_time_per_64_image() -> None:
    samples = [
        (IdentityParams.draw(0, p), EditAttrs(True, True, True), Nuisance.draw(0, p, 0)) for p in range(40)
    ]
    render(*samples[0])
    start = time.perf_counter()
    for identity, attrs, nuisance in samples:
        render(identity, attrs, nuisance, 64)
    per_image = (time.perf_counter() - start) / len(samples)
    print(f"render 64x64: {per_image * 1e3:.2f} ms per image")
    assert per_image < 0.05  # a loose sanity bound, not a benchmark


def test_write_dataset_round_trip(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, seed=4, persons=2, images_per_person=3, size=32, first_person=5)
    assert [f.name for f in folders] == ["person_0005", "person_0006"]
    expected = list(dataset(4, 2, 3, 32, first_person=5))
    for sample in expected:
        folder = tmp_path / f"person_{sample.person:04d}"
        name = f"{sample.image:03d}.png"
        assert np.array_equal(np.array(Image.open(folder / name)), sample.rgb)
        assert np.array_equal(np.array(Image.open(folder / "parts" / name)), sample.parts)
        assert json.loads((folder / "captions.json").read_text())[name] == sample.caption
        stored = json.loads((folder / "identity.json").read_text())
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
        assert IdentityParams(**fields) == sample.identity
    assert sorted(p.name for p in folders[0].glob("*.png")) == ["000.png", "001.png", "002.png"]
