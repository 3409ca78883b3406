//! Per-identity adapter tuning (issue 5) against the Python reference (models/export/reference_tune.py)
//! and its committed fixtures (tests/fixtures/tune).

mod common;

use common::{max_abs_diff, settings, Tensors};
use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use pva_worker::edit::load_pipeline;
use pva_worker::engine::{Engine, TuningBatch, TuningHyper};

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
