//! dfdx's own modules as written layers, and the losses, in one test binary (one build and link
//! instead of eight): each module's written gradient against dfdx's autodiff, H·v and J·v
//! against finite differences, symmetry, its forward against dfdx's, and a broken variant that
//! is caught.

#[path = "../common/mod.rs"]
mod common;

mod activations;
mod attention;
mod broken;
mod combinators;
mod conv;
mod decoder;
mod embedding;
mod images;
mod losses;
mod padded;
mod prelu;
mod rows;
mod transformer_example;
mod upscale;
