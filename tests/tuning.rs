//! Per-identity adapter tuning (issue 5) against the Python reference (`python -m pva.reference.tune`)
//! and its committed fixtures (tests/fixtures/tune).

mod common;

use common::{max_abs_diff, settings, Tensors};
use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use pva_worker::commands::tune::{self as tune_cmd, TuneCmdOptions};
use pva_worker::engine::{Engine, OrtEngine, TuningBatch, TuningHyper};
use pva_worker::model::adapter::{self, ModelRef, StoredAdapter};
use pva_worker::pipeline::inpaint::{EditInput, MaskInput, Pipeline};
use pva_worker::pipeline::mask::Mask;
use pva_worker::pipeline::mask::Region;
use pva_worker::pipeline::noise::SeededNoise;
use pva_worker::pipeline::scheduler::SchedulerKind;
use pva_worker::pipeline::tune::{
    self, Draw, DrawSource, LeaveOneOut, ReferenceCrop, SeededDraws, StepBatch, TuneError,
    TuneOptions, Tuned,
};
use pva_worker::service::load_pipeline;

fn tune_dir() -> std::path::PathBuf {
    common::repo().join("tests/fixtures/tune")
}

#[derive(serde::Deserialize)]
struct TuneInfo {
    steps: usize,
    batch_size: usize,
    lr_visual: f32,
    lr_token: f32,
    weight_decay: f32,
    losses: Vec<f64>,
}

fn info() -> TuneInfo {
    serde_json::from_slice(&std::fs::read(tune_dir().join("tune.json")).unwrap()).unwrap()
}

/// Step `i` of a fixture tensor with a leading step axis.
fn at<'a>(t: &'a (Vec<usize>, Vec<f32>), i: usize) -> (&'a [usize], &'a [f32]) {
    let per: usize = t.0[1..].iter().product();
    (&t.0[1..], &t.1[i * per..(i + 1) * per])
}

#[test]
fn engine_steps_reproduce_pytorch_adamw_on_the_fixture_batches() {
    let info = info();
    let t = Tensors::load(&tune_dir().join("tune.safetensors"));
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let engine = pipeline.engine_mut();
    assert!(engine.can_tune());
    let hyper = TuningHyper {
        lr_visual: info.lr_visual,
        lr_token: info.lr_token,
        weight_decay: info.weight_decay,
    };
    let initial = &t.f32("initial_params").1;
    let mut tuner = engine.tuner(initial, hyper).unwrap();
    let b = info.batch_size;
    let ids = t.i64("input_ids");
    let steps_ts = t.i64("timesteps");
    let mut losses = Vec::new();
    let start = std::time::Instant::now();
    for i in 0..info.steps {
        let view4 = |name: &str| {
            let (shape, data) = at(t.f32(name), i);
            ArrayView4::from_shape((shape[0], shape[1], shape[2], shape[3]), data).unwrap()
        };
        let input_ids =
            ArrayView2::from_shape((b, 77), &ids.1[i * b * 77..(i + 1) * b * 77]).unwrap();
        let timesteps = ArrayView1::from(&steps_ts.1[i * b..(i + 1) * b]);
        let (shape, id) = at(t.f32("id_tokens"), i);
        let batch = TuningBatch {
            input_ids,
            latents: view4("latents"),
            noise: view4("noise"),
            timesteps,
            mask: view4("mask"),
            masked_latents: view4("masked_latents"),
            id_tokens: ArrayView3::from_shape((shape[0], shape[1], shape[2]), id).unwrap(),
        };
        losses.push(tuner.step(&batch).unwrap());
    }
    eprintln!("{} steps in {:.2?}", info.steps, start.elapsed());
    let worst = losses
        .iter()
        .zip(&info.losses)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    eprintln!("worst loss difference {worst:.3e}");
    assert!(worst <= 1e-5, "losses differ by {worst}");
    let params = tuner.params().unwrap();
    let d = max_abs_diff(&params, &t.f32("final_params").1);
    let moved = max_abs_diff(initial, &t.f32("final_params").1);
    eprintln!("final params differ by {d:.3e} (moved {moved:.3e})");
    assert!(d <= 1e-6, "final params differ by {d}");
}

/// The fixture's recorded draws (targets, timesteps, noise per step).
struct FixtureDraws {
    targets: Vec<i64>,
    timesteps: Vec<i64>,
    noise: Vec<f32>,
}

impl FixtureDraws {
    fn load(t: &Tensors) -> Self {
        Self {
            targets: t.i64("targets").1.clone(),
            timesteps: t.i64("timesteps").1.clone(),
            noise: t.f32("noise").1.clone(),
        }
    }
}

impl DrawSource for FixtureDraws {
    fn draw(&mut self, step: usize, references: usize, _timesteps: usize, draw: &mut Draw) {
        let b = draw.targets.len();
        for (i, t) in draw.targets.iter_mut().enumerate() {
            *t = self.targets[step * b + i] as usize;
            assert!(*t < references);
        }
        draw.timesteps
            .copy_from_slice(&self.timesteps[step * b..(step + 1) * b]);
        let n = draw.noise.len();
        draw.noise
            .copy_from_slice(&self.noise[step * n..(step + 1) * n]);
    }
}

fn load_png(path: &std::path::Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The fixture identity's crops, as `pva.reference.tune` stored them.
fn fixture_crops() -> Vec<ReferenceCrop> {
    (0..3)
        .map(|i| ReferenceCrop {
            image: load_png(&tune_dir().join(format!("image_{i}.png"))),
            face: load_png(&tune_dir().join(format!("face_{i}.png"))),
        })
        .collect()
}

#[test]
fn leave_one_out_batches_match_the_reference_from_the_images() {
    let t = Tensors::load(&tune_dir().join("tune.safetensors"));
    let info = info();
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let data = LeaveOneOut::build(&mut pipeline, &fixture_crops()).unwrap();
    assert_eq!(data.count(), 3);
    let close = |name: &str, got: &[f32], want: &str| {
        let d = max_abs_diff(got, &t.f32(want).1);
        eprintln!("{name}: max abs difference {d:.2e}");
        assert!(d <= 1e-4, "{name} differs by {d}");
    };
    close(
        "latents",
        data.latents().as_slice().unwrap(),
        "reference_latents",
    );
    close(
        "masked latents",
        data.masked_latents().as_slice().unwrap(),
        "reference_masked_latents",
    );
    close(
        "id tokens",
        data.id_tokens().as_slice().unwrap(),
        "reference_id_tokens",
    );
    // The latent mask is the fixture's mask.png at latent resolution, exactly.
    let mask_png =
        Mask::from_image(&image::open(tune_dir().join("mask.png")).unwrap(), 64).unwrap();
    assert_eq!(
        data.mask().as_slice().unwrap(),
        mask_png.downsample_nearest(8)
    );

    // Every step's batch from the recorded draws.
    let mut draws = FixtureDraws::load(&t);
    let mut batch = StepBatch::new(&data, info.batch_size);
    let mut draw = Draw::zeros(info.batch_size, 4 * 8 * 8);
    let b = info.batch_size;
    for step in 0..info.steps {
        draws.draw(step, data.count(), 1000, &mut draw);
        data.fill(&draw, &mut batch);
        let v = batch.view();
        assert_eq!(
            v.input_ids.as_slice().unwrap(),
            &t.i64("input_ids").1[step * b * 77..(step + 1) * b * 77],
            "step {step}: input ids"
        );
        assert_eq!(
            v.timesteps.as_slice().unwrap(),
            &t.i64("timesteps").1[step * b..(step + 1) * b]
        );
        for (name, got) in [
            ("latents", v.latents.as_slice().unwrap()),
            ("masked_latents", v.masked_latents.as_slice().unwrap()),
            ("noise", v.noise.as_slice().unwrap()),
            ("id_tokens", v.id_tokens.as_slice().unwrap()),
        ] {
            let d = max_abs_diff(got, at(t.f32(name), step).1);
            assert!(d <= 1e-4, "step {step}: {name} differs by {d}");
        }
        assert_eq!(v.mask.as_slice().unwrap(), at(t.f32("mask"), step).1);
    }
}

#[test]
fn the_whole_loop_from_the_images_reproduces_the_reference_losses() {
    let t = Tensors::load(&tune_dir().join("tune.safetensors"));
    let info = info();
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let data = LeaveOneOut::build(&mut pipeline, &fixture_crops()).unwrap();
    let options = TuneOptions::from_manifest(pipeline.manifest(), 0);
    assert_eq!(options.steps, info.steps);
    let initial = pipeline.base_adapter().to_vec();
    assert_eq!(
        initial,
        t.f32("initial_params").1,
        "the model's own adapter"
    );
    let mut seen = Vec::new();
    let tuned = tune::run(
        pipeline.engine_mut(),
        &data,
        &initial,
        &options,
        &mut FixtureDraws::load(&t),
        &mut |step, loss| seen.push((step, loss)),
    )
    .unwrap();
    assert_eq!(seen.len(), info.steps);
    assert_eq!(seen[0].0, 1);
    let worst = tuned
        .losses
        .iter()
        .zip(&info.losses)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    let d = max_abs_diff(&tuned.adapter, &t.f32("final_params").1);
    eprintln!("from the images: worst loss difference {worst:.2e}, final params {d:.2e}");
    assert!(worst <= 1e-5, "losses differ by {worst}");
    assert!(d <= 1e-6, "final params differ by {d}");
}

/// The mean loss of `params` over `steps` fixed draws (seed `seed`), without changing it: a run
/// with zero learning rates and decay only evaluates (AdamW's update is then the identity).
fn held_out_loss(
    engine: &mut dyn Engine,
    data: &LeaveOneOut,
    params: &[f32],
    seed: u64,
    steps: usize,
) -> f32 {
    let options = TuneOptions {
        steps,
        hyper: TuningHyper {
            lr_visual: 0.0,
            lr_token: 0.0,
            weight_decay: 0.0,
        },
        seed,
    };
    let run = tune::run(
        engine,
        data,
        params,
        &options,
        &mut SeededDraws::new(seed),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        run.adapter, params,
        "an evaluation run must not move the adapter"
    );
    run.losses.iter().sum::<f32>() / steps as f32
}

/// Tunes the fixture identity with `options` for each seed, from the model's own adapter.
fn tune_seeds(
    pipeline: &mut Pipeline<OrtEngine>,
    data: &LeaveOneOut,
    seeds: &[u64],
    adjust: impl Fn(&mut TuneOptions),
) -> Vec<Tuned> {
    let initial = pipeline.base_adapter().to_vec();
    seeds
        .iter()
        .map(|&seed| {
            let mut options = TuneOptions::from_manifest(pipeline.manifest(), seed);
            adjust(&mut options);
            tune::run(
                pipeline.engine_mut(),
                data,
                &initial,
                &options,
                &mut SeededDraws::new(seed),
                &mut |_, _| {},
            )
            .unwrap()
        })
        .collect()
}

// NOTE: on the random-weight tiny model the per-step training loss is dominated by the random
// timestep and noise of each step: with the paper's settings (40 steps, lr 1e-5 / 1e-3) the mean of
// the last quarter of the steps is below the first quarter's for only 4 of 8 seeds (1.0655 ->
// 1.0740 on average). What does hold is the loss over one fixed set of draws (below), and the
// first/last comparison once the adapter moves further (lr x100, 200 steps: 8 of 8 seeds, 1.066 ->
// 0.913). `cargo run --release --bin bench_tune -- --loss-study` prints these numbers.

#[test]
fn paper_tuning_lowers_the_loss_over_fixed_draws_for_every_seed() {
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let data = LeaveOneOut::build(&mut pipeline, &fixture_crops()).unwrap();
    let initial = pipeline.base_adapter().to_vec();
    let before = held_out_loss(pipeline.engine_mut(), &data, &initial, 1000, 32);
    for (seed, tuned) in tune_seeds(&mut pipeline, &data, &[0, 1, 2, 3], |_| {})
        .into_iter()
        .enumerate()
    {
        assert_eq!(tuned.losses.len(), 40);
        let after = held_out_loss(pipeline.engine_mut(), &data, &tuned.adapter, 1000, 32);
        eprintln!("seed {seed}: loss over 32 fixed draws {before:.5} -> {after:.5}");
        assert!(
            after < before,
            "seed {seed}: tuning raised the loss over fixed draws, {before} -> {after}"
        );
    }
}

#[test]
fn longer_faster_tuning_lowers_the_training_loss_first_quarter_to_last() {
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let data = LeaveOneOut::build(&mut pipeline, &fixture_crops()).unwrap();
    let runs = tune_seeds(&mut pipeline, &data, &[0, 1, 2, 3], |o| {
        o.steps = 200;
        o.hyper.lr_visual *= 100.0;
        o.hyper.lr_token *= 100.0;
    });
    let quarter = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (mut first, mut last) = (0.0, 0.0);
    for run in &runs {
        first += quarter(&run.losses[..50]) / runs.len() as f32;
        last += quarter(&run.losses[150..]) / runs.len() as f32;
    }
    eprintln!("mean training loss, first quarter {first:.4}, last quarter {last:.4}");
    assert!(
        last < 0.95 * first,
        "training loss {first} -> {last} did not fall by 5%"
    );
}

#[test]
fn the_edit_uses_a_tuned_adapter_from_its_stored_file() {
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let crops = fixture_crops();
    let mut options = TuneOptions::from_manifest(pipeline.manifest(), 0);
    options.steps = 10;
    let tuned = tune::tune_identity(&mut pipeline, &crops, &options, &mut |_, _| {}).unwrap();
    assert_eq!(tuned.losses.len(), 10);
    assert_ne!(
        tuned.adapter,
        pipeline.base_adapter(),
        "tuning moved nothing"
    );

    // Through the stored format and back, checked against the loaded model.
    let model = ModelRef::of(pipeline.manifest());
    let digests: Vec<String> = (0..3)
        .map(|i| {
            adapter::sha256_hex(&std::fs::read(tune_dir().join(format!("image_{i}.png"))).unwrap())
        })
        .collect();
    let stored = StoredAdapter {
        identity_id: "obama".into(),
        model: model.clone(),
        reference_sha256: digests.clone(),
        steps: 10,
        seed: 0,
        final_loss: *tuned.losses.last().unwrap(),
        params: tuned.adapter.clone(),
    };
    let bytes = adapter::encode(&stored).unwrap();
    let loaded = adapter::decode(&bytes, &model).unwrap();
    assert_eq!(loaded, stored);
    loaded.check_source("obama", &digests).unwrap();
    // The same file is refused by another version of the model, and when damaged.
    let newer = ModelRef {
        version: "0.2.0".into(),
        ..model.clone()
    };
    assert!(adapter::decode(&bytes, &newer).is_err());
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x10;
    assert!(adapter::decode(&damaged, &model).is_err());

    let edit = |pipeline: &mut Pipeline<OrtEngine>, adapter: Option<Vec<f32>>| {
        let input = EditInput {
            target: crops[0].image.clone(),
            target_face: None,
            target_roll: 0.0,
            target_landmarks: Vec::new(),
            mask: MaskInput::Region(Region::WholeFace),
            references: crops[1..].iter().map(|c| (c.face.clone(), None)).collect(),
            prompt: "smiling".into(),
            negative_prompt: String::new(),
            scheduler: SchedulerKind::Ddim { eta: 0.0 },
            steps: 4,
            guidance: 3.0,
            num_outputs: 1,
            adapter,
            identity: None,
        };
        pipeline
            .edit(&input, &mut SeededNoise::new(5))
            .unwrap()
            .images
            .remove(0)
            .crop
    };
    let base = edit(&mut pipeline, None);
    assert_eq!(edit(&mut pipeline, None), base, "the edit is deterministic");
    let personal = edit(&mut pipeline, Some(loaded.params.clone()));
    let changed = base
        .as_raw()
        .iter()
        .zip(personal.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "{changed} of {} channel values differ with the tuned adapter",
        base.as_raw().len()
    );
    assert!(changed > 0, "the tuned adapter did not change the edit");
}

#[test]
fn one_reference_tunes_against_its_mirror_image() {
    let mut pipeline = load_pipeline(&settings()).expect("tiny model loads");
    let crops = fixture_crops();
    let data = LeaveOneOut::build(&mut pipeline, &crops[..1]).unwrap();
    assert_eq!(data.count(), 2, "the reference and its mirror");
    let mirrored =
        LeaveOneOut::build(&mut pipeline, &[crops[0].clone(), crops[0].mirrored()]).unwrap();
    assert_eq!(data.latents(), mirrored.latents());
    assert_eq!(data.id_tokens(), mirrored.id_tokens());
    // The mirror is a different image: its latents differ from the original's.
    assert_ne!(
        data.latents().index_axis(ndarray::Axis(0), 0),
        data.latents().index_axis(ndarray::Axis(0), 1)
    );
    let mut options = TuneOptions::from_manifest(pipeline.manifest(), 3);
    options.steps = 3;
    let tuned = tune::tune_identity(&mut pipeline, &crops[..1], &options, &mut |_, _| {}).unwrap();
    assert!(tuned.losses.iter().all(|l| l.is_finite()));
    // Too many references are refused before any graph runs.
    let six = vec![crops[0].clone(); 6];
    assert!(matches!(
        LeaveOneOut::build(&mut pipeline, &six),
        Err(TuneError::Input { .. })
    ));
}

#[test]
fn tune_command_writes_an_adapter_that_decodes_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("obama.safetensors");
    let s = settings();
    let options = TuneCmdOptions {
        identity: "obama".into(),
        references: (0..3)
            .map(|i| tune_dir().join(format!("image_{i}.png")))
            .collect(),
        face_boxes: vec!["none".parse().unwrap(); 3],
        out: out.clone(),
        steps: Some(3),
        seed: Some(9),
    };
    let mut printed = Vec::new();
    let report = tune_cmd::run(&s, &options, &mut printed).unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert_eq!(
        printed.lines().filter(|l| l.starts_with("step ")).count(),
        3,
        "{printed}"
    );
    assert!(printed.contains(&report.key), "{printed}");
    let model = ModelRef::of(&pva_worker::engine::Manifest::load(&s.engine.model_dir).unwrap());
    let stored = adapter::decode(&std::fs::read(&out).unwrap(), &model).unwrap();
    assert_eq!(stored, report.adapter);
    assert_eq!((stored.steps, stored.seed), (3, 9));
    assert_eq!(stored.final_loss, report.losses[2]);
    // Same references in another order: same key; one changed reference: another key.
    let key = |refs: &[&str]| {
        let digests: Vec<String> = refs
            .iter()
            .map(|r| adapter::sha256_hex(&std::fs::read(tune_dir().join(r)).unwrap()))
            .collect();
        pva_worker::job::adapters::storage_key(&s.tuning.adapter_prefix, "obama", &model, &digests)
            .unwrap()
    };
    assert_eq!(
        report.key,
        key(&["image_2.png", "image_0.png", "image_1.png"])
    );
    assert_ne!(
        report.key,
        key(&["image_0.png", "image_1.png", "face_2.png"])
    );
    assert!(report.key.starts_with("adapters/obama/pva-tiny-"));
    // A face box count that does not match the references is refused before any work.
    let bad = TuneCmdOptions {
        face_boxes: vec!["none".parse().unwrap()],
        ..options
    };
    assert!(tune_cmd::run(&s, &bad, &mut Vec::new()).is_err());
}

/// `tune` without face boxes finds each reference's face as a job's reference is found (issue 16, one
/// job flow): the adapter is bit for bit the one tuned from the faces given by hand as that flow
/// finds them (the face box, or the upright crop of a tilted face as an aligned reference); a
/// reference with two people fails with `ambiguous_face`, a flat one with `no_face`, both naming the
/// reference.
#[test]
fn tune_finds_the_faces_of_references_without_face_boxes() {
    use pva_worker::commands::tune::FaceBoxArg;
    use pva_worker::pipeline::face::{locate_face, min_face_side, upright_reference, FaceChoice};
    let dir = tempfile::tempdir().unwrap();
    let s = settings();
    let photos = [
        common::repo().join("examples/photos/obama.jpg"),
        common::repo().join("tests/data/images/hopper_turned.png"),
    ];
    let options = TuneCmdOptions {
        identity: "found".into(),
        references: photos.to_vec(),
        face_boxes: Vec::new(),
        out: dir.path().join("found.safetensors"),
        steps: Some(2),
        seed: Some(3),
    };
    let mut printed = Vec::new();
    let found = tune_cmd::run(&s, &options, &mut printed).unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert_eq!(printed.matches(": face at [").count(), 2, "{printed}");
    assert_eq!(
        printed.matches("taken as its aligned crop").count(),
        1,
        "{printed}"
    );

    // The same faces given by hand, as the job flow's locate step gives them.
    let mut faces = pva_worker::engine::OrtFaces::load(&s.engine).unwrap();
    let manifest = pva_worker::engine::Manifest::load(&s.engine.model_dir).unwrap();
    let mut references = Vec::new();
    let mut face_boxes = Vec::new();
    for (i, path) in photos.iter().enumerate() {
        let limits = pva_worker::pipeline::image::DecodeLimits::default();
        let photo =
            pva_worker::pipeline::image::decode(&std::fs::read(path).unwrap(), &limits).unwrap();
        let mut located = locate_face(
            &mut faces,
            &photo,
            FaceChoice::Single,
            min_face_side(&manifest),
        )
        .unwrap();
        located.upright = upright_reference(&photo, &located, s.pipeline.face_margin).unwrap();
        match located.upright {
            Some(upright) => {
                let file = dir.path().join(format!("upright_{i}.png"));
                upright.save(&file).unwrap();
                references.push(file);
                face_boxes.push(FaceBoxArg::Aligned);
            }
            None => {
                references.push(path.clone());
                face_boxes.push(FaceBoxArg::Given(located.face_box));
            }
        }
    }
    assert_eq!(
        face_boxes[1],
        FaceBoxArg::Aligned,
        "hopper_turned.png is tilted"
    );
    assert!(matches!(face_boxes[0], FaceBoxArg::Given(_)));
    let by_hand = TuneCmdOptions {
        references,
        face_boxes,
        out: dir.path().join("by_hand.safetensors"),
        ..options.clone()
    };
    let given = tune_cmd::run(&s, &by_hand, &mut Vec::new()).unwrap();
    assert_eq!(found.losses, given.losses);
    assert_eq!(found.adapter.params, given.adapter.params);

    // Two people, or none: the job's face codes, naming the reference.
    let flat = dir.path().join("flat.png");
    image::RgbImage::from_pixel(120, 160, image::Rgb([90, 110, 130]))
        .save(&flat)
        .unwrap();
    for (path, code) in [
        (
            common::repo().join("tests/data/images/two_people.jpg"),
            "ambiguous_face",
        ),
        (flat, "no_face"),
    ] {
        let bad = TuneCmdOptions {
            references: vec![photos[0].clone(), path.clone()],
            face_boxes: vec![FaceBoxArg::Find; 2],
            ..options.clone()
        };
        let err = format!(
            "{:#}",
            tune_cmd::run(&s, &bad, &mut Vec::new()).unwrap_err()
        );
        assert!(
            err.starts_with(code) && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
}

/// A copy of the tiny model directory with its manifest changed by `edit`.
fn model_copy(edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = common::repo().join("models/tiny");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    dir
}

#[test]
fn a_model_without_the_tuning_graph_edits_but_refuses_to_tune() {
    let dir = model_copy(|m| {
        m["graphs"].as_object_mut().unwrap().remove("adapter_step");
    });
    let mut s = settings();
    s.engine.model_dir = dir.path().to_path_buf();
    let mut pipeline = load_pipeline(&s).expect("a model without adapter_step still loads");
    assert!(!pipeline.engine_mut().can_tune());
    let options = TuneOptions::from_manifest(pipeline.manifest(), 0);
    let err =
        tune::tune_identity(&mut pipeline, &fixture_crops(), &options, &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("has no `adapter_step` graph"),
        "{err}"
    );
    let initial = pipeline.base_adapter().to_vec();
    let hyper = options.hyper;
    assert!(pipeline.engine_mut().tuner(&initial, hyper).is_err());
}

#[test]
fn a_tuning_graph_that_disagrees_with_the_manifest_is_refused_when_opened_or_at_load() {
    // The manifest claims batch 3 everywhere for the batch-2 graph: the graph check catches it.
    let dir = model_copy(|m| {
        m["tuning"]["batch_size"] = 3.into();
        for side in ["inputs", "outputs"] {
            for t in m["graphs"]["adapter_step"][side].as_array_mut().unwrap() {
                let shape = t["shape"].as_array_mut().unwrap();
                if shape.first() == Some(&serde_json::Value::from(2)) {
                    shape[0] = 3.into();
                }
            }
        }
    });
    let mut s = settings();
    s.engine.model_dir = dir.path().to_path_buf();
    // The tuning session is created on demand: the graph is checked when a run first opens it ...
    let mut engine = pva_worker::engine::OrtEngine::load(&s.engine).unwrap();
    let layout = &engine.manifest().adapter;
    let params = vec![0.0; layout.visual_length + layout.token_length];
    let hyper = TuneOptions::from_manifest(engine.manifest(), 0).hyper;
    let err = engine.tuner(&params, hyper).err().expect("refused");
    assert!(
        err.to_string().contains("adapter_step") && err.to_string().contains("dimension 0 is 2"),
        "{err}"
    );
    // ... and at load when the worker opens it eagerly.
    s.engine.tuning_session = pva_worker::engine::TuningSession::Eager;
    let err = pva_worker::engine::OrtEngine::load(&s.engine).unwrap_err();
    assert!(
        err.to_string().contains("adapter_step") && err.to_string().contains("dimension 0 is 2"),
        "{err}"
    );
    // The declared interface agrees with the graph but not with the rest of the manifest.
    let dir = model_copy(|m| {
        m["num_id_tokens"] = 9.into();
    });
    s.engine.model_dir = dir.path().to_path_buf();
    let err = pva_worker::engine::OrtEngine::load(&s.engine).unwrap_err();
    assert!(
        err.to_string().contains("`id_tokens`") && err.to_string().contains("[2, 9, 32]"),
        "{err}"
    );
}
