//! The taped matrix product of the models, on the `gemm` crate's current kernels.
//!
//! dfdx 0.13 multiplies matrices with `gemm` 0.15, whose AVX-512 kernels need a nightly
//! compiler, so on an AVX-512 CPU it runs the AVX2 ones. `gemm` 0.19 (feature `x86-v4`) has
//! AVX-512 kernels on the stable compiler and chooses them at run time, keeping AVX2 (or plain
//! code) on CPUs without them. Measured on an AVX-512 Xeon, one thread, at the shapes of the
//! text tasks (64×128 by 128×128, 4096×50 by 50×128, 128×4096 by 4096×128): 1.5–2× dfdx's
//! kernel, and 6× for a two-column head.
//!
//! [`matmul`] is the product with dfdx's tape semantics: the forward and the first-order
//! backward (`∂A += ∂C Bᵀ`, `∂B += Aᵀ ∂C`), each one `gemm` call with the operands' own strides,
//! so a permuted weight costs no copy. Written gradients are forward computations built from
//! such ops, so an H·v through them stays exact: every op only needs its first derivative.

use bilevel_optim::problem::Taped;
use bilevel_optim::real::{device, Real};
use dfdx::prelude::*;
use dfdx::tensor::{Merge, Tape};

use crate::elementwise::buffer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Floating-point operations of every product [`matmul`] ran (2mkn each: the forward and both
/// backward products), summed over all threads since the program started.
static PRODUCT_FLOPS: AtomicU64 = AtomicU64::new(0);

/// The floating-point operations of the matrix products run so far, over all threads (2mkn
/// per product, forward and backward):
/// the difference over some iterations is their arithmetic in matrix products, the part of an
/// iteration that can run near the core's peak.
pub fn product_flops() -> u64 {
    PRODUCT_FLOPS.load(Ordering::Relaxed)
}

/// The rate, in GFLOP/s, of 512×512 by 512×512 `f32` products on one thread for about
/// `seconds`: one core's practical peak for these kernels, against which an iteration's rate
/// is read.
pub fn product_peak_gflops(seconds: f64) -> f64 {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(one_thread) => one_thread.install(|| timed_products(seconds)),
        Err(_) => timed_products(seconds),
    }
}

fn timed_products(seconds: f64) -> f64 {
    const SIDE: usize = 512;
    let a: Vec<f32> = (0..SIDE * SIDE).map(|i| (i % 7) as f32 * 0.25).collect();
    let mut c = vec![0f32; SIDE * SIDE];
    let rows = Layout::rows(SIDE);
    let start = Instant::now();
    let mut products = 0u32;
    while products < 3 || start.elapsed().as_secs_f64() < seconds {
        // SAFETY: three SIDE×SIDE matrices by rows; `c` is apart from `a`.
        unsafe {
            product(
                (SIDE, SIDE, SIDE),
                (c.as_mut_ptr(), rows),
                false,
                (a.as_ptr(), rows),
                (a.as_ptr(), rows),
            )
        };
        products += 1;
    }
    2.0 * (SIDE * SIDE * SIDE) as f64 * products as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// `A B` for `A: M×K`, `B: K×N`, both taped, with dfdx's result and tape (the tapes merged).
///
/// Any layout (standard, permuted); a broadcast or empty operand goes to dfdx's own product.
pub fn matmul<M: Dim, K: Dim, N: Dim, E: Real>(
    a: Taped<(M, K), E>,
    b: Taped<(K, N), E>,
) -> Taped<(M, N), E>
where
    Cpu: Device<E>,
{
    match layouts(&a, &b) {
        Some(layouts) => product_op(a, b, layouts, Addend::Nothing),
        None => a.matmul(b),
    }
}

/// `A B + 1 rᵀ`: the product with the row `r` added to every row (a layer's bias), in one
/// pass: the output starts as copies of `r` and the product accumulates onto it, where a
/// broadcast addition would be two more ops forward and a reduction backward.
pub fn matmul_plus_row<M: Dim, K: Dim, N: Dim, E: Real>(
    a: Taped<(M, K), E>,
    b: Taped<(K, N), E>,
    row: Taped<(N,), E>,
) -> Taped<(M, N), E>
where
    Cpu: Device<E>,
{
    match layouts(&a, &b) {
        Some(layouts) => product_op(a, b, layouts, Addend::Row(row)),
        None => {
            let rows = a.shape().0;
            let n = b.shape().1;
            a.matmul(b) + row.broadcast_like::<_, Axis<0>>(&(rows, n))
        }
    }
}

/// `C + A B` in one pass: the output starts as a copy of C (standard layout, as an op's
/// output has) and the product accumulates onto it.
pub fn matmul_plus<M: Dim, K: Dim, N: Dim, E: Real>(
    c: Taped<(M, N), E>,
    a: Taped<(M, K), E>,
    b: Taped<(K, N), E>,
) -> Taped<(M, N), E>
where
    Cpu: Device<E>,
{
    let standard =
        Layout::of(&c).is_some_and(|l| l.col == 1 && l.row == c.shape().1.size() as isize);
    match layouts(&a, &b) {
        Some(layouts) if standard => product_op(a, b, layouts, Addend::Matrix(c)),
        _ => c + a.matmul(b),
    }
}

/// Adds the output's gradient into the addend's.
type AddendBackward<E> =
    Box<dyn FnOnce(&mut Gradients<E, Cpu>, &[E]) -> Result<(), <Cpu as HasErr>::Err>>;

/// What the product's output starts from.
enum Addend<M: Dim, N: Dim, E: Real>
where
    Cpu: Device<E>,
{
    Nothing,
    Row(Taped<(N,), E>),
    Matrix(Taped<(M, N), E>),
}

fn layouts<M: Dim, K: Dim, N: Dim, E: Real>(
    a: &Taped<(M, K), E>,
    b: &Taped<(K, N), E>,
) -> Option<(Layout, Layout)>
where
    Cpu: Device<E>,
{
    Some((Layout::of(a)?, Layout::of(b)?))
}

/// The op behind [`matmul`], [`matmul_plus_row`] and [`matmul_plus`].
fn product_op<M: Dim, K: Dim, N: Dim, E: Real>(
    a: Taped<(M, K), E>,
    b: Taped<(K, N), E>,
    (a_layout, b_layout): (Layout, Layout),
    addend: Addend<M, N, E>,
) -> Taped<(M, N), E>
where
    Cpu: Device<E>,
{
    let (m, k) = *a.shape();
    let n = b.shape().1;
    let (a, a_tape) = a.split_tape();
    let (b, b_tape) = b.split_tape();
    let mut tape = a_tape.merge(b_tape);

    // The output's start, and how its gradient reaches the addend.
    let (mut out, addend_backward): (Vec<E>, Option<AddendBackward<E>>) = match addend {
        Addend::Nothing => (vec![E::zero(); m.size() * n.size()], None),
        Addend::Row(row) => {
            let (row, row_tape) = row.split_tape();
            tape = tape.merge(row_tape);
            let values = bilevel_optim::real::values(&row);
            let out = (0..m.size()).flat_map(|_| values.iter().copied()).collect();
            let id = row.ghost();
            let backward: AddendBackward<E> = Box::new(move |grads, dc| {
                let d_row = buffer::<E>(grads.get_or_alloc_mut(&id)?);
                for chunk in dc.chunks_exact(d_row.len()) {
                    d_row.iter_mut().zip(chunk).for_each(|(d, g)| *d += *g);
                }
                Ok(())
            });
            (out, Some(backward))
        }
        Addend::Matrix(c) => {
            let (c, c_tape) = c.split_tape();
            tape = tape.merge(c_tape);
            let id = c.ghost();
            let backward: AddendBackward<E> = Box::new(move |grads, dc| {
                let d_matrix = buffer::<E>(grads.get_or_alloc_mut(&id)?);
                d_matrix.iter_mut().zip(dc).for_each(|(d, g)| *d += *g);
                Ok(())
            });
            (bilevel_optim::real::values(&c), Some(backward))
        }
    };
    let accumulate = addend_backward.is_some();
    let rows = Layout::rows(n.size());
    // SAFETY: `out` holds m×n values laid out by `rows`; `a` and `b` hold their shapes' values
    // at their strides (dfdx's invariant for a non-broadcast tensor).
    unsafe {
        product(
            (m.size(), k.size(), n.size()),
            (out.as_mut_ptr(), rows),
            accumulate,
            (first(&a), a_layout),
            (first(&b), b_layout),
        )
    };
    let c = device().tensor_from_vec(out, (m, n));

    let (a_id, b_id, c_id) = (a.ghost(), b.ghost(), c.ghost());
    tape.add_backward_op(move |grads| {
        let dc: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&c_id)?).to_vec();
        let (m, k, n) = (m.size(), k.size(), n.size());
        if let Some(backward) = addend_backward {
            backward(grads, &dc)?;
        }
        let dc_rows = (dc.as_ptr(), Layout::rows(n));
        // ∂A += ∂C Bᵀ, ∂B += Aᵀ ∂C, each into a buffer laid out like its tensor (dfdx
        // allocates gradient buffers so).
        let da = buffer::<E>(grads.get_or_alloc_mut(&a_id)?);
        add_product_into(
            da,
            a_layout,
            (m, n, k),
            dc_rows,
            (first(&b), b_layout.transposed()),
        );
        let db = buffer::<E>(grads.get_or_alloc_mut(&b_id)?);
        add_product_into(
            db,
            b_layout,
            (k, m, n),
            (first(&a), a_layout.transposed()),
            dc_rows,
        );
        Ok(())
    });
    c.put_tape(tape)
}

/// The distance between consecutive rows and between consecutive columns of a matrix.
#[derive(Clone, Copy, Debug)]
struct Layout {
    row: isize,
    col: isize,
}

impl Layout {
    /// Row-major with `cols` columns.
    fn rows(cols: usize) -> Self {
        Self {
            row: cols as isize,
            col: 1,
        }
    }
    /// The layout of `t`'s values, read off the addresses of its elements (dfdx keeps its
    /// strides private); `None` for an empty matrix or a broadcast one (a stride of 0 along a
    /// dimension longer than 1), which a gradient cannot be written into by a matrix product.
    fn of<R: Dim, C: Dim, E: Real, T>(t: &Tensor<(R, C), E, Cpu, T>) -> Option<Self> {
        let (rows, cols) = (t.shape().0.size(), t.shape().1.size());
        if rows == 0 || cols == 0 {
            return None;
        }
        let first = &t[[0, 0]] as *const E;
        let distance =
            |other: &E| (other as *const E as isize - first as isize) / size_of::<E>() as isize;
        // A dimension of length 1 is never stepped along; any stride serves.
        let row = if rows > 1 {
            distance(&t[[1, 0]])
        } else {
            cols as isize
        };
        let col = if cols > 1 { distance(&t[[0, 1]]) } else { 1 };
        (row > 0 && col > 0).then_some(Self { row, col })
    }
    fn transposed(self) -> Self {
        Self {
            row: self.col,
            col: self.row,
        }
    }
}

/// `dst += lhs · rhs` for `lhs: rows×inner`, `rhs: inner×cols`, into a gradient buffer laid out
/// by `layout`, after checking that the buffer reaches every element the layout addresses.
/// The operands are values of live tensors (laid out as given) or a row-major copy.
fn add_product_into<E: Real>(
    dst: &mut [E],
    layout: Layout,
    (rows, inner, cols): (usize, usize, usize),
    lhs: (*const E, Layout),
    rhs: (*const E, Layout),
) {
    check_len(dst.len(), layout, (rows, cols));
    // SAFETY: `dst` reaches every element of its layout (checked just above) and is a gradient
    // buffer, apart from the operands; the callers pass operands whose pointers address their
    // shapes' values at their layouts.
    unsafe {
        product(
            (rows, inner, cols),
            (dst.as_mut_ptr(), layout),
            true,
            lhs,
            rhs,
        )
    };
}

/// A gradient buffer must reach the last element the tensor's layout addresses.
fn check_len(len: usize, layout: Layout, (rows, cols): (usize, usize)) {
    let last = (rows - 1) as isize * layout.row + (cols - 1) as isize * layout.col;
    assert!(
        (last as usize) < len,
        "matmul: gradient buffer of {len} values for a {rows}×{cols} tensor laid out {layout:?}"
    );
}

/// The address of `t`'s first value, where its layout starts.
fn first<R: Dim, C: Dim, E: Real, T>(t: &Tensor<(R, C), E, Cpu, T>) -> *const E {
    &t[[0, 0]]
}

/// `dst (+)= lhs · rhs` for `lhs: m×k`, `rhs: k×n`, on one thread or on rayon's pool when the
/// calling thread's pool has several (the batch shards' workers have one each).
///
/// # Safety
/// Each pointer must address every element its layout reaches for its shape; `dst` must not
/// overlap the operands.
unsafe fn product<E: Real>(
    (m, k, n): (usize, usize, usize),
    (dst, dst_layout): (*mut E, Layout),
    accumulate: bool,
    (lhs, lhs_layout): (*const E, Layout),
    (rhs, rhs_layout): (*const E, Layout),
) {
    PRODUCT_FLOPS.fetch_add(2 * (m * k * n) as u64, Ordering::Relaxed);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // gemm computes dst := alpha·dst + beta·lhs·rhs (alpha ignored when dst is not read).
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_layout.col,
        dst_layout.row,
        accumulate,
        lhs,
        lhs_layout.col,
        lhs_layout.row,
        rhs,
        rhs_layout.col,
        rhs_layout.row,
        E::one(),
        E::one(),
        false,
        false,
        false,
        parallelism,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bilevel_optim::problem::Tp;

    /// Fixed pseudo-random values in (−1, 1).
    fn values<E: Real>(len: usize, seed: u64) -> Vec<E> {
        (0..len as u64)
            .map(|i| {
                let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
                E::of(((h >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
            })
            .collect()
    }

    /// `Σ (A B) ⊙ W` and its gradients in A's and B's leaves, by [`matmul`] or by dfdx, with A
    /// and B each stored as given or transposed (then permuted into place).
    fn run<E: Real>(
        (m, k, n): (usize, usize, usize),
        (a_transposed, b_transposed): (bool, bool),
        ours: bool,
    ) -> [Vec<E>; 3]
    where
        Cpu: Device<E>,
    {
        let dev = device();
        let a_stored = if a_transposed { (k, m) } else { (m, k) };
        let b_stored = if b_transposed { (n, k) } else { (k, n) };
        let a_leaf = dev.tensor_from_vec(values(m * k, 1), a_stored);
        let b_leaf = dev.tensor_from_vec(values(k * n, 2), b_stored);
        let weights = dev.tensor_from_vec(values(m * n, 3), (m, n));
        let a: Taped<(usize, usize), E> = if a_transposed {
            a_leaf.retaped::<Tp<E>>().permute::<_, Axes2<1, 0>>()
        } else {
            a_leaf.retaped::<Tp<E>>()
        };
        let b: Taped<(usize, usize), E> = if b_transposed {
            b_leaf.retaped::<Tp<E>>().permute::<_, Axes2<1, 0>>()
        } else {
            b_leaf.retaped::<Tp<E>>()
        };
        let c = if ours { matmul(a, b) } else { a.matmul(b) };
        let product = bilevel_optim::real::values(&c.retaped::<dfdx::tensor::NoneTape>());
        let grads = (c * weights).sum().backward();
        [
            product,
            grads.get(&a_leaf).as_vec(),
            grads.get(&b_leaf).as_vec(),
        ]
    }

    /// Values and both gradients against dfdx's product, for every combination of stored and
    /// transposed operands: the largest difference at most `tolerance` of the largest value.
    fn assert_matches_dfdx<E: Real>(shapes: &[(usize, usize, usize)], tolerance: f64)
    where
        Cpu: Device<E>,
    {
        for &dims in shapes {
            for layouts in [(false, false), (true, false), (false, true), (true, true)] {
                let ours = run::<E>(dims, layouts, true);
                let dfdx = run::<E>(dims, layouts, false);
                for (what, x, y) in ["product", "∂A", "∂B"]
                    .iter()
                    .zip(&ours)
                    .zip(&dfdx)
                    .map(|((w, x), y)| (w, x, y))
                {
                    assert_eq!(x.len(), y.len());
                    let scale = y.iter().fold(0.0f64, |s, v| s.max(v.f64().abs()));
                    let err = x
                        .iter()
                        .zip(y)
                        .fold(0.0f64, |s, (p, q)| s.max((p.f64() - q.f64()).abs()));
                    assert!(
                        err <= tolerance * scale,
                        "{what} at {dims:?} {layouts:?}: off dfdx's by {err:e} of {scale:e}"
                    );
                }
            }
        }
    }

    /// In f64 to rounding, including single rows and columns.
    #[test]
    fn matches_dfdx_for_every_layout() {
        assert_matches_dfdx::<f64>(
            &[(5, 7, 3), (1, 4, 6), (6, 4, 1), (3, 1, 2), (64, 50, 33)],
            1e-14,
        );
    }

    /// In f32 (the AVX-512 kernels where the CPU has them) to f32 rounding, at the text tasks'
    /// shapes: a step's rows by the hidden size, all steps' rows, a one-column head.
    #[test]
    fn f32_matches_dfdx_at_the_tasks_shapes() {
        assert_matches_dfdx::<f32>(
            &[(64, 128, 128), (2048, 50, 128), (256, 16, 1), (1, 128, 128)],
            2e-6,
        );
    }

    /// `A Bᵀ + 1 rᵀ` and `C + A Bᵀ` against dfdx's ops composed: values and the gradients of
    /// every input, in f64 to rounding.
    #[test]
    fn sums_with_a_product_match_dfdx() {
        let dev = device();
        let (m, k, n) = (6, 5, 4);
        let a_leaf = dev.tensor_from_vec(values::<f64>(m * k, 11), (m, k));
        let b_leaf = dev.tensor_from_vec(values::<f64>(n * k, 12), (n, k));
        let r_leaf = dev.tensor_from_vec(values::<f64>(n, 13), (n,));
        let c_leaf = dev.tensor_from_vec(values::<f64>(m * n, 14), (m, n));
        let w = dev.tensor_from_vec(values::<f64>(m * n, 15), (m, n));
        let inputs = || {
            (
                a_leaf.retaped::<Tp<f64>>(),
                b_leaf.retaped::<Tp<f64>>().permute::<_, Axes2<1, 0>>(),
            )
        };
        let gradients = |out: Taped<(usize, usize), f64>, row: bool| {
            let value = out.retaped::<dfdx::tensor::NoneTape>().as_vec();
            let g = (out * w.clone()).sum().backward();
            let addend = if row {
                g.get(&r_leaf).as_vec()
            } else {
                g.get(&c_leaf).as_vec()
            };
            vec![
                value,
                g.get(&a_leaf).as_vec(),
                g.get(&b_leaf).as_vec(),
                addend,
            ]
        };
        let (a, b) = inputs();
        let ours = gradients(matmul_plus_row(a, b, r_leaf.retaped::<Tp<f64>>()), true);
        let (a, b) = inputs();
        let theirs = gradients(
            a.matmul(b)
                + r_leaf
                    .retaped::<Tp<f64>>()
                    .broadcast_like::<_, Axis<0>>(&(m, n)),
            true,
        );
        let (a, b) = inputs();
        let ours_plus = gradients(matmul_plus(c_leaf.retaped::<Tp<f64>>(), a, b), false);
        let (a, b) = inputs();
        let theirs_plus = gradients(c_leaf.retaped::<Tp<f64>>() + a.matmul(b), false);
        for (what, x, y) in [
            ("row", &ours, &theirs),
            ("matrix", &ours_plus, &theirs_plus),
        ] {
            for (i, (p, q)) in x.iter().zip(y.iter()).enumerate() {
                let scale = q.iter().fold(0.0f64, |s, v| s.max(v.abs()));
                let err = p
                    .iter()
                    .zip(q)
                    .fold(0.0f64, |s, (u, v)| s.max((u - v).abs()));
                assert!(
                    err <= 1e-14 * scale.max(1.0),
                    "{what}, part {i}: off by {err:e}"
                );
            }
        }
    }

    /// A product and its backward count 3 × 2mkn operations (at least: other tests' products
    /// run in parallel and count too).
    #[test]
    fn products_are_counted() {
        let (m, k, n) = (7, 5, 3);
        let before = product_flops();
        run::<f64>((m, k, n), (false, true), true);
        assert!(product_flops() - before >= 3 * 2 * (m * k * n) as u64);
        let peak = product_peak_gflops(0.0);
        assert!(peak.is_finite() && peak > 0.0, "{peak}");
    }

    /// The same operand on both sides (A Aᵀ; dfdx's own product panics on it): both gradient
    /// contributions reach its one leaf, `∂A = (W + Wᵀ) A`.
    #[test]
    fn one_leaf_on_both_sides() {
        let dev = device();
        let (m, k) = (4, 3);
        let leaf = dev.tensor_from_vec(values(m * k, 5), (m, k));
        let weights = dev.tensor_from_vec(values(m * m, 6), (m, m));
        let a = leaf.retaped::<Tp<f64>>();
        let at = leaf.retaped::<Tp<f64>>().permute::<_, Axes2<1, 0>>();
        let got = (matmul(a, at) * weights.clone())
            .sum()
            .backward()
            .get(&leaf)
            .as_vec();
        let symmetric = weights.clone() + weights.permute::<_, Axes2<1, 0>>();
        let want = symmetric.matmul(leaf.clone()).as_vec();
        for (p, q) in got.iter().zip(want) {
            assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{p} against {q}");
        }
    }
}
