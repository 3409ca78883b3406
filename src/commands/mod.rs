//! The subcommands: `edit` (+ its contact sheet), `serve`, `enqueue`, `tune`, `forget`, `verify`.
//! `main.rs` parses the command line and runs one of these on its one tokio runtime.

pub mod contact_sheet;
pub mod edit;
pub mod enqueue;
pub mod forget;
pub mod tune;
pub mod verify;
