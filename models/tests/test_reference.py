"""The reference pipeline reproduces the committed Rust parity fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURES_DIR, TINY_DIR
from pva.reference.edit import EditRequest, ReferencePipeline

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
        if want.dtype == torch.int64:
            assert torch.equal(got, want), key
        else:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), key
    png = np.asarray(Image.open(case_dir / "expected.png").convert("RGB")).astype(int)
    assert np.abs(result.image.astype(int) - png).max() <= 1


def test_given_noise_replaces_the_generator(pipeline) -> None:
    case_dir = FIXTURES_DIR / "ddim_g1_r1"
    expected = load_file(str(case_dir / "tensors.safetensors"))
    result = pipeline.edit(
        _request(case_dir, seed=12345, init_noise=expected["init_noise"], variance_noise=expected["variance_noise"])
    )
    assert torch.allclose(result.tensors["latents_8"], expected["latents_8"], rtol=1e-5, atol=1e-4)
    reseeded = pipeline.edit(_request(case_dir, seed=12345))
    assert not torch.allclose(reseeded.tensors["latents_8"], expected["latents_8"], atol=1e-2)
