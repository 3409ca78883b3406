//! Pure-Rust stages around the graphs: images, masks, face crops, text, schedulers, noise, and the
//! edit itself (`inpaint`), which drives the engine.

pub mod face;
pub mod image;
pub mod inpaint;
pub mod mask;
pub mod noise;
pub mod scheduler;
pub mod stats;
pub mod tokenizer;
pub mod tune;
