//! The ground floor: plain data every layer above shares, with no runtime: the model directory's
//! manifest (with the scheduler and tokenizer configs it carries), the face-model directory's
//! manifest, the adapter's layout and file format, the stage vocabulary of a job, the redacting
//! [`Secret`] of settings and the checked PEM files of TLS settings.

pub mod adapter;
pub mod faces;
pub mod manifest;
pub mod pem;
pub mod scheduler;
pub mod secret;
pub mod stage;
pub mod tokenizer;

pub use manifest::Manifest;
pub use secret::Secret;
pub use stage::{Stage, UnknownStage};
