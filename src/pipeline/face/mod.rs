//! Face crops: the square crop around a face box that the model edits (and that the face embedder
//! reads for the reference photos), and pasting the edited crop back into the original photo with a
//! feathered mask.
//!
//! Pasting back touches nothing it does not have to: a pixel farther than `feather_px` (Euclidean,
//! in original pixels) from every masked pixel keeps its original bytes exactly.
//!
//! Its parts: `detect` ([`detect_faces`] and [`face_landmarks`]: the face-model directory's
//! detector and landmark graphs, decoded as its manifest says; `resample`: their inputs resampled as
//! Pillow does), `locate` ([`locate_face`]: which detected face a job means, its size checked, and
//! the face box the crop is built from), `crop` (face boxes, the square [`CropRect`] around one, and
//! cropping to model size), `window` ([`embed_input`]: the face embedder's input window, the paper's
//! FaceNet crop), `paste` ([`paste_back`] and its feathered blend) and `distance` (the exact
//! Euclidean distance transform the feathering measures with), and `align` (roll removal: the crop
//! of a tilted face turned upright, [`paste_back_turned`] turning the edit back) and `regions` (the
//! named regions as landmark polygons, [`landmark_mask`]), and `seam` ([`match_colour`]: the edit's
//! colours matched to the photo on a ring around the mask before pasting; [`seam_measure`]: how
//! visible a paste's border is).

mod align;
mod crop;
mod detect;
mod distance;
mod locate;
mod paste;
mod regions;
mod resample;
mod seam;
mod window;

pub use align::{
    paper_aligned, paper_alignment, paste_back_turned, rotate_expanded, upright, upright_box,
    upright_mask,
};
pub use crop::{crop_rect, crop_resize, face_crop, CropRect, FaceBox, FaceError, DEFAULT_MARGIN};
pub use detect::{
    detect_faces, face_landmarks, iou, landmark_roi, roi_to_photo, DetectedFace, FaceLandmarks,
    LandmarkRoi,
};
pub use locate::{
    choose, face_box_of, locate_face, min_face_side, upright_reference, FaceChoice, FaceRequest,
    LocateError, LocatedFace, FOREHEAD, SIMILAR_AREA,
};
pub use paste::paste_back;
pub use regions::{landmark_mask, points_in_crop, region_polygons, DILATE};
pub use seam::{match_colour, seam_measure};
pub use window::embed_input;

/// The fixture photos the crop and paste tests share.
#[cfg(test)]
mod fixtures {
    use super::FaceBox;
    use crate::pipeline::image::{decode, DecodeLimits};
    use image::RgbImage;

    pub(super) fn photo(name: &str) -> RgbImage {
        let path = format!("{}/tests/data/images/{name}", env!("CARGO_MANIFEST_DIR"));
        decode(&std::fs::read(&path).unwrap(), &DecodeLimits::default()).unwrap()
    }

    /// Face boxes of the fixture photos (see tests/data/images/SOURCES.md).
    pub(super) const OBAMA: FaceBox = FaceBox {
        x: 62,
        y: 12,
        width: 48,
        height: 64,
    };
    pub(super) const HOPPER: FaceBox = FaceBox {
        x: 40,
        y: 34,
        width: 53,
        height: 50,
    };
}
