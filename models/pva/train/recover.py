"""Recover trainable weights from an exported model directory (the ONNX graphs + adapter init).

A model directory is what ships (models/demo); the trainer's ``weights.safetensors`` may not. To go on
training from a shipped model — more steps of a stage, a new decoder — its weights must come back
out of the graphs. The exporter keeps parameter names where it can, but its optimiser transposes
matmul weights (``val_*``), reshapes PReLU slopes, and folds each BatchNorm of the face embedder into
the convolution (or linear layer) before it. So names are not enough; this module matches by value:

1. build a *probe* stack of the same size whose every floating parameter and buffer holds distinct
   random numbers, and export its graphs with the same exporter;
2. the probe graphs must have the model's initializer names and shapes (same architecture, same
   exporter); each probe initializer is then found among the probe's parameters as itself, a
   reshape, a transpose, or a convolution with a BatchNorm folded in;
3. the model's initializer at that name, transformed back, is the parameter's value. A folded
   BatchNorm comes back as the identity (weight 1, mean 0, variance 1 - eps) with the folded bias as
   its shift: the same function in eval mode, though not the same split between conv and BN.

The ``to_visual_q/k/v`` weights and the ``<new1>`` embedding come from ``adapter_init.safetensors``
(the UNet graph takes them as an input). Parameters that no graph uses cannot be recovered and keep
their seed-0 initial values; ``recover`` names them (for the tiny and demo sizes: none — even the
log-variance half of the VAE's ``quant_conv`` comes back, since the encoder graph holds the whole
convolution and slices its output).

    .venv/bin/python -m pva.train import --model models/demo --size demo --work /tmp/pva-train
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import load_file
from torch import nn

from pva import PvaStack, build_stack

#: The graphs that hold trainable weights, and the stack module each was exported from.
GRAPHS = ("text_encoder", "face_embedder", "id_former", "unet", "vae_encoder", "vae_decoder")


@dataclass
class Recovery:
    """What `recover` found: the weights (``build_stack`` form) and what it could not recover."""

    weights: dict[str, Any]
    recovered: int = 0  # state tensors set from the model
    folded: list[str] = field(default_factory=list)  # BatchNorms that came back as identity + shift
    missing: list[str] = field(default_factory=list)  # floating state tensors no graph holds


def _probe_stack(size: str) -> PvaStack:
    """A stack whose every floating state tensor holds distinct values in [0.5, 1.5)."""
    stack = build_stack(size, seed=0)
    generator = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        for module in stack.modules().values():
            for value in module.state_dict().values():
                if value.is_floating_point():
                    value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return stack


def _initializers(path: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, list[str]]]]:
    """A graph's initializers by name and its nodes as (op type, input names)."""
    model = onnx.load(str(path))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return values, [(n.op_type, list(n.input)) for n in model.graph.node]


def _name_map(probe_nodes: list[tuple[str, list[str]]], model_nodes: list[tuple[str, list[str]]],
              probe_init: dict[str, np.ndarray], model_init: dict[str, np.ndarray]) -> dict[str, str]:
    """Probe initializer name -> the model's, read off the two graphs node by node.

    Usually the names are equal; but the exporter merges initializers of equal value (a random-init
    model's LayerNorm weights are all ones), so one model initializer may stand for several of the
    probe's. The nodes are the same either way."""
    if [op for op, _ in probe_nodes] != [op for op, _ in model_nodes]:
        raise ValueError("its nodes differ from a fresh export's")
    mapping: dict[str, str] = {}
    for (_, p_inputs), (_, m_inputs) in zip(probe_nodes, model_nodes):
        for p, m in zip(p_inputs, m_inputs):
            if p in probe_init:
                if m not in model_init or model_init[m].shape != probe_init[p].shape or mapping.get(p, m) != m:
                    raise ValueError(f"initializer {p!r} has no consistent counterpart ({m!r})")
                mapping[p] = m
    return mapping


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    return bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)


def _recover_graph(name: str, probe: PvaStack, target: PvaStack, model_dir: Path, tmp: Path,
                   result: Recovery) -> set[str]:
    """Set `target`'s tensors of one graph from the model's; returns the state keys it set."""
    from pva.export import export_graph

    probe_path = tmp / f"{name}.onnx"
    export_graph(probe, name, probe_path, external_data=False)
    probe_init, probe_nodes = _initializers(probe_path)
    model_init, model_nodes = _initializers(model_dir / f"{name}.onnx")
    try:
        names = _name_map(probe_nodes, model_nodes, probe_init, model_init)
    except ValueError as error:
        raise ValueError(f"{model_dir / name}.onnx does not have this size's architecture (or another exporter "
                         f"made it): {error}") from None

    probe_module = probe.modules()[name]
    target_state = target.modules()[name].state_dict(keep_vars=True)
    probe_state = {k: v.detach() for k, v in probe_module.state_dict().items() if v.is_floating_point()}
    by_bytes: dict[bytes, list[tuple[str, str]]] = {}
    for key, value in probe_state.items():
        array = value.numpy()
        by_bytes.setdefault(array.tobytes(), []).append((key, "same"))
        if array.ndim == 2:
            by_bytes.setdefault(np.ascontiguousarray(array.T).tobytes(), []).append((key, "transpose"))
    batch_norms = {n: m for n, m in probe_module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    done: set[str] = set()

    def put(key: str, value: np.ndarray | torch.Tensor) -> None:
        tensor = target_state[key]
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.array(value, dtype=np.float32)).reshape(tensor.shape))
        done.add(key)

    for init_name, probe_value in probe_init.items():
        if probe_value.dtype != np.float32 or init_name not in names:
            continue
        model_value = model_init[names[init_name]]
        hits = by_bytes.get(np.ascontiguousarray(probe_value).tobytes(), [])
        if hits:
            for key, how in hits:
                value = model_value
                if how == "transpose":
                    value = model_value.T
                put(key, value)
            continue
        if not (init_name.endswith(".weight") and init_name in probe_state):
            continue
        # A convolution or linear layer with the BatchNorm after it folded in. The folded shift is a new
        # `<weight>_bias` initializer (a bias-free conv) or replaces the layer's own bias.
        own_bias = init_name[: -len("weight")] + "bias"
        bias_name = f"{init_name}_bias" if f"{init_name}_bias" in probe_init else own_bias
        if bias_name not in names:
            continue
        weight = probe_state[init_name]
        for bn_name, bn in batch_norms.items():
            scale = _bn_scale(bn)
            if scale.numel() != weight.shape[0]:
                continue
            folded = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
            if np.allclose(folded.numpy(), probe_value, rtol=1e-5, atol=1e-6):
                channels = weight.shape[0]
                put(init_name, model_value)
                if bias_name == own_bias:
                    put(own_bias, np.zeros(channels, np.float32))
                put(f"{bn_name}.weight", np.ones(channels, np.float32))
                put(f"{bn_name}.bias", model_init[names[bias_name]])
                put(f"{bn_name}.running_mean", np.zeros(channels, np.float32))
                put(f"{bn_name}.running_var", np.full(channels, 1.0 - bn.eps, np.float32))
                result.folded.append(f"{name}: {bn_name}")
                break
    return done


def recover(model_dir: Path, size: str) -> Recovery:
    """The trainable weights of `model_dir` (a model directory of size `size`), as `build_stack` takes them."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    target = build_stack(size, seed=0)
    if manifest["name"] != target.config.name:
        print(f"note: {model_dir} is {manifest['name']!r}, read as size {size!r}", flush=True)
    probe = _probe_stack(size)
    result = Recovery(weights={})
    set_keys: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in GRAPHS:
            set_keys[name] = _recover_graph(name, probe, target, model_dir, Path(tmp), result)

    # The identity branch and <new1>: the adapter init, laid out as the manifest says.
    params = load_file(str(model_dir / manifest["adapter"]["file"]))[manifest["adapter"]["tensor"]]
    if params.numel() != target.initial_params.numel():
        raise ValueError(f"{model_dir}: adapter params have {params.numel()} values, expected "
                         f"{target.initial_params.numel()}")
    visual, new1 = target.split_params(params)
    unet_modules = dict(target.unet.named_modules())
    with torch.no_grad():
        for entry in target.adapter_layout:
            if entry.group != "visual":
                continue
            weight = unet_modules[entry.name.rsplit(".", 1)[0]].weight
            weight.copy_(visual[entry.offset: entry.offset + entry.size].reshape(weight.shape))
            set_keys["unet"].add("unet." + entry.name)

    # The VAE is in two graphs (encoder, decoder) with one state ("vae." keys): count it once.
    set_keys["vae_decoder"] |= set_keys.pop("vae_encoder")
    for name, keys in set_keys.items():
        state = target.modules()[name].state_dict()
        result.recovered += len(keys)
        result.missing += [f"{name}: {k}" for k, v in state.items() if v.is_floating_point() and k not in keys]

    result.weights = target.weights(new1.clone())
    return result


def compare(model_dir: Path, stack: PvaStack, batch: int = 2) -> dict[str, float]:
    """Per graph: the largest |torch - ONNX| of `stack`'s module against the model's graph, on the
    exporter's random example inputs, relative to the output's largest magnitude."""
    import onnxruntime as ort
    from pva.export import example_inputs

    out: dict[str, float] = {}
    for name in GRAPHS:
        inputs = example_inputs(stack, name, batch)
        if name == "unet":
            inputs["adapter"] = stack.split_params(stack.initial_params)[0].clone()
        with torch.no_grad():
            want = stack.modules()[name](*inputs.values()).numpy()
        session = ort.InferenceSession(str(Path(model_dir) / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        out[name] = float(np.abs(got - want).max() / max(1e-12, float(np.abs(want).max())))
    return out
