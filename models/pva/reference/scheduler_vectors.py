"""Generate the expected values for the Rust scheduler tests (src/pipeline/scheduler/tests.rs).

Runs diffusers' `DDIMScheduler` and `DPMSolverMultistepScheduler` (DPM-Solver++ 2M) on small,
deterministic inputs and writes Rust source: the training schedule, timesteps for several step counts
and spacings, a checksum of the timesteps of every step count 1..=1000, and whole denoising
trajectories driven by a fake model. The output is src/pipeline/scheduler/test_vectors.rs, which the
tests `include!` as it is.

The fake model and the inputs are defined with plain f64 arithmetic (`math.sin`/`math.cos`, the same
libm the Rust side calls) rounded once to f32, so both sides feed the schedulers identical numbers:

- initial sample:   x[k] = f32(1.5 * sin(1.3 * k + 0.5))
- model output:     m[k] = f32(0.1 * x[k] + sin(t / 100 + 0.3 * k))     (t: the step's timestep)
- variance noise:   z[i][k] = f32(cos(1.7 * k + 0.9 * i))               (i: the step index)

Run: `.venv/bin/python -m pva.reference.scheduler_vectors` (rewrites the vectors file; `--output -`
prints to stdout instead, `--output PATH` writes elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from pva.paths import REPO_ROOT

# The manifest's scheduler object (models/CONTRACT.md), shared by the tiny and the full model.
MANIFEST_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
}

# The Rust file the tests include (`include!` in src/pipeline/scheduler/tests.rs).
VECTORS_PATH = REPO_ROOT / "src" / "pipeline" / "scheduler" / "test_vectors.rs"

SAMPLE_LEN = 8
HASH_MUL = 1_000_003
HASH_MASK = (1 << 64) - 1


def make_ddim(cfg: dict) -> DDIMScheduler:
    """DDIM as the pipeline builds it: the manifest config, no sample clipping."""
    return DDIMScheduler.from_config({**cfg, "clip_sample": False})


def make_dpm(cfg: dict) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ 2M as the pipeline builds it from the manifest config."""
    return DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True
    )


def initial_sample() -> torch.Tensor:
    return torch.tensor([1.5 * math.sin(1.3 * k + 0.5) for k in range(SAMPLE_LEN)], dtype=torch.float32)


def fake_model(sample: torch.Tensor, t: int) -> torch.Tensor:
    values = [0.1 * float(s) + math.sin(t / 100 + 0.3 * k) for k, s in enumerate(sample.tolist())]
    return torch.tensor(values, dtype=torch.float32)


def variance_noise(i: int) -> torch.Tensor:
    return torch.tensor([math.cos(1.7 * k + 0.9 * i) for k in range(SAMPLE_LEN)], dtype=torch.float32)


def shortest_f32(v: float) -> str:
    """Shortest decimal that round-trips the f32 value (numpy's repr of float32)."""
    return np.format_float_positional(np.float32(v), unique=True, trim="0")


def f32_slice(values: list[float] | np.ndarray | torch.Tensor) -> str:
    arr = np.asarray(values, dtype=np.float32)
    return "&[" + ", ".join(shortest_f32(v) for v in arr.tolist()) + "]"


def i64_slice(values: list[int] | np.ndarray | torch.Tensor) -> str:
    return "&[" + ", ".join(str(int(v)) for v in list(values)) + "]"


def timesteps_hash(kind: str, spacing: str) -> int:
    """Fold the timesteps of every step count 1..=1000 into one u64 (same fold as the Rust test)."""
    cfg = {**MANIFEST_CONFIG, "timestep_spacing": spacing}
    sched = make_ddim(cfg) if kind == "ddim" else make_dpm(cfg)
    h = 0
    for n in range(1, 1001):
        sched.set_timesteps(n)
        ts = sched.timesteps.tolist()
        h = (h * HASH_MUL + len(ts)) & HASH_MASK
        for t in ts:
            h = (h * HASH_MUL + (t + 2)) & HASH_MASK
    return h


@dataclass
class Case:
    """One whole trajectory: a scheduler, its config overrides, and the step count."""

    name: str
    kind: str  # "ddim" or "dpmpp_2m"
    steps: int
    eta: float = 0.0
    spacing: str = "leading"
    prediction: str = "epsilon"
    set_alpha_to_one: bool = False


CASES = [
    Case("ddim_eta0_10", "ddim", 10),
    Case("ddim_eta0_25", "ddim", 25),
    Case("ddim_eta0_50", "ddim", 50),
    Case("ddim_eta05_25", "ddim", 25, eta=0.5),
    Case("ddim_eta1_8_trailing_v_alpha1", "ddim", 8, eta=1.0, spacing="trailing",
         prediction="v_prediction", set_alpha_to_one=True),
    Case("ddim_eta0_12_linspace_sample", "ddim", 12, spacing="linspace", prediction="sample"),
    Case("ddim_eta0_1", "ddim", 1),
    Case("dpm_10", "dpmpp_2m", 10),
    Case("dpm_25", "dpmpp_2m", 25),
    Case("dpm_50", "dpmpp_2m", 50),
    Case("dpm_8_trailing_v", "dpmpp_2m", 8, spacing="trailing", prediction="v_prediction"),
    Case("dpm_20_linspace_sample", "dpmpp_2m", 20, spacing="linspace", prediction="sample"),
    Case("dpm_15_linspace", "dpmpp_2m", 15, spacing="linspace"),
    Case("dpm_1", "dpmpp_2m", 1),
    Case("dpm_2", "dpmpp_2m", 2),
]


def run_case(case: Case) -> tuple[list[int], list[tuple[int, torch.Tensor]]]:
    """Run one trajectory; return the timesteps and the sample after the checkpoint steps."""
    cfg = {
        **MANIFEST_CONFIG,
        "timestep_spacing": case.spacing,
        "prediction_type": case.prediction,
        "set_alpha_to_one": case.set_alpha_to_one,
    }
    sched = make_ddim(cfg) if case.kind == "ddim" else make_dpm(cfg)
    sched.set_timesteps(case.steps)
    n = len(sched.timesteps)
    checkpoints = sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n)))
    sample = initial_sample()
    saved: list[tuple[int, torch.Tensor]] = []
    for i, t in enumerate(sched.timesteps):
        out = fake_model(sample, int(t))
        if case.kind == "ddim":
            noise = variance_noise(i) if case.eta > 0 else None
            sample = sched.step(out, t, sample, eta=case.eta, variance_noise=noise).prev_sample
        else:
            sample = sched.step(out, t, sample).prev_sample
        if i in checkpoints:
            saved.append((i, sample.clone()))
    return sched.timesteps.tolist(), saved


def print_vectors() -> None:
    """Print the whole vectors file."""
    print("// Generated by `python -m pva.reference.scheduler_vectors` (diffusers", end=" ")
    import diffusers

    print(f"{diffusers.__version__}, torch {torch.__version__}).")
    print("// Do not edit: regenerate with `.venv/bin/python -m pva.reference.scheduler_vectors`, which")
    print("// writes this file. Not a module: src/pipeline/scheduler/tests.rs `include!`s it into its")
    print("// `mod vectors`, which brings `Trajectory` into scope.")

    # The training schedule, for each beta schedule, at a few indices.
    print("pub const ACP_INDICES: &[usize] = &[0, 1, 2, 100, 499, 500, 501, 998, 999];")
    for schedule in ["scaled_linear", "linear", "squaredcos_cap_v2"]:
        sched = make_ddim({**MANIFEST_CONFIG, "beta_schedule": schedule})
        acp = sched.alphas_cumprod.numpy()
        picked = acp[[0, 1, 2, 100, 499, 500, 501, 998, 999]]
        total = float(np.sum(acp.astype(np.float64)))
        print(f"pub const ACP_{schedule.upper()}: &[f32] = {f32_slice(picked)};")
        print(f"pub const ACP_{schedule.upper()}_SUM: f64 = {total!r};")

    # Timesteps for a few step counts.
    print("pub const TIMESTEP_CASES: &[(&str, &str, usize, &[i64])] = &[")
    for kind in ["ddim", "dpmpp_2m"]:
        for spacing in ["leading", "linspace", "trailing"]:
            cfg = {**MANIFEST_CONFIG, "timestep_spacing": spacing}
            sched = make_ddim(cfg) if kind == "ddim" else make_dpm(cfg)
            for n in [1, 2, 3, 7, 10, 25, 50]:
                sched.set_timesteps(n)
                print(f'    ("{kind}", "{spacing}", {n}, {i64_slice(sched.timesteps)}),')
    print("];")

    # DPM-Solver++'s sigmas for the manifest config at 10 steps (the last is the final zero).
    dpm = make_dpm(MANIFEST_CONFIG)
    dpm.set_timesteps(10)
    print(f"pub const DPM_SIGMAS_10: &[f32] = {f32_slice(dpm.sigmas)};")

    print("pub const TIMESTEP_HASHES: &[(&str, &str, u64)] = &[")
    for kind in ["ddim", "dpmpp_2m"]:
        for spacing in ["leading", "linspace", "trailing"]:
            print(f'    ("{kind}", "{spacing}", {timesteps_hash(kind, spacing)}),')
    print("];")

    print("pub const TRAJECTORIES: &[Trajectory] = &[")
    for case in CASES:
        timesteps, saved = run_case(case)
        print("    Trajectory {")
        print(f'        name: "{case.name}",')
        print(f'        kind: "{case.kind}",')
        print(f"        eta: {case.eta!r},")
        print(f"        steps: {case.steps},")
        print(f'        spacing: "{case.spacing}",')
        print(f'        prediction: "{case.prediction}",')
        print(f"        set_alpha_to_one: {str(case.set_alpha_to_one).lower()},")
        print(f"        timesteps: {i64_slice(timesteps)},")
        print("        checkpoints: &[")
        for i, s in saved:
            print(f"            ({i}, {f32_slice(s)}),")
        print("        ],")
        print("    },")
    print("];")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        default=str(VECTORS_PATH),
        help="where to write the Rust source ('-' for stdout; default: %(default)s)",
    )
    args = parser.parse_args()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_vectors()
    if args.output == "-":
        sys.stdout.write(buf.getvalue())
    else:
        Path(args.output).write_text(buf.getvalue())
        print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
