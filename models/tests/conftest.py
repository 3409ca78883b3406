"""Shared fixtures of the model tests: the tiny stack, the committed tiny model and its sessions."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from pva import PvaStack, build_stack

ROOT = Path(__file__).resolve().parents[2]
TINY_DIR = ROOT / "models" / "tiny"
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "edit"


@pytest.fixture(scope="session")
def stack() -> PvaStack:
    """The tiny stack as the committed model was exported from (seed 0)."""
    return build_stack("tiny", seed=0)


@pytest.fixture(scope="session")
def manifest() -> dict:
    """The committed tiny model's manifest."""
    return json.loads((TINY_DIR / "manifest.json").read_text())


@pytest.fixture(scope="session")
def sessions(manifest: dict) -> dict[str, ort.InferenceSession]:
    """ONNX Runtime CPU sessions of the committed tiny graphs (all but the tuning step)."""
    return {
        name: ort.InferenceSession(str(TINY_DIR / graph["file"]), providers=["CPUExecutionProvider"])
        for name, graph in manifest["graphs"].items()
        if name != "adapter_step"
    }
