//! Compile-time-shaped models whose lower-level gradients are written in taped dfdx ops, so that
//! they plug into `bilevel_optim::problem::BilevelProblem` with exact second-order products.
//!
//! The layers (Linear, MLP, Elman RNN, LSTM, losses) arrive with their own issue; this crate is
//! the workspace's place for them.
