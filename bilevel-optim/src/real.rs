//! The floating-point element types the library works in.

use dfdx::prelude::{Cpu, Device, Dtype};
use num_traits::Float;

/// An element type for parameters and losses: `f32` for speed, `f64` for checking values.
///
/// Reductions (dot products, norms) accumulate in `f64` whatever the element type, so that
/// the step-size logic of the optimizers does not lose precision on large models.
pub trait Real:
    Dtype
    + Float
    + rand_distr::uniform::SampleUniform
    + std::fmt::Debug
    + std::fmt::Display
    + std::iter::Sum
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Converts from `f64`, rounding to the element type.
    fn of(v: f64) -> Self;
    /// Widens to `f64`.
    fn f64(self) -> f64;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
}

/// The device every computation runs on. CPU only: dfdx's `cuda` feature cannot be built
/// on machines without `nvcc`, and the project's targets are CPU machines.
pub type Dev = Cpu;

/// The device on which the library creates its own tensors (batches, constants, masks), one
/// per thread.
///
/// All clones of one `Cpu` share dfdx's allocation cache, so with `device().enable_cache()` (and
/// the same on the device a model was built with) the buffers of one iteration are reused by the
/// next instead of being freed and page-faulted in again. Per thread, because dfdx 0.13's cache
/// is not safe to share between threads: `try_pop` checks for a buffer under a read lock and
/// takes it under a separate write lock, so two threads can race and panic on the `unwrap`
/// between them (seen when two runs went on in parallel test threads).
pub fn device() -> Cpu {
    thread_local! {
        static DEVICE: Cpu = Cpu::default();
    }
    DEVICE.with(Cpu::clone)
}

/// Shorthand for the bound every generic item needs: `Cpu` implements all kernels for `E`.
pub trait CpuReal: Real {}
impl<E: Real> CpuReal for E where Cpu: Device<E> {}
