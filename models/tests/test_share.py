"""pva.share: one copy of the frozen weights for the UNet, the text encoder and the tuning graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conftest import TINY_DIR
from pva.share import ALIGN, DATA_FILE, SHARED_GRAPHS, share_frozen_weights

N = 48


def _graph(name: str, nodes, initializers, external: bool, out: Path, y_shape=(2, N)) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, N])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [3])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape)),
               helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, N])]
    graph = helper.make_graph(nodes, name, [x, i], outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(out / f"{name}.onnx"), save_as_external_data=external,
              location=f"{name}.onnx.data", size_threshold=0)


def _directory(out: Path) -> dict[str, np.ndarray]:
    """Three graphs laid out as the exporter writes them: the tuning graph repeats the others' weights
    under other names, one of them transposed (as the exporter folds a Linear's `W.T`)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, N), dtype=np.float32)
    table = rng.standard_normal((100, N), dtype=np.float32)
    own = rng.standard_normal((N,), dtype=np.float32) * np.ones((8, N), dtype=np.float32)
    small = rng.standard_normal((N,), dtype=np.float32)
    _graph("unet", [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Gather", ["t", "i"], ["z"])],
           {"w": w, "t": table}, True, out)
    _graph("text_encoder", [helper.make_node("Gather", ["t2", "i"], ["z0"]),
                            helper.make_node("Add", ["z0", "b"], ["z"]),
                            helper.make_node("Identity", ["x"], ["y"])],
           {"t2": table, "b": small}, False, out)
    _graph("adapter_step", [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
                            helper.make_node("MatMul", ["wt", "xt"], ["y"]),
                            helper.make_node("Gather", ["copy_of_t", "i"], ["z0"]),
                            helper.make_node("ReduceSum", ["own"], ["s"], keepdims=0),
                            helper.make_node("Add", ["z0", "s"], ["z"])],
           {"wt": np.ascontiguousarray(w.T), "copy_of_t": table.copy(), "own": own}, True, out, y_shape=(N, 2))
    manifest = {"graphs": {k: {"file": f"{k}.onnx"} for k in SHARED_GRAPHS}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return {"w": w, "table": table, "own": own}


def _outputs(directory: Path) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, N), dtype=np.float32), "i": np.array([0, 7, 99])}
    return {k: ort.InferenceSession(str(directory / f"{k}.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
            for k in SHARED_GRAPHS}


def test_each_weight_is_stored_once_and_no_number_changes(tmp_path) -> None:
    tensors = _directory(tmp_path)
    before = _outputs(tmp_path)
    counts = share_frozen_weights(tmp_path, log=lambda _: None)

    # The per-graph data files are gone; each graph reads the one shared file.
    assert sorted(p.name for p in tmp_path.glob("*.data")) == []
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    data = (tmp_path / DATA_FILE).read_bytes()
    for k in SHARED_GRAPHS:
        assert [x["file"] for x in manifest["graphs"][k]["external_data"]] == [DATA_FILE], k
        assert manifest["graphs"][k]["external_data"][0]["bytes"] == len(data)
    # w and the table once each (the tuning graph's copies point at them), the tuning graph's own
    # tensor once; the text encoder's small bias stays inline.
    small_bytes = N * 4
    unique = tensors["w"].nbytes + tensors["table"].nbytes + tensors["own"].nbytes
    assert unique <= len(data) < unique + 3 * ALIGN
    assert counts["adapter_step"]["transposed"] == tensors["w"].nbytes
    assert counts["adapter_step"]["reused"] == tensors["table"].nbytes
    assert counts["text_encoder"] == {"stored": 0, "reused": tensors["table"].nbytes, "transposed": 0, "inline": small_bytes}

    step = onnx.load(str(tmp_path / "adapter_step.onnx"), load_external_data=False)
    assert step.graph.node[0].op_type == "Transpose" and step.graph.node[0].output == ["wt"]
    for t in step.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            offset = int({e.key: e.value for e in t.external_data}["offset"])
            assert offset % ALIGN == 0, t.name

    after = _outputs(tmp_path)
    for k in SHARED_GRAPHS:
        for a, b in zip(before[k], after[k]):
            assert np.array_equal(a, b), k


def test_a_directory_is_shared_once(tmp_path) -> None:
    _directory(tmp_path)
    share_frozen_weights(tmp_path, log=lambda _: None)
    try:
        share_frozen_weights(tmp_path, log=lambda _: None)
    except SystemExit as err:
        assert DATA_FILE in str(err)
    else:
        raise AssertionError("sharing twice must refuse")


def test_the_committed_tiny_model_shares_its_frozen_weights(manifest) -> None:
    """The tuning graph of models/tiny carries no copy of a weight the UNet or text encoder has."""
    files = {k: [x["file"] for x in manifest["graphs"][k].get("external_data", [])] for k in SHARED_GRAPHS}
    assert files == {k: [DATA_FILE] for k in SHARED_GRAPHS}
    step = onnx.load(str(TINY_DIR / "adapter_step.onnx"), load_external_data=False)
    inline = sum(len(t.raw_data) for t in step.graph.initializer)
    assert inline < 64 * 1024, inline
    assert (TINY_DIR / "adapter_step.onnx").stat().st_size < 1_000_000
