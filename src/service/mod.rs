//! The queue service and what every command shares to run jobs: loading the model ([`model`]), the
//! inference threads ([`pool`]) and the delivery policy of `serve` ([`delivery`]: ack, requeue with
//! backoff, dead-letter, publish).

pub mod delivery;
pub mod model;
pub mod pool;

pub use delivery::{backoff, run, worker_id, Service};
pub use model::{load_base_adapter, load_pipeline, load_pipeline_for, LoadError};
pub use pool::InferencePool;
