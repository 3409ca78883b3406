//! pva-worker: personalized face inpainting (Parallel Visual Attention) as a service.
//!
//! The flow: a [`job`] (from the queue or a local file) is checked, its images are fetched, the
//! [`pipeline`] prepares tensors and drives the ONNX graphs through the [`engine`], and the results
//! are written back with their per-stage timings.

pub mod pipeline;
