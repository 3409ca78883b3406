"""One copy of the frozen weights: the UNet, the text encoder and the tuning graph read them from one file.

`adapter_step.onnx` holds the whole frozen UNet and text encoder (its forward and backward pass run
through them), so a model directory exported graph by graph stores those weights twice (4.8 GB of
the full-size export, 10 MB of the committed tiny model). `share_frozen_weights` rewrites the three
graphs of an exported directory so that every initializer of at least `min_bytes` lives in one
external data file, `frozen_weights.bin`, once per distinct content:

- equal tensors (same dtype, shape and bytes, whatever their names) point at the same offset;
- a tuning-graph tensor that is the transpose of a stored 2-D tensor (the exporter folds `W.T` of a
  Linear's forward pass) becomes a `Transpose` node over the stored one;
- each tensor starts at a multiple of `ALIGN` bytes.

Nothing else changes: names, graph inputs and outputs, the numbers computed (only the exporter's
per-node provenance metadata is dropped). ONNX Runtime maps
external data files into memory on the CPU, so sessions of one process that read the same file
share its pages (the page cache holds it once); what a session copies out of it (weights it
prepacks, the transposes it folds) is its own. The manifest's graph entries are rewritten (each
graph lists `frozen_weights.bin` under `external_data`, with the same sha256).

    .venv/bin/python -m pva.share DIR      (an existing export; `pva.export` does it itself)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The graphs that share frozen weights, in the order their tensors are stored.
SHARED_GRAPHS = ("unet", "text_encoder", "adapter_step")
#: The shared external data file, beside the graphs.
DATA_FILE = "frozen_weights.bin"
#: Each tensor's offset in the file is a multiple of this (SIMD loads of mapped weights).
ALIGN = 64
#: Smaller initializers stay inside their graph.
MIN_BYTES = 1024


class _Store:
    """The shared file being written: tensors by content key, 2-D tensors also by their transpose's."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("wb")
        self.offsets: dict[str, tuple[int, int]] = {}
        self.transposed: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.size = 0

    @staticmethod
    def key(data_type: int, dims: tuple[int, ...], data: bytes) -> str:
        h = hashlib.sha256(f"{data_type}:{dims}:".encode())
        h.update(data)
        return h.hexdigest()

    def put(self, k: str, data_type: int, dims: tuple[int, ...], data: bytes,
            index_transpose: bool) -> tuple[int, int]:
        """The (offset, length) of this content (content key `k`), written now unless it is there already."""
        if k not in self.offsets:
            pad = -self.size % ALIGN
            self.file.write(b"\0" * pad)
            self.offsets[k] = (self.size + pad, len(data))
            self.file.write(data)
            self.size += pad + len(data)
            if index_transpose and len(dims) == 2:
                t = np.ascontiguousarray(_array(data_type, dims, data).T)
                self.transposed[self.key(data_type, t.shape, t.tobytes())] = (*self.offsets[k], dims)
        return self.offsets[k]

    def find_transpose(self, k: str):
        """(offset, length, stored dims) of a stored 2-D tensor whose transpose has content key `k`, else None."""
        return self.transposed.get(k)

    def close(self) -> None:
        self.file.close()


def _array(data_type: int, dims: tuple[int, ...], data: bytes) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(data_type)
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _tensor_bytes(t: TensorProto, base: Path) -> bytes:
    """The little-endian raw bytes of an initializer, wherever they are stored."""
    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        with (base / info["location"]).open("rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info["length"])) if "length" in info else f.read()
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def _point_at(t: TensorProto, offset: int, length: int) -> None:
    """Makes `t` an external tensor at `offset` of the shared file."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                  "string_data", "external_data"):
        t.ClearField(field)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v


def _share_graph(model: onnx.ModelProto, base: Path, store: _Store, tuning: bool) -> dict[str, int]:
    """Moves `model`'s large initializers into `store`; returns byte counts (stored, reused, transposed)."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    counts = {"stored": 0, "reused": 0, "transposed": 0, "inline": 0}
    transposes = []
    keep = []
    for t in graph.initializer:
        data = _tensor_bytes(t, base)
        dims = tuple(t.dims)
        if len(data) < MIN_BYTES:
            if t.data_location == TensorProto.EXTERNAL:
                t.ClearField("external_data")
                t.data_location = TensorProto.DEFAULT
                t.raw_data = data
            counts["inline"] += len(data)
            keep.append(t)
            continue
        before = store.size
        # NOTE: one content hash per tensor (gigabytes at full size): put and the lookups share it.
        k = store.key(t.data_type, dims, data)
        found = store.find_transpose(k) if tuning else None
        if found is not None and t.name not in inputs and k not in store.offsets:
            offset, length, stored_dims = found
            source = TensorProto(name=f"{t.name}__shared_transposed", data_type=t.data_type, dims=stored_dims)
            _point_at(source, offset, length)
            keep.append(source)
            transposes.append(helper.make_node("Transpose", [source.name], [t.name], perm=[1, 0],
                                               name=f"{t.name}__shared_transpose"))
            counts["transposed"] += len(data)
            continue
        offset, length = store.put(k, t.data_type, dims, data, index_transpose=not tuning)
        counts["stored" if store.size > before else "reused"] += len(data)
        _point_at(t, offset, length)
        keep.append(t)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # NOTE: the exporter's per-node provenance (fx stack traces: most of a small graph's bytes) goes
    # too; nothing reads it.
    for node in graph.node:
        del node.metadata_props[:]
    # The transposes read initializers only: first in the node list keeps the graph sorted.
    for node in reversed(transposes):
        graph.node.insert(0, node)
    return counts


def _old_data_files(model: onnx.ModelProto) -> set[str]:
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def share_frozen_weights(model_dir: Path, log: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    """Rewrites the shared graphs of `model_dir` (those of `SHARED_GRAPHS` it has) and its manifest."""
    from pva.export import describe_graph

    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    keys = [k for k in SHARED_GRAPHS if k in manifest["graphs"]]
    models = {k: onnx.load(str(model_dir / manifest["graphs"][k]["file"]), load_external_data=False) for k in keys}
    old_files = set().union(*(_old_data_files(m) for m in models.values())) - {DATA_FILE}
    if DATA_FILE in set().union(*(_old_data_files(m) for m in models.values())):
        raise SystemExit(f"{model_dir}: its graphs already share {DATA_FILE}")
    tmp = model_dir / (DATA_FILE + ".tmp")
    store = _Store(tmp)
    counts = {}
    try:
        for k in keys:
            counts[k] = _share_graph(models[k], model_dir, store, tuning=k == "adapter_step")
    finally:
        store.close()
    os.replace(tmp, model_dir / DATA_FILE)
    for k in keys:
        path = model_dir / manifest["graphs"][k]["file"]
        onnx.save(models[k], str(path))
        onnx.checker.check_model(str(path))
    for name in old_files:
        (model_dir / name).unlink(missing_ok=True)
    hashes: dict[Path, str] = {}
    for k in keys:
        manifest["graphs"][k] = describe_graph(model_dir / manifest["graphs"][k]["file"], hashes)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    for k in keys:
        c = counts[k]
        log(f"{k}: {c['stored']} bytes stored, {c['reused']} shared, {c['transposed']} as transposes, "
            f"{c['inline']} inline")
    log(f"{DATA_FILE}: {store.size} bytes")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pva.share", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)
    share_frozen_weights(args.model_dir)


if __name__ == "__main__":
    main()
