//! Compile-time-shaped models whose lower-level gradients are written in taped dfdx ops, so that
//! they plug into [`bilevel_optim::problem::BilevelProblem`] with exact second-order products.
//!
//! - [`layer`]: the [`layer::WrittenLayer`] trait (forward + written backward) and tuple composition.
//! - [`dense`]: dfdx's `Linear` and `UnbiasedLinear`; [`norm`]: `LayerNorm1D`; [`by_rows`]: those
//!   on (batch, steps, features) tensors and packed sequences; [`activations`]: dfdx's activation modules (ReLU, GeLU, sigmoid,
//!   tanh, softmax, ...); [`prelu`]: `PReLU`, `PReLU1D`; [`combinators`]: `Residual`, `GeneralizedResidual`, `AddInto`,
//!   `SplitInto`, `Repeated`, `Dropout`; [`attention`]: `MultiHeadAttention` and
//!   `TransformerEncoderBlock`; [`decoder`]: `TransformerDecoderBlock`, `TransformerDecoder`,
//!   `Transformer`; [`embedding`]: `Embedding` on token ids; [`images`]: `Bias2D`,
//!   batch norms (running statistics) and the global pools; [`conv`]: `Conv2D`, the 2-D pools and
//!   `Flatten2D` on stable Rust ([`patches`]: their im2col kernel); [`upscale`]: `Upscale2D`,
//!   `Upscale2DBy`; [`elman`], [`lstm`]: recurrent layers over packed
//!   sequences; [`pool`]: max-pooling over time; [`loss`]: softmax cross-entropy.
//! - [`elementwise`]: fused tanh and tanh-slope ops with hand-written backward passes.
//! - [`rows`]: row gather, scatter-add and concatenation for packed sequences.
//! - [`penalty`]: L2 penalties with a fixed, a per-tensor learnable or a scalar learnable coefficient.
//! - [`classifier`]: the text classifier of the tasks and its size presets.
//! - [`text`]: embedded text batches; [`forms`]: the three lower-level forms as bilevel problems.
//!
//! A model built from these layers, e.g. dfdx's `(Linear<20, 16>, Tanh, Linear<16, 2>)`, needs
//! no calculus from its user: [`classifier::loss`] is the taped loss for `lower_loss`, and
//! [`classifier::add_loss_gradient`] writes its exact gradient into the problem's
//! [`bilevel_optim::written_grad::WrittenGrad`]; add the gradients of your own penalty terms
//! (e.g. [`penalty::add_l2_gradient`]) and the problem has exact `H·v` and `J·v`:
//!
//! ```ignore
//! fn write_lower_grad_y(&self, x: &X, y: &Mlp, b: &Data, grad: &mut WrittenGrad<f64>) {
//!     add_loss_gradient(y, b.input.retaped::<Tp<f64>>(), &one_hot(&b.labels), None, grad);
//!     grad.add(&y.0.weight, y.0.weight.retaped::<Tp<f64>>() * coefficients(x));
//! }
//! ```
//!
//! The whole problem, checked and solved by three methods, is the example `feature_l2`
//! (`cargo run --release -p bilevel-models --example feature_l2`); `docs/guide.md` explains each
//! step.
#![warn(missing_docs)]

pub mod activations;
pub mod attention;
pub mod by_rows;
pub mod classifier;
pub mod combinators;
pub mod conv;
pub mod decoder;
pub mod dense;
pub mod elementwise;
pub mod elman;
pub mod embedding;
pub mod forms;
pub mod images;
pub mod layer;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod norm;
pub mod padded;
pub mod patches;
pub mod penalty;
pub mod pool;
pub mod positions;
pub mod prelu;
pub mod recurrent;
pub mod rows;
pub mod sequence;
pub mod tape;
pub mod text;
pub mod upscale;
