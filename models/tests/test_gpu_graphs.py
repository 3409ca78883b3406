"""The GPU path's graphs on the CPU (issue 18): fp16 graphs (`pva.precision`) and the fused attention
(`pva.fused`), checked where ONNX Runtime's CPU provider runs them.

- every edit graph of the tiny model converts to fp16, passes `onnx.checker`, keeps its float32
  interface, runs on the CPU provider and stays within 1 % of the fp32 graph; the timestep embedding's
  arguments stay float32;
- the fused UNet (one `com.microsoft.MultiHeadAttention` per attention) reproduces the unfused one at
  fp32: per-step latents of a guided edit (switch 0 and 1 rows) on the tiny and the demo model;
- `pva.export --precision fp16` records each graph's precision in the manifest, the tuning graph fp32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import FIXTURES_DIR, ROOT, TINY_DIR
from pva import build_stack
from pva.export import GRAPH_ORDER, describe_graph, example_inputs, export_all, export_graph
from pva.precision import timestep_nodes, to_fp16
from pva.reference.edit import EditRequest, ReferencePipeline

DEMO_DIR = ROOT / "models" / "demo"


def _feeds(stack, name: str) -> dict[str, np.ndarray]:
    feeds = {k: v.numpy() for k, v in example_inputs(stack, name, 2).items()}
    if name == "unet":
        feeds["id_switch"] = np.array([0.0, 1.0], np.float32)
        feeds["timestep"] = np.array([999.0, 17.0], np.float32)
    return feeds


def test_fp16_graphs_check_load_and_run_on_the_cpu(stack, manifest, tmp_path) -> None:
    for name in GRAPH_ORDER:
        src, dst = TINY_DIR / f"{name}.onnx", tmp_path / f"{name}.onnx"
        to_fp16(src, dst, external_data=False)
        onnx.checker.check_model(str(dst), full_check=True)
        assert describe_graph(dst)["inputs"] == manifest["graphs"][name]["inputs"], name
        assert describe_graph(dst)["outputs"] == manifest["graphs"][name]["outputs"], name
        model = onnx.load(str(dst))
        dtypes = {i.data_type for i in model.graph.initializer if i.data_type in (1, 10)}
        assert onnx.TensorProto.FLOAT16 in dtypes, f"{name}: no fp16 weights"
        feeds = _feeds(stack, name)
        want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert got.dtype == np.float32 and np.isfinite(got).all(), name
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert 0 < rel <= 1e-2, f"{name}: fp16 differs from fp32 by {rel:.2e} of the output's range"


def test_the_timestep_embedding_stays_fp32(tmp_path) -> None:
    blocked = timestep_nodes(onnx.load(str(TINY_DIR / "unet.onnx"), load_external_data=False))
    dst = tmp_path / "unet.onnx"
    to_fp16(TINY_DIR / "unet.onnx", dst, external_data=False)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(dst)), strict_mode=True)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in blocked} >= {"Sin", "Cos", "Mul"}, blocked
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    sin = next(n for n in model.graph.node if n.op_type == "Sin")
    assert types[sin.input[0]] == onnx.TensorProto.FLOAT
    # ... while the rest computes in fp16 (the first convolution, say).
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert types[conv.output[0]] == onnx.TensorProto.FLOAT16


def _with_fused_unet(stack, model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose UNet is `stack`'s with fused attention (fp32)."""
    shutil.copytree(model_dir, out)
    (out / "unet.onnx").unlink()
    export_graph(stack, "unet", out / "unet.onnx", external_data=False, attention="fused")
    ops = [n.op_type for n in onnx.load(str(out / "unet.onnx")).graph.node]
    layers = sum(1 for n, _ in stack.unet.attn_processors.items())
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops, ops
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["graphs"]["unet"] = {**describe_graph(out / "unet.onnx"), "attention": "fused"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _per_step_latents(model_dir: Path, case_dir: Path) -> dict[str, torch.Tensor]:
    case = json.loads((case_dir / "case.json").read_text())
    request = EditRequest(
        target=Image.open(case_dir / case["target"]),
        mask=Image.open(case_dir / case["mask"]),
        references=[Image.open(case_dir / r) for r in case["references"]],
        **{k: case[k] for k in ("prompt", "negative_prompt", "scheduler", "eta", "steps", "guidance", "seed")},
    )
    tensors = ReferencePipeline(model_dir, threads=1).edit(request).tensors
    return {k: v for k, v in tensors.items() if k.startswith("latents_") or k == "decoded"}


def _demo_stack():
    """The demo model's torch stack with the UNet's weights read back from its graph (only the UNet:
    `pva.train.recover` for one graph, plus the adapter's visual projections)."""
    from safetensors.torch import load_file

    from pva.train import recover

    target = build_stack("demo", seed=0)
    probe = recover._probe_stack("demo")
    with __import__("tempfile").TemporaryDirectory() as tmp:
        recover._recover_graph("unet", probe, target, DEMO_DIR, Path(tmp), recover.Recovery(weights={}))
    params = load_file(str(DEMO_DIR / "adapter_init.safetensors"))["params"]
    visual, _ = target.split_params(params)
    modules = dict(target.unet.named_modules())
    with torch.no_grad():
        for entry in target.adapter_layout:
            if entry.group == "visual":
                weight = modules[entry.name.rsplit(".", 1)[0]].weight
                weight.copy_(visual[entry.offset: entry.offset + entry.size].reshape(weight.shape))
    return target


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_fused_attention_matches_the_unfused_graph_per_step(stack, model, tmp_path) -> None:
    model_dir, fixtures = (TINY_DIR, FIXTURES_DIR) if model == "tiny" else (DEMO_DIR, ROOT / "tests/fixtures/edit-demo")
    torch_stack = stack if model == "tiny" else _demo_stack()
    fused = _with_fused_unet(torch_stack, model_dir, tmp_path / model)
    # Guided (rows with identity switch 0 and 1): the bias removes the identity keys of row 0.
    case = next(p for p in sorted(fixtures.iterdir()) if (p / "case.json").is_file()
                and json.loads((p / "case.json").read_text())["guidance"] > 1)
    want = _per_step_latents(model_dir, case)
    got = _per_step_latents(fused, case)
    assert want.keys() == got.keys() and len(want) > 3
    for key in want:
        diff = (got[key] - want[key]).abs().max().item()
        assert diff <= 1e-4, f"{model} {case.name} {key}: fused differs by {diff:.2e}"
    # Not the same graph run twice: the fused graph has no Softmax and one MultiHeadAttention per
    # attention (checked in _with_fused_unet); the switch matters (row 0 without identity keys).


def test_fp16_export_records_precision_and_keeps_the_tuning_graph_fp32(stack, tmp_path, monkeypatch) -> None:
    import pva.export

    # The committed graphs stand in for the torch export (the export itself is tested in test_export.py).
    def committed(stack, name, path, external_data, attention="explicit"):
        onnx.save(onnx.load(str(TINY_DIR / f"{name}.onnx")), str(path))

    monkeypatch.setattr(pva.export, "export_graph", committed)
    manifest = export_all(stack, tmp_path, log=lambda _: None, adapter_step=False, precision="fp16",
                          fp32_graphs=("vae_decoder",), attention="fused")
    graphs = manifest["graphs"]
    assert {k: g["precision"] for k, g in graphs.items()} == {
        **{k: "fp16" for k in GRAPH_ORDER}, "vae_decoder": "fp32"}
    assert graphs["unet"]["attention"] == "fused"
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    with pytest.raises(ValueError, match="fp32_graphs"):
        export_all(stack, tmp_path / "x", log=lambda _: None, adapter_step=False, precision="fp16",
                   fp32_graphs=("adapter_step",))
