//! Importers for the ops real architectures add to the core set (see the parent module):
//! n-ary Sum, Concat, Transpose, Pad, Clip, LRN, Sigmoid, Tanh, Unsqueeze and Squeeze, and the
//! constant plumbing exporters emit (ConstantOfShape, Shape, Gather), which folds here.
//!
//! Every folded constant is charged against [`ImportLimits::max_node_memory`] (and its shape
//! against the rank and dimension caps) before it is allocated, so a tiny file cannot ask for a
//! huge constant.
//!
//! [`ImportLimits::max_node_memory`]: crate::limits::ImportLimits::max_node_memory

use super::{ConstTensor, Ctx, Importer, Val, parse_tensor};
use crate::ModelError;
use crate::ir::{BinOp, Op, concat_shape, is_permutation};
use crate::limits::{Resource, Scope, how_to_raise};
use crate::tensor::{Tensor, concat, numel, transpose};

/// Bytes charged per folded constant element (20: the f32 value and two 8-byte words — the
/// engines' copies, or a broadcast fold's two index maps).
const FOLD_ELEM: u64 = 20;

/// Normalise a possibly negative axis against `rank`.
pub(super) fn norm_axis(cx: &Ctx, axis: i64, rank: usize) -> Result<usize, ModelError> {
    let r = rank as i64;
    let a = if axis < 0 {
        axis.saturating_add(r)
    } else {
        axis
    };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(cx.unsupported(format!(
            "axis {axis} is outside [-{r}, {}]",
            r.saturating_sub(1)
        )))
    }
}

/// The integers of a constant (axes, shapes, pads, indices).
fn ints_of(cx: &Ctx, c: &ConstTensor, what: &str) -> Result<Vec<i64>, ModelError> {
    match c {
        ConstTensor::I64(t) => Ok(t.data().to_vec()),
        ConstTensor::F32(_) => Err(cx.unsupported(format!("{what} must be an integer tensor"))),
    }
}

fn gather<T: Copy>(
    cx: &Ctx,
    data: &Tensor<T>,
    axis: usize,
    idx: &[i64],
    idx_shape: &[usize],
) -> Result<Tensor<T>, ModelError> {
    let ds = data.shape();
    let dim = ds[axis];
    let outer = numel(&ds[..axis])?;
    let inner = numel(&ds[axis + 1..])?;
    let mut shape = ds[..axis].to_vec();
    shape.extend_from_slice(idx_shape);
    shape.extend_from_slice(&ds[axis + 1..]);
    let mut out = Vec::with_capacity(numel(&shape)?);
    for o in 0..outer {
        for &i in idx {
            let j = if i < 0 {
                i.saturating_add(dim as i64)
            } else {
                i
            };
            let j = usize::try_from(j)
                .ok()
                .filter(|&j| j < dim)
                .ok_or_else(|| {
                    cx.unsupported(format!("index {i} is out of range for an axis of {dim}"))
                })?;
            let at = (o * dim + j) * inner;
            out.extend_from_slice(&data.data()[at..at + inner]);
        }
    }
    Tensor::new(shape, out)
}

impl Importer<'_> {
    /// Refuse a folded constant of `shape` that the limits do not allow, before allocating it.
    pub(super) fn charge(&self, cx: &Ctx, shape: &[usize]) -> Result<(), ModelError> {
        self.limits.shape(&cx.name, &cx.node.op_type, shape)?;
        let needed = (numel(shape)? as u64).saturating_mul(FOLD_ELEM);
        if needed > self.limits.max_node_memory {
            return Err(ModelError::OverBudget {
                node: cx.name.clone(),
                op: cx.node.op_type.clone(),
                resource: Resource::Memory,
                scope: Scope::Node,
                needed,
                limit: self.limits.max_node_memory,
                how: how_to_raise(Resource::Memory),
            });
        }
        Ok(())
    }

    /// Axes from the `axes` attribute (before `opset_input`) or the constant input 1.
    fn axes(&self, cx: &Ctx, opset_input: i64) -> Result<Option<Vec<i64>>, ModelError> {
        if self.opset < opset_input {
            cx.ints("axes")
        } else {
            match self.get(cx, 1)? {
                None => Ok(None),
                Some(Val::Const(c)) => ints_of(cx, &c, "axes").map(Some),
                Some(Val::Dyn(_)) => Err(cx.unsupported("axes (input 1) must be a constant")),
            }
        }
    }

    /// The ops of this module; `cx.node.op_type` is one of them.
    pub(super) fn extra_op(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        match cx.node.op_type.as_str() {
            "ConstantOfShape" => self.constant_of_shape(cx),
            "Shape" => {
                cx.check_attrs(&["start", "end"])?;
                let s = self.val_shape(&self.need(cx, 0)?);
                let r = s.len() as i64;
                let clampi = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r);
                let (a, b) = (clampi(cx.int("start", 0)?), clampi(cx.int("end", r)?));
                let dims: Vec<i64> = s
                    .get(a as usize..(b.max(a)) as usize)
                    .unwrap_or(&[])
                    .iter()
                    .map(|&d| d as i64)
                    .collect();
                Ok(Val::Const(ConstTensor::I64(Tensor::vector(dims))))
            }
            "Gather" => {
                cx.check_attrs(&["axis"])?;
                let data = self.need_const(cx, 0, "the data")?;
                let idx = self.need_const(cx, 1, "the indices")?;
                let ds = data.shape().to_vec();
                let axis = norm_axis(cx, cx.int("axis", 0)?, ds.len())?;
                let ishape = idx.shape().to_vec();
                let idx = ints_of(cx, &idx, "the indices")?;
                let mut shape = ds[..axis].to_vec();
                shape.extend_from_slice(&ishape);
                shape.extend_from_slice(&ds[axis + 1..]);
                self.charge(cx, &shape)?;
                Ok(Val::Const(match &data {
                    ConstTensor::F32(t) => ConstTensor::F32(gather(cx, t, axis, &idx, &ishape)?),
                    ConstTensor::I64(t) => ConstTensor::I64(gather(cx, t, axis, &idx, &ishape)?),
                }))
            }
            "Unsqueeze" => {
                cx.check_attrs(&["axes"])?;
                let v = self.need(cx, 0)?;
                let s = self.val_shape(&v);
                let axes = self
                    .axes(cx, 13)?
                    .ok_or_else(|| cx.unsupported("axes are required"))?;
                let rank = s.len().saturating_add(axes.len());
                let mut ones = vec![false; rank];
                for &a in &axes {
                    let a = norm_axis(cx, a, rank)?;
                    if std::mem::replace(&mut ones[a], true) {
                        return Err(cx.unsupported(format!("axis {a} is repeated")));
                    }
                }
                let mut dims = s.iter();
                let new = ones
                    .iter()
                    .map(|&one| {
                        if one {
                            1
                        } else {
                            dims.next().copied().unwrap_or(1)
                        }
                    })
                    .collect();
                self.reshape_to(cx, v, new, out)
            }
            "Squeeze" => {
                cx.check_attrs(&["axes"])?;
                let v = self.need(cx, 0)?;
                let s = self.val_shape(&v);
                let mut drop = vec![false; s.len()];
                match self.axes(cx, 13)? {
                    None => drop.iter_mut().zip(&s).for_each(|(d, &n)| *d = n == 1),
                    Some(axes) => {
                        for a in axes {
                            let a = norm_axis(cx, a, s.len())?;
                            if s[a] != 1 {
                                return Err(
                                    cx.unsupported(format!("axis {a} has size {}, not 1", s[a]))
                                );
                            }
                            drop[a] = true;
                        }
                    }
                }
                let new = s
                    .iter()
                    .zip(&drop)
                    .filter(|(_, d)| !**d)
                    .map(|(&n, _)| n)
                    .collect();
                self.reshape_to(cx, v, new, out)
            }
            "Concat" => self.concat(cx, out),
            "Sum" => {
                cx.check_attrs(&["consumed_inputs"])?;
                let n = cx.node.input.len();
                let mut acc = self.need(cx, 0)?;
                for i in 1..n {
                    let next = self.need(cx, i)?;
                    let sub = Ctx {
                        node: cx.node,
                        name: if i + 1 == n {
                            cx.name.clone()
                        } else {
                            format!("{}_sum{i}", cx.name)
                        },
                        limits: cx.limits,
                    };
                    let o = if i + 1 == n { out } else { "" };
                    acc = self.combine(&sub, BinOp::Add, acc, next, o)?;
                }
                Ok(acc)
            }
            "Transpose" => {
                cx.check_attrs(&["perm"])?;
                let v = self.need(cx, 0)?;
                let r = self.val_shape(&v).len();
                let perm: Vec<usize> = match cx.ints("perm")? {
                    None => (0..r).rev().collect(),
                    Some(p) => p
                        .iter()
                        .map(|&a| usize::try_from(a).unwrap_or(usize::MAX))
                        .collect(),
                };
                if !is_permutation(&perm, r) {
                    return Err(cx.unsupported(format!(
                        "perm {perm:?} is not a permutation of the {r} axes"
                    )));
                }
                if perm.iter().enumerate().all(|(i, &p)| i == p) {
                    return Ok(v);
                }
                Ok(match v {
                    Val::Dyn(x) => {
                        Val::Dyn(
                            self.b
                                .push(&cx.name, Op::Transpose { perm }, vec![x], out)?,
                        )
                    }
                    Val::Const(ConstTensor::F32(t)) => {
                        Val::Const(ConstTensor::F32(transpose(&t, &perm)?))
                    }
                    Val::Const(ConstTensor::I64(t)) => {
                        Val::Const(ConstTensor::I64(transpose(&t, &perm)?))
                    }
                })
            }
            "Pad" => self.pad(cx, out),
            "Clip" => {
                let (min, max) = if self.opset < 11 {
                    cx.check_attrs(&["min", "max"])?;
                    (cx.float("min", f32::MIN)?, cx.float("max", f32::MAX)?)
                } else {
                    cx.check_attrs(&[])?;
                    let bound = |i: usize, default: f32| -> Result<f32, ModelError> {
                        match self.get(cx, i)? {
                            None => Ok(default),
                            Some(Val::Const(c)) => {
                                let t = c.to_f32();
                                match t.data() {
                                    [v] => Ok(*v),
                                    _ => Err(cx.unsupported(format!(
                                        "bound (input {i}) must hold one value"
                                    ))),
                                }
                            }
                            Some(Val::Dyn(_)) => {
                                Err(cx.unsupported(format!("bound (input {i}) must be a constant")))
                            }
                        }
                    };
                    (bound(1, f32::MIN)?, bound(2, f32::MAX)?)
                };
                let x = self.need(cx, 0)?;
                let x = self.as_dyn(cx, x)?;
                Ok(Val::Dyn(self.b.push(
                    &cx.name,
                    Op::Clip { min, max },
                    vec![x],
                    out,
                )?))
            }
            "LRN" => {
                cx.check_attrs(&["size", "alpha", "beta", "bias"])?;
                let size = match cx.attr("size") {
                    Some(_) => cx.capped(
                        "size",
                        cx.int("size", 0)?,
                        cx.limits.max_kernel,
                        "max_kernel",
                    )?,
                    None => return Err(cx.unsupported("size is required")),
                };
                if size == 0 {
                    return Err(cx.unsupported("size must be positive"));
                }
                let op = Op::Lrn {
                    size,
                    alpha: cx.float("alpha", 1e-4)?,
                    beta: cx.float("beta", 0.75)?,
                    bias: cx.float("bias", 1.0)?,
                };
                let x = self.need(cx, 0)?;
                let x = self.as_dyn(cx, x)?;
                Ok(Val::Dyn(self.b.push(&cx.name, op, vec![x], out)?))
            }
            "Sigmoid" | "Tanh" => {
                cx.check_attrs(&["consumed_inputs"])?;
                let sig = cx.node.op_type == "Sigmoid";
                let f = move |v: f32| {
                    if sig {
                        1.0 / (1.0 + (-v).exp())
                    } else {
                        v.tanh()
                    }
                };
                Ok(match self.need(cx, 0)? {
                    Val::Dyn(x) => {
                        let op = if sig { Op::Sigmoid } else { Op::Tanh };
                        Val::Dyn(self.b.push(&cx.name, op, vec![x], out)?)
                    }
                    Val::Const(c) => Val::Const(ConstTensor::F32(c.to_f32().map(|&v| f(v)))),
                })
            }
            other => Err(cx.unsupported(format!("internal: '{other}' routed to extra_op"))),
        }
    }

    fn constant_of_shape(&mut self, cx: &Ctx) -> Result<Val, ModelError> {
        cx.check_attrs(&["value"])?;
        let spec = self.need_const(cx, 0, "the shape")?;
        let dims = ints_of(cx, &spec, "the shape")?;
        let shape = dims
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| cx.unsupported(format!("negative dimension {d} in the shape")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.charge(cx, &shape)?;
        let n = numel(&shape)?;
        let value = match cx.attr("value") {
            None => ConstTensor::F32(Tensor::vector(vec![0.0])),
            Some(a) => parse_tensor(
                a.t.as_ref()
                    .ok_or_else(|| cx.unsupported("'value' holds no tensor"))?,
            )?,
        };
        Ok(Val::Const(match value {
            ConstTensor::F32(t) => match t.data() {
                [v] => ConstTensor::F32(Tensor::new(shape, vec![*v; n])?),
                _ => return Err(cx.unsupported("'value' must hold exactly one element")),
            },
            ConstTensor::I64(t) => match t.data() {
                [v] => ConstTensor::I64(Tensor::new(shape, vec![*v; n])?),
                _ => return Err(cx.unsupported("'value' must hold exactly one element")),
            },
        }))
    }

    fn concat(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&["axis"])?;
        let mut vals = (0..cx.node.input.len())
            .map(|i| self.need(cx, i))
            .collect::<Result<Vec<_>, _>>()?;
        let first = vals
            .first()
            .ok_or_else(|| cx.unsupported("Concat needs at least one input"))?;
        let rank = self.val_shape(first).len();
        let axis = match cx.attr("axis") {
            Some(_) => norm_axis(cx, cx.int("axis", 0)?, rank)?,
            None if self.opset < 4 => 1.min(rank.saturating_sub(1)),
            None => return Err(cx.unsupported("axis is required")),
        };
        let shapes: Vec<Vec<usize>> = vals.iter().map(|v| self.val_shape(v)).collect();
        let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        let shape = concat_shape(&refs, axis, &cx.name)?;
        if vals.len() == 1
            && let Some(v) = vals.pop()
        {
            return Ok(v);
        }
        let consts: Vec<&ConstTensor> = vals
            .iter()
            .filter_map(|v| match v {
                Val::Const(c) => Some(c),
                Val::Dyn(_) => None,
            })
            .collect();
        if consts.len() == vals.len() {
            self.charge(cx, &shape)?;
            let ints: Vec<&Tensor<i64>> = consts
                .iter()
                .filter_map(|c| match c {
                    ConstTensor::I64(t) => Some(t),
                    ConstTensor::F32(_) => None,
                })
                .collect();
            return Ok(Val::Const(if ints.len() == consts.len() {
                ConstTensor::I64(concat(&ints, axis)?)
            } else {
                let fs: Vec<Tensor> = consts.iter().map(|c| c.to_f32()).collect();
                let refs: Vec<&Tensor> = fs.iter().collect();
                ConstTensor::F32(concat(&refs, axis)?)
            }));
        }
        let ins = vals
            .into_iter()
            .map(|v| self.as_dyn(cx, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Val::Dyn(self.b.push(
            &cx.name,
            Op::Concat { axis },
            ins,
            out,
        )?))
    }

    fn pad(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        let legacy = self.opset < 11;
        if legacy {
            cx.check_attrs(&["mode", "pads", "paddings", "value"])?;
        } else {
            cx.check_attrs(&["mode"])?;
        }
        let mode = cx.string("mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(cx.unsupported(format!(
                "mode '{mode}' is not supported; only 'constant' padding is"
            )));
        }
        let (raw, value) = if legacy {
            let p = match cx.ints("pads")? {
                Some(p) => p,
                None => cx
                    .ints("paddings")?
                    .ok_or_else(|| cx.unsupported("pads are required"))?,
            };
            (p, cx.float("value", 0.0)?)
        } else {
            if self.get(cx, 3)?.is_some() {
                return Err(cx.unsupported("the axes input is not supported; pad every axis"));
            }
            let p = self.need_const(cx, 1, "the pads")?;
            let p = ints_of(cx, &p, "the pads")?;
            let value = match self.get(cx, 2)? {
                None => 0.0,
                Some(Val::Const(c)) => match c.to_f32().data() {
                    [v] => *v,
                    [] => 0.0,
                    _ => return Err(cx.unsupported("constant_value must hold one value")),
                },
                Some(Val::Dyn(_)) => {
                    return Err(cx.unsupported("constant_value (input 2) must be a constant"));
                }
            };
            (p, value)
        };
        let pads = raw
            .iter()
            .map(|&p| cx.capped("pads", p, cx.limits.max_pad, "max_pad"))
            .collect::<Result<Vec<_>, _>>()?;
        let x = self.need(cx, 0)?;
        let rank = self.val_shape(&x).len();
        if pads.len() != 2 * rank {
            return Err(cx.unsupported(format!(
                "{} pads for a rank-{rank} input; need {}",
                pads.len(),
                2 * rank
            )));
        }
        let x = self.as_dyn(cx, x)?;
        if pads.iter().all(|&p| p == 0) {
            return Ok(Val::Dyn(x));
        }
        Ok(Val::Dyn(self.b.push(
            &cx.name,
            Op::Pad { pads, value },
            vec![x],
            out,
        )?))
    }
}
