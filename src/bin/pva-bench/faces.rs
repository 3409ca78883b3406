//! `pva-bench faces`: the face graphs on the public-domain photos of `models/faces/checked_boxes.json`
//! (a benchmark, nothing asserted): per photo the detection and landmark times (medians), the boxes
//! found against the checked boxes (the reference's, and OpenCV's Haar cascade mapped onto BlazeFace's
//! convention), the eye-landmark error on copies rotated by ±15° and ±30° (share of the inter-ocular
//! distance), and the photo with the face box and the named regions' landmark polygons drawn, as PNG.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use image::{Rgb, RgbImage};
use pva_worker::config::Settings;
use pva_worker::engine::OrtFaces;
use pva_worker::pipeline::face::{
    detect_faces, face_box_of, face_landmarks, iou, region_polygons, rotate_expanded,
};
use pva_worker::pipeline::image::{decode, DecodeLimits};
use pva_worker::pipeline::mask::Region;

/// What `pva-bench faces` runs.
pub(crate) struct FacesBench {
    /// `checked_boxes.json`.
    pub(crate) checked: PathBuf,
    /// Timed repetitions per photo.
    pub(crate) reps: usize,
    /// ONNX Runtime intra-op threads.
    pub(crate) threads: usize,
    /// Where the drawn photos go.
    pub(crate) out: PathBuf,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A line from `a` to `b`, one pixel wide.
fn line(img: &mut RgbImage, a: [f64; 2], b: [f64; 2], colour: Rgb<u8>) {
    let n = (b[0] - a[0]).abs().max((b[1] - a[1]).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]));
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, colour);
        }
    }
}

/// Haar's box `[xmin, ymin, xmax, ymax]` mapped onto BlazeFace's convention by the checked file's map.
fn calibrated(haar: &[f64], map: &serde_json::Value) -> [f64; 4] {
    let f = |k: &str| map[k].as_f64().unwrap_or(0.0);
    let (w, h) = (haar[2] - haar[0], haar[3] - haar[1]);
    let cx = (haar[0] + haar[2]) / 2.0 + f("centre_shift_x_per_haar_width") * w;
    let cy = (haar[1] + haar[3]) / 2.0 + f("centre_shift_y_per_haar_width") * w;
    let (w2, h2) = (w * f("width_ratio"), h * f("height_ratio"));
    [cx - w2 / 2.0, cy - h2 / 2.0, cx + w2 / 2.0, cy + h2 / 2.0]
}

fn four(v: &serde_json::Value) -> Option<[f64; 4]> {
    let a: Vec<f64> = v.as_array()?.iter().filter_map(|x| x.as_f64()).collect();
    a.try_into().ok()
}

pub(crate) fn bench_faces(mut settings: Settings, opts: &FacesBench) -> anyhow::Result<()> {
    settings.engine.intra_threads = opts.threads;
    let mut engine = OrtFaces::load(&settings.engine)?;
    let checked: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&opts.checked).with_context(|| opts.checked.display().to_string())?,
    )?;
    std::fs::create_dir_all(&opts.out)?;
    let repo = Path::new(".");
    println!(
        "{:<36} {:>9} {:>9} {:>7} {:>7} {:>8}  eye error / inter-ocular at -30 -15 +15 +30",
        "photo", "detect ms", "lmarks ms", "faces", "IoU ref", "IoU Haar"
    );
    for (key, want) in checked["photos"].as_object().into_iter().flatten() {
        let path = if key.starts_with("examples/") {
            repo.join(key)
        } else {
            repo.join("..").join(key)
        };
        let Ok(bytes) = std::fs::read(&path) else {
            println!("{key:<36} (not here)");
            continue;
        };
        let img = decode(&bytes, &DecodeLimits::default())?;
        let mut detect_ms = Vec::new();
        let mut faces = Vec::new();
        for _ in 0..opts.reps.max(1) {
            let t = Instant::now();
            faces = detect_faces(&mut engine, &img)?;
            detect_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let Some(face) = faces.first().cloned() else {
            println!("{key:<36} no face found");
            continue;
        };
        let mut landmark_ms = Vec::new();
        let mut landmarks = None;
        for _ in 0..opts.reps.max(1) {
            let t = Instant::now();
            landmarks = Some(face_landmarks(&mut engine, &img, &face)?);
            landmark_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let landmarks = landmarks.expect("at least one repetition");
        let first = &want["faces"][0];
        let iou_ref = four(&first["box"]).map_or(f64::NAN, |b| iou(&face.bbox, &b));
        let iou_haar = four(&first["haar_box"]).map_or(f64::NAN, |h| {
            iou(&face.bbox, &calibrated(&h, &checked["haar_to_blazeface"]))
        });
        let eyes = landmarks.eye_centres();
        let iod = (eyes[1][0] - eyes[0][0]).hypot(eyes[1][1] - eyes[0][1]);
        let mut errors = Vec::new();
        for degrees in [-30.0f64, -15.0, 15.0, 30.0] {
            let (turned, forward) = rotate_expanded(&img, degrees.to_radians());
            let found = detect_faces(&mut engine, &turned)?;
            errors.push(match found.first() {
                None => "  none".to_string(),
                Some(f) => {
                    let got = face_landmarks(&mut engine, &turned, f)?.eye_centres();
                    let err = got
                        .iter()
                        .zip(eyes)
                        .map(|(g, e)| {
                            let w = forward(e);
                            (g[0] - w[0]).hypot(g[1] - w[1])
                        })
                        .fold(0.0, f64::max);
                    format!("{:>6.3}", err / iod)
                }
            });
        }
        println!(
            "{key:<36} {:>9.1} {:>9.1} {:>7} {:>7.3} {:>8.3}  {}",
            median(detect_ms),
            median(landmark_ms),
            faces.len(),
            iou_ref,
            iou_haar,
            errors.join(" ")
        );
        // The drawing: the job's face box (green) and each region's polygon (red).
        let mut drawn = img.clone();
        let b = face_box_of(&face);
        let (x0, y0) = (f64::from(b.x), f64::from(b.y));
        let (x1, y1) = (x0 + f64::from(b.width), y0 + f64::from(b.height));
        let green = Rgb([40, 220, 40]);
        for (p, q) in [
            ([x0, y0], [x1, y0]),
            ([x1, y0], [x1, y1]),
            ([x1, y1], [x0, y1]),
            ([x0, y1], [x0, y0]),
        ] {
            line(&mut drawn, p, q, green);
        }
        let points: Vec<[f64; 2]> = landmarks.points.iter().map(|p| [p[0], p[1]]).collect();
        for region in Region::ALL {
            for poly in region_polygons(region) {
                for (i, &k) in poly.iter().enumerate() {
                    let next = poly[(i + 1) % poly.len()];
                    line(&mut drawn, points[k], points[next], Rgb([230, 40, 40]));
                }
            }
        }
        let name = key.replace('/', "_");
        let file = opts.out.join(format!("{name}.png"));
        drawn.save(&file)?;
    }
    println!(
        "drawn photos (face box green, region polygons red) in {}",
        opts.out.display()
    );
    Ok(())
}
