//! Every method of the library, one file each, behind one trait and selectable by name.
//!
//! Each method's file reads like its pseudocode and declares everything about the method once:
//! its configuration, which implements [`Method`] (name, step sizes, validation, how it is
//! built), and its memory, which implements [`rule::Rule`] (one iteration, with the memory's
//! saved form declared by [`crate::saved_memory!`]); [`rule::RuleOptimizer`] makes the two a
//! [`crate::optimizer::BilevelOptimizer`], doing the bookkeeping every method shares. The shared
//! pieces are in [`crate::steps`]
//! (SGD on y, the linear-system step, momentum, normalization, checked oracles, the iteration's
//! bookkeeping), [`crate::neumann`] (Neumann series) and [`crate::variance`] (STORM, SPIDER,
//! SAGA). [`registry`] lists the built-in methods and takes users' own; [`MethodConfig`] holds
//! any method's configuration, as configuration files name it (`method = "soba"`, ...).

pub mod accbo;
pub mod adambo;
pub mod alset;
pub mod amigo;
pub mod anil;
pub mod borep;
pub mod bsa;
pub mod config;
pub mod f2sa;
pub mod ma_soba;
pub mod maml;
pub mod meta;
pub mod method;
pub mod mrbo;
pub mod neumann_family;
pub mod registry;
pub mod rule;
pub mod saba;
pub mod slip;
pub mod soba;
pub mod stocbio;
pub mod ttsa;
pub mod vrbo;

pub use config::MethodConfig;
pub use method::{Method, MethodVisitor};
pub use registry::{register, METHODS};
