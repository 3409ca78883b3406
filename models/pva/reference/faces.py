"""The worker's face location on a photo, as the plain reference of src/pipeline/face (issue 16): detection
(models/faces/facedetect.py: letterbox, anchors, decoding, weighted NMS, landmark crop), which face a job
means, the job's face box from the detection, the roll from the eye landmarks, the square crop around the
face turned upright (a similarity transform at the photo's scale, Pillow's bilinear affine), and the named
regions as landmark polygons in the model's crop, filled and dilated.

Each step mirrors one Rust function (named in its doc string); `tests/pipeline.rs`
(`python_reference_locates_turns_and_masks_a_real_photo`) compares the Rust worker with the fixture this
module writes, and `models/tests/test_faces.py` checks that this module still writes it:

    .venv/bin/python -m pva.reference.faces --write   # tests/data/faces/parity.json and its PNGs

Not here (as in the worker, but out of the fixture's reach): the second detection pass over tiles, which
runs only when the whole photo gives no face, and the resize of the upright crop to model size (Lanczos3
in the worker; the reference's callers resample, see `pva.reference.edit`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
FACES_DIR = ROOT / "models" / "faces"
if str(FACES_DIR) not in sys.path:
    sys.path.insert(0, str(FACES_DIR))
import facedetect  # noqa: E402

# src/pipeline/face/locate.rs
FOREHEAD = 0.2
SIMILAR_AREA = 0.5
MIN_TURN_DEGREES = 3.0
# src/pipeline/face/crop.rs
DEFAULT_MARGIN = 0.25
# src/pipeline/face/regions.rs: MediaPipe's canonical mesh indices.
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_BROW = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46]
LEFT_BROW = [300, 293, 334, 296, 336, 285, 295, 282, 283, 276]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
LOWER_FACE = [93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 2]
REGIONS = {
    "whole_face": [FACE_OVAL],
    "lower_face": [LOWER_FACE],
    "eyebrows": [RIGHT_BROW, LEFT_BROW],
    "eyes": [RIGHT_EYE, LEFT_EYE],
    "mouth": [LIPS],
}
DILATE = 0.04

FIXTURE_DIR = ROOT / "tests" / "data" / "faces"
FIXTURE_PHOTO = ROOT / "tests" / "data" / "images" / "hopper_turned.png"


def rust_round(x: float) -> float:
    """f64::round: halves away from zero (Python's round() goes to even)."""
    return math.copysign(math.floor(abs(x) + 0.5), x)


def area(b) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


class LocateError(Exception):
    """A face that cannot be taken: `code` is the job's failure code (or `no_such_index`)."""

    def __init__(self, code: str, boxes: list) -> None:
        super().__init__(f"{code}: {boxes}")
        self.code, self.boxes = code, boxes


def choose(faces: list[dict], choice) -> dict:
    """`locate::choose`: "largest", "single" (a reference's one clear face) or an int (left to right)."""
    by_area = sorted(faces, key=lambda f: -area(f["box"]))
    if not by_area:
        raise LocateError("no_face", [])
    largest = by_area[0]
    if choice == "largest":
        return largest
    if choice == "single":
        similar = [f["box"] for f in by_area if area(f["box"]) >= SIMILAR_AREA * area(largest["box"])]
        if len(similar) > 1:
            raise LocateError("ambiguous_face", similar)
        return largest
    left_to_right = sorted(faces, key=lambda f: (f["box"][0] + f["box"][2]) / 2)
    if choice >= len(left_to_right):
        raise LocateError("no_such_index", [f["box"] for f in left_to_right])
    return left_to_right[choice]


def face_box_of(face: dict) -> dict:
    """`locate::face_box_of`: the detector's box (brows to chin) extended up by FOREHEAD of its height,
    whole pixels outward."""
    x0, y0, x1, y1 = face["box"]
    y0 = y0 - FOREHEAD * (y1 - y0)
    x, y = math.floor(x0), math.floor(y0)
    return {"x": int(x), "y": int(y), "width": int(max(math.ceil(x1 - x), 1)), "height": int(max(math.ceil(y1 - y), 1))}


def eye_centres(points: np.ndarray) -> np.ndarray:
    """`FaceLandmarks::eye_centres`: the subject's right and left eye centres (corners 33, 133 and 362, 263)."""
    return np.array([(points[33, :2] + points[133, :2]) / 2, (points[362, :2] + points[263, :2]) / 2])


def locate(img: Image.Image, run_det, run_lm, manifest: dict, choice="largest", min_side: int = 0) -> dict:
    """`locate::locate_face`: detection, choice, size check, landmarks, roll."""
    graphs = manifest["graphs"]
    faces = facedetect.detect(img, run_det, graphs["detector"])
    face = choose(faces, choice)
    box = face_box_of(face)
    side = max(box["width"], box["height"])
    if side < min_side:
        raise LocateError("face_too_small", [face["box"]])
    lm = facedetect.landmarks(img, face, run_lm, graphs["landmarks"])
    right, left = eye_centres(lm["points"])
    roll = math.atan2(left[1] - right[1], left[0] - right[0])
    return {
        "face_box": box,
        "detection": face["box"],
        "faces_found": len(faces),
        "presence": float(lm["presence"]),
        "roll": roll,
        "turn": roll if abs(math.degrees(roll)) >= MIN_TURN_DEGREES else 0.0,
        "landmarks": np.asarray(lm["points"])[:, :2],
    }


def crop_rect(box: dict, margin: float, img_w: int, img_h: int) -> dict:
    """`crop::crop_rect`: the square around the face box with its margin, slid inside the image."""
    wanted = max(box["width"], box["height"]) * (1.0 + 2.0 * margin)
    side = int(min(max(rust_round(wanted), 1.0), min(img_w, img_h)))

    def place(start: int, extent: int, limit: int) -> int:
        centre = start + extent / 2
        origin = rust_round(centre - side / 2)
        return int(min(max(origin, 0.0), limit - side))

    return {"x": place(box["x"], box["width"], img_w), "y": place(box["y"], box["height"], img_h), "size": side}


def crop_to_photo(rect: dict, roll: float) -> list[float]:
    """`align::crop_to_photo`: upright crop pixels -> photo pixels (x along the eye line), as Pillow's
    affine data."""
    c, s = math.cos(roll), math.sin(roll)
    half = rect["size"] / 2
    cx, cy = rect["x"] + half, rect["y"] + half
    return [c, -s, cx - (c * half - s * half), s, c, cy - (s * half + c * half)]


def upright(img: Image.Image, rect: dict, roll: float) -> Image.Image:
    """`align::upright`: the rect's square turned by -roll about its centre (bilinear, black outside)."""
    return img.transform((rect["size"], rect["size"]), Image.Transform.AFFINE, tuple(crop_to_photo(rect, roll)),
                         Image.Resampling.BILINEAR)


def paper_alignment(points: np.ndarray) -> tuple[list[float], int]:
    """`align::paper_alignment`: CelebA-HQ's / FFHQ's alignment square (Karras et al.'s dataset_tool.py)
    from the eye centres and the mouth corners (61, 291), as Pillow's affine data from crop pixels to photo
    pixels and the crop's side (at the photo's scale)."""
    right_eye, left_eye = eye_centres(points)
    mouth = (points[61, :2] + points[291, :2]) / 2
    e = (right_eye + left_eye) / 2
    ee, em = left_eye - right_eye, mouth - e
    x = ee - np.array([-em[1], em[0]])
    x = x / math.hypot(*x) * max(2.0 * math.hypot(*ee), 1.8 * math.hypot(*em))
    y = np.array([-x[1], x[0]])
    c = e + 0.1 * em
    side = max(rust_round(2.0 * math.hypot(*x)), 1.0)
    k = 2.0 / side
    return [x[0] * k, y[0] * k, c[0] - x[0] - y[0], x[1] * k, y[1] * k, c[1] - x[1] - y[1]], int(side)


def paper_aligned(img: Image.Image, points: np.ndarray) -> Image.Image:
    """`align::paper_aligned`: the paper's aligned face crop of a reference (models with the paper's face
    window), bilinear at the photo's scale, black past the photo."""
    m, side = paper_alignment(points)
    return img.transform((side, side), Image.Transform.AFFINE, tuple(m), Image.Resampling.BILINEAR)


def points_in_crop(points: np.ndarray, rect: dict, roll: float, size: int) -> np.ndarray:
    """`regions::points_in_crop`: photo points in a size x size model crop of rect turned by roll."""
    c, s = math.cos(roll), math.sin(roll)
    half = rect["size"] / 2
    cx, cy = rect["x"] + half, rect["y"] + half
    k = size / rect["size"]
    dx, dy = points[:, 0] - cx, points[:, 1] - cy
    return np.stack([(c * dx + s * dy + half) * k, (-s * dx + c * dy + half) * k], axis=1)


def inside(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`regions::inside`: the even-odd rule at points (x, y)."""
    odd = np.zeros(x.shape, dtype=bool)
    j = len(poly) - 1
    for i in range(len(poly)):
        (xi, yi), (xj, yj) = poly[i], poly[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        odd ^= cross
        j = i
    return odd


def landmark_mask(region: str, points: np.ndarray, size: int) -> np.ndarray:
    """`regions::landmark_mask`: a pixel is masked (255) when its centre lies inside one of the region's
    polygons or within DILATE * size pixels (Euclidean, between pixel centres) of such a pixel."""
    ys, xs = np.mgrid[0:size, 0:size]
    xc, yc = xs + 0.5, ys + 0.5
    filled = np.zeros((size, size), dtype=bool)
    for indices in REGIONS[region]:
        poly = points[[i for i in indices if i < len(points)]]
        if len(poly) >= 3:
            filled |= inside(poly, xc, yc)
    reach = max(DILATE * size, 1.0)
    on = np.argwhere(filled)
    if len(on) == 0:
        return np.zeros((size, size), dtype=np.uint8)
    grid = np.stack([ys.ravel(), xs.ravel()], axis=1)
    nearest = np.full(len(grid), np.inf)
    for chunk in np.array_split(on, max(1, len(on) // 512)):
        d = ((grid[:, None, :] - chunk[None, :, :]) ** 2).sum(-1).min(1)
        nearest = np.minimum(nearest, d)
    return np.where(nearest.reshape(size, size) <= reach * reach, 255, 0).astype(np.uint8)


def ort_runs() -> tuple:
    import onnxruntime as ort

    def runner(path: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})

    return runner(FACES_DIR / "detector.onnx"), runner(FACES_DIR / "landmarks.onnx")


def fixture(photo: Path, resolution: int, margin: float, min_side: int) -> tuple[dict, dict[str, Image.Image]]:
    """What the worker must reproduce on `photo` for a model of `resolution` px crops: the face found, its
    crop, the upright crop at the photo's scale, the paper's aligned crop and the five region masks at model
    size."""
    manifest = facedetect.load_manifest()
    run_det, run_lm = ort_runs()
    img = facedetect.load_photo(photo)
    found = locate(img, run_det, run_lm, manifest, "largest", min_side)
    rect = crop_rect(found["face_box"], margin, *img.size)
    images = {"upright.png": upright(img, rect, found["turn"]), "paper.png": paper_aligned(img, found["landmarks"])}
    points = points_in_crop(found["landmarks"], rect, found["turn"], resolution)
    for region in REGIONS:
        images[f"mask_{region}.png"] = Image.fromarray(landmark_mask(region, points, resolution))
    eyes = eye_centres(found["landmarks"])
    data = {
        "about": "Written by `python -m pva.reference.faces --write` (models/pva/reference/faces.py): the face "
                 "the Python reference locates on the photo, its crop, the upright crop at the photo's scale "
                 "(upright.png), the paper's aligned reference crop (paper.png) and the named regions' landmark masks at model size (mask_*.png). "
                 "tests/pipeline.rs compares the worker with it.",
        "photo": str(photo.relative_to(ROOT)),
        "resolution": resolution,
        "margin": margin,
        "min_side": min_side,
        "face_box": found["face_box"],
        "detection": [round(float(v), 4) for v in found["detection"]],
        "faces_found": found["faces_found"],
        "presence": round(found["presence"], 5),
        "roll": round(found["roll"], 6),
        "turn": round(found["turn"], 6),
        "eye_centres": [[round(float(v), 4) for v in e] for e in eyes],
        "crop_rect": rect,
    }
    return data, images


def make_photo(path: Path = FIXTURE_PHOTO) -> None:
    """The fixture photo: tests/data/images/hopper_128x150.png turned 20° counter-clockwise (Pillow,
    bilinear, the frame expanded), so the face has a roll of about -20°."""
    src = Image.open(path.parent / "hopper_128x150.png").convert("RGB")
    src.rotate(20, resample=Image.Resampling.BILINEAR, expand=True).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write the fixture under tests/data/faces")
    ap.add_argument("--photo", action="store_true", help="also remake the fixture photo")
    args = ap.parse_args(argv)
    if args.photo:
        make_photo()
    # The tiny model's crops: 64 px, faces from 28 px (locate::min_face_side).
    data, images = fixture(FIXTURE_PHOTO, 64, DEFAULT_MARGIN, 28)
    print(json.dumps({k: v for k, v in data.items() if k != "about"}))
    if args.write:
        FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
        (FIXTURE_DIR / "parity.json").write_text(json.dumps(data, indent=1) + "\n")
        for name, im in images.items():
            im.save(FIXTURE_DIR / name, optimize=True)


if __name__ == "__main__":
    main()
