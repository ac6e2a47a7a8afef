//! The floating-point element types the library works in.

use dfdx::prelude::{Cpu, Device, Dtype, HasShape, Shape, Tensor};
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
    /// Replaces every value by its hyperbolic tangent. For `f32`, a branch-free kernel that
    /// the compiler vectorizes (see [`tanh_f32`]); for `f64`, the standard library's `tanh`.
    fn tanh_in_place(values: &mut [Self]);
    /// Bytes per value in [`Real::write_le`]'s encoding.
    const BYTES: usize;
    /// Appends the value's little-endian bytes (the exact bits), for sending between processes.
    fn write_le(self, out: &mut Vec<u8>);
    /// The value [`Real::write_le`] wrote into `bytes` (exactly [`Real::BYTES`] long).
    fn read_le(bytes: &[u8]) -> Self;
    /// Appends the little-endian bytes of every value: one block copy on little-endian
    /// machines (a distributed pass sends tens of megabytes this way).
    fn extend_le(values: &[Self], out: &mut Vec<u8>) {
        values.iter().for_each(|&v| v.write_le(out));
    }
    /// Overwrites `values` from what [`Real::extend_le`] wrote (`bytes` holds exactly as many).
    fn fill_from_le(bytes: &[u8], values: &mut [Self]) {
        for (v, b) in values.iter_mut().zip(bytes.chunks_exact(Self::BYTES)) {
            *v = Self::read_le(b);
        }
    }
}

/// The byte encoding of [`Real`] for a plain floating-point type: [`Real::extend_le`] and
/// [`Real::fill_from_le`] as block copies where the machine's byte order is little-endian.
macro_rules! block_le {
    ($t:ty) => {
        const BYTES: usize = std::mem::size_of::<$t>();
        fn write_le(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn read_le(bytes: &[u8]) -> Self {
            <$t>::from_le_bytes(bytes.try_into().expect("exactly BYTES bytes"))
        }
        fn extend_le(values: &[$t], out: &mut Vec<u8>) {
            if cfg!(target_endian = "little") {
                // SAFETY: a float slice is plain bytes (no padding, any bit pattern is a byte),
                // and in little-endian order these are its little-endian bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        values.as_ptr().cast::<u8>(),
                        std::mem::size_of_val(values),
                    )
                };
                out.extend_from_slice(bytes);
            } else {
                values
                    .iter()
                    .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            }
        }
        fn fill_from_le(bytes: &[u8], values: &mut [$t]) {
            assert_eq!(bytes.len(), std::mem::size_of_val(values));
            if cfg!(target_endian = "little") {
                // SAFETY: the lengths match (checked above) and every bit pattern is a float.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        values.as_mut_ptr().cast::<u8>(),
                        bytes.len(),
                    )
                }
            } else {
                for (v, b) in values.iter_mut().zip(bytes.chunks_exact(Self::BYTES)) {
                    *v = Self::read_le(b);
                }
            }
        }
    };
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    block_le!(f32);
    fn tanh_in_place(values: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { tanh_slice_avx512(values) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { tanh_slice_avx2(values) };
            }
        }
        tanh_slice(values)
    }
}

#[inline(always)]
fn tanh_slice(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = tanh_f32(*v));
}

/// [`tanh_slice`] compiled for AVX2 and FMA, chosen at run time (the default x86-64 target has
/// neither, and without them the loop is no faster than libm).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_slice_avx2(values: &mut [f32]) {
    tanh_slice(values)
}

/// [`tanh_slice`] compiled for AVX-512 (twice the lanes of AVX2), chosen at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tanh_slice_avx512(values: &mut [f32]) {
    tanh_slice(values)
}

/// `tanh` of an `f32`, computed in `f64` and rounded once: the result is the correctly rounded
/// `tanh` except in rare ties (the `f64` error is below 1e-12 relative, 10⁴ times smaller than
/// half an `f32` ulp), so it is at least as accurate as libm's `tanhf`, and it is free of calls
/// and branches, which lets a loop over it vectorize (libm's `tanhf` took 15% of a
/// second-order pass). `tanh(x) = (e^{2|x|} − 1)/(e^{2|x|} + 1)` with the sign of x; below
/// |x| = 2⁻¹⁴ the series `x(1 − x²/3)` (whose next term is 10⁻¹⁶ relative) avoids cancellation;
/// beyond |x| = 10 the value is 1 in `f32`. `e^y` is `2^k e^r` with `r = y − k ln 2`,
/// `|r| ≤ ln 2 / 2`, and a degree-11 Taylor polynomial for `e^r` (error below 1e-14).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let x = x as f64;
    let a = x.abs().min(10.0);
    let y = 2.0 * a;
    let k = (y * std::f64::consts::LOG2_E).round();
    let r = y - k * std::f64::consts::LN_2;
    let mut p = 1.0 / 39_916_800.0;
    for c in [
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
    ] {
        p = p * r + c;
    }
    // p·r = e^r − 1 without cancellation; e^y − 1 = 2^k (e^r − 1) + (2^k − 1).
    // 2^k from the bits of k + 2^52 (k is a whole number in [0, 29]): integer lanes only, no
    // float-to-integer conversion, which AVX2 lacks for 64-bit lanes.
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    let k_bits = (k + TWO_52).to_bits() - TWO_52.to_bits();
    let scale = f64::from_bits((k_bits + 1023) << 52);
    let expm1 = scale * (p * r) + (scale - 1.0);
    let large = (expm1 / (expm1 + 2.0)).copysign(x);
    let small = x * (1.0 - x * x / 3.0);
    let t = if a < 1.0 / 16_384.0 { small } else { large };
    // NaN stays NaN (min(NaN, 10) is 10, so pass x through).
    (if x.is_nan() { x } else { t }) as f32
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
    fn tanh_in_place(values: &mut [Self]) {
        values.iter_mut().for_each(|v| *v = v.tanh());
    }
    block_le!(f64);
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

/// The values of `t` as a vector, by one block copy. dfdx's `as_vec` walks the strides element
/// by element, which cost 7% of a hyper-rep iteration. For tensors an op produced or leaf
/// parameters (standard layout); a broadcast view panics here (its storage is shorter than its
/// shape), so a permuted view is the one input this must never see.
pub fn values<S: Shape, E: Real, T>(t: &Tensor<S, E, Cpu, T>) -> Vec<E>
where
    Cpu: Device<E>,
{
    let mut out = vec![E::zero(); t.shape().num_elements()];
    t.copy_into(&mut out);
    out
}

/// The address of `t`'s first value (the start of its buffer for a standard layout); `None` for
/// an empty tensor. dfdx 0.13 keeps a tensor's buffer private, so an element's address is the one
/// handle on it: tensors that share a buffer (clones, retaped copies) share it.
pub fn first_address<S: Shape, E: Real, T>(t: &Tensor<S, E, Cpu, T>) -> Option<usize>
where
    Cpu: Device<E>,
{
    (t.shape().num_elements() > 0).then(|| &t[S::Concrete::default()] as *const E as usize)
}

/// Shorthand for the bound every generic item needs: `Cpu` implements all kernels for `E`.
pub trait CpuReal: Real {}
impl<E: Real> CpuReal for E where Cpu: Device<E> {}

#[cfg(test)]
mod tests {
    use super::tanh_f32;

    /// Every compiled variant the CPU runs gives the scalar function's bits (Rust never fuses a
    /// multiply and an add on its own, so the vector code rounds as the scalar code does).
    #[test]
    fn tanh_kernels_agree_to_the_bit() {
        let inputs: Vec<f32> = (0..0x41a0_0000u32)
            .step_by(9973)
            .flat_map(|bits| [f32::from_bits(bits), -f32::from_bits(bits)])
            .chain([
                0.0,
                -0.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e-30,
                30.0,
            ])
            .collect();
        let want: Vec<u32> = inputs.iter().map(|&x| tanh_f32(x).to_bits()).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut dispatched = inputs.clone();
        <f32 as super::Real>::tanh_in_place(&mut dispatched);
        assert_eq!(bits(&dispatched), want, "dispatched kernel");
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                let mut v = inputs.clone();
                unsafe { super::tanh_slice_avx2(&mut v) };
                assert_eq!(bits(&v), want, "AVX2 kernel");
            }
            if std::is_x86_feature_detected!("avx512f") {
                let mut v = inputs.clone();
                unsafe { super::tanh_slice_avx512(&mut v) };
                assert_eq!(bits(&v), want, "AVX-512 kernel");
            }
        }
    }

    /// Against `f64::tanh` rounded to `f32` (the correctly rounded value, up to double rounding),
    /// over every 97th `f32` bit pattern in [−20, 20] (≈ 22 million values) and the edge cases.
    #[test]
    fn tanh_f32_is_correctly_rounded() {
        let mut worst = 0u32;
        let mut checked = 0u64;
        for bits in (0..0x41a0_0000u32).step_by(97) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let want = (x as f64).tanh() as f32;
                let got = tanh_f32(x);
                let ulps = (want.to_bits() as i64 - got.to_bits() as i64).unsigned_abs() as u32;
                worst = worst.max(ulps);
                checked += 1;
            }
        }
        assert!(checked > 20_000_000);
        assert!(worst <= 1, "off by {worst} ulp");
        assert_eq!(tanh_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f32(1e30), 1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(1e-30), 1e-30);
    }
}
