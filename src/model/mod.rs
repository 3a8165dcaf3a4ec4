//! The Llama 4 model: configuration, checkpoints, weights, forward pass, generation.

pub mod backend;
pub mod cache;
pub mod config;
pub mod forward;
pub mod generate;
pub mod sampling;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, CpuBackend};
pub use cache::Cache;
pub use config::Config;
pub use forward::{Logits, Model};
pub use weights::{Ffn, LayerWeights, Weights};
pub mod checkpoint;
pub mod cuda;
pub mod device_choice;
pub mod gpu_plan;
pub mod plan;
pub mod presets;
pub mod quantize;
pub mod synthetic_gpu;
