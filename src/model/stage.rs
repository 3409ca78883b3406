//! [`Stage`]: the named steps of a job, shared by the pipeline's timings, the runner, the metrics'
//! `stage` label and the result's `timings` keys (their names are part of the wire format).

/// A timed step of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Reading the job's images from the store.
    Fetch,
    /// Crops, masks and tensors (pipeline).
    Preprocess,
    /// Text, faces, identity tokens and VAE encode (pipeline).
    Encode,
    /// Tuning the identity's adapter (only when a job tunes).
    Tune,
    /// The sampler loop (pipeline).
    Denoise,
    /// VAE decode, paste-back and identity score (pipeline).
    Decode,
    /// Encoding, marking and writing the outputs and the result.
    Upload,
}

impl Stage {
    /// Every stage, in job order.
    pub const ALL: [Stage; 7] = [
        Stage::Fetch,
        Stage::Preprocess,
        Stage::Encode,
        Stage::Tune,
        Stage::Denoise,
        Stage::Decode,
        Stage::Upload,
    ];

    /// The stage's name on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Preprocess => "preprocess",
            Stage::Encode => "encode",
            Stage::Tune => "tune",
            Stage::Denoise => "denoise",
            Stage::Decode => "decode",
            Stage::Upload => "upload",
        }
    }
}

impl Stage {
    /// A new span named as the stage (span names are static, hence the match), a child of the
    /// current span: a job's traces show its stages under these names, as its metrics do.
    pub fn span(self) -> tracing::Span {
        match self {
            Stage::Fetch => tracing::info_span!("fetch"),
            Stage::Preprocess => tracing::info_span!("preprocess"),
            Stage::Encode => tracing::info_span!("encode"),
            Stage::Tune => tracing::info_span!("tune"),
            Stage::Denoise => tracing::info_span!("denoise"),
            Stage::Decode => tracing::info_span!("decode"),
            Stage::Upload => tracing::info_span!("upload"),
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownStage(name.to_string()))
    }
}

/// A stage name that is not one of [`Stage::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage `{0}`")]
pub struct UnknownStage(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
            let name = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
                stage.span().metadata().map(|m| m.name())
            });
            assert_eq!(name, Some(stage.as_str()));
        }
        assert_eq!("vae".parse::<Stage>(), Err(UnknownStage("vae".to_string())));
    }
}
