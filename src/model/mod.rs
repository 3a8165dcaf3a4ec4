//! The Llama 4 model: configuration, checkpoints, weights, forward pass, generation.

pub mod config;
pub mod weights;

pub use config::Config;
pub use weights::{Ffn, LayerWeights, Weights};
pub mod checkpoint;
pub mod plan;
pub mod presets;
pub mod quantize;
