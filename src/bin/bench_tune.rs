//! Benchmark (not a test) of per-identity tuning on the tiny model: the worker's `adapter_step` loop
//! on ONNX Runtime against PyTorch's training step on the same CPU, the same batches (the committed
//! tuning fixtures) and the same thread count, in one run, with the ratio.
//!
//! ```text
//! cargo run --release --bin bench_tune -- [--threads 2] [--steps 40] [--repeats 3]
//!     [--python .venv/bin/python] [--no-python] [--loss-study]
//! ```
//!
//! The PyTorch side is `python -m pva.bench.tune` (run as a subprocess; its "ms/step" lines are
//! parsed). `--loss-study` also prints how the training loss moves on the random tiny model for a
//! few learning-rate scales and step counts (the numbers tests/tuning.rs's choices rest on).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use pva_worker::config::Settings;
use pva_worker::engine::{Engine, OrtEngine, TuningBatch, TuningHyper};
use pva_worker::pipeline::inpaint::Pipeline;
use pva_worker::pipeline::tune::{self, LeaveOneOut, ReferenceCrop, SeededDraws, TuneOptions};
use pva_worker::service::load_pipeline;

struct Args {
    threads: usize,
    steps: usize,
    repeats: usize,
    python: PathBuf,
    run_python: bool,
    loss_study: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        threads: 2,
        steps: 40,
        repeats: 3,
        python: PathBuf::from(".venv/bin/python"),
        run_python: true,
        loss_study: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => args.threads = value()?.parse()?,
            "--steps" => args.steps = value()?.parse()?,
            "--repeats" => args.repeats = value()?.parse()?,
            "--python" => args.python = value()?.into(),
            "--no-python" => args.run_python = false,
            "--loss-study" => args.loss_study = true,
            other => bail!("unknown argument {other} (see the module docs)"),
        }
    }
    anyhow::ensure!(args.steps >= 1 && args.repeats >= 1 && args.threads >= 1);
    Ok(args)
}

/// The fixture's tensors, by name: f32 and i64 values with their shapes.
struct Fixture {
    tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>, Vec<i64>)>,
}

impl Fixture {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let mut tensors = std::collections::HashMap::new();
        for (name, view) in st.tensors() {
            let (f, i) = match view.dtype() {
                safetensors::Dtype::F32 => (
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    Vec::new(),
                ),
                safetensors::Dtype::I64 => (
                    Vec::new(),
                    view.data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                ),
                other => bail!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), f, i));
        }
        Ok(Self { tensors })
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>, Vec<i64>) {
        &self.tensors[name]
    }

    /// Step `i` of a per-step tensor: its per-step shape and values.
    fn f32_at(&self, name: &str, i: usize) -> (&[usize], &[f32]) {
        let (shape, v, _) = self.get(name);
        let per: usize = shape[1..].iter().product();
        (&shape[1..], &v[i * per..(i + 1) * per])
    }

    fn i64_at(&self, name: &str, i: usize) -> &[i64] {
        let (shape, _, v) = self.get(name);
        let per: usize = shape[1..].iter().product();
        &v[i * per..(i + 1) * per]
    }

    fn steps(&self) -> usize {
        self.get("latents").0[0]
    }

    fn batch(&self, i: usize) -> TuningBatch<'_> {
        let v4 = |name: &str| {
            let (s, d) = self.f32_at(name, i);
            ArrayView4::from_shape((s[0], s[1], s[2], s[3]), d).unwrap()
        };
        let (s, ids) = (&self.get("input_ids").0, self.i64_at("input_ids", i));
        let (ts, tok) = self.f32_at("id_tokens", i);
        TuningBatch {
            input_ids: ArrayView2::from_shape((s[1], s[2]), ids).unwrap(),
            latents: v4("latents"),
            noise: v4("noise"),
            timesteps: ArrayView1::from(self.i64_at("timesteps", i)),
            mask: v4("mask"),
            masked_latents: v4("masked_latents"),
            id_tokens: ArrayView3::from_shape((ts[0], ts[1], ts[2]), tok).unwrap(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The PyTorch side: `python -m pva.bench.tune`'s "name  ms ms/step" lines.
fn python_side(args: &Args) -> anyhow::Result<Vec<(String, f64)>> {
    let out = Command::new(&args.python)
        .args(["-m", "pva.bench.tune", "--steps"])
        .arg(args.steps.to_string())
        .arg("--threads")
        .arg(args.threads.to_string())
        .output()
        .with_context(|| format!("running {}", args.python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pva.bench.tune failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| {
            let (left, _) = line.split_once(" ms/step")?;
            let (name, ms) = left.trim().rsplit_once(char::is_whitespace)?;
            Some((name.trim().to_string(), ms.parse().ok()?))
        })
        .collect();
    anyhow::ensure!(!rows.is_empty(), "no `ms/step` lines in:\n{text}");
    Ok(rows)
}

fn crops(manifest_res: u32) -> anyhow::Result<Vec<ReferenceCrop>> {
    let dir = Path::new("tests/fixtures/tune");
    (0..3)
        .map(|i| {
            let image = image::open(dir.join(format!("image_{i}.png")))?.to_rgb8();
            let face = image::open(dir.join(format!("face_{i}.png")))?.to_rgb8();
            anyhow::ensure!(image.width() == manifest_res);
            Ok(ReferenceCrop { image, face })
        })
        .collect()
}

/// Mean loss of `params` over `steps` fixed draws (an evaluation: zero learning rates and decay).
fn fixed_draw_loss(
    pipeline: &mut Pipeline<OrtEngine>,
    data: &LeaveOneOut,
    params: &[f32],
    steps: usize,
) -> anyhow::Result<f32> {
    let options = TuneOptions {
        steps,
        hyper: TuningHyper {
            lr_visual: 0.0,
            lr_token: 0.0,
            weight_decay: 0.0,
        },
        seed: 1000,
    };
    let run = tune::run(
        pipeline.engine_mut(),
        data,
        params,
        &options,
        &mut SeededDraws::new(1000),
        &mut |_, _| {},
    )?;
    Ok(run.losses.iter().sum::<f32>() / steps as f32)
}

fn loss_study(pipeline: &mut Pipeline<OrtEngine>, data: &LeaveOneOut) -> anyhow::Result<()> {
    println!("\nloss study (3 fixture references, 8 seeds; quarter = mean of the first / last quarter of the steps;");
    println!("fixed draws = mean loss over the same 64 draws before / after tuning)");
    let initial = pipeline.base_adapter().to_vec();
    let before = fixed_draw_loss(pipeline, data, &initial, 64)?;
    for scale in [1.0f32, 10.0, 100.0] {
        for steps in [40usize, 200] {
            let (mut first, mut last, mut after) = (0.0, 0.0, 0.0);
            let (mut quarter_lower, mut fixed_lower) = (0, 0);
            for seed in 0..8u64 {
                let mut options = TuneOptions::from_manifest(pipeline.manifest(), seed);
                options.steps = steps;
                options.hyper.lr_visual *= scale;
                options.hyper.lr_token *= scale;
                let tuned = tune::run(
                    pipeline.engine_mut(),
                    data,
                    &initial,
                    &options,
                    &mut SeededDraws::new(seed),
                    &mut |_, _| {},
                )?;
                let k = steps / 4;
                let f = tuned.losses[..k].iter().sum::<f32>() / k as f32;
                let l = tuned.losses[steps - k..].iter().sum::<f32>() / k as f32;
                let a = fixed_draw_loss(pipeline, data, &tuned.adapter, 64)?;
                quarter_lower += usize::from(l < f);
                fixed_lower += usize::from(a < before);
                first += f / 8.0;
                last += l / 8.0;
                after += a / 8.0;
            }
            println!(
                "  lr x{scale:<4} {steps:>3} steps: quarter {first:.4} -> {last:.4} (lower for {quarter_lower}/8 seeds); \
                 fixed draws {before:.4} -> {after:.4} (lower for {fixed_lower}/8)"
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut settings = Settings::load(None)?;
    settings.engine.intra_threads = args.threads;
    let mut pipeline = load_pipeline(&settings)?;
    let fixture = Fixture::load(Path::new("tests/fixtures/tune/tune.safetensors"))?;
    let manifest = pipeline.manifest().clone();
    let hyper = TuneOptions::from_manifest(&manifest, 0).hyper;
    let initial = fixture.get("initial_params").1.clone();
    let available = fixture.steps();

    // The graph steps alone, on the fixture's batches.
    let mut per_step = Vec::new();
    let mut totals = Vec::new();
    for _ in 0..args.repeats {
        let engine = pipeline.engine_mut();
        let mut tuner = engine.tuner(&initial, hyper)?;
        let start = Instant::now();
        for i in 0..args.steps {
            let t = Instant::now();
            tuner.step(&fixture.batch(i % available))?;
            per_step.push(t.elapsed().as_secs_f64());
        }
        totals.push(start.elapsed().as_secs_f64());
    }
    let step_ms = 1e3 * median(per_step);
    let best_total = totals.iter().copied().fold(f64::INFINITY, f64::min);

    // The whole identity: encode the references, then the steps.
    let crops = crops(manifest.resolution)?;
    let mut whole = Vec::new();
    let mut options = TuneOptions::from_manifest(&manifest, 0);
    options.steps = args.steps;
    for _ in 0..args.repeats {
        let start = Instant::now();
        tune::tune_identity(&mut pipeline, &crops, &options, &mut |_, _| {})?;
        whole.push(start.elapsed().as_secs_f64());
    }

    println!(
        "{} {}, batch {}, {} ORT intra-op threads (CPU provider), {} steps, best/median of {} runs",
        manifest.name,
        manifest.version,
        manifest.tuning.batch_size,
        args.threads,
        args.steps,
        args.repeats
    );
    println!(
        "  Rust/ORT adapter_step (IO binding)       {step_ms:8.2} ms/step (median), {} steps in {best_total:.3} s",
        args.steps
    );
    println!(
        "  Rust/ORT whole identity (3 refs encoded + {} steps) {:.3} s",
        args.steps,
        whole.iter().copied().fold(f64::INFINITY, f64::min)
    );
    if args.run_python {
        let rows = python_side(&args)?;
        println!(
            "PyTorch {} (`python -m pva.bench.tune`, same batches, {} threads, median ms/step):",
            torch_version(&args.python),
            args.threads
        );
        for (name, ms) in rows {
            println!(
                "  {name:40} {ms:8.2} ms/step   Rust/ORT takes {:.3}x ({} steps: {:.3} s)",
                step_ms / ms,
                args.steps,
                ms * args.steps as f64 / 1e3
            );
        }
    }
    if args.loss_study {
        let data = LeaveOneOut::build(&mut pipeline, &crops)?;
        loss_study(&mut pipeline, &data)?;
    }
    Ok(())
}

fn torch_version(python: &Path) -> String {
    Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
