//! Stochastic bilevel optimization on [dfdx](https://docs.rs/dfdx/0.13.0):
//! `min_x f(x, y*(x))` with `y*(x) = argmin_y g(x, y)`, with exact second-order products and
//! the methods of [`methods::METHODS`] behind one trait.
//!
//! - Describe your problem once: [`problem::BilevelProblem`] (variables are any dfdx modules,
//!   tensors or tuples; losses are ordinary taped dfdx computations; the lower gradient `∇_y g`
//!   is written in taped ops, or comes for free from `bilevel-models`' layers).
//! - Check it before trusting a run: [`check::check_problem`] compares the written gradient with
//!   dfdx's autodiff and the products with finite differences, naming the tensor and the fault.
//! - Wrap it in [`oracles::Oracles`] (batches, call counters, exact `H·v` and `J·v` from one
//!   backward pass, [`oracles::Oracles::sharded`] for threads), then run any
//!   [`optimizer::BilevelOptimizer`]: [`methods::borep::BoRep`] or another method of [`methods`],
//!   chosen by name through [`methods::MethodConfig`].
//! - Constrain x with [`problem::BilevelProblem::project_x`] and [`constraint::Constraint`];
//!   log to TensorBoard with [`tensorboard::TensorBoardLog`].
//!
//! ```
//! use bilevel_optim::methods::{soba::SobaConfig, MethodConfig};
//! use bilevel_optim::oracles::Oracles;
//! use bilevel_optim::problems::{exact_hypergradient, Quadratic, QuadraticConfig};
//! use bilevel_optim::params::Params;
//! use bilevel_optim::schedule::PowerSchedule;
//! use dfdx::prelude::*;
//!
//! // A closed-form problem stands in for yours: x ∈ R³, y ∈ R⁴.
//! let problem = Quadratic::<f64, 3, 4>::new(QuadraticConfig::default());
//! let dev = Cpu::default();
//! let (mut x, mut y): (Tensor<Rank1<3>, f64, Cpu>, Tensor<Rank1<4>, f64, Cpu>) =
//!     (dev.zeros(), dev.zeros());
//! let start = exact_hypergradient(&problem, &x).norm();
//! // Any method by name (`MethodConfig::default_for("soba")`), or with its knobs set:
//! let config = MethodConfig::new(SobaConfig {
//!     rho: PowerSchedule::constant(0.4),   // y and z steps
//!     gamma: PowerSchedule::constant(0.02), // x step
//! });
//! let mut method = config.build(&x, &y, &problem)?;
//! let mut oracles = Oracles::new(problem, 0);
//! for _ in 0..2000 {
//!     let report = method.step(&mut oracles, &mut x, &mut y)?; // losses, norms, oracle calls
//!     assert!(report.hypergrad_norm.is_finite());
//! }
//! assert!(exact_hypergradient(oracles.problem(), &x).norm() < 0.1 * start);
//! # Ok::<(), bilevel_optim::error::BilevelError>(())
//! ```
//!
//! The user guide is `docs/guide.md` in the repository; each method's rule, knobs and cost are in
//! `docs/algorithms.md`.
#![warn(missing_docs)]
/// The dfdx this crate is built on, for users and this crate's macros to name the same version.
pub use dfdx;

pub mod check;
pub mod constraint;
pub mod crc32c;
pub mod distributed;
pub mod epoch_sgd;
pub mod error;
pub mod linalg;
pub mod linear_solvers;
pub mod methods;
pub mod neumann;
pub mod optimizer;
pub mod oracles;
pub mod params;
pub mod passes;
pub mod problem;
pub mod problems;
pub mod real;
pub mod schedule;
pub mod shards;
pub mod shared_zeros;
pub mod state;
pub mod steps;
pub mod tape;
pub mod tensorboard;
pub mod validate;
pub mod variance;
pub mod written_grad;
