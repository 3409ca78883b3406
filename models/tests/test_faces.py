"""The bundled face graphs (models/faces, issue 16): their manifest, and their outputs on the public-domain
photos pinned (pinned.json, written by models/faces/convert.py, which also checks the graphs against the
original .tflite runtime outside CI). Pre- and post-processing: models/faces/facedetect.py."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
FACES_DIR = ROOT / "models" / "faces"
sys.path.insert(0, str(FACES_DIR))
import facedetect  # noqa: E402

MANIFEST = facedetect.load_manifest()
PINNED = json.loads((FACES_DIR / "pinned.json").read_text())
CHECKED = json.loads((FACES_DIR / "checked_boxes.json").read_text())
# pinned.json's keys are paths from the repository (examples/...) or from its parent (shared/...).
PHOTOS = {key: (ROOT / key if key.startswith("examples/") else ROOT.parent / key) for key in PINNED["photos"]}


ORT_TYPES = {"float32": "tensor(float)"}


def photo(key: str):
    if not PHOTOS[key].exists():
        pytest.skip(f"{PHOTOS[key]} is not here (shared/ beside the checkout)")
    return facedetect.load_photo(PHOTOS[key])


@pytest.fixture(scope="module")
def runs() -> dict[str, facedetect.RunGraph]:
    out = {}
    for name, graph in MANIFEST["graphs"].items():
        sess = ort.InferenceSession(str(FACES_DIR / graph["file"]), providers=["CPUExecutionProvider"])
        out[name] = lambda x, sess=sess: sess.run(None, {sess.get_inputs()[0].name: x})
    return out


@pytest.mark.parametrize("name", sorted(MANIFEST["graphs"]))
def test_manifest_matches_the_files(name: str) -> None:
    """Each graph's file has the manifest's sha256 and size, and its inputs and outputs are the contract's."""
    graph = MANIFEST["graphs"][name]
    data = (FACES_DIR / graph["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == graph["sha256"]
    assert len(data) == graph["bytes"]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for got, want in zip(sess.get_inputs() + sess.get_outputs(), graph["inputs"] + graph["outputs"], strict=True):
        assert (got.name, list(got.shape), got.type) == (want["name"], want["shape"], ORT_TYPES[want["dtype"]])
    assert MANIFEST["licence"]["spdx"] == "Apache-2.0" and MANIFEST["licence"]["notice"]
    assert graph["source"]["package"] == "mediapipe" and graph["source"]["version"] == "0.10.14"


def test_anchors_match_the_detector_output() -> None:
    """The anchors the manifest describes are as many as the detector's rows, grid by grid."""
    det = MANIFEST["graphs"]["detector"]
    anchors = facedetect.ssd_anchors(det["anchors"])
    assert len(anchors) == det["outputs"][0]["shape"][1] == det["outputs"][1]["shape"][1]
    grids = det["anchors"]["grids"]
    assert len(anchors) == sum(g["cells"][0] * g["cells"][1] * g["anchors_per_cell"] for g in grids)
    # The first anchor of the second grid is the centre of its first cell.
    first = grids[0]["cells"][0] * grids[0]["cells"][1] * grids[0]["anchors_per_cell"]
    assert anchors[first].tolist() == [0.5 / grids[1]["cells"][1], 0.5 / grids[1]["cells"][0]]


def close(got, want, tol: float, what: str) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    assert np.abs(got - want).max(initial=0.0) <= tol, f"{what}: {got.tolist()} vs pinned {want.tolist()}"


@pytest.mark.parametrize("key", sorted(PINNED["photos"]))
def test_outputs_on_photos_are_pinned(key: str, runs) -> None:
    """Faces found (score, box, keypoints) and the best face's landmarks match the pins."""
    pinned, tol = PINNED["photos"][key], PINNED["tolerance"]
    got = facedetect.summarise(photo(key), runs["detector"], runs["landmarks"], MANIFEST, pinned["landmarks"]["ids"])
    assert got["size"] == pinned["size"]
    assert len(got["faces"]) == len(pinned["faces"]), f"{key}: {len(got['faces'])} faces found"
    for i, (g, p) in enumerate(zip(got["faces"], pinned["faces"])):
        close(g["score"], p["score"], tol["score"], f"{key} face {i} score")
        close(g["box"], p["box"], tol["box_px"], f"{key} face {i} box")
        close(g["keypoints"], p["keypoints"], tol["keypoint_px"], f"{key} face {i} keypoints")
    close(got["landmarks"]["presence"], pinned["landmarks"]["presence"], tol["presence"], f"{key} presence")
    close(got["landmarks"]["points"], pinned["landmarks"]["points"], tol["landmark_px"], f"{key} landmarks")


@pytest.mark.parametrize("key", sorted(CHECKED["photos"]))
def test_checked_boxes_are_the_pinned_faces(key: str) -> None:
    """checked_boxes.json speaks of the faces the graphs find (pinned.json), and says how each was checked."""
    checked, pinned = CHECKED["photos"][key]["faces"], PINNED["photos"][key]["faces"]
    assert len(checked) == len(pinned) >= 1
    for c, p in zip(checked, pinned):
        assert facedetect.iou(c["box"], p["box"]) > 0.99
        assert c["iou_haar"] > 0.5, f"{key}: the Haar cascade found no box near {c['box']}"
    assert CHECKED["checked_by_eye"][key]


def eye_centres(points: np.ndarray) -> np.ndarray:
    """The subject's right and left eye centres: the means of their corner landmarks (33, 133 and 362, 263)."""
    return np.stack([points[[33, 133], :2].mean(0), points[[362, 263], :2].mean(0)])


@pytest.mark.parametrize("key", ["examples/photos/obama.jpg", "shared/data/faces/grace_hopper.jpg"])
@pytest.mark.parametrize("degrees", [-30, -15, 15, 30])
def test_eye_landmarks_follow_a_rotated_photo(key: str, degrees: int, runs) -> None:
    """On a rotated copy, the eye landmarks land within 5% of the inter-ocular distance of the original's
    eye landmarks rotated the same way (the crop's rotation from the detector's eye keypoints works)."""
    img = photo(key)
    det, lm = MANIFEST["graphs"]["detector"], MANIFEST["graphs"]["landmarks"]
    face = facedetect.detect(img, runs["detector"], det)[0]
    eyes = eye_centres(facedetect.landmarks(img, face, runs["landmarks"], lm)["points"])
    turned = img.rotate(degrees, resample=facedetect.Image.Resampling.BILINEAR, expand=True)
    faces = facedetect.detect(turned, runs["detector"], det)
    assert faces, f"{key} rotated {degrees}°: no face"
    got = eye_centres(facedetect.landmarks(turned, faces[0], runs["landmarks"], lm)["points"])
    # Pillow rotates counter-clockwise about the centre; with expand the centre moves to the new centre.
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    want = (eyes - np.array(img.size) / 2) @ rot.T + np.array(turned.size) / 2
    iod = np.linalg.norm(eyes[1] - eyes[0])
    err = np.linalg.norm(got - want, axis=1).max() / iod
    assert err <= 0.05, f"{key} rotated {degrees}°: eye error {err:.3f} of the inter-ocular distance"
