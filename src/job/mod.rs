//! Jobs: the wire types ([`wire`]) and their validation ([`validate`]), why a job failed ([`failure`]), the store
//! it reads and writes ([`store`]) and where tuned adapters live in it ([`adapters`]), the steps without I/O ([`flow`]) and the one job flow of every
//! command ([`runner`]), the request digest that makes re-sends safe ([`digest`]), and the in-memory
//! cache of recent references' identity tokens ([`identity`]).

pub mod adapters;
pub mod digest;
pub mod failure;
pub mod flow;
pub mod identity;
pub mod runner;
pub mod store;
pub mod validate;
pub mod wire;

pub use failure::{Disposition, FailureCode, JobFailure};
pub use runner::{Done, Inference, NoObserver, Observer, OutputBuckets, Runner, RunnerOptions};
pub use store::{ObjectStore, StorageError};
pub use validate::{parse_rfc3339, CheckedJob, JobError, JobRules, Limits, MAX_REFERENCES};
pub use wire::*;
