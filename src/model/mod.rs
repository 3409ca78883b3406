//! The ground floor: plain data every layer above shares (no runtime, no I/O). Today the stage
//! vocabulary; the manifest, scheduler and tokenizer configs and the adapter layout move here next.

pub mod stage;

pub use stage::{Stage, UnknownStage};
