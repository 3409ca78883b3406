//! pva-worker: personalized face inpainting (Parallel Visual Attention) as a service.
//!
//! The flow: a [`job`] (from the queue or a local file) is checked, its images are fetched from
//! [`storage`], the [`pipeline`] prepares tensors and drives the ONNX graphs through the [`engine`],
//! and [`worker`] turns the outcome into outputs and a result message. [`edit`] is the embedded
//! default (one job on local files); [`config`] holds every setting.

pub mod config;
pub mod contact_sheet;
pub mod edit;
pub mod engine;
pub mod enqueue;
pub mod forget;
pub mod inference;
pub mod job;
pub mod metrics;
pub mod pipeline;
pub mod provenance;
pub mod queue;
pub mod serve;
pub mod storage;
pub mod tune_cmd;
pub mod verify_cmd;
pub mod worker;
