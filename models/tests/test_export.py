"""The committed models/tiny is what the exporter produces: export again and compare outputs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.torch import load_file

from conftest import TINY_DIR
from pva.export import export_all
from pva import build_stack

# Scalars of the tuning step that must be in range (a step index is >= 1).
_SCALARS = {"step": 1.0, "lr_visual": 1e-3, "lr_token": 1e-3, "weight_decay": 0.01}


def _feeds(graph: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in graph["inputs"]:
        shape = [2 if isinstance(d, str) else d for d in spec["shape"]]
        if spec["dtype"] == "int64":
            feeds[spec["name"]] = rng.integers(0, 1000, size=shape, dtype=np.int64)
        elif spec["name"] in _SCALARS:
            feeds[spec["name"]] = np.array(_SCALARS[spec["name"]], dtype=np.float32)
        elif spec["name"] in ("adam_v", "id_switch"):
            feeds[spec["name"]] = rng.random(shape, dtype=np.float32)  # must be >= 0 / a 0..1 switch
        else:
            feeds[spec["name"]] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("tiny")
    manifest = export_all(build_stack("tiny", seed=0), out, log=lambda _: None)
    return out, manifest


def test_reexport_gives_the_committed_graphs(fresh, manifest) -> None:
    out, again = fresh
    assert set(again["graphs"]) == set(manifest["graphs"])
    rng = np.random.default_rng(0)
    for name, graph in manifest["graphs"].items():
        assert again["graphs"][name]["inputs"] == graph["inputs"]
        feeds = _feeds(graph, rng)
        committed = ort.InferenceSession(str(TINY_DIR / graph["file"]), providers=["CPUExecutionProvider"])
        exported = ort.InferenceSession(str(out / graph["file"]), providers=["CPUExecutionProvider"])
        for a, b in zip(committed.run(None, feeds), exported.run(None, feeds)):
            assert np.isfinite(a).all(), name
            assert np.abs(a - b).max() <= 1e-6, name


def test_reexport_gives_the_committed_adapter_and_manifest(fresh, manifest) -> None:
    out, again = fresh
    adapter = manifest["adapter"]
    committed = load_file(str(TINY_DIR / adapter["file"]))["params"]
    exported = load_file(str(out / adapter["file"]))["params"]
    assert (committed == exported).all()
    strip = lambda m: {k: v for k, v in m.items() if k != "graphs"}  # noqa: E731
    assert strip(again) == strip(manifest)
    assert json.loads((out / "manifest.json").read_text()) == again
