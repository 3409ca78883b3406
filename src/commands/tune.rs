//! `pva-worker tune`: tunes one identity's adapter from local reference files, printing the loss of
//! every step, and writes the adapter file. A thin command over `pipeline::tune` (the tuning) and
//! `model::adapter` (the file) with `job::adapters` (its storage key).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;

use crate::config::Settings;
use crate::engine::Workload;
use crate::model::adapter::{self, ModelRef, StoredAdapter};
use crate::pipeline::face::{FaceBox, FaceChoice, FaceRequest};
use crate::pipeline::image::{decode, DecodeLimits};
use crate::pipeline::tune::{tune_identity, ReferenceCrop};
use crate::service::load_pipeline_for;
use crate::service::model::load_faces;
use crate::service::pool::locate_image;

/// A `--face-box` argument: `x,y,w,h` in the reference's pixels, `none` for a reference that is
/// already an aligned square face, or `find` for the reference's one clear face found as a job's
/// reference is (the default when no `--face-box` is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceBoxArg {
    /// The face box given.
    Given(FaceBox),
    /// The whole reference is an aligned, square face.
    Aligned,
    /// The face is found (`no_face`, `ambiguous_face` or `face_too_small` otherwise).
    Find,
}

impl FromStr for FaceBoxArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::Aligned);
        }
        if s.eq_ignore_ascii_case("find") {
            return Ok(Self::Find);
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad =
            || format!("face box {s:?}: expected x,y,w,h (integers, w and h > 0), none or find");
        let [x, y, w, h] = parts.as_slice() else {
            return Err(bad());
        };
        let face = FaceBox {
            x: x.parse().map_err(|_| bad())?,
            y: y.parse().map_err(|_| bad())?,
            width: w.parse().map_err(|_| bad())?,
            height: h.parse().map_err(|_| bad())?,
        };
        if face.width == 0 || face.height == 0 {
            return Err(bad());
        }
        Ok(Self::Given(face))
    }
}

/// What `tune` was asked to do.
#[derive(Debug, Clone)]
pub struct TuneCmdOptions {
    /// The identity's id (part of the storage key).
    pub identity: String,
    /// Reference photo files.
    pub references: Vec<PathBuf>,
    /// One face box per reference, in order, or none at all (then every reference's face is
    /// found).
    pub face_boxes: Vec<FaceBoxArg>,
    /// Where the adapter file is written.
    pub out: PathBuf,
    /// Overrides `tuning.steps`.
    pub steps: Option<usize>,
    /// Overrides `tuning.seed`.
    pub seed: Option<u64>,
}

/// What a tuning run produced.
#[derive(Debug, Clone)]
pub struct TuneReport {
    /// The adapter as written.
    pub adapter: StoredAdapter,
    /// The loss of every step.
    pub losses: Vec<f32>,
    /// The key the adapter has in the adapter store (`tuning.adapter_prefix`).
    pub key: String,
    /// Seconds per stage: `model_load`, `build` (crops, encodings), `tune` (the steps).
    pub timings: Vec<(&'static str, f64)>,
}

fn progress_line(step: usize, steps: usize, loss: f32, seconds: f64) -> String {
    const WIDTH: usize = 24;
    let filled = step * WIDTH / steps.max(1);
    format!(
        "step {step:>4}/{steps}  loss {loss:.6}  [{}{}]  {seconds:.2} s",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    )
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so that a reader never
/// sees half an adapter.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Tunes the identity, writes the adapter to `options.out`, and prints the loss of every step and
/// a summary to `out`.
pub fn run(
    settings: &Settings,
    options: &TuneCmdOptions,
    out: &mut dyn Write,
) -> anyhow::Result<TuneReport> {
    adapter::check_identity_id(&options.identity)?;
    anyhow::ensure!(
        !options.references.is_empty(),
        "give at least one --reference"
    );
    anyhow::ensure!(
        options.face_boxes.is_empty() || options.face_boxes.len() == options.references.len(),
        "{} --face-box for {} --reference: give one per reference (`none` for an aligned face, `find` to find it) or none",
        options.face_boxes.len(),
        options.references.len()
    );
    let mut timings = Vec::new();
    let t = Instant::now();
    // NOTE: a tuning run never calls the UNet, the text encoder or the VAE decoder sessions (the
    // tuning graph has its own frozen copies): they are not opened.
    let mut pipeline = load_pipeline_for(settings, Workload::Tune)?;
    timings.push(("model_load", t.elapsed().as_secs_f64()));
    let manifest = pipeline.manifest().clone();
    let mut tuning = settings.tuning.options_for(&manifest)?;
    if let Some(steps) = options.steps {
        anyhow::ensure!(steps > 0, "--steps must be >= 1");
        tuning.steps = steps;
    }
    if let Some(seed) = options.seed {
        tuning.seed = seed;
    }

    let limits = DecodeLimits {
        max_bytes: settings.limits.max_image_bytes,
        max_pixels: settings.limits.max_image_pixels,
    };
    let arg = |i: usize| {
        options
            .face_boxes
            .get(i)
            .copied()
            .unwrap_or(FaceBoxArg::Find)
    };
    // The face graphs are opened only when a reference's face is to be found.
    let mut faces = if (0..options.references.len()).any(|i| arg(i) == FaceBoxArg::Find) {
        Some(load_faces(settings)?)
    } else {
        None
    };
    let margin = settings.pipeline.face_margin;
    let mut crops = Vec::with_capacity(options.references.len());
    let mut digests = Vec::with_capacity(options.references.len());
    for (i, path) in options.references.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        digests.push(adapter::sha256_hex(&bytes));
        let photo = decode(&bytes, &limits).with_context(|| format!("{}", path.display()))?;
        let what = format!("reference {}", path.display());
        let (photo, face_box) = match (arg(i), faces.as_mut()) {
            (FaceBoxArg::Given(b), _) => (photo, Some(b)),
            (FaceBoxArg::Aligned, _) => (photo, None),
            (FaceBoxArg::Find, Some(faces)) => {
                // A job's reference without a face box: its one clear face, as `edit` and `serve`
                // find it.
                let request = FaceRequest {
                    what: what.clone(),
                    choice: FaceChoice::Single,
                };
                let found = locate_image(faces, &manifest, &photo, &request, true, margin)?;
                let b = found.detection.bbox;
                writeln!(
                    out,
                    "{what}: face at [{:.0}, {:.0}, {:.0}, {:.0}] (score {:.2}, roll {:.1}°{})",
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    found.detection.score,
                    found.roll.to_degrees(),
                    if found.upright.is_some() {
                        ", taken as its aligned crop"
                    } else {
                        ""
                    }
                )?;
                found.reference_input(photo)
            }
            (FaceBoxArg::Find, None) => unreachable!("the face graphs are loaded for `find`"),
        };
        crops.push(ReferenceCrop::from_photo(
            &what, &photo, face_box, margin, &manifest,
        )?);
    }
    let model = ModelRef::of(&manifest);
    let key = crate::job::adapters::storage_key(
        &settings.tuning.adapter_prefix,
        &options.identity,
        &model,
        &digests,
    )?;
    writeln!(
        out,
        "tuning `{}` on {} {} from {} reference(s): {} steps, lr {:e} / {:e}, weight decay {}, seed {}",
        options.identity,
        manifest.name,
        manifest.version,
        crops.len(),
        tuning.steps,
        tuning.hyper.lr_visual,
        tuning.hyper.lr_token,
        tuning.hyper.weight_decay,
        tuning.seed
    )?;

    let start = Instant::now();
    let steps = tuning.steps;
    let mut write_error = None;
    let tuned = tune_identity(&mut pipeline, &crops, &tuning, &mut |step, loss| {
        let line = progress_line(step, steps, loss, start.elapsed().as_secs_f64());
        if let Err(e) = writeln!(out, "{line}") {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    timings.push(("build", tuned.build_seconds));
    timings.push(("tune", tuned.loop_seconds));

    let stored = StoredAdapter {
        identity_id: options.identity.clone(),
        model,
        reference_sha256: digests,
        steps,
        seed: tuning.seed,
        final_loss: *tuned.losses.last().expect("steps >= 1"),
        params: tuned.adapter,
    };
    let bytes = adapter::encode(&stored)?;
    write_atomically(&options.out, &bytes)?;
    let first = tuned.losses[0];
    writeln!(
        out,
        "loss {first:.6} -> {:.6} in {steps} steps ({:.1} ms per step; encoding the references {:.2} s)",
        stored.final_loss,
        1e3 * tuned.loop_seconds / steps as f64,
        tuned.build_seconds
    )?;
    writeln!(
        out,
        "wrote {} ({} bytes)",
        options.out.display(),
        bytes.len()
    )?;
    writeln!(out, "store key: {key}")?;
    Ok(TuneReport {
        adapter: stored,
        losses: tuned.losses,
        key,
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn face_box_arguments() {
        assert_eq!(
            "10,-5,40,60".parse::<FaceBoxArg>().unwrap(),
            FaceBoxArg::Given(FaceBox {
                x: 10,
                y: -5,
                width: 40,
                height: 60
            })
        );
        assert!(matches!(
            " 1, 2 ,3,4".parse::<FaceBoxArg>().unwrap(),
            FaceBoxArg::Given(FaceBox { height: 4, .. })
        ));
        assert_eq!("None".parse::<FaceBoxArg>().unwrap(), FaceBoxArg::Aligned);
        assert_eq!("find".parse::<FaceBoxArg>().unwrap(), FaceBoxArg::Find);
        for bad in ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "1,2,0,4", "1,2,-3,4"] {
            assert!(bad.parse::<FaceBoxArg>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn progress_line_fills_with_the_steps() {
        let first = progress_line(1, 40, 1.25, 0.01);
        assert!(
            first.starts_with("step    1/40  loss 1.250000  ["),
            "{first}"
        );
        assert!(progress_line(40, 40, 0.5, 1.0).contains(&"#".repeat(24)));
        assert!(progress_line(20, 40, 0.5, 1.0).contains(&format!(
            "{}{}",
            "#".repeat(12),
            ".".repeat(12)
        )));
    }
}
