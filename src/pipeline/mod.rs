//! Pure-Rust stages around the graphs: images, masks, face crops, text, schedulers.

pub mod face;
pub mod image;
pub mod mask;
pub mod scheduler;
pub mod tokenizer;
