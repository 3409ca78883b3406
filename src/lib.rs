//! pva-worker: personalized face inpainting (Parallel Visual Attention) as a service.
//!
//! Layers, ground floor first; a module imports only its own floor or those below:
//! [`model`] (plain shared types) -> [`engine`] (ONNX Runtime) -> [`pipeline`] (the edit and the
//! tuning) -> [`provenance`] (marking outputs) -> [`job`] (wire types, failures, the store trait and
//! the one job runner) -> [`storage`], [`queue`], [`metrics`] (infrastructure) -> [`config`] (every
//! setting) -> [`service`] (model loading, inference threads, `serve`'s delivery policy) ->
//! [`commands`] (the subcommands).

pub mod commands;
pub mod config;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod provenance;
pub mod queue;
pub mod service;
pub mod storage;
