//! Whether the inference engine still works, as the inference threads see it: [`EngineWatch`] counts
//! consecutive engine failures (`model_error`), asks for a probe inference (the warm-up edit) after
//! every `health.probe_after_failures` of them, and holds the fault `/healthz` reports when that probe
//! fails too. A job that always fails in the engine therefore never makes the worker unhealthy on its
//! own: the probe succeeds and the count starts again.

use std::sync::Mutex;

use crate::job::{FailureCode, JobFailure};

/// How one request of an inference thread ended, for the engine's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded: the engine works.
    Succeeded,
    /// It failed in the engine (`model_error`: a graph run, non-finite outputs, a panic).
    EngineFailed,
    /// It failed for a reason of its own (bad input, no face, ...): says nothing about the engine.
    OtherFailed,
}

impl Outcome {
    /// The outcome of a request's result.
    pub fn of<T>(result: &Result<T, JobFailure>) -> Self {
        match result {
            Ok(_) => Outcome::Succeeded,
            Err(f) if f.code == FailureCode::ModelError => Outcome::EngineFailed,
            Err(_) => Outcome::OtherFailed,
        }
    }
}

/// What a probe found, for whoever reports it (a metric, a log line).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// The consecutive engine failures that called for it.
    pub after_failures: u32,
    /// Its seconds, or why it failed.
    pub result: Result<f64, String>,
}

type ProbeHook = Box<dyn Fn(&ProbeReport) + Send + Sync>;

/// The engine's health, shared by every inference thread of a pool.
pub struct EngineWatch {
    probe_after: u32,
    state: Mutex<State>,
    on_probe: Option<ProbeHook>,
}

#[derive(Debug, Default)]
struct State {
    /// Engine failures since the last success or successful probe.
    failures: u32,
    /// Why the engine counts as broken (a failed probe), until something succeeds.
    fault: Option<String>,
}

impl std::fmt::Debug for EngineWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineWatch")
            .field("probe_after", &self.probe_after)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl EngineWatch {
    /// A watch that asks for a probe after every `probe_after` consecutive engine failures (at least 1).
    pub fn new(probe_after: u32) -> Self {
        Self {
            probe_after: probe_after.max(1),
            state: Mutex::default(),
            on_probe: None,
        }
    }

    /// Calls `hook` with each probe's report (from the inference thread that ran it).
    pub fn on_probe(mut self, hook: impl Fn(&ProbeReport) + Send + Sync + 'static) -> Self {
        self.on_probe = Some(Box::new(hook));
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // NOTE: the state is two plain values, valid whatever a panicking holder left.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request's outcome; returns the number of consecutive engine failures when a probe
    /// is due (every `probe_after`-th one), else `None`.
    pub fn record(&self, outcome: Outcome) -> Option<u32> {
        let mut s = self.state();
        match outcome {
            Outcome::Succeeded => {
                s.failures = 0;
                s.fault = None;
                None
            }
            Outcome::EngineFailed => {
                s.failures = s.failures.saturating_add(1);
                (s.failures % self.probe_after == 0).then_some(s.failures)
            }
            Outcome::OtherFailed => None,
        }
    }

    /// Records the probe that [`EngineWatch::record`] asked for: a success clears the count and any
    /// fault, a failure makes `/healthz` fail with the reason.
    pub fn probed(&self, after_failures: u32, result: Result<f64, String>) {
        {
            let mut s = self.state();
            match &result {
                Ok(_) => {
                    s.failures = 0;
                    s.fault = None;
                }
                Err(e) => {
                    s.fault = Some(format!(
                        "{after_failures} consecutive engine failures and the probe inference \
                         on the warm-up input failed: {e}"
                    ));
                }
            }
        }
        match &result {
            Ok(secs) => tracing::warn!(
                after_failures,
                seconds = secs,
                "engine probe succeeded after consecutive engine failures: the jobs failed, not the engine"
            ),
            Err(e) => tracing::error!(
                after_failures,
                error = %e,
                "engine probe failed: /healthz now fails"
            ),
        }
        if let Some(hook) = &self.on_probe {
            hook(&ProbeReport {
                after_failures,
                result,
            });
        }
    }

    /// Why the engine counts as broken, or `None` while it works (or nothing has shown otherwise).
    pub fn fault(&self) -> Option<String> {
        self.state().fault.clone()
    }

    /// Engine failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.state().failures
    }
}

impl crate::metrics::Liveness for EngineWatch {
    fn fault(&self) -> Option<String> {
        EngineWatch::fault(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    fn engine_failure() -> Result<(), JobFailure> {
        Err(JobFailure::new(
            FailureCode::ModelError,
            "graph `unet` failed",
        ))
    }

    #[test]
    fn outcomes_follow_the_failure_code() {
        assert_eq!(Outcome::of(&Ok::<_, JobFailure>(())), Outcome::Succeeded);
        assert_eq!(Outcome::of(&engine_failure()), Outcome::EngineFailed);
        let no_face: Result<(), _> = Err(JobFailure::new(FailureCode::NoFace, "target"));
        assert_eq!(Outcome::of(&no_face), Outcome::OtherFailed);
    }

    #[test]
    fn a_probe_is_due_after_every_n_engine_failures_and_only_a_failed_probe_is_a_fault() {
        let probes = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&probes);
        let watch = EngineWatch::new(3).on_probe(move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(watch.record(Outcome::EngineFailed), None);
        // Other failures neither count nor reset.
        assert_eq!(watch.record(Outcome::OtherFailed), None);
        assert_eq!(watch.record(Outcome::EngineFailed), None);
        assert_eq!(watch.consecutive_failures(), 2);
        assert_eq!(watch.record(Outcome::EngineFailed), Some(3));
        // The probe succeeds: the jobs were bad, not the engine; counting starts again.
        watch.probed(3, Ok(0.5));
        assert_eq!(watch.fault(), None);
        assert_eq!(watch.consecutive_failures(), 0);
        assert_eq!(watch.record(Outcome::EngineFailed), None);
        assert_eq!(watch.record(Outcome::EngineFailed), None);
        assert_eq!(watch.record(Outcome::EngineFailed), Some(3));
        watch.probed(3, Err("graph `vae_decoder` failed".into()));
        let fault = watch.fault().expect("a failed probe is a fault");
        assert!(fault.contains("3 consecutive engine failures"), "{fault}");
        assert!(fault.contains("vae_decoder"), "{fault}");
        // Still broken: the next probe is due after 3 more failures, and its failure keeps the fault.
        assert_eq!(watch.record(Outcome::EngineFailed), None);
        assert_eq!(watch.record(Outcome::OtherFailed), None);
        assert!(watch.fault().is_some());
        assert_eq!(watch.record(Outcome::EngineFailed), None);
        assert_eq!(watch.record(Outcome::EngineFailed), Some(6));
        watch.probed(6, Err("again".into()));
        assert!(watch.fault().unwrap().starts_with("6 consecutive"));
        // Any success clears it.
        assert_eq!(watch.record(Outcome::Succeeded), None);
        assert_eq!(watch.fault(), None);
        assert_eq!(watch.consecutive_failures(), 0);
        assert_eq!(
            probes.load(Ordering::Relaxed),
            3,
            "the hook saw every probe"
        );
    }

    #[test]
    fn one_failure_is_enough_when_the_threshold_is_one() {
        let watch = EngineWatch::new(0);
        assert_eq!(watch.record(Outcome::EngineFailed), Some(1), "0 acts as 1");
        assert_eq!(watch.record(Outcome::EngineFailed), Some(2));
    }
}
