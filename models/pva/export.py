"""Export a PVA model directory: every graph of CONTRACT.md, `adapter_init.safetensors`, `manifest.json`.

Run from the repository root (scripts/setup-python.sh installs `pva` into .venv):

    .venv/bin/python -m pva.export --size tiny --out models/tiny
    .venv/bin/python -m pva.export --size sd2 --random-weights --out /data/pva-sd2-random
    .venv/bin/python -m pva.export --size sd2 --base DIR --pva FPIP.bin [--pva FINETUNE.bin]
        [--face R50] [--allow-init visual,new1] --out OUT   (models/README.md: the formats read)
    .venv/bin/python -m pva.export --size demo --weights trained.safetensors --out models/demo

Graphs are exported with `torch.onnx.export(dynamo=True)`, opset 18, dynamic batch (and reference)
axes. The manifest's input/output descriptions are read back from the written ONNX files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from safetensors.torch import save_file
from torch.export import Dim

from pva import PvaStack, build_stack
from pva.weights import INITS, WeightsError, load_checkpoints, load_trained
from pva.config import get_config

OPSET = 18
GRAPH_ORDER = ("text_encoder", "face_embedder", "id_former", "unet", "vae_encoder", "vae_decoder")
_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}
#: `--precision`: what the edit graphs compute in (pva.precision); the tuning graph is always fp32.
PRECISIONS = ("fp32", "fp16")
#: `--attention`: the UNet's attention as explicit MatMul/Softmax nodes or fused (pva.fused).
ATTENTIONS = ("explicit", "fused")


@dataclass
class GraphSpec:
    """How to export one graph: example inputs (by name), output names and dynamic axes."""

    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, Any]]


def example_inputs(stack: PvaStack, name: str, batch: int, references: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of graph `name` at a batch size (and reference count for `id_former`)."""
    g = torch.Generator().manual_seed(seed)
    cfg = stack.config
    d, lat, res = cfg.hidden_size, cfg.latent_size, cfg.resolution
    if name == "text_encoder":
        ids = torch.randint(0, 49408, (batch, 77), generator=g)
        ids[:, 0] = cfg.tokenizer["bos_id"]
        ids[:, 2] = cfg.tokenizer["new_token_id"]
        ids[:, 6] = cfg.tokenizer["eos_id"]
        ids[:, 7:] = cfg.tokenizer["pad_id"]
        return {"input_ids": ids, "new1_embedding": torch.randn(d, generator=g)}
    if name == "face_embedder":
        return {"faces": torch.rand(batch, 3, cfg.face.crop_size, cfg.face.crop_size, generator=g) * 2 - 1}
    if name == "id_former":
        return {"embeddings": torch.randn(batch, references, cfg.face.embedding_dim, generator=g)}
    if name == "unet":
        switch = torch.tensor([float(i % 2) for i in range(batch)])
        return {
            "sample": torch.randn(batch, 9, lat, lat, generator=g),
            "timestep": torch.randint(0, 1000, (batch,), generator=g).float(),
            "encoder_hidden_states": torch.randn(batch, 77, d, generator=g),
            "id_tokens": torch.randn(batch, cfg.id_former.num_queries, d, generator=g),
            "id_switch": switch,
            "adapter": stack.split_params(stack.initial_params)[0].clone(),
        }
    if name == "vae_encoder":
        return {"image": torch.rand(batch, 3, res, res, generator=g) * 2 - 1}
    if name == "vae_decoder":
        return {"latent": torch.randn(batch, cfg.latent_channels, lat, lat, generator=g) * 5}
    raise KeyError(name)


def graph_spec(stack: PvaStack, name: str) -> GraphSpec:
    """The export spec of a graph. Example sizes are chosen to equal no other dimension."""
    batch = Dim("B", min=1, max=64)
    outputs = {
        "text_encoder": ["hidden_states"],
        "face_embedder": ["embeddings"],
        "id_former": ["id_tokens"],
        "unet": ["noise_pred"],
        "vae_encoder": ["latent_mean"],
        "vae_decoder": ["image"],
    }[name]
    if name == "id_former":
        refs = Dim("R", min=1, max=stack.config.id_former.max_references)
        return GraphSpec(example_inputs(stack, name, 3, references=4), outputs, {"embeddings": {0: batch, 1: refs}})
    if name == "face_embedder":
        return GraphSpec(example_inputs(stack, name, 5), outputs, {"faces": {0: Dim("N", min=1, max=64)}})
    inputs = example_inputs(stack, name, 5 if name.startswith("vae") else 3)
    fixed = {"new1_embedding", "adapter"}
    return GraphSpec(inputs, outputs, {k: (None if k in fixed else {0: batch}) for k in inputs})


def export_graph(stack: PvaStack, name: str, path: Path, external_data: bool, attention: str = "explicit") -> None:
    """Export one graph module to `path`; `attention="fused"` gives the UNet's attention as
    `com.microsoft.MultiHeadAttention` nodes (pva.fused)."""
    spec = graph_spec(stack, name)
    module = stack.modules()[name]
    fused = attention == "fused" and name == "unet"
    translation = None
    if fused:
        from pva.fused import TRANSLATION, fused_attention

        translation = TRANSLATION
    with torch.no_grad(), (fused_attention(stack.unet) if fused else contextlib.nullcontext()):
        torch.onnx.export(
            module,
            tuple(spec.inputs.values()),
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(spec.inputs),
            output_names=spec.outputs,
            dynamic_shapes=spec.dynamic,
            external_data=external_data,
            optimize=True,
            custom_translation_table=translation,
        )


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_sha256(path: Path, hashes: dict[Path, str]) -> str:
    if path not in hashes:
        hashes[path] = sha256(path)
    return hashes[path]


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        raise ValueError(f"{value.name}: unsupported element type {tensor.elem_type}")
    shape: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(dim.dim_value)
        elif dim.dim_param:
            shape.append(dim.dim_param)
        else:
            raise ValueError(f"{value.name}: a dimension with neither size nor name")
    return {"name": value.name, "dtype": dtype, "shape": shape}


def describe_graph(path: Path, hashes: dict[Path, str] | None = None) -> dict[str, Any]:
    """A manifest graph entry read back from an ONNX file (and its external data files, if any).

    `hashes` caches the sha256 of external data files that several graphs share."""
    hashes = {} if hashes is None else hashes
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    entry: dict[str, Any] = {
        "file": path.name,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [_value_info(v) for v in model.graph.output],
    }
    data_files = sorted(
        {
            e.value
            for t in model.graph.initializer
            for e in t.external_data
            if e.key == "location"
        }
    )
    if data_files:
        entry["external_data"] = [
            {"file": f, "sha256": _cached_sha256(path.parent / f, hashes), "bytes": (path.parent / f).stat().st_size}
            for f in data_files
        ]
    return entry


def build_manifest(stack: PvaStack, out: Path, graphs: dict[str, dict[str, Any]], adapter_file: Path) -> dict[str, Any]:
    """The manifest.json content of CONTRACT.md."""
    cfg = stack.config
    face: dict[str, Any] = {"crop_size": cfg.face.crop_size, "embedding_dim": cfg.face.embedding_dim}
    # The paper's settings (pva.config.PAPER_*) are written only where a size has them: a manifest
    # without them keeps the older conventions (models/tiny and models/demo).
    if cfg.face.embed_window is not None:
        face["embed_window"] = dict(cfg.face.embed_window)
    return {
        "format_version": 1,
        "name": cfg.name,
        "version": "0.1.0",
        "resolution": cfg.resolution,
        "latent": {"channels": cfg.latent_channels, "size": cfg.latent_size, "factor": cfg.vae_factor},
        "vae": {"scaling_factor": cfg.scaling_factor},
        "hidden_size": cfg.hidden_size,
        "num_id_tokens": cfg.id_former.num_queries,
        "max_references": cfg.id_former.max_references,
        "face": face,
        "scheduler": stack.scheduler_config,
        "tokenizer": stack.tokenizer,
        "prompt_template": cfg.prompt_template,
        **({} if cfg.guidance is None else {"guidance": dict(cfg.guidance)}),
        "adapter": {
            "file": adapter_file.name,
            "tensor": "params",
            "sha256": sha256(adapter_file),
            "bytes": adapter_file.stat().st_size,
            "visual_length": stack.visual_length,
            "token_length": stack.token_length,
            "layout": [e.to_json() for e in stack.adapter_layout],
        },
        "tuning": dict(cfg.tuning),
        "graphs": graphs,
    }


def export_all(stack: PvaStack, out: Path, external_data: bool = False, log=print,
               adapter_step: bool = True, precision: str = "fp32", fp32_graphs: tuple[str, ...] = (),
               attention: str = "explicit") -> dict[str, Any]:
    """Write every graph, the adapter init and the manifest into `out`; returns the manifest.

    `adapter_step=False` leaves the tuning graph out: the worker then edits with this model but refuses
    to tune (a model directory a third smaller, for one that is committed to git).
    `precision="fp16"` rewrites the edit graphs (all but those in `fp32_graphs`) to compute in float16
    with float32 inputs and outputs (pva.precision; the tuning graph stays fp32); `attention="fused"`
    exports the UNet's attention as fused `MultiHeadAttention` nodes (pva.fused). Both are recorded in
    the graph's manifest entry (`precision`, `attention`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {PRECISIONS}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: one of {ATTENTIONS}")
    unknown = set(fp32_graphs) - set(GRAPH_ORDER)
    if unknown:
        raise ValueError(f"fp32_graphs names no edit graph: {sorted(unknown)}")
    out.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, dict[str, Any]] = {}
    recorded: dict[str, dict[str, str]] = {"adapter_step": {"precision": "fp32"}}
    for name in GRAPH_ORDER:
        path = out / f"{name}.onnx"
        start = time.perf_counter()
        export_graph(stack, name, path, external_data, attention)
        graph_precision = "fp32" if name in fp32_graphs else precision
        if graph_precision == "fp16":
            from pva.precision import to_fp16

            to_fp16(path, path, external_data)
        graphs[name] = describe_graph(path)
        recorded[name] = {"precision": graph_precision, **({"attention": attention} if name == "unet" else {})}
        graphs[name].update(recorded[name])
        log(f"{name}: {time.perf_counter() - start:.1f} s, {graphs[name]['bytes']} bytes, {graph_precision}")

    if adapter_step:
        from pva.tuning import export_adapter_step

        path = out / "adapter_step.onnx"
        start = time.perf_counter()
        export_adapter_step(stack, path)
        graphs["adapter_step"] = {**describe_graph(path), **recorded["adapter_step"]}
        log(f"adapter_step: {time.perf_counter() - start:.1f} s, {graphs['adapter_step']['bytes']} bytes")

    adapter_file = out / "adapter_init.safetensors"
    save_file({"params": stack.initial_params.contiguous()}, str(adapter_file))
    manifest = build_manifest(stack, out, graphs, adapter_file)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if adapter_step:
        from pva.share import share_frozen_weights

        # One copy of the frozen UNet and text encoder for the edit graphs and the tuning graph.
        share_frozen_weights(out, log)
        manifest = json.loads((out / "manifest.json").read_text())
        # pva.share describes the graphs it rewrote afresh: what was recorded about them goes back in.
        for name, entry in manifest["graphs"].items():
            entry.update(recorded[name])
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "demo", "sd2"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0, help="random-init seed")
    parser.add_argument("--base", type=Path, help="local diffusers stable-diffusion-2-inpainting directory")
    parser.add_argument("--pva", type=Path, action="append", default=[],
                        help="PVA checkpoint: the paper's FPIP.bin or a flat state dict (models/README.md); repeat "
                             "to layer them, a later file's parts replacing an earlier one's")
    parser.add_argument("--face", type=Path, help="ArcFace iresnet50 state dict (arcface_torch, or the paper's FaceNet)")
    parser.add_argument("--allow-init", type=lambda v: [p for p in v.split(",") if p], action="extend", default=[],
                        metavar="PART[,PART]",
                        help="parts the PVA checkpoints may lack, keeping their init instead: "
                             + "; ".join(f"{k}: {v.split(' (')[0]}" for k, v in INITS.items()))
    parser.add_argument("--weights", type=Path, help="trained weights from pva.train (save_trained format)")
    parser.add_argument("--random-weights", action="store_true", help="sd2 only: full size, random weights")
    parser.add_argument("--resolution", type=int,
                        help="image resolution to export at instead of the size's (recorded in the manifest)")
    parser.add_argument("--no-adapter-step", action="store_true",
                        help="leave out adapter_step.onnx (the worker edits but refuses to tune)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp16: the edit graphs compute in float16, their inputs and outputs stay float32 "
                             "(the tuning graph stays fp32; pva.precision)")
    parser.add_argument("--fp32", type=lambda v: [p for p in v.split(",") if p], action="extend", default=[],
                        metavar="GRAPH[,GRAPH]", help="with --precision fp16: graphs kept in fp32 (e.g. vae_decoder)")
    parser.add_argument("--attention", choices=ATTENTIONS, default="explicit",
                        help="fused: the UNet's attention as com.microsoft.MultiHeadAttention (pva.fused)")
    args = parser.parse_args(argv)

    weights = None
    if args.weights is not None:
        if args.base or args.pva or args.face or args.random_weights or args.allow_init:
            parser.error("--weights replaces --base/--pva/--face/--allow-init/--random-weights")
        weights = load_trained(args.weights)
    else:
        if args.size == "sd2" and args.base is None and not args.random_weights:
            parser.error("sd2 needs --base DIR --pva CKPT [--face R50] or --random-weights")
        if args.random_weights and args.size != "sd2":
            parser.error(f"{args.size} has random weights unless --base/--weights is given: drop --random-weights")
        if args.base is None and (args.pva or args.face or args.allow_init):
            parser.error("--pva/--face/--allow-init need --base (--random-weights loads nothing)")
        if args.base is not None and args.random_weights:
            parser.error("--random-weights loads nothing: drop it or --base")
        if args.base is not None:
            try:
                loaded = load_checkpoints(get_config(args.size), args.base, args.pva, args.face, args.allow_init)
            except WeightsError as err:
                parser.exit(2, f"{parser.prog}: error: {err}\n")
            for line in loaded.summary():
                print(line)
            weights = loaded.weights

    start = time.perf_counter()
    stack = build_stack(args.size, seed=args.seed, weights=weights, resolution=args.resolution)
    print(f"built {args.size} at {stack.config.resolution} px in {time.perf_counter() - start:.1f} s")
    # NOTE: protobuf caps a file at 2 GiB: full-size graphs keep their weights in external data files.
    unknown = set(args.fp32) - set(GRAPH_ORDER)
    if unknown:
        parser.error(f"--fp32 names no edit graph: {sorted(unknown)} (one of {', '.join(GRAPH_ORDER)})")
    export_all(stack, args.out, external_data=args.size == "sd2", adapter_step=not args.no_adapter_step,
               precision=args.precision, fp32_graphs=tuple(args.fp32), attention=args.attention)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
