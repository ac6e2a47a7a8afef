//! Zero tensors that cost nothing: every one of a given length shares one buffer.
//!
//! A gradient is often exactly zero on most of a variable: a hyper-representation batch touches
//! 20 of y's 400 heads, so the other 380 heads' parts of ∇_y f, of H·v and of the SGD steps on y
//! are zeros. Made as ordinary tensors they cost a 13 MB allocation, its zero fill and every
//! later pass of arithmetic over them. A *shared zero* is a tensor whose values live in one
//! buffer per length, kept here for the life of the process, so making one allocates nothing and
//! [`crate::params::Params`]' arithmetic recognizes it ([`is_shared_zero`]) and skips it: adding
//! it, scaling it, its inner products and norms. The skipped work would only have added `±0.0`,
//! so every result keeps its bits (a `−0.0` entry that `x + 0.0` would have turned into `+0.0`
//! stays `−0.0`: equal, and no later arithmetic tells them apart).
//!
//! Writing to a shared zero (any dfdx op that mutates in place) copies the buffer first
//! (copy-on-write: this module always holds another reference), so the shared buffers stay zero.
//! Shared zeros are values, never parameters: all those of one length carry the same tensor id,
//! so they must not be leaves of a taped computation ([`crate::params::Params::duplicate`] gives
//! fresh tensors).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use dfdx::prelude::{Cpu, Device, HasShape, ReshapeTo, Shape, Tensor, ZerosTensor};

use crate::real::{first_address, Real};

/// One shared buffer: the address of its first value, and a tensor holding it.
struct Pooled {
    address: usize,
    tensor: Box<dyn Any + Send + Sync>,
}

/// The shared buffers by element type and length.
fn pool() -> &'static RwLock<HashMap<(TypeId, usize), Pooled>> {
    static POOL: OnceLock<RwLock<HashMap<(TypeId, usize), Pooled>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// A zero tensor of `shape` that shares its buffer with every other shared zero of its length.
///
/// Its device is one whose allocation cache is never enabled, so ops on it are safe from any
/// thread (dfdx 0.13's cache is not, see [`crate::real::device`]).
pub fn shared_zeros<S: Shape, E: Real>(shape: S) -> Tensor<S, E, Cpu>
where
    Cpu: Device<E>,
{
    let n = shape.num_elements();
    let key = (TypeId::of::<E>(), n);
    let flat = {
        let pool = pool().read().unwrap_or_else(|e| e.into_inner());
        pool.get(&key).map(|p| {
            p.tensor
                .downcast_ref::<Tensor<(usize,), E, Cpu>>()
                .expect("keyed by element type")
                .clone()
        })
    };
    let flat = flat.unwrap_or_else(|| {
        let mut pool = pool().write().unwrap_or_else(|e| e.into_inner());
        let entry = pool.entry(key).or_insert_with(|| {
            let tensor: Tensor<(usize,), E, Cpu> = Cpu::default().zeros_like(&(n,));
            Pooled {
                address: first_address(&tensor).unwrap_or(0),
                tensor: Box::new(tensor),
            }
        });
        entry
            .tensor
            .downcast_ref::<Tensor<(usize,), E, Cpu>>()
            .expect("keyed by element type")
            .clone()
    });
    // A contiguous reshape shares the buffer.
    flat.reshape_like(&shape)
}

/// Whether `t` is a shared zero (made by [`shared_zeros`], or a clone of one). A tensor that
/// merely holds zeros is not: the test is by buffer, so it costs no pass over the values.
pub fn is_shared_zero<S: Shape, E: Real, T>(t: &Tensor<S, E, Cpu, T>) -> bool
where
    Cpu: Device<E>,
{
    let Some(address) = first_address(t) else {
        return false;
    };
    let key = (TypeId::of::<E>(), t.shape().num_elements());
    let pool = pool().read().unwrap_or_else(|e| e.into_inner());
    pool.get(&key).is_some_and(|p| p.address == address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::{Const, TensorFrom};

    #[test]
    fn shared_zeros_share_one_buffer_and_stay_zero_when_written() {
        let a: Tensor<(Const<2>, Const<3>), f64, Cpu> = shared_zeros(Default::default());
        let b: Tensor<(Const<6>,), f64, Cpu> = shared_zeros(Default::default());
        assert!(is_shared_zero(&a) && is_shared_zero(&b));
        assert_eq!(&a[[0, 0]] as *const f64, &b[[0]] as *const f64);
        assert!(a.as_vec().iter().all(|&v| v == 0.0));

        let mut c = a.clone();
        c[[1, 2]] = 5.0;
        assert!(!is_shared_zero(&c), "a written copy has its own buffer");
        let d: Tensor<(Const<2>, Const<3>), f64, Cpu> = shared_zeros(Default::default());
        assert!(d.as_vec().iter().all(|&v| v == 0.0));

        let dev = Cpu::default();
        let plain: Tensor<(Const<6>,), f64, Cpu> = dev.zeros();
        assert!(
            !is_shared_zero(&plain),
            "zeros of its own buffer are not shared"
        );
        let other: Tensor<(Const<6>,), f32, Cpu> = dev.tensor([0.0f32; 6]);
        assert!(!is_shared_zero(&other));
        let empty: Tensor<(Const<0>,), f64, Cpu> = shared_zeros(Default::default());
        assert!(!is_shared_zero(&empty));
    }

    /// Arithmetic that skips shared zeros gives the bits the full arithmetic gives on zeros of
    /// their own buffers.
    #[test]
    fn params_arithmetic_skipping_shared_zeros_keeps_every_bit() {
        use crate::params::Params;
        type Pair = (
            Tensor<(Const<3>,), f64, Cpu>,
            Tensor<(Const<2>, Const<2>), f64, Cpu>,
        );
        let dev = Cpu::default();
        let a: Pair = (
            dev.tensor([0.3, -1.25, 7.0]),
            dev.tensor([[1e-3, 2.5], [-0.75, 4.0]]),
        );
        let b: Pair = (
            dev.tensor([-2.0, 0.5, 1.5]),
            dev.tensor([[3.0, -1.0], [0.25, 2.0]]),
        );
        let dense: Pair = (b.0.clone(), dev.zeros());
        let shared: Pair = (b.0.clone(), shared_zeros(Default::default()));
        assert_eq!(shared.shared_zero_mask(), vec![false, true]);
        let bits = |p: &Pair| p.to_flat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(a.dot(&dense).to_bits(), a.dot(&shared).to_bits());
        assert_eq!(dense.norm_sq().to_bits(), shared.norm_sq().to_bits());
        for (alpha, beta) in [(1.0, -0.3), (0.9, 0.1), (-2.0, 3.0)] {
            let (mut p, mut q) = (a.clone(), a.clone());
            p.lerp_with(alpha, beta, &dense);
            q.lerp_with(alpha, beta, &shared);
            assert_eq!(bits(&p), bits(&q), "lerp {alpha} {beta}");
            // Equal values; the one difference in bits is the documented sign of zero
            // (−2 · 0.0 = −0.0 where a skipped shared zero stays +0.0).
            let (mut p, mut q) = (dense.clone(), shared.clone());
            p.scale(alpha);
            q.scale(alpha);
            assert_eq!(p.to_flat(), q.to_flat(), "scale {alpha}");
            let (mut p, mut q) = (dense.clone(), shared.clone());
            p.add_scaled(beta, &a);
            q.add_scaled(beta, &a);
            assert_eq!(bits(&p), bits(&q), "a shared zero stepped along a ({beta})");
            assert!(!is_shared_zero(&q.1), "written: its own buffer now");
        }
        let mut bad = a.clone();
        bad.1[[1, 0]] = f64::NAN;
        assert_eq!(bad.first_non_finite().as_deref(), Some("1"));
        assert_eq!(bad.first_non_finite_among(Some(&[true, false])), None);
        assert!(shared_zeros::<(Const<4>,), f64>(Default::default()).as_vec() == vec![0.0; 4]);
    }
}
