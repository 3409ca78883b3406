"""The reference pipeline reproduces the committed Rust parity fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURES_DIR, TINY_DIR
from pva.config import PAPER_EMBED_WINDOW
from pva.reference.edit import EditRequest, ReferencePipeline, embed_window, face_source_size
from pva.reference.fixtures import PAPER_OVERLAY, overlay_model

CASES = sorted(p.name for p in FIXTURES_DIR.iterdir() if (p / "case.json").is_file())


@pytest.fixture(scope="module")
def pipeline() -> ReferencePipeline:
    return ReferencePipeline(TINY_DIR)


def _request(case_dir: Path, **overrides) -> EditRequest:
    case = json.loads((case_dir / "case.json").read_text())
    settings = {k: case[k] for k in ("prompt", "negative_prompt", "scheduler", "eta", "steps", "guidance", "seed")}
    settings.update(overrides)
    return EditRequest(
        target=Image.open(case_dir / case["target"]),
        mask=Image.open(case_dir / case["mask"]),
        references=[Image.open(case_dir / r) for r in case["references"]],
        **settings,
    )


def _assert_reproduces(result, expected: dict[str, torch.Tensor], case_dir: Path) -> None:
    """Every recorded tensor (ids exactly, floats within 1e-4) and the image (within 1/255)."""
    for key, want in expected.items():
        got = result.tensors[key]
        if want.dtype == torch.int64:
            assert torch.equal(got, want), key
        else:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), key
    png = np.asarray(Image.open(case_dir / "expected.png").convert("RGB")).astype(int)
    assert np.abs(result.image.astype(int) - png).max() <= 1


def test_the_four_cases_exist() -> None:
    assert CASES == ["ddim_g1_r1", "ddim_g3_r3", "dpm_g1_r3", "dpm_g3_r1"]


@pytest.mark.parametrize("name", CASES)
def test_reference_reproduces_fixture(pipeline, name: str) -> None:
    case_dir = FIXTURES_DIR / name
    case = json.loads((case_dir / "case.json").read_text())
    expected = load_file(str(case_dir / "tensors.safetensors"))
    result = pipeline.edit(_request(case_dir))
    assert result.timesteps == case["timesteps"]
    assert len(result.timesteps) == case["steps"]
    assert set(result.tensors) == set(expected)
    assert ("variance_noise" in expected) == (case["scheduler"] == "ddim" and case["eta"] > 0)
    for key, want in expected.items():
        got = result.tensors[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
    _assert_reproduces(result, expected, case_dir)


def test_given_noise_replaces_the_generator(pipeline) -> None:
    case_dir = FIXTURES_DIR / "ddim_g1_r1"
    expected = load_file(str(case_dir / "tensors.safetensors"))
    result = pipeline.edit(
        _request(case_dir, seed=12345, init_noise=expected["init_noise"], variance_noise=expected["variance_noise"])
    )
    assert torch.allclose(result.tensors["latents_8"], expected["latents_8"], rtol=1e-5, atol=1e-4)
    reseeded = pipeline.edit(_request(case_dir, seed=12345))
    assert not torch.allclose(reseeded.tensors["latents_8"], expected["latents_8"], atol=1e-2)


PAPER_DIR = FIXTURES_DIR.parent / "edit-paper"
PAPER_CASES = sorted(p.name for p in PAPER_DIR.iterdir() if (p / "case.json").is_file())


@pytest.fixture(scope="module")
def paper_pipeline(tmp_path_factory) -> ReferencePipeline:
    """The tiny model with the paper's settings over its manifest (tests/fixtures/edit-paper/overlay.json)."""
    overlay = json.loads((PAPER_DIR / "overlay.json").read_text())
    assert overlay == PAPER_OVERLAY
    return ReferencePipeline(overlay_model(TINY_DIR, overlay, tmp_path_factory.mktemp("paper") / "model"))


def test_the_paper_case_exists() -> None:
    assert PAPER_CASES == ["paper_ddim_g3_r2"]


@pytest.mark.parametrize("name", PAPER_CASES)
def test_reference_reproduces_paper_fixture(paper_pipeline, name: str) -> None:
    case_dir = PAPER_DIR / name
    case = json.loads((case_dir / "case.json").read_text())
    expected = load_file(str(case_dir / "tensors.safetensors"))
    result = paper_pipeline.edit(_request(case_dir))
    assert set(result.tensors) - set(expected) == {"image", "decoded"}
    _assert_reproduces(result, expected, case_dir)
    # The paper's settings took effect: its default negative prompt, its template around the prompt.
    assert case["negative_prompt"] == ""
    assert expected["input_ids_uncond"][0, :6].tolist() == [49406, 1125, 539, 320, 2533, 49407]
    assert expected["input_ids_cond"][0, :6].tolist() == [49406, 1125, 539, 320, 49408, 2533]


def test_paper_settings_change_every_part_they_touch(paper_pipeline, pipeline) -> None:
    """Each setting matters on its own: the same request under the paper's settings and the tiny model's."""
    case_dir = PAPER_DIR / "paper_ddim_g3_r2"
    request = _request(case_dir)
    paper = paper_pipeline.edit(request)
    plain = pipeline.edit(_request(case_dir, negative_prompt=""))
    assert not torch.equal(paper.tensors["input_ids_cond"], plain.tensors["input_ids_cond"])
    assert not torch.equal(paper.tensors["input_ids_uncond"], plain.tensors["input_ids_uncond"])
    assert not torch.allclose(paper.tensors["ref_embeddings"], plain.tensors["ref_embeddings"], atol=1e-3)
    # Only the unconditional row's switch differs: same ids, same identity, other latents.
    flipped = dict(paper_pipeline.manifest, guidance={**paper_pipeline.manifest["guidance"], "uncond_identity": False})
    original = paper_pipeline.manifest
    try:
        paper_pipeline.manifest = flipped
        removed = paper_pipeline.edit(request)
    finally:
        paper_pipeline.manifest = original
    assert torch.equal(removed.tensors["input_ids_uncond"], paper.tensors["input_ids_uncond"])
    assert torch.equal(removed.tensors["id_tokens"], paper.tensors["id_tokens"])
    assert not torch.allclose(removed.tensors["latents_8"], paper.tensors["latents_8"], atol=1e-3)


def test_embed_window_is_facenet_forward() -> None:
    """`embed_window` under the paper's window is lib/face_net.py's FaceNet.forward preprocessing."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 512, 512) * 2 - 1
    manifest = {"face": {"crop_size": 112, "embed_window": PAPER_EMBED_WINDOW}}
    want = F.interpolate(x, (256, 256), mode="bilinear", align_corners=True)[:, :, 35:223, 32:220]
    want = torch.nn.AdaptiveAvgPool2d((112, 112))(want)
    assert torch.equal(embed_window(x, manifest), want)
    assert face_source_size(manifest) == 512
    plain = {"face": {"crop_size": 112}}
    y = torch.rand(1, 3, 112, 112)
    assert embed_window(y, plain) is y and face_source_size(plain) == 112
