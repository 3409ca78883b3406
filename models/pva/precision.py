"""fp16 graphs (`pva.export --precision fp16`): an exported fp32 graph rewritten to compute in float16.

`to_fp16` rewrites one ONNX file with ONNX Runtime's converter (`onnxruntime.transformers.float16`, the
one ORT's own Stable Diffusion pipeline uses) with these choices:

- The graph boundary stays float32 (`keep_io_types`): the converter puts a Cast behind each float
  input and before each output, so the worker's contract (CONTRACT.md: float32 tensors, the adapter
  vector among them) does not change, and a cast of the UNet's per-step latent [B, 9, 64, 64] costs
  microseconds on a GPU. The manifest's graph entry records `"precision": "fp16"`.
- The sinusoidal timestep embedding's arguments stay float32 (`timestep_nodes`): timestep x frequency
  reaches ~1000 rad, where float16's spacing (0.5) would shift the phase by up to a quarter turn; the
  sin/cos outputs (in [-1, 1]) are converted as usual.
- Graphs listed by the caller (e.g. the VAE decoder, if its activations overflow float16: measure with
  `overflow_report`) are not converted at all.

The tuning graph (`adapter_step.onnx`) is never converted: its AdamW update adds steps of lr 1e-5 x
~1 to weights of magnitude ~0.05, below float16's resolution there (~3e-5), so fp16 adapter weights
would not move, and its gradients would need loss scaling. The correct fp16 form is mixed precision
(frozen UNet and text encoder in fp16, the adapter's master weights and moments fp32, the loss
scaled); it stays fp32 until the GPU figures show the 40 steps need that (docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

#: The ops whose inputs in the timestep embedding stay float32.
_SINUSOID = {"Sin", "Cos"}


def timestep_nodes(model: onnx.ModelProto, input_name: str = "timestep") -> list[str]:
    """Names of the nodes between graph input `input_name` and the Sin/Cos nodes it feeds (both ends
    included); empty when the graph has no such input."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reached: dict[str, onnx.NodeProto] = {}
    frontier = [input_name]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in reached:
                continue
            reached[node.name] = node
            if node.op_type not in _SINUSOID:
                frontier.extend(node.output)
    # Only what leads to a Sin/Cos: walk back from them inside the reached set.
    producer = {o: n for n in reached.values() for o in n.output}
    keep: set[str] = set()
    stack = [n for n in reached.values() if n.op_type in _SINUSOID]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(keep)


def convert(model: onnx.ModelProto, large: bool) -> onnx.ModelProto:
    """`model` (weights loaded) rewritten to float16 as the module doc says."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for node in model.graph.node:
        if not node.name:
            raise ValueError(f"an unnamed {node.op_type} node: the block list names nodes")
    # NOTE: shape inference refuses protobufs over 2 GiB (the full-size UNet): skip it there; the
    # exporter's graphs carry value_info for every intermediate already.
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        node_block_list=timestep_nodes(model),
        disable_shape_infer=large,
    )
    # NOTE: the converter writes one identical Cast per consumer of a value that several consumers
    # want in float32 (the scales shared by the VAE's Resize nodes, the phase feeding Sin and Cos):
    # keep the first of each.
    nodes, seen = [], set()
    for node in converted.graph.node:
        key = node.SerializeToString(deterministic=True)
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        nodes.append(node)
    del converted.graph.node[:]
    converted.graph.node.extend(nodes)
    # NOTE: the converter appends its Cast nodes at the end of the node list; ONNX wants them sorted.
    OnnxModel(converted).topological_sort()
    # NOTE: the converter leaves some intermediate value_info at its old element type (values it
    # routed through a Cast); ONNX Runtime infers types itself, and onnx.checker's full check infers
    # them afresh, so the stale annotations go.
    del converted.graph.value_info[:]
    return converted


def to_fp16(src: Path, dst: Path, external_data: bool) -> None:
    """Converts `src` (an fp32 ONNX file, with its external data if any) into `dst`; with
    `external_data` the weights go to `dst.name + ".data"` beside it."""
    model = onnx.load(str(src))
    converted = convert(model, large=external_data)
    if external_data:
        data = dst.parent / (dst.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save(converted, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(dst))
    else:
        onnx.save(converted, str(dst))
        onnx.checker.check_model(converted)


def overflow_report(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """The largest |value| of every float tensor an fp32 graph computes on `feeds` (ONNX Runtime, CPU):
    any above float16's 65504 overflows when that graph runs in fp16. Returns name -> max |value|,
    largest first (the first 20)."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    names = {o for n in model.graph.node for o in n.output}
    typed = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in sorted(names & typed))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    peaks = {o.name: float(np.abs(v).max()) if v.size else 0.0 for o, v in zip(session.get_outputs(), outputs)}
    return dict(sorted(peaks.items(), key=lambda kv: -kv[1])[:20])
