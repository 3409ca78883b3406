//! The queue service and what every command shares to run jobs: loading the model ([`model`]), the
//! inference threads ([`pool`]), the delivery policy of `serve` ([`delivery`]: ack, requeue with
//! backoff, dead-letter, publish) and a job's lifecycle events ([`events`]).

pub mod delivery;
pub mod events;
pub mod model;
pub mod pool;

pub use delivery::{backoff, run, worker_id, Service};
pub use model::{load_base_adapter, load_pipeline, load_pipeline_for, LoadError};
pub use pool::InferencePool;
