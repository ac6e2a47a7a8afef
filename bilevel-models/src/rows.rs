//! Row moves of (rows, N) matrices with hand-written backward passes: gather, scatter-add and
//! concatenation. Packed sequences need them (a step's batch shrinks as texts end, and pooling
//! puts rows back in the caller's order).
//!
//! Gather and scatter-add are each other's transpose, so each one's backward is the other and
//! both stay exact to any order the tape is differentiated. dfdx's own `slice` cannot serve: its
//! backward overwrites the input's gradient instead of adding to it.

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::{device, values, Real};
use dfdx::prelude::*;

use crate::elementwise::buffer;
use crate::tape::Held;

type Rows<const N: usize> = (usize, Const<N>);

/// `out[i] = x[index[i]]`; backward `∂x[index[i]] += ∂out[i]`.
pub fn gather_rows<const N: usize, E: Real>(
    x: Taped<Rows<N>, E>,
    index: &[usize],
) -> Taped<Rows<N>, E>
where
    Cpu: Device<E>,
{
    let (x, mut tape) = x.split_tape();
    let rows = x.shape().0;
    assert!(index.iter().all(|&i| i < rows), "row index out of range");
    let source = values(&x);
    let mut out = Vec::with_capacity(index.len() * N);
    for &i in index {
        out.extend_from_slice(&source[i * N..(i + 1) * N]);
    }
    let y = device().tensor_from_vec(out, (index.len(), Const::<N>));
    let index = index.to_vec();
    let (x_id, y_id) = (x.ghost(), y.ghost());
    tape.add_backward_op(move |grads| {
        let dy: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&y_id)?).to_vec();
        let dx = buffer::<E>(grads.get_or_alloc_mut(&x_id)?);
        add_rows(dx, &dy, |k| index[k], |k| k, index.len(), N);
        Ok(())
    });
    y.put_tape(tape)
}

/// `out[index[i]] += x[i]` into `rows` zero rows; backward `∂x[i] += ∂out[index[i]]`.
pub fn scatter_rows<const N: usize, E: Real>(
    x: Taped<Rows<N>, E>,
    index: &[usize],
    rows: usize,
) -> Taped<Rows<N>, E>
where
    Cpu: Device<E>,
{
    let (x, mut tape) = x.split_tape();
    assert_eq!(x.shape().0, index.len(), "one target row per row");
    assert!(index.iter().all(|&i| i < rows), "row index out of range");
    let mut out = vec![E::zero(); rows * N];
    add_rows(&mut out, &values(&x), |k| index[k], |k| k, index.len(), N);
    let y = device().tensor_from_vec(out, (rows, Const::<N>));
    let index = index.to_vec();
    let (x_id, y_id) = (x.ghost(), y.ghost());
    tape.add_backward_op(move |grads| {
        let dy: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&y_id)?).to_vec();
        let dx = buffer::<E>(grads.get_or_alloc_mut(&x_id)?);
        add_rows(dx, &dy, |k| k, |k| index[k], index.len(), N);
        Ok(())
    });
    y.put_tape(tape)
}

/// The first `take[k]` rows of every `parts[k]`, stacked in order, on a fresh tape whose backward
/// adds each block's gradient to its part (tape-free handles: the parts' own tapes are kept
/// elsewhere, as [`crate::layer`]'s discipline has it).
pub fn concat_rows<const N: usize, E: Real>(
    parts: &[Held<Rows<N>, E>],
    take: &[usize],
) -> Taped<Rows<N>, E>
where
    Cpu: Device<E>,
{
    assert_eq!(parts.len(), take.len(), "one row count per part");
    assert!(
        parts.iter().zip(take).all(|(p, &n)| n <= p.shape().0),
        "taking more rows than a part has"
    );
    let total: usize = take.iter().sum();
    let mut out = vec![E::zero(); total * N];
    let mut start = 0;
    for (p, &n) in parts.iter().zip(take) {
        let block = &mut out[start..start + n * N];
        if n == p.shape().0 {
            // A whole part (every da_t and x_t): copied straight into place.
            p.copy_into(block);
        } else {
            block.copy_from_slice(&values(p)[..n * N]);
        }
        start += n * N;
    }
    let y = device().tensor_from_vec(out, (total, Const::<N>));
    let ids: Vec<_> = parts.iter().map(|p| p.ghost()).collect();
    let take = take.to_vec();
    let y_id = y.ghost();
    let mut tape = Tp::<E>::default();
    tape.add_backward_op(move |grads| {
        let dy: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&y_id)?).to_vec();
        let mut start = 0;
        for (id, n) in ids.iter().zip(take) {
            let dx = buffer::<E>(grads.get_or_alloc_mut(id)?);
            for (d, g) in dx[..n * N].iter_mut().zip(&dy[start..start + n * N]) {
                *d += *g;
            }
            start += n * N;
        }
        Ok(())
    });
    y.put_tape(tape)
}

/// `dst[to(k)] += src[from(k)]` for the rows k < count of width n.
fn add_rows<E: Real>(
    dst: &mut [E],
    src: &[E],
    to: impl Fn(usize) -> usize,
    from: impl Fn(usize) -> usize,
    count: usize,
    n: usize,
) {
    for k in 0..count {
        let (t, f) = (to(k) * n, from(k) * n);
        for (d, s) in dst[t..t + n].iter_mut().zip(&src[f..f + n]) {
            *d += *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tape::{hold, taped};

    fn matrix(rows: usize, seed: u64) -> Held<Rows<3>, f64> {
        let v = (0..rows * 3)
            .map(|i| ((i as u64 * 37 + seed * 11) % 17) as f64 - 8.0)
            .collect();
        device().tensor_from_vec(v, (rows, Const::<3>))
    }

    /// ⟨op(x), w⟩ differentiated by the tape, against the hand-computed transpose.
    #[test]
    fn gather_scatter_and_concat_with_their_gradients() {
        let x = matrix(4, 1);
        let gathered = gather_rows(taped(&x), &[2, 0, 2]);
        assert_eq!(
            gathered.as_vec(),
            [&x.as_vec()[6..9], &x.as_vec()[0..3], &x.as_vec()[6..9]].concat()
        );
        let w = matrix(3, 2);
        let g = (gathered * w.clone()).sum().backward();
        let wv = w.as_vec();
        let mut expected = vec![0.0; 12];
        for (k, &i) in [2, 0, 2].iter().enumerate() {
            for j in 0..3 {
                expected[i * 3 + j] += wv[k * 3 + j];
            }
        }
        assert_eq!(g.get(&x).as_vec(), expected, "a repeated row accumulates");

        let x = matrix(2, 3);
        let scattered = scatter_rows(taped(&x), &[3, 1], 4);
        let xv = x.as_vec();
        assert_eq!(
            scattered.as_vec(),
            [&[0.0; 3][..], &xv[3..6], &[0.0; 3], &xv[0..3]].concat()
        );
        let w = matrix(4, 4);
        let g = (scattered * w.clone()).sum().backward();
        let wv = w.as_vec();
        assert_eq!(g.get(&x).as_vec(), [&wv[9..12], &wv[3..6]].concat());

        let (a, b) = (matrix(3, 5), matrix(2, 6));
        let joined = concat_rows(&[a.clone(), b.clone()], &[2, 2]);
        assert_eq!(
            joined.as_vec(),
            [&a.as_vec()[..6], &b.as_vec()[..]].concat()
        );
        // The parts get gradients through the kept handles: the joined tape alone reaches them.
        let w = matrix(4, 7);
        let held = hold(&joined);
        let g = (joined * w.clone()).sum().backward();
        let wv = w.as_vec();
        assert_eq!(g.get(&a).as_vec(), [&wv[..6], &[0.0; 3][..]].concat());
        assert_eq!(g.get(&b).as_vec(), wv[6..].to_vec());
        assert_eq!(held.shape().0, 4);
    }
}
