"""Converts MediaPipe's BlazeFace short-range detector and 468-point Face Mesh landmark model (.tflite files in
the `mediapipe` 0.10.14 wheel from PyPI, Apache-2.0) to ONNX, checks them against the original runtime, and
writes what CI pins. Runs outside CI, in its own virtual environment (see README.md beside this file):

    python models/faces/convert.py            # fetch, convert, manifest, parity, pins, checked boxes
    python models/faces/convert.py --check    # parity and pins of the committed graphs only (no rewrite)

Steps:
1. The wheel: `pip download mediapipe==0.10.14 --no-deps` (any platform's wheel carries the same .tflite
   files), its sha256 checked; only the two .tflite files are read from it.
2. tf2onnx (`from_tflite`, opset 17) makes fp32 graphs; the fp16 weights (the .tflite files store fp16 and
   dequantize at load) are stored back as fp16 initializers each followed by a Cast to fp32, which is
   lossless (every such value is exactly an fp16), so the graphs compute what the fp32 conversion does at
   half the size. Inputs and outputs keep the .tflite layout (NHWC); the outputs get plain names.
3. manifest.json: files, sha256, bytes, input/output contracts, anchors and decoding, source, licence.
4. Parity: the .tflite run by ai-edge-litert (the original runtime) and the ONNX graph run by onnxruntime
   on the same inputs (each photo letterboxed for the detector; each photo's best face cropped for the
   landmark model; one random input each); max abs and rel differences against the tolerance below.
5. pinned.json: facedetect.summarise of every photo by onnxruntime (what models/tests/test_faces.py pins).
6. checked_boxes.json: the boxes found on each photo against OpenCV's Haar cascade (IoU), and with
   --draw DIR, the photos with both boxes and the keypoints drawn, to check by eye.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import facedetect  # noqa: E402

FACES_DIR = Path(__file__).resolve().parent
ROOT = FACES_DIR.parents[1]
# (base, folder): a photo's key is its path from base.
PHOTO_DIRS = [(ROOT, ROOT / "examples" / "photos"), (ROOT.parent, ROOT.parent / "shared" / "data" / "faces")]
CACHE = Path.home() / ".cache" / "pva-faces"

WHEEL = {
    "name": "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "version": "0.10.14",
    "sha256": "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4",
}
OPSET = 17
# Parity: the ONNX graph against the .tflite on the original runtime, both fp32. The difference is float
# rounding of other summation orders; the tolerance is |onnx - tflite| <= ATOL + RTOL * |tflite|.
ATOL, RTOL = 1e-3, 1e-4
# The landmarks CI pins per photo: eye corners (33, 133, 362, 263), nose tip (1), mouth corners (61, 291),
# chin (152), forehead (10).
PINNED_LANDMARKS = [33, 133, 362, 263, 1, 61, 291, 152, 10]

LICENCE = {
    "spdx": "Apache-2.0",
    "file": "LICENSE",
    "text": "the Apache License 2.0 from the mediapipe 0.10.14 wheel (mediapipe-0.10.14.dist-info/LICENSE)",
    "notice": "Face detection and face landmark models: MediaPipe, Copyright Google LLC, Apache License 2.0; "
              "converted to ONNX (fp16 weights kept, layout unchanged) by models/faces/convert.py",
    "commercial_use": True,
}

GRAPHS = {
    "detector": {
        "file": "detector.onnx",
        "tflite": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "tflite_sha256": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        "what": "BlazeFace short range: faces within about 2 m of the camera (portraits, selfies)",
        "face_size": "the smallest anchors are 0.1484375 of the input side (19 of 128 px); on the test photos "
                      "faces of 18 px in the input (full-length photos) are found with scores 0.83-0.86, "
                      "and lose to the threshold when such a photo is also rotated (larger bounding frame)",
        "inputs": [{"name": "input", "shape": [1, 128, 128, 3], "dtype": "float32", "layout": "NHWC RGB",
                    "value_range": [-1.0, 1.0],
                    "preprocessing": "the whole photo (after EXIF orientation) scaled to fit 128x128 keeping "
                                     "its aspect ratio, centred, black bars (-1.0); pixel/127.5 - 1"}],
        "outputs": [
            {"name": "regressors", "shape": [1, 896, 16], "dtype": "float32",
             "layout": "per anchor: box centre x, centre y, width, height, then 6 keypoints (x, y): the "
                       "subject's right eye, left eye, nose tip, mouth centre, right ear tragion, left ear "
                       "tragion; in input pixels (divide by x_scale etc.), centres relative to the anchor"},
            {"name": "classificators", "shape": [1, 896, 1], "dtype": "float32",
             "layout": "per anchor: face logit; score = sigmoid(clip(logit, -100, 100))"},
        ],
        # MediaPipe's face_detection_short_range graph: SsdAnchorsCalculator options ...
        "anchors": {
            "num_layers": 4, "min_scale": 0.1484375, "max_scale": 0.75,
            "input_size_height": 128, "input_size_width": 128,
            "anchor_offset_x": 0.5, "anchor_offset_y": 0.5,
            "strides": [8, 16, 16, 16], "aspect_ratios": [1.0], "interpolated_scale_aspect_ratio": 1.0,
            "fixed_anchor_size": True,
            "grids": [{"stride": 8, "cells": [16, 16], "anchors_per_cell": 2},
                      {"stride": 16, "cells": [8, 8], "anchors_per_cell": 6}],
            "order": "grid by grid; within a grid row-major (y, then x), then the cell's anchors; "
                     "anchor centre = ((x + 0.5) / cells_x, (y + 0.5) / cells_y), width = height = 1",
        },
        # ... and TensorsToDetectionsCalculator + NonMaxSuppression options.
        "decoding": {
            "num_coords": 16, "box_coord_offset": 0, "keypoint_coord_offset": 4, "num_keypoints": 6,
            "num_values_per_keypoint": 2, "reverse_output_order": True,
            "x_scale": 128.0, "y_scale": 128.0, "w_scale": 128.0, "h_scale": 128.0,
            "sigmoid_score": True, "score_clipping_thresh": 100.0, "min_score_thresh": 0.5,
            "min_suppression_threshold": 0.3, "nms": "weighted (overlap: IoU)",
            "formula": "cx = raw[0] / x_scale * anchor.w + anchor.cx, cy likewise, w = raw[2] / w_scale * "
                       "anchor.w, h likewise; keypoint k: (raw[4 + 2k] / x_scale + anchor.cx, "
                       "raw[5 + 2k] / y_scale + anchor.cy); all 0..1 of the letterboxed input",
        },
    },
    "landmarks": {
        "file": "landmarks.onnx",
        "tflite": "mediapipe/modules/face_landmark/face_landmark.tflite",
        "tflite_sha256": "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
        "what": "Face Mesh: 468 3-D landmarks of one face in a crop from the detector",
        "inputs": [{"name": "input", "shape": [1, 192, 192, 3], "dtype": "float32", "layout": "NHWC RGB",
                    "value_range": [0.0, 1.0],
                    "preprocessing": "the square crop of roi_from_detection (rotated, bilinear, black outside "
                                     "the photo) resized to 192x192; pixel/255"}],
        "outputs": [
            {"name": "landmarks", "shape": [1, 1, 1, 1404], "dtype": "float32",
             "layout": "468 x (x, y, z): x, y in input pixels (0..192), z depth in the same scale as x "
                       "(relative to the face's centre, smaller is nearer); MediaPipe's canonical face mesh "
                       "indices (e.g. 33/133 right eye corners, 362/263 left eye corners, 1 nose tip, "
                       "61/291 mouth corners, 152 chin)"},
            {"name": "face_flag", "shape": [1, 1, 1, 1], "dtype": "float32",
             "layout": "face presence logit; presence = sigmoid(logit) (MediaPipe drops a face below 0.5)"},
        ],
        "landmark_count": 468,
        "roi_from_detection": {
            "rotation_keypoints": [0, 1], "target_angle": 0.0, "scale": 1.5, "square": "long side",
            "formula": "centre = the box's centre; rotation = target_angle - atan2(-(y1 - y0), x1 - x0) for "
                       "detector keypoints 0 and 1 (the eyes) in photo pixels; side = max(box w, box h) * 1.5",
        },
    },
}


def write_json(path: Path, obj, digits: int | None = 6) -> None:
    """Indented JSON with lists of numbers on one line, floats rounded to digits significant digits."""
    def rounded(o):
        if isinstance(o, float):
            return float(f"{o:.{digits}g}") if digits else o
        if isinstance(o, dict):
            return {k: rounded(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [rounded(v) for v in o]
        return o
    text = json.dumps(rounded(obj), indent=1)
    def one_line(m: re.Match) -> str:
        return re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]")
    text = re.sub(r"\[[-0-9.e,\s]*\]", one_line, text)
    path.write_text(text + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_path() -> Path:
    """The mediapipe wheel, downloaded into ~/.cache/pva-faces/wheel once, its sha256 checked."""
    path = CACHE / "wheel" / WHEEL["name"]
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", f"mediapipe=={WHEEL['version']}", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64",
                        "-d", str(path.parent)], check=True)
    if sha256(path) != WHEEL["sha256"]:
        sys.exit(f"{path}: sha256 {sha256(path)} is not the pinned {WHEEL['sha256']}")
    return path


def extract_tflite(name: str) -> Path:
    graph = GRAPHS[name]
    out = CACHE / "tflite" / Path(graph["tflite"]).name
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path()) as z:
        out.write_bytes(z.read(graph["tflite"]))
    if sha256(out) != graph["tflite_sha256"]:
        sys.exit(f"{graph['tflite']}: sha256 {sha256(out)} is not the pinned {graph['tflite_sha256']}")
    return out


def write_licence() -> None:
    """models/faces/LICENSE: the Apache License 2.0 as the wheel carries it (its dist-info LICENSE up to the
    part about other files, which the face models are not)."""
    with zipfile.ZipFile(wheel_path()) as z:
        text = z.read(f"mediapipe-{WHEEL['version']}.dist-info/LICENSE").decode()
    (FACES_DIR / "LICENSE").write_text(text.split("\n====")[0].rstrip() + "\n")


def fp16_initializers(model: onnx.ModelProto) -> int:
    """Every fp32 initializer whose values are all exactly fp16 becomes an fp16 initializer plus a Cast to
    fp32 under the old name (lossless). Returns how many."""
    g = model.graph
    casts, keep = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 1 and np.array_equal(arr.astype(np.float16).astype(np.float32), arr):
            keep.append(numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16"))
            casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=init.name + "_cast"))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return len(casts)


def rename(model: onnx.ModelProto, io_names: dict[str, str]) -> None:
    """The inputs and outputs get io_names; every other tensor and node a name from its place in the graph
    (tf2onnx numbers them from a counter that differs from run to run: this makes the file reproducible)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    names = dict(io_names)
    for i, node in enumerate(g.node):
        node.name = f"{node.op_type}_{i}"
        for n in node.input:
            if n in inits and n not in names:
                names[n] = f"w{len(names)}"
        for k, n in enumerate(node.output):
            names.setdefault(n, f"{node.op_type}_{i}:{k}")
    for value in list(g.input) + list(g.output) + list(g.value_info) + list(g.initializer):
        value.name = names.get(value.name, value.name)
    for node in g.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    order = {n: i for i, n in enumerate(names.values())}
    ordered = sorted(g.initializer, key=lambda t: order.get(t.name, len(order)))
    del g.initializer[:]
    g.initializer.extend(ordered)


def convert(name: str) -> Path:
    import tf2onnx  # the converter's environment only

    graph = GRAPHS[name]
    tfl = extract_tflite(name)
    model, _ = tf2onnx.convert.from_tflite(str(tfl), opset=OPSET)
    io = [v.name for v in list(model.graph.input) + list(model.graph.output)]
    want = [v["name"] for v in graph["inputs"] + graph["outputs"]]
    rename(model, dict(zip(io, want)))
    n = fp16_initializers(model)
    # Only the default domain is used; tf2onnx also lists ai.onnx.ml.
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    model.producer_name, model.producer_version = "pva models/faces/convert.py", f"tf2onnx {tf2onnx.__version__}"
    model.doc_string = f"{graph['what']}. From {graph['tflite']} in {WHEEL['name']}. {LICENCE['notice']}."
    onnx.checker.check_model(model, full_check=True)
    out = FACES_DIR / graph["file"]
    onnx.save(model, str(out))
    print(f"{name}: {tfl.name} ({tfl.stat().st_size} bytes) -> {out.name} ({out.stat().st_size} bytes), "
          f"{n} fp16 initializers")
    return out


def write_manifest() -> dict:
    graphs = {}
    for name, g in GRAPHS.items():
        path = FACES_DIR / g["file"]
        entry = {k: v for k, v in g.items() if k not in ("tflite", "tflite_sha256")}
        entry.update({"sha256": sha256(path), "bytes": path.stat().st_size, "opset": OPSET,
                      "source": {"package": "mediapipe", "version": WHEEL["version"], "wheel": WHEEL["name"],
                                 "wheel_sha256": WHEEL["sha256"], "path_in_wheel": g["tflite"],
                                 "tflite_sha256": g["tflite_sha256"]}})
        graphs[name] = entry
    manifest = {
        "about": "Face detector and landmark graphs shared by every model (issue 16). Made by "
                 "models/faces/convert.py; see models/faces/README.md.",
        "licence": LICENCE,
        "graphs": graphs,
    }
    write_json(FACES_DIR / "manifest.json", manifest, digits=None)
    return manifest


def photos() -> list[tuple[str, Path]]:
    """(key, path) of the test photos, each distinct file once; key is the path from the repository's
    parent (examples/... or shared/...)."""
    seen, out = set(), []
    for base, d in PHOTO_DIRS:
        for p in sorted(d.glob("*")):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png") and sha256(p) not in seen:
                seen.add(sha256(p))
                out.append((str(p.relative_to(base)), p))
    return out


def ort_runner(path: Path) -> facedetect.RunGraph:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def tflite_runner(path: Path) -> facedetect.RunGraph:
    from ai_edge_litert.interpreter import Interpreter  # the original runtime; not in the repo's .venv

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0]["index"], [d["index"] for d in it.get_output_details()]

    def run(x: np.ndarray) -> list[np.ndarray]:
        it.set_tensor(inp, x)
        it.invoke()
        return [it.get_tensor(i).copy() for i in outs]
    return run


def parity(manifest: dict) -> bool:
    """Each graph against its .tflite on the photos' inputs and one random input; prints the differences."""
    runs = {n: (tflite_runner(extract_tflite(n)), ort_runner(FACES_DIR / g["file"])) for n, g in GRAPHS.items()}
    det, lm = manifest["graphs"]["detector"], manifest["graphs"]["landmarks"]
    rng = np.random.default_rng(0)
    inputs = {"detector": [("random", rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32))],
              "landmarks": [("random", rng.uniform(0, 1, (1, 192, 192, 3)).astype(np.float32))]}
    for key, path in photos():
        img = facedetect.load_photo(path)
        square, _ = facedetect.letterbox(img, 128)
        inputs["detector"].append((key, facedetect.to_tensor(square, det["inputs"][0]["value_range"])))
        faces = facedetect.detect(img, runs["detector"][1], det)
        if faces:
            crop = facedetect.crop_roi(img, facedetect.landmark_roi(faces[0], lm), 192)
            inputs["landmarks"].append((key, facedetect.to_tensor(crop, lm["inputs"][0]["value_range"])))
    ok = True
    print(f"parity: onnxruntime {ort.__version__} vs ai-edge-litert; tolerance |d| <= {ATOL} + {RTOL} * |tflite|")
    for name, (run_tfl, run_onnx) in runs.items():
        outs = [o["name"] for o in GRAPHS[name]["outputs"]]
        # Per output and kind of input: count, max abs diff, max rel diff (of the elements with
        # |tflite| >= 1e-2; nearer 0 the abs diff speaks), max |tflite|.
        worst = {(o, k): [0, 0.0, 0.0, 0.0] for o in outs for k in ("photos", "random")}
        for key, x in inputs[name]:
            for o, a, b in zip(outs, run_tfl(x), run_onnx(x)):
                d = np.abs(a.astype(np.float64) - b)
                big = np.abs(a) >= 1e-2
                rel = (d[big] / np.abs(a[big])).max() if big.any() else 0.0
                w = worst[(o, "random" if key == "random" else "photos")]
                w[:] = [w[0] + 1, max(w[1], d.max()), max(w[2], rel), max(w[3], np.abs(a).max())]
                ok &= bool(np.all(d <= ATOL + RTOL * np.abs(a)))
        for (o, kind), (n, da, dr, mx) in worst.items():
            print(f"  {name}.{o} on {n} {kind}: max |tflite| {mx:.4g}, max abs diff {da:.3g}, max rel diff {dr:.3g}")
    print("parity:", "PASS" if ok else "FAIL")
    return ok


def pin(manifest: dict) -> None:
    run_det = ort_runner(FACES_DIR / "detector.onnx")
    run_lm = ort_runner(FACES_DIR / "landmarks.onnx")
    pinned = {
        "about": "facedetect.summarise of each photo by onnxruntime (CPU); models/tests/test_faces.py "
                 "compares within the tolerances. Written by models/faces/convert.py.",
        "onnxruntime": ort.__version__,
        # Another CPU (other SIMD kernels) moves the raw outputs by ~1e-5 relative; a landmark crop from a box
        # moved that little can shift a bilinear sample by one level.
        "tolerance": {"score": 1e-4, "box_px": 0.1, "keypoint_px": 0.1, "landmark_px": 0.25, "presence": 1e-4},
        "photos": {},
    }
    for key, path in photos():
        pinned["photos"][key] = facedetect.summarise(facedetect.load_photo(path), run_det, run_lm, manifest,
                                                     PINNED_LANDMARKS)
    write_json(FACES_DIR / "pinned.json", pinned)
    print(f"pinned.json: {len(pinned['photos'])} photos")


def haar_calibration(pairs: list[tuple[list[float], list[float]]]) -> list[float]:
    """One fixed map of Haar's box convention onto BlazeFace's: the medians over the matched pairs of the
    centre's vertical shift / Haar width and the (width, height) ratios. The horizontal shift is fixed at 0,
    not fitted: on a frontal face both boxes are symmetric about the face, and what shifts them sideways is
    the head's yaw (Haar's frontal cascade stays on the eyes and nose, BlazeFace's box reaches the far ear),
    which differs from photo to photo, not between the two conventions."""
    rel = np.array([[((b[1] + b[3]) - (h[1] + h[3])) / 2 / (h[2] - h[0]),
                     (b[2] - b[0]) / (h[2] - h[0]), (b[3] - b[1]) / (h[3] - h[1])] for b, h in pairs])
    return [0.0, *np.median(rel, axis=0).tolist()]


def calibrated(h: list[float], cal: list[float]) -> list[float]:
    w = h[2] - h[0]
    cx, cy = (h[0] + h[2]) / 2 + cal[0] * w, (h[1] + h[3]) / 2 + cal[1] * w
    bw, bh = w * cal[2], (h[3] - h[1]) * cal[3]
    return [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]


def yaw_offset(keypoints: list[list[float]]) -> float:
    """How far the nose tip (keypoint 2) lies beside the eyes' midpoint (keypoints 0, 1), along the eye line,
    as a share of the inter-ocular distance: about 0 for a frontal face, +-0.2 for a head turned by roughly
    20-25 degrees."""
    (x0, y0), (x1, y1), (xn, yn) = keypoints[0], keypoints[1], keypoints[2]
    dx, dy = x1 - x0, y1 - y0
    return ((xn - (x0 + x1) / 2) * dx + (yn - (y0 + y1) / 2) * dy) / (dx * dx + dy * dy)


def check_boxes(manifest: dict, draw: Path | None) -> None:
    """The boxes found against OpenCV's Haar cascade (an independent detector) by IoU, as they are and with
    Haar's boxes mapped onto BlazeFace's convention (BlazeFace's box runs from the brows to the chin, Haar's
    from the forehead to the mouth)."""
    import cv2  # the converter's environment only
    from PIL import ImageDraw

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    run_det = ort_runner(FACES_DIR / "detector.onnx")
    out, pairs = {}, []
    for key, path in photos():
        img = facedetect.load_photo(path)
        gray = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY)
        haar = [[float(x), float(y), float(x + w), float(y + h)] for x, y, w, h in
                cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))]
        faces = facedetect.detect(img, run_det, manifest["graphs"]["detector"])
        rows = []
        for f in faces:
            best = max(haar, key=lambda h: facedetect.iou(f["box"], h), default=None)
            rows.append({"box": f["box"], "score": f["score"], "keypoints": f["keypoints"], "haar_box": best})
            if best:
                pairs.append((f["box"], best))
        out[key] = {"size": list(img.size), "faces": rows, "haar_boxes": haar}
        if draw:
            draw.mkdir(parents=True, exist_ok=True)
            pic = img.copy()
            d = ImageDraw.Draw(pic)
            width = max(2, img.size[0] // 300)
            for h in haar:
                d.rectangle(h, outline=(255, 0, 0), width=width)
            for f in faces:
                d.rectangle(f["box"], outline=(0, 255, 0), width=width)
                for x, y in f["keypoints"]:
                    d.ellipse([x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width], fill=(0, 255, 255))
            pic.thumbnail((800, 800))
            pic.save(draw / (path.stem + ".png"))
    cal = haar_calibration(pairs)
    print(f"checked boxes: Haar -> BlazeFace convention: centre shift ({cal[0]:.3f}, {cal[1]:.3f}) x Haar width, "
          f"size x ({cal[2]:.3f}, {cal[3]:.3f})")
    for key, photo in out.items():
        for r in photo["faces"]:
            r["yaw_offset"] = yaw_offset(r["keypoints"])
            if r["haar_box"]:
                # The map fitted on the other photos' pairs only: the IoU of a photo the map never saw.
                others = [(b, h) for b, h in pairs if b is not r["box"]]
                r["iou_haar"] = facedetect.iou(r["box"], r["haar_box"])
                r["iou_haar_calibrated"] = facedetect.iou(r["box"], calibrated(r["haar_box"], cal))
                r["iou_haar_loo"] = facedetect.iou(r["box"], calibrated(r["haar_box"], haar_calibration(others)))
        print(f"  {key}: {len(photo['faces'])} face(s), Haar {len(photo['haar_boxes'])}; IoU (raw, calibrated, "
              "leave-one-out), yaw offset " +
              ", ".join(f"({r.get('iou_haar', 0):.3f}, {r.get('iou_haar_calibrated', 0):.3f}, "
                        f"{r.get('iou_haar_loo', 0):.3f}), {r['yaw_offset']:+.3f}" for r in photo["faces"]))
    existing = FACES_DIR / "checked_boxes.json"
    before = json.loads(existing.read_text()) if existing.exists() else {}
    notes, why = before.get("checked_by_eye", {}), before.get("below_0_8", {})
    write_json(existing, {
        "about": "Faces found by detector.onnx on each public-domain photo (boxes (xmin, ymin, xmax, ymax) and "
                 "keypoints in pixels of the upright photo), each against the best-overlapping box of OpenCV's "
                 f"Haar cascade (opencv-python-headless {cv2.__version__}, haarcascade_frontalface_default.xml, "
                 "scaleFactor 1.1, minNeighbors 5, minSize 30) by IoU: iou_haar as the boxes are, "
                 "iou_haar_calibrated with Haar's box mapped by the one fixed map haar_to_blazeface (medians "
                 "over all photos of the vertical shift and the size ratios; no horizontal shift: BlazeFace's box "
                 "runs from the brows to the chin, Haar's from the forehead to the mouth, and both are symmetric "
                 "about a frontal face), iou_haar_loo with the map fitted on the other photos only (the honest "
                 "figure: the map never saw the photo it checks). yaw_offset: the nose tip beside the eyes' "
                 "midpoint along the eye line, in inter-ocular distances (0: frontal). below_0_8: why a face's "
                 "iou_haar_loo is under 0.8. checked_by_eye: what was seen on the photos drawn by convert.py "
                 "--draw DIR (green: found, red: Haar, cyan: keypoints). Written by models/faces/convert.py.",
        "haar_to_blazeface": {"centre_shift_x_per_haar_width": cal[0], "centre_shift_y_per_haar_width": cal[1],
                              "width_ratio": cal[2], "height_ratio": cal[3]},
        "photos": out,
        "checked_by_eye": notes,
        "below_0_8": why,
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="parity, pins and boxes of the committed graphs only")
    ap.add_argument("--draw", type=Path, help="draw the found and Haar boxes on each photo into this folder")
    args = ap.parse_args()
    if not args.check:
        for name in GRAPHS:
            convert(name)
        write_licence()
        write_manifest()
    manifest = facedetect.load_manifest()
    for name, g in manifest["graphs"].items():
        assert sha256(FACES_DIR / g["file"]) == g["sha256"], f"{g['file']} does not match manifest.json"
    ok = parity(manifest)
    pin(manifest)
    check_boxes(manifest, args.draw)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
