//! Jobs: the wire types ([`wire`]) and their validation ([`validate`]), why a job failed ([`failure`]), the store
//! it reads and writes ([`store`]) and where tuned adapters live in it ([`adapters`]), the steps
//! without I/O ([`flow`]), edit presets ([`preset`]) and the one job flow of every command
//! ([`runner`]), the request digest that makes re-sends safe ([`digest`]), the in-memory cache of
//! recent references' identity tokens ([`identity`]) and the messages' JSON Schemas ([`schema`]).

pub mod adapters;
pub mod digest;
pub mod failure;
pub mod flow;
pub mod identity;
pub mod preset;
pub mod runner;
pub mod schema;
pub mod store;
pub mod validate;
pub mod wire;

pub use failure::{Disposition, FailureCode, JobFailure};
pub use preset::{Preset, Presets};
pub use runner::{Done, Inference, NoObserver, Observer, OutputBuckets, Runner, RunnerOptions};
pub use store::{ObjectStore, StorageError};
pub use validate::{parse_rfc3339, CheckedJob, Edit, JobError, JobRules, Limits, MAX_REFERENCES};
pub use wire::*;
