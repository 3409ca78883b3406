//! Which face of a photo a job means: the faces the detector finds, one of them chosen as the job's
//! image asks (`largest`, an index left to right, or the one clear face a reference must have), its
//! size checked against what the model needs, and the [`FaceBox`] the crop is built from.

use image::RgbImage;

use super::align::upright;
use super::crop::{crop_rect, FaceBox, FaceError};
use super::detect::{detect_faces, face_landmarks, DetectedFace};
use crate::engine::{EngineError, FaceEngine};
use crate::model::Manifest;

/// How a job's image picks its face when it has no `face_box`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceChoice {
    /// The face with the largest box (the target's default).
    Largest,
    /// The face at this index, faces numbered from 0 left to right (by their boxes' centres).
    Index(usize),
    /// The one clear face (a reference's default): the largest, refused when another face is of
    /// similar size.
    Single,
}

/// One image to find a face in: its label for messages (names the field and key) and the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaceRequest {
    /// E.g. ``target (`photos/a.jpg`)``.
    pub what: String,
    /// Which face.
    pub choice: FaceChoice,
}

/// The face found for a job's image.
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedFace {
    /// The box the crop is built from, in the job's `face_box` convention (forehead to chin).
    pub face_box: FaceBox,
    /// The detection it came from (box brows to chin, score, keypoints).
    pub detection: DetectedFace,
    /// How many faces the detector found in the image.
    pub faces_found: usize,
    /// The landmark model's face presence on the chosen face (0..1).
    pub landmark_presence: f64,
    /// The face's roll: the angle of the line from the subject's right eye centre to their left eye
    /// centre (landmarks), radians, `atan2(dy, dx)` with y down.
    pub roll: f64,
    /// The roll the crop is turned by: `roll`, or 0 below [`MIN_TURN_DEGREES`].
    pub turn: f64,
    /// The 468 landmarks (x, y) in photo pixels.
    pub landmarks: Vec<[f64; 2]>,
    /// For a reference, its aligned crop, which the edit and tuning then use: the paper's alignment
    /// (`super::paper_aligned`) for a model with the paper's face window, or, for a turned face, its
    /// square crop around the face box turned upright at the photo's scale ([`upright_reference`]).
    pub upright: Option<RgbImage>,
}

impl LocatedFace {
    /// A reference photo as the edit and tuning take it once its face is found: its aligned crop (a
    /// square face, see `upright`) when it has one, else the photo with the found face box.
    pub fn reference_input(&self, photo: RgbImage) -> (RgbImage, Option<FaceBox>) {
        match &self.upright {
            Some(upright) => (upright.clone(), None),
            None => (photo, Some(self.face_box)),
        }
    }
}

/// Below this roll (degrees) the crop is not turned: the named regions' boxes still fit, and the
/// photo is not resampled once more.
pub const MIN_TURN_DEGREES: f64 = 3.0;

/// Why no face could be taken from an image.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The detector found nothing above its score threshold.
    #[error("no face found")]
    NoFace,
    /// `{"index": N}` past the faces found.
    #[error("no face at index {index}: {} found (numbered from 0, left to right) at {}", boxes.len(), list(boxes))]
    NoSuchIndex {
        /// The index asked for.
        index: usize,
        /// The faces found, left to right.
        boxes: Vec<[f64; 4]>,
    },
    /// A reference with two or more faces of similar size.
    #[error("{} faces of similar size at {} (a reference must show one clear face: give a face_box or \"face\": {{\"index\": N}})", boxes.len(), list(boxes))]
    Ambiguous {
        /// The similar faces' boxes, largest first.
        boxes: Vec<[f64; 4]>,
    },
    /// The chosen face is below the model's minimum size.
    #[error(
        "the face at {} is {side:.0} px, the model needs at least {min} px",
        list(std::slice::from_ref(bbox))
    )]
    TooSmall {
        /// The face's box.
        bbox: [f64; 4],
        /// Its longer side (of the crop's face box).
        side: f64,
        /// The minimum.
        min: u32,
    },
    /// A face graph failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Boxes as `[xmin, ymin, xmax, ymax]` in whole pixels, for messages.
fn list(boxes: &[[f64; 4]]) -> String {
    boxes
        .iter()
        .map(|b| format!("[{:.0}, {:.0}, {:.0}, {:.0}]", b[0], b[1], b[2], b[3]))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A second face whose box area is at least this share of the largest one's makes a reference
/// ambiguous (sides within about 70% of each other: two people side by side, not a face in the
/// background).
pub const SIMILAR_AREA: f64 = 0.5;

/// How far the detector's box (brows to chin, MediaPipe's convention) is extended upwards, as a
/// share of its height, to give the job's `face_box` convention (forehead to chin, as the examples'
/// hand-drawn boxes): on the upright example photos the extended box has IoU 0.89 (obama.jpg) and
/// 0.90 (obama3.jpg) with the hand-drawn one (0.70 on obama2.jpg, a turned head).
pub const FOREHEAD: f64 = 0.2;

/// The smallest face (longer side of its `face_box`, in photo pixels) a model edits: a quarter of
/// the larger of its crop resolution and its face embedder's source size. The crop around a face
/// box is about 1.3 times the box (`pipeline.face_margin`), so a face of a quarter of the model's
/// side is upsampled about 3 times into the model's crop: below that the model reads and repaints
/// interpolation blur, the identity embedding sees a few dozen pixels of face, and the paste-back
/// lays a blurred face into a sharp photo. For sd2 (512 px crops) 128 px; for the tiny and demo
/// models (64 px crops, 112 px embedder input) 28 px.
pub fn min_face_side(manifest: &Manifest) -> u32 {
    manifest.resolution.max(manifest.face.source_size()) / 4
}

/// The job's `face_box` from a detection: the detector's box extended up by [`FOREHEAD`], in whole
/// pixels (outward).
pub fn face_box_of(d: &DetectedFace) -> FaceBox {
    let [x0, y0, x1, y1] = d.bbox;
    let y0 = y0 - FOREHEAD * (y1 - y0);
    let (x, y) = (x0.floor(), y0.floor());
    FaceBox {
        x: x as i32,
        y: y as i32,
        width: (x1 - x).ceil().max(1.0) as u32,
        height: (y1 - y).ceil().max(1.0) as u32,
    }
}

fn area(b: &[f64; 4]) -> f64 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Picks a face among detections as `choice` says (no size check).
pub fn choose(faces: &[DetectedFace], choice: FaceChoice) -> Result<&DetectedFace, LocateError> {
    let mut by_area: Vec<&DetectedFace> = faces.iter().collect();
    by_area.sort_by(|a, b| area(&b.bbox).total_cmp(&area(&a.bbox)));
    let largest = *by_area.first().ok_or(LocateError::NoFace)?;
    match choice {
        FaceChoice::Largest => Ok(largest),
        FaceChoice::Single => {
            let similar: Vec<[f64; 4]> = by_area
                .iter()
                .filter(|f| area(&f.bbox) >= SIMILAR_AREA * area(&largest.bbox))
                .map(|f| f.bbox)
                .collect();
            if similar.len() > 1 {
                return Err(LocateError::Ambiguous { boxes: similar });
            }
            Ok(largest)
        }
        FaceChoice::Index(index) => {
            let mut left_to_right: Vec<&DetectedFace> = faces.iter().collect();
            let centre = |f: &DetectedFace| (f.bbox[0] + f.bbox[2]) / 2.0;
            left_to_right.sort_by(|a, b| centre(a).total_cmp(&centre(b)));
            left_to_right
                .get(index)
                .copied()
                .ok_or_else(|| LocateError::NoSuchIndex {
                    index,
                    boxes: left_to_right.iter().map(|f| f.bbox).collect(),
                })
        }
    }
}

/// The face of `img` that `choice` names: detection, choice, landmarks of the chosen face, and the
/// size check against `min_side` (see [`min_face_side`]).
pub fn locate_face(
    engine: &mut dyn FaceEngine,
    img: &RgbImage,
    choice: FaceChoice,
    min_side: u32,
) -> Result<LocatedFace, LocateError> {
    let faces = detect_faces(engine, img)?;
    let face = choose(&faces, choice)?.clone();
    let face_box = face_box_of(&face);
    let side = f64::from(face_box.width.max(face_box.height));
    if side < f64::from(min_side) {
        return Err(LocateError::TooSmall {
            bbox: face.bbox,
            side,
            min: min_side,
        });
    }
    let landmarks = face_landmarks(engine, img, &face)?;
    let [right, left] = landmarks.eye_centres();
    let roll = (left[1] - right[1]).atan2(left[0] - right[0]);
    Ok(LocatedFace {
        face_box,
        detection: face,
        faces_found: faces.len(),
        landmark_presence: landmarks.presence,
        roll,
        turn: if roll.abs().to_degrees() >= MIN_TURN_DEGREES {
            roll
        } else {
            0.0
        },
        landmarks: landmarks.points.iter().map(|p| [p[0], p[1]]).collect(),
        upright: None,
    })
}

/// A found face's square crop (its face box with `margin`, as every crop) turned upright at the
/// photo's scale, when its roll is turned (`turn` not 0): an aligned, square face crop.
pub fn upright_reference(
    img: &RgbImage,
    found: &LocatedFace,
    margin: f32,
) -> Result<Option<RgbImage>, FaceError> {
    if found.turn == 0.0 {
        return Ok(None);
    }
    let rect = crop_rect(found.face_box, margin, img.width(), img.height())?;
    Ok(Some(upright(img, rect, found.turn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x0: f64, y0: f64, side: f64) -> DetectedFace {
        DetectedFace {
            score: 0.9,
            bbox: [x0, y0, x0 + side, y0 + side],
            keypoints: vec![[0.0; 2]; 6],
        }
    }

    #[test]
    fn largest_index_and_single_pick_as_the_schema_says() {
        let faces = [face(300.0, 10.0, 100.0), face(10.0, 10.0, 60.0)];
        assert_eq!(choose(&faces, FaceChoice::Largest).unwrap(), &faces[0]);
        assert_eq!(choose(&faces, FaceChoice::Index(0)).unwrap(), &faces[1]);
        assert_eq!(choose(&faces, FaceChoice::Index(1)).unwrap(), &faces[0]);
        let err = choose(&faces, FaceChoice::Index(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 found") && err.contains("[10, 10, 70, 70] and [300"),
            "{err}"
        );
        // 60x60 is 36% of 100x100: a smaller face in the background, not ambiguous.
        assert_eq!(choose(&faces, FaceChoice::Single).unwrap(), &faces[0]);
        let two = [face(300.0, 10.0, 100.0), face(10.0, 10.0, 80.0)];
        let err = choose(&two, FaceChoice::Single).unwrap_err();
        assert!(matches!(err, LocateError::Ambiguous { ref boxes } if boxes.len() == 2));
        assert!(
            err.to_string()
                .contains("[300, 10, 400, 110] and [10, 10, 90, 90]"),
            "{err}"
        );
        assert!(matches!(
            choose(&[], FaceChoice::Largest),
            Err(LocateError::NoFace)
        ));
    }

    #[test]
    fn the_face_box_adds_the_forehead() {
        let b = face_box_of(&face(10.5, 100.0, 100.0));
        assert_eq!(
            b,
            FaceBox {
                x: 10,
                y: 80,
                width: 101,
                height: 120
            }
        );
    }

    /// Two people side by side (two public-domain photos at one height): `largest` and `index` pick
    /// as asked, a reference fails as ambiguous naming both boxes; a face below the minimum size is
    /// refused with its size (a threshold above the face, then the photo shrunk to a 20 px face); a
    /// face cut by the border is found, its box reaching past the edge; a flat image has none.
    #[test]
    fn two_people_and_a_small_face_on_the_graphs() {
        use crate::engine::{EngineSettings, OrtFaces};
        use crate::pipeline::image::{decode, DecodeLimits};
        let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let photo = |name: &str| {
            let bytes = std::fs::read(repo.join("examples/photos").join(name)).unwrap();
            decode(&bytes, &DecodeLimits::default()).unwrap()
        };
        let (left, right) = (photo("obama.jpg"), photo("obama2.jpg"));
        let height = 600;
        let scaled = |img: &RgbImage| {
            let width = img.width() * height / img.height();
            image::imageops::resize(img, width, height, image::imageops::FilterType::Triangle)
        };
        let (left, right) = (scaled(&left), scaled(&right));
        let mut both = RgbImage::new(left.width() + right.width(), height);
        image::imageops::replace(&mut both, &left, 0, 0);
        image::imageops::replace(&mut both, &right, i64::from(left.width()), 0);
        let mut faces =
            OrtFaces::load(&EngineSettings::for_tests(&repo.join("models/tiny"))).unwrap();

        let first = locate_face(&mut faces, &both, FaceChoice::Index(0), 28).unwrap();
        let second = locate_face(&mut faces, &both, FaceChoice::Index(1), 28).unwrap();
        assert_eq!((first.faces_found, second.faces_found), (2, 2));
        let centre = |f: &LocatedFace| (f.detection.bbox[0] + f.detection.bbox[2]) / 2.0;
        assert!(centre(&first) < f64::from(left.width()), "{first:?}");
        assert!(centre(&second) > f64::from(left.width()), "{second:?}");
        let largest = locate_face(&mut faces, &both, FaceChoice::Largest, 28).unwrap();
        let bigger = if area(&first.detection.bbox) > area(&second.detection.bbox) {
            &first
        } else {
            &second
        };
        assert_eq!(largest.face_box, bigger.face_box);
        match locate_face(&mut faces, &both, FaceChoice::Single, 28) {
            Err(LocateError::Ambiguous { boxes }) => assert_eq!(boxes.len(), 2),
            other => panic!("{other:?}"),
        }
        match locate_face(&mut faces, &both, FaceChoice::Index(2), 28) {
            Err(LocateError::NoSuchIndex { index: 2, boxes }) => assert_eq!(boxes.len(), 2),
            other => panic!("{other:?}"),
        }
        // One face alone is the clear face of a reference.
        let alone = locate_face(&mut faces, &left, FaceChoice::Single, 28).unwrap();
        assert_eq!(alone.faces_found, 1);
        assert!(alone.landmark_presence > 0.9);
        let side = f64::from(alone.face_box.width.max(alone.face_box.height));
        match locate_face(&mut faces, &left, FaceChoice::Single, side as u32 + 1) {
            Err(e @ LocateError::TooSmall { .. }) => {
                assert!(
                    e.to_string()
                        .contains(&format!("needs at least {}", side as u32 + 1)),
                    "{e}"
                )
            }
            other => panic!("{other:?}"),
        }
        // The photo shrunk until its face box is about 20 px: found, and too small for a model that
        // needs 28 px.
        let small = image::imageops::resize(&left, 48, 60, image::imageops::FilterType::Triangle);
        match locate_face(&mut faces, &small, FaceChoice::Largest, 28) {
            Err(LocateError::TooSmall { side, min: 28, .. }) => assert!(side < 28.0, "{side}"),
            other => panic!("{other:?}"),
        }
        // A face cut by the left border: found, its box reaching past the edge.
        let cut =
            image::imageops::crop_imm(&left, 230, 0, left.width() - 230, left.height()).to_image();
        let found = locate_face(&mut faces, &cut, FaceChoice::Single, 28).unwrap();
        assert!(found.face_box.x <= 0, "{:?}", found.face_box);
        // A flat image has none.
        let flat = RgbImage::from_pixel(200, 300, image::Rgb([90, 90, 90]));
        assert!(matches!(
            locate_face(&mut faces, &flat, FaceChoice::Largest, 28),
            Err(LocateError::NoFace)
        ));
    }
}
