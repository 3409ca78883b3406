//! The timings of `pva-bench edit`'s runs ([`RunTimes`]), their medians and the per-case report
//! ([`print_case`]).

use std::collections::BTreeMap;

use pva_worker::pipeline::stats::median;

use super::Case;

/// One timed edit of either side.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunTimes {
    /// Seconds per stage (`preprocess`, `encode`, `denoise`, `decode`).
    pub(crate) stages: BTreeMap<String, f64>,
    /// Seconds of the whole edit.
    pub(crate) total: f64,
    /// Seconds in graph runs, per graph.
    pub(crate) ort: BTreeMap<String, f64>,
    /// Seconds in graph runs, per stage.
    pub(crate) ort_by_stage: BTreeMap<String, f64>,
}

impl RunTimes {
    fn ort_total(&self) -> f64 {
        self.ort.values().sum()
    }
}

const STAGES: [&str; 4] = ["preprocess", "encode", "denoise", "decode"];

fn median_of(runs: &[RunTimes], pick: impl Fn(&RunTimes) -> f64) -> f64 {
    median(runs.iter().map(pick).collect())
}

/// One line of the summary.
pub(crate) struct CaseSummary {
    pub(crate) label: String,
    /// Median seconds of the whole edit.
    pub(crate) rust: f64,
    pub(crate) python: f64,
    /// Fastest repetition's seconds (the least disturbed by other load on the machine).
    pub(crate) rust_best: f64,
    pub(crate) python_best: f64,
    /// Median share of the Rust edit outside graph runs.
    pub(crate) outside: f64,
}

pub(crate) fn print_case(case: Case, rust: &[RunTimes], python: &[RunTimes]) -> CaseSummary {
    let label = format!("{} steps, guidance {}", case.steps, case.guidance);
    println!();
    println!("== {label} ==");
    println!(
        "  {:<18} {:>10} {:>10} {:>12} {:>14} {:>14}",
        "stage (median)", "rust ms", "python ms", "rust/python", "rust outside", "python outside"
    );
    let row = |name: &str, r: f64, p: f64| {
        // A graph only one side calls (the Rust engine's one-off UNet binding) has no ratio.
        let ratio = if p > 0.0 {
            format!("{:.2}x", r / p)
        } else {
            "-".into()
        };
        println!(
            "  {:<18} {:>10.2} {:>10.2} {:>12}",
            name,
            r * 1e3,
            p * 1e3,
            ratio
        );
    };
    let stage_secs = |r: &RunTimes, stage: &str| r.stages.get(stage).copied().unwrap_or(0.0);
    let outside = |r: &RunTimes, stage: &str| {
        stage_secs(r, stage) - r.ort_by_stage.get(stage).copied().unwrap_or(0.0)
    };
    for stage in STAGES {
        println!(
            "  {:<18} {:>10.2} {:>10.2} {:>11.2}x {:>11.2} ms {:>11.2} ms",
            stage,
            median_of(rust, |r| stage_secs(r, stage)) * 1e3,
            median_of(python, |r| stage_secs(r, stage)) * 1e3,
            median_of(rust, |r| stage_secs(r, stage)) / median_of(python, |r| stage_secs(r, stage)),
            median_of(rust, |r| outside(r, stage)) * 1e3,
            median_of(python, |r| outside(r, stage)) * 1e3,
        );
    }
    let (rust_total, python_total) = (median_of(rust, |r| r.total), median_of(python, |r| r.total));
    row("whole edit", rust_total, python_total);
    let mut graphs: Vec<&String> = rust
        .iter()
        .chain(python)
        .flat_map(|r| r.ort.keys())
        .collect();
    graphs.sort();
    graphs.dedup();
    println!("  graph runs (median ms per edit, all calls of the graph)");
    for g in graphs {
        row(
            &format!("  {g}"),
            median_of(rust, |r| r.ort.get(g).copied().unwrap_or(0.0)),
            median_of(python, |r| r.ort.get(g).copied().unwrap_or(0.0)),
        );
    }
    let rust_ort = median_of(rust, |r| r.ort_total());
    let python_ort = median_of(python, |r| r.ort_total());
    row("all graph runs", rust_ort, python_ort);
    let share = |runs: &[RunTimes]| median_of(runs, |r| 1.0 - r.ort_total() / r.total);
    let (rust_outside, python_outside) = (share(rust), share(python));
    println!(
        "  outside graph runs: rust {:.2} ms ({:.1}% of the edit), python {:.2} ms ({:.1}%)",
        median_of(rust, |r| r.total - r.ort_total()) * 1e3,
        100.0 * rust_outside,
        median_of(python, |r| r.total - r.ort_total()) * 1e3,
        100.0 * python_outside
    );
    println!(
        "  whole edit rust/python: {:.2}x (goal <= 0.70x); rust outside graph runs {:.1}% (goal <= 5%)",
        rust_total / python_total,
        100.0 * rust_outside
    );
    let best = |runs: &[RunTimes]| runs.iter().map(|r| r.total).fold(f64::INFINITY, f64::min);
    CaseSummary {
        label,
        rust: rust_total,
        python: python_total,
        rust_best: best(rust),
        python_best: best(python),
        outside: rust_outside,
    }
}
