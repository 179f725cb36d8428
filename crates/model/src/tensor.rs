//! Dense row-major tensors with a static shape.

use crate::ModelError;

/// Largest number of elements tessera accepts in one tensor (2^31). Shapes beyond this come from
/// corrupt or hostile files, never from the networks tessera targets.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Number of elements of `shape`, or an error when it overflows or exceeds [`MAX_ELEMENTS`].
pub fn numel(shape: &[usize]) -> Result<usize, ModelError> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                ModelError::Shape(format!("shape {shape:?} has more than 2^31 elements"))
            })?;
    }
    Ok(n)
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T = f32> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T> Tensor<T> {
    /// Build a tensor; the data length must equal the product of the shape.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self, ModelError> {
        let n = numel(&shape)?;
        if n != data.len() {
            return Err(ModelError::Shape(format!(
                "tensor of shape {shape:?} needs {n} elements but {} were given",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }
    /// A 1-D tensor.
    pub fn vector(data: Vec<T>) -> Self {
        Self {
            shape: vec![data.len()],
            data,
        }
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// The elements, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Consume into (shape, data).
    pub fn into_parts(self) -> (Vec<usize>, Vec<T>) {
        (self.shape, self.data)
    }
    /// Same data, another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self, ModelError> {
        Self::new(shape, self.data)
    }
    /// Apply `f` elementwise.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(f).collect(),
        }
    }
}

impl<T: Clone + Default> Tensor<T> {
    /// A tensor of default values (zeros).
    pub fn zeros(shape: Vec<usize>) -> Result<Self, ModelError> {
        let n = numel(&shape)?;
        Ok(Self {
            shape,
            data: vec![T::default(); n],
        })
    }
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy-style broadcast of two shapes, or an error naming both.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, ModelError> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(ModelError::Shape(format!(
                "shapes {a:?} and {b:?} do not broadcast"
            )));
        };
    }
    numel(&out)?;
    Ok(out)
}

/// For each element of the broadcast `out` shape, the flat index into a tensor of shape `src`.
pub fn broadcast_index_map(src: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let st = strides(src);
    // effective stride per output dim (0 where broadcast)
    let mut eff = vec![0usize; r];
    for (i, e) in eff.iter_mut().enumerate() {
        if i + src.len() >= r {
            let j = i + src.len() - r;
            if src[j] != 1 {
                *e = st[j];
            }
        }
    }
    let n: usize = out.iter().product();
    let mut idx = vec![0usize; n];
    let mut counter = vec![0usize; r];
    let mut cur = 0usize;
    for slot in idx.iter_mut() {
        *slot = cur;
        // increment counter
        for d in (0..r).rev() {
            counter[d] += 1;
            cur += eff[d];
            if counter[d] < out[d] {
                break;
            }
            cur -= eff[d] * counter[d];
            counter[d] = 0;
        }
    }
    idx
}

/// Permute the axes of `t`: output axis `i` is input axis `perm[i]`.
pub fn transpose<T: Copy>(t: &Tensor<T>, perm: &[usize]) -> Result<Tensor<T>, ModelError> {
    let s = t.shape();
    if !crate::ir::is_permutation(perm, s.len()) {
        return Err(ModelError::Shape(format!(
            "{perm:?} is not a permutation of the {} axes of {s:?}",
            s.len()
        )));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let in_strides = strides(s);
    // Input stride of each output axis; walk the output in row-major order.
    let step: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let n = t.len();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; out_shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        data.push(t.data()[off]);
        for ax in (0..idx.len()).rev() {
            idx[ax] += 1;
            off += step[ax];
            if idx[ax] < out_shape[ax] {
                break;
            }
            off -= step[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
    Tensor::new(out_shape, data)
}

/// Concatenate tensors along `axis` (shapes checked by [`crate::ir::concat_shape`]).
pub fn concat<T: Copy>(ts: &[&Tensor<T>], axis: usize) -> Result<Tensor<T>, ModelError> {
    let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
    let out_shape = crate::ir::concat_shape(&shapes, axis, "concat")?;
    let outer = numel(&out_shape[..axis])?;
    let mut data = Vec::with_capacity(numel(&out_shape)?);
    for o in 0..outer {
        for t in ts {
            let chunk = numel(&t.shape()[axis..])?;
            data.extend_from_slice(&t.data()[o * chunk..(o + 1) * chunk]);
        }
    }
    Tensor::new(out_shape, data)
}

/// The elements `start..end` along `axis` (bounds checked by [`crate::ir::infer_shape`]).
pub fn slice_axis<T: Copy>(
    t: &Tensor<T>,
    axis: usize,
    start: usize,
    end: usize,
) -> Result<Tensor<T>, ModelError> {
    let shape = t.shape();
    let dim = shape.get(axis).copied().unwrap_or(0);
    if start >= end || end > dim {
        return Err(ModelError::Shape(format!(
            "slice {start}..{end} of axis {axis} does not fit {shape:?}"
        )));
    }
    let inner = numel(&shape[axis + 1..])?;
    let outer = numel(&shape[..axis])?;
    let mut out_shape = shape.to_vec();
    out_shape[axis] = end - start;
    let mut data = Vec::with_capacity(numel(&out_shape)?);
    for o in 0..outer {
        let base = o * dim * inner;
        data.extend_from_slice(&t.data()[base + start * inner..base + end * inner]);
    }
    Tensor::new(out_shape, data)
}

/// `f(a[i], b[j])` over the broadcast of `a` (shape `sa`) and `b` (shape `sb`) to `out`, the
/// elements paired by numpy's rules (element by element when both already have shape `out`),
/// stopping at the first error. Shared by every engine's element-wise ops.
pub fn broadcast_zip<A: Copy, B: Copy, R, E>(
    (a, sa): (&[A], &[usize]),
    (b, sb): (&[B], &[usize]),
    out: &[usize],
    mut f: impl FnMut(A, B) -> Result<R, E>,
) -> Result<Vec<R>, E> {
    if sa == out && sb == out {
        // No broadcast (a residual connection): no index maps.
        return a.iter().zip(b).map(|(&p, &q)| f(p, q)).collect();
    }
    let ia = broadcast_index_map(sa, out);
    let ib = broadcast_index_map(sb, out);
    ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect()
}

/// Elementwise op of two float tensors with numpy broadcasting.
pub fn broadcast_apply(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Tensor, ModelError> {
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    let data = broadcast_zip(
        (a.data(), a.shape()),
        (b.data(), b.shape()),
        &shape,
        |p, q| Ok::<_, std::convert::Infallible>(f(p, q)),
    )
    .unwrap_or_else(|e| match e {});
    Tensor::new(shape, data)
}
