"""Pre- and post-processing of the bundled face graphs (numpy + Pillow only), as MediaPipe does it.

Shared by `convert.py` (parity, pins and checked boxes, run in a separate virtual environment) and the CI
test `models/tests/test_faces.py` (the repository's .venv). The numbers it uses (input sizes, value ranges,
anchor options, decoding scales, thresholds) are read from `manifest.json`, the contract the Rust decoding
will follow; this module is the plain reference of that contract, not a production pipeline.

Coordinates: boxes are (xmin, ymin, xmax, ymax) and points (x, y) in pixels of the upright photo (after its
EXIF orientation), unless a name says `_norm` (0..1 of the model input).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

FACES_DIR = Path(__file__).resolve().parent
MANIFEST = FACES_DIR / "manifest.json"

# A graph as a function: NHWC float32 input -> its outputs in manifest order.
RunGraph = Callable[[np.ndarray], list[np.ndarray]]


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


def load_photo(path: Path) -> Image.Image:
    """The photo upright (EXIF orientation applied) as RGB."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def to_tensor(img: Image.Image, value_range: list[float]) -> np.ndarray:
    """An RGB image as a [1, H, W, 3] float32 tensor, 0..255 mapped linearly onto value_range."""
    lo, hi = value_range
    x = np.asarray(img, dtype=np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    return x[None]


def letterbox(img: Image.Image, size: int) -> tuple[Image.Image, tuple[float, float, float]]:
    """The whole photo scaled to fit size x size (aspect kept, bilinear), centred on black.

    Returns the square image and (scale, pad_x, pad_y): input pixel = photo pixel * scale + pad."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size))
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), (pad_x, pad_y))
    return canvas, (nw / w, pad_x, pad_y)


def ssd_anchors(opts: dict) -> np.ndarray:
    """Anchor centres [N, 2] (x, y, 0..1) as MediaPipe's SsdAnchorsCalculator makes them with
    fixed_anchor_size (every anchor is 1 x 1, so only the centres matter): the layers that share a stride
    are one grid, each cell holding (aspect ratios + 1 interpolated) anchors per layer, row-major y, x."""
    assert opts["fixed_anchor_size"]
    strides, n_layers = opts["strides"], opts["num_layers"]
    per_anchor = len(opts["aspect_ratios"]) + (1 if opts["interpolated_scale_aspect_ratio"] > 0 else 0)
    out, layer = [], 0
    while layer < n_layers:
        last = layer
        while last < n_layers and strides[last] == strides[layer]:
            last += 1
        per_cell = per_anchor * (last - layer)
        gh = math.ceil(opts["input_size_height"] / strides[layer])
        gw = math.ceil(opts["input_size_width"] / strides[layer])
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        centres = np.stack([(xs + opts["anchor_offset_x"]) / gw, (ys + opts["anchor_offset_y"]) / gh], -1)
        out.append(np.repeat(centres.reshape(-1, 2), per_cell, axis=0))
        layer = last
    return np.concatenate(out).astype(np.float64)


def iou(a, b) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def decode(regressors: np.ndarray, classificators: np.ndarray, graph: dict) -> list[dict]:
    """Raw detector outputs -> detections (normalised to the input), after MediaPipe's
    TensorsToDetectionsCalculator and its weighted non-maximum suppression, best first."""
    dec = graph["decoding"]
    anchors = ssd_anchors(graph["anchors"])
    raw = regressors.reshape(-1, dec["num_coords"]).astype(np.float64)
    clip = dec["score_clipping_thresh"]
    logits = np.clip(classificators.reshape(-1).astype(np.float64), -clip, clip)
    scores = 1.0 / (1.0 + np.exp(-logits))
    cx = raw[:, 0] / dec["x_scale"] + anchors[:, 0]
    cy = raw[:, 1] / dec["y_scale"] + anchors[:, 1]
    w = raw[:, 2] / dec["w_scale"]
    h = raw[:, 3] / dec["h_scale"]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    kp = raw[:, 4:4 + 2 * dec["num_keypoints"]].reshape(-1, dec["num_keypoints"], 2)
    kp = kp / np.array([dec["x_scale"], dec["y_scale"]]) + anchors[:, None, :]
    keep = np.nonzero(scores >= dec["min_score_thresh"])[0]
    order = keep[np.argsort(-scores[keep], kind="stable")]
    # Weighted NMS: each cluster (IoU above the threshold with its best) is replaced by the score-weighted
    # mean of its boxes and keypoints, with the best member's score.
    out = []
    remaining = list(order)
    while remaining:
        best = remaining[0]
        cluster = [i for i in remaining if iou(boxes[best], boxes[i]) > dec["min_suppression_threshold"]]
        remaining = [i for i in remaining if i not in cluster]
        wts = scores[cluster][:, None]
        out.append({
            "score": float(scores[best]),
            "box_norm": (boxes[cluster] * wts).sum(0) / wts.sum(),
            "keypoints_norm": (kp[cluster] * wts[:, :, None]).sum(0) / wts.sum(),
        })
    return out


def detect(img: Image.Image, run: RunGraph, graph: dict) -> list[dict]:
    """Faces in a photo: the whole photo letterboxed into the detector, detections mapped back to photo
    pixels ("box", "keypoints", "score"), best first."""
    size = graph["inputs"][0]["shape"][1]
    square, (scale, pad_x, pad_y) = letterbox(img, size)
    regressors, classificators = run(to_tensor(square, graph["inputs"][0]["value_range"]))
    faces = []
    for d in decode(regressors, classificators, graph):
        box = (d["box_norm"] * size - [pad_x, pad_y, pad_x, pad_y]) / scale
        kps = (d["keypoints_norm"] * size - [pad_x, pad_y]) / scale
        faces.append({"score": d["score"], "box": box.tolist(), "keypoints": kps.tolist()})
    return faces


def landmark_roi(face: dict, graph: dict) -> dict:
    """The landmark model's crop from a detection, as MediaPipe's face_landmark_front graph makes it: centred
    on the box, rotated so that the line from keypoint 0 (the subject's right eye) to keypoint 1 (left eye)
    is horizontal, a square of the box's longer side times the scale."""
    roi = graph["roi_from_detection"]
    (x0, y0), (x1, y1) = (face["keypoints"][k] for k in roi["rotation_keypoints"])
    rotation = -math.atan2(-(y1 - y0), x1 - x0)  # target angle 0
    xmin, ymin, xmax, ymax = face["box"]
    side = max(xmax - xmin, ymax - ymin) * roi["scale"]
    return {"cx": (xmin + xmax) / 2, "cy": (ymin + ymax) / 2, "size": side, "rotation": rotation}


def roi_to_photo(roi: dict, size: int) -> np.ndarray:
    """The 2x3 affine map from crop pixels (0..size) to photo pixels."""
    c, s = math.cos(roi["rotation"]), math.sin(roi["rotation"])
    k = roi["size"] / size
    # Crop pixel (u, v) -> offset from the crop centre, scaled, rotated by the ROI's rotation, + centre.
    a, b = k * c, -k * s
    d, e = k * s, k * c
    tx = roi["cx"] - (a * size / 2 + b * size / 2)
    ty = roi["cy"] - (d * size / 2 + e * size / 2)
    return np.array([[a, b, tx], [d, e, ty]])


def crop_roi(img: Image.Image, roi: dict, size: int) -> Image.Image:
    """The rotated square crop (bilinear, black outside the photo)."""
    m = roi_to_photo(roi, size)
    return img.transform((size, size), Image.Transform.AFFINE, tuple(m.reshape(-1)), Image.Resampling.BILINEAR)


def landmarks(img: Image.Image, face: dict, run: RunGraph, graph: dict) -> dict:
    """The 468 landmarks of a detected face in photo pixels ([468, 3]: x, y, and z in the same pixel
    scale as x), and the face-presence score (sigmoid of the face flag)."""
    size = graph["inputs"][0]["shape"][1]
    roi = landmark_roi(face, graph)
    crop = crop_roi(img, roi, size)
    raw, flag = run(to_tensor(crop, graph["inputs"][0]["value_range"]))
    pts = raw.reshape(-1, 3).astype(np.float64)
    m = roi_to_photo(roi, size)
    xy = pts[:, :2] @ m[:, :2].T + m[:, 2]
    z = pts[:, 2:] * roi["size"] / size
    presence = 1 / (1 + math.exp(-float(flag.reshape(-1)[0])))
    return {"points": np.concatenate([xy, z], 1), "presence": presence, "roi": roi}


def summarise(img: Image.Image, run_detector: RunGraph, run_landmarks: RunGraph, manifest: dict,
              landmark_ids: list[int]) -> dict:
    """What CI pins of one photo: the faces found (score, box, 6 keypoints) and, for the best face, the
    landmark presence and a few landmarks."""
    faces = detect(img, run_detector, manifest["graphs"]["detector"])
    out = {"size": list(img.size), "faces": [
        {"score": f["score"], "box": f["box"], "keypoints": f["keypoints"]} for f in faces]}
    if faces:
        lm = landmarks(img, faces[0], run_landmarks, manifest["graphs"]["landmarks"])
        out["landmarks"] = {"presence": lm["presence"], "ids": landmark_ids,
                            "points": lm["points"][landmark_ids].tolist()}
    return out
