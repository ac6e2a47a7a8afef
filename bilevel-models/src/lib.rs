//! Compile-time-shaped models whose lower-level gradients are written in taped dfdx ops, so that
//! they plug into [`bilevel_optim::problem::BilevelProblem`] with exact second-order products.
//!
//! - [`layer`]: the [`layer::WrittenLayer`] trait (forward + written backward) and tuple composition.
//! - [`dense`]: dfdx's `Linear` and `Tanh`; [`elman`], [`lstm`]: recurrent layers over packed
//!   sequences; [`pool`]: max-pooling over time; [`loss`]: softmax cross-entropy.
//! - [`elementwise`]: fused tanh and tanh-slope ops with hand-written backward passes.
//! - [`rows`]: row gather, scatter-add and concatenation for packed sequences.
//! - [`penalty`]: L2 penalties with a fixed, a per-tensor learnable or a scalar learnable coefficient.
//! - [`classifier`]: the text classifier of the tasks and its size presets.
//! - [`text`]: embedded text batches; [`forms`]: the three lower-level forms as bilevel problems.

pub mod classifier;
pub mod dense;
pub mod elementwise;
pub mod elman;
pub mod forms;
pub mod layer;
pub mod loss;
pub mod lstm;
pub mod penalty;
pub mod pool;
pub mod recurrent;
pub mod rows;
pub mod sequence;
pub mod tape;
pub mod text;
