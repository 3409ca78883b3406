//! The scheduler against diffusers: the training schedule, the timesteps of every step count and
//! whole trajectories, compared with the values `python -m pva.reference.scheduler_vectors` generates.

use super::schedule::{ddim_timesteps, dpm_timesteps};
use super::solver::Solver;
use super::*;
use vectors::*;

/// Largest allowed difference from diffusers, relative to `max(1, |expected|)`.
// NOTE: both sides round the same float32 operations in the same order, but torch's CPU
// `sqrt`/`pow(x, 0.5)`, `log` and `exp` are not correctly rounded (about one result in six
// is an ulp off the true value, and that depends on the CPU torch runs on), while Rust's are.
// Those ulps, amplified over a 50-step trajectory, stay below 1e-5.
const TOL: f32 = 1e-5;

fn manifest_config() -> SchedulerConfig {
    serde_json::from_str(
        r#"{"num_train_timesteps":1000,"beta_start":0.00085,"beta_end":0.012,
            "beta_schedule":"scaled_linear","prediction_type":"epsilon","steps_offset":1,
            "set_alpha_to_one":false,"timestep_spacing":"leading"}"#,
    )
    .expect("the manifest's scheduler object parses")
}

fn spacing(name: &str) -> TimestepSpacing {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

fn prediction(name: &str) -> PredictionType {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

fn kind(name: &str, eta: f32) -> SchedulerKind {
    match name {
        "ddim" => SchedulerKind::Ddim { eta },
        "dpmpp_2m" => SchedulerKind::DpmSolverPlusPlus,
        other => panic!("unknown scheduler {other}"),
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(
            err <= TOL,
            "{what}[{k}]: got {g}, diffusers {w} (rel err {err:e})"
        );
    }
}

// The generator's inputs (see `python -m pva.reference.scheduler_vectors`).
const SAMPLE_LEN: usize = 8;

fn initial_sample() -> Vec<f32> {
    (0..SAMPLE_LEN)
        .map(|k| (1.5 * (1.3 * k as f64 + 0.5).sin()) as f32)
        .collect()
}

fn fake_model(sample: &[f32], t: i64) -> Vec<f32> {
    sample
        .iter()
        .enumerate()
        .map(|(k, &s)| (0.1 * f64::from(s) + (t as f64 / 100.0 + 0.3 * k as f64).sin()) as f32)
        .collect()
}

fn variance_noise(i: usize) -> Vec<f32> {
    (0..SAMPLE_LEN)
        .map(|k| (1.7 * k as f64 + 0.9 * i as f64).cos() as f32)
        .collect()
}

struct Trajectory {
    name: &'static str,
    kind: &'static str,
    eta: f32,
    steps: usize,
    spacing: &'static str,
    prediction: &'static str,
    set_alpha_to_one: bool,
    timesteps: &'static [i64],
    /// The sample after step `i`.
    checkpoints: &'static [(usize, &'static [f32])],
}

#[test]
fn alphas_cumprod_match_diffusers() {
    for (schedule, want, want_sum) in [
        (
            BetaSchedule::ScaledLinear,
            ACP_SCALED_LINEAR,
            ACP_SCALED_LINEAR_SUM,
        ),
        (BetaSchedule::Linear, ACP_LINEAR, ACP_LINEAR_SUM),
        (
            BetaSchedule::SquaredcosCapV2,
            ACP_SQUAREDCOS_CAP_V2,
            ACP_SQUAREDCOS_CAP_V2_SUM,
        ),
    ] {
        let cfg = SchedulerConfig {
            beta_schedule: schedule,
            ..manifest_config()
        };
        let acp = alphas_cumprod(&cfg);
        assert_eq!(acp.len(), 1000);
        let picked: Vec<f32> = ACP_INDICES.iter().map(|&i| acp[i] as f32).collect();
        // Bit-exact: these are pure IEEE operations on both sides.
        assert_eq!(picked, want, "{schedule:?}");
        let sum: f64 = acp.iter().sum();
        assert!(
            (sum - want_sum).abs() < 1e-9,
            "{schedule:?}: sum {sum} vs {want_sum}"
        );
    }
}

#[test]
fn timesteps_match_diffusers() {
    for &(name, space, steps, want) in TIMESTEP_CASES {
        let cfg = SchedulerConfig {
            timestep_spacing: spacing(space),
            ..manifest_config()
        };
        let sched = Scheduler::new(&cfg, kind(name, 0.0), steps).unwrap();
        assert_eq!(sched.timesteps(), want, "{name} {space} {steps}");
    }
}

#[test]
fn timesteps_of_every_step_count_match_diffusers() {
    for &(name, space, want) in TIMESTEP_HASHES {
        let cfg = SchedulerConfig {
            timestep_spacing: spacing(space),
            ..manifest_config()
        };
        let mut h = 0u64;
        for n in 1..=1000 {
            let ts = match name {
                "ddim" => ddim_timesteps(&cfg, n),
                _ => dpm_timesteps(&cfg, n),
            };
            h = h.wrapping_mul(1_000_003).wrapping_add(ts.len() as u64);
            for t in ts {
                h = h.wrapping_mul(1_000_003).wrapping_add((t + 2) as u64);
            }
        }
        assert_eq!(h, want, "{name} {space}");
    }
}

#[test]
fn dpm_sigmas_match_diffusers() {
    let sched = Scheduler::new(&manifest_config(), SchedulerKind::DpmSolverPlusPlus, 10).unwrap();
    let Solver::DpmSolverPlusPlus(dpm) = &sched.solver else {
        panic!("built a DDIM");
    };
    // Within one float32 ulp: torch's sqrt is not correctly rounded (see `TOL`).
    assert_eq!(dpm.sigmas.len(), DPM_SIGMAS_10.len());
    for (&got, &want) in dpm.sigmas.iter().zip(DPM_SIGMAS_10) {
        assert!(
            (got - want).abs() <= want * f32::EPSILON,
            "sigma {got} vs {want}"
        );
    }
}

#[test]
fn trajectories_match_diffusers() {
    for case in TRAJECTORIES {
        let cfg = SchedulerConfig {
            timestep_spacing: spacing(case.spacing),
            prediction_type: prediction(case.prediction),
            set_alpha_to_one: case.set_alpha_to_one,
            ..manifest_config()
        };
        let mut sched = Scheduler::new(&cfg, kind(case.kind, case.eta), case.steps).unwrap();
        assert_eq!(sched.timesteps(), case.timesteps, "{}", case.name);
        assert_eq!(sched.init_noise_sigma(), 1.0);
        assert_eq!(
            sched.needs_variance_noise(),
            case.eta > 0.0,
            "{}",
            case.name
        );
        let mut sample = initial_sample();
        let mut checkpoints = case.checkpoints.iter().peekable();
        for (i, &t) in case.timesteps.iter().enumerate() {
            let out = fake_model(&sample, t);
            let noise = variance_noise(i);
            let noise = sched.needs_variance_noise().then_some(noise.as_slice());
            sched.step(i, &out, &mut sample, noise).unwrap();
            if let Some((_, want)) = checkpoints.next_if(|(at, _)| *at == i) {
                assert_close(&sample, want, &format!("{} after step {i}", case.name));
            }
        }
        assert!(
            checkpoints.next().is_none(),
            "{}: unchecked checkpoints",
            case.name
        );
    }
}

#[test]
fn single_ddim_step_is_stateless() {
    // DDIM needs no history: step 1 on the trajectory's sample after step 0 gives diffusers'
    // value even from a fresh scheduler.
    let case = &TRAJECTORIES[0];
    let (at0, after0) = case.checkpoints[0];
    let (at1, after1) = case.checkpoints[1];
    assert_eq!((at0, at1), (0, 1));
    let mut sched =
        Scheduler::new(&manifest_config(), SchedulerKind::Ddim { eta: 0.0 }, 10).unwrap();
    let mut sample = after0.to_vec();
    let out = fake_model(&sample, case.timesteps[1]);
    sched.step(1, &out, &mut sample, None).unwrap();
    assert_close(&sample, after1, "ddim step 1");
}

#[test]
fn bad_arguments_are_errors() {
    let cfg = manifest_config();
    let ddim = SchedulerKind::Ddim { eta: 0.0 };
    let noisy = SchedulerKind::Ddim { eta: 0.5 };
    let dpm = SchedulerKind::DpmSolverPlusPlus;
    assert_eq!(
        Scheduler::new(&cfg, ddim, 0).unwrap_err(),
        SchedulerError::ZeroSteps
    );
    assert_eq!(
        Scheduler::new(&cfg, dpm, 1001).unwrap_err(),
        SchedulerError::TooManySteps {
            steps: 1001,
            train: 1000
        }
    );
    assert_eq!(
        Scheduler::new(&cfg, SchedulerKind::Ddim { eta: 1.5 }, 10).unwrap_err(),
        SchedulerError::InvalidEta(1.5)
    );
    assert!(matches!(
        Scheduler::new(&cfg, SchedulerKind::Ddim { eta: f32::NAN }, 10),
        Err(SchedulerError::InvalidEta(_))
    ));
    // Leading spacing with 1000 steps and offset 1 reaches timestep 1000 (diffusers indexes
    // past alphas_cumprod there); DPM linspace at 1000 steps repeats timesteps.
    assert!(matches!(
        Scheduler::new(&cfg, ddim, 1000),
        Err(SchedulerError::DegenerateSchedule { .. })
    ));
    let linspace = SchedulerConfig {
        timestep_spacing: TimestepSpacing::Linspace,
        ..cfg.clone()
    };
    assert!(matches!(
        Scheduler::new(&linspace, dpm, 1000),
        Err(SchedulerError::DegenerateSchedule { .. })
    ));
    // numpy's float arange makes 62 trailing timesteps for 61 steps, the last being -1.
    let trailing = SchedulerConfig {
        timestep_spacing: TimestepSpacing::Trailing,
        ..cfg.clone()
    };
    assert_eq!(ddim_timesteps(&trailing, 61).len(), 62);
    assert!(matches!(
        Scheduler::new(&trailing, ddim, 61),
        Err(SchedulerError::DegenerateSchedule { .. })
    ));
    let bad_beta = SchedulerConfig {
        beta_end: 1.5,
        ..cfg.clone()
    };
    assert!(matches!(
        Scheduler::new(&bad_beta, ddim, 10),
        Err(SchedulerError::InvalidConfig(_))
    ));

    let sample = initial_sample();
    let out = fake_model(&sample, 901);
    for kind in [ddim, dpm] {
        let mut s = Scheduler::new(&cfg, kind, 10).unwrap();
        let mut x = sample.clone();
        assert_eq!(
            s.step(0, &out[..7], &mut x, None).unwrap_err(),
            SchedulerError::LengthMismatch {
                what: "model_output",
                expected: 8,
                got: 7
            }
        );
        assert_eq!(
            s.step(10, &out, &mut x, None).unwrap_err(),
            SchedulerError::StepOutOfRange {
                index: 10,
                steps: 10
            }
        );
        assert_eq!(x, sample, "a refused step leaves the sample alone");
    }
    let mut s = Scheduler::new(&cfg, noisy, 10).unwrap();
    let mut x = sample.clone();
    assert_eq!(
        s.step(0, &out, &mut x, None).unwrap_err(),
        SchedulerError::MissingVarianceNoise
    );
    assert_eq!(
        s.step(0, &out, &mut x, Some(&out[..3])).unwrap_err(),
        SchedulerError::LengthMismatch {
            what: "variance_noise",
            expected: 8,
            got: 3
        }
    );
    let mut s = Scheduler::new(&cfg, dpm, 10).unwrap();
    assert_eq!(
        s.step(1, &out, &mut x, None).unwrap_err(),
        SchedulerError::OutOfOrder {
            expected: 0,
            got: 1
        }
    );
    s.step(0, &out, &mut x, None).unwrap();
    assert_eq!(
        s.step(0, &out, &mut x, None).unwrap_err(),
        SchedulerError::OutOfOrder {
            expected: 1,
            got: 0
        }
    );
}

#[test]
fn config_and_kind_serde() {
    let cfg = manifest_config();
    assert_eq!(cfg.beta_schedule, BetaSchedule::ScaledLinear);
    assert_eq!(cfg.timestep_spacing, TimestepSpacing::Leading);
    let back: SchedulerConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let extra = r#"{"num_train_timesteps":1000,"beta_start":0.00085,"beta_end":0.012,
        "beta_schedule":"scaled_linear","prediction_type":"epsilon","steps_offset":1,
        "set_alpha_to_one":false,"timestep_spacing":"leading","rescale_betas_zero_snr":true}"#;
    assert!(serde_json::from_str::<SchedulerConfig>(extra).is_err());

    let ddim: SchedulerKind = serde_json::from_str(r#"{"type":"ddim","eta":0.25}"#).unwrap();
    assert_eq!(ddim, SchedulerKind::Ddim { eta: 0.25 });
    let dpm: SchedulerKind = serde_json::from_str(r#"{"type":"dpmpp_2m"}"#).unwrap();
    assert_eq!(dpm, SchedulerKind::DpmSolverPlusPlus);
    assert_eq!(
        serde_json::to_string(&SchedulerKind::DpmSolverPlusPlus).unwrap(),
        r#"{"type":"dpmpp_2m"}"#
    );
}

/// diffusers' values, generated by `python -m pva.reference.scheduler_vectors`.
#[rustfmt::skip]
mod vectors {
    use super::Trajectory;

    include!("test_vectors.rs");
}
