//! The queue service and what every command shares to run jobs: loading the model ([`model`]), the
//! inference threads ([`pool`]), the warm-up edit they run before the worker counts as started and
//! as the engine probe ([`warmup`]), the engine's health as they report it ([`health`]), the
//! delivery policy of `serve` ([`delivery`]: ack, requeue with backoff, dead-letter, publish) and a
//! job's lifecycle events ([`events`]).

pub mod delivery;
pub mod events;
pub mod health;
pub mod model;
pub mod pool;
pub mod warmup;

pub use delivery::{backoff, run, worker_id, Service};
pub use health::EngineWatch;
pub use model::{load_base_adapter, load_pipeline, load_pipeline_for, LoadError};
pub use pool::{InferencePool, Started};
