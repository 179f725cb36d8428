//! Importers for int8 ONNX models — QDQ (QuantizeLinear/DequantizeLinear pairs around float
//! ops) and QOperator (QLinearConv, QLinearMatMul, QLinearAdd, QLinearGlobalAveragePool) — and
//! the data movement they travel with (Slice, Split, spatial ReduceMean).
//!
//! * A quantized activation is one IR value that holds the real `scale · (q − zero_point)`:
//!   QuantizeLinear is an [`Op::Quantize`] node, and a DequantizeLinear of that tensor is the
//!   same value again — it must name the scale and zero point the tensor was quantized with
//!   (a tensor read on another grid is refused). Data movement (MaxPool, Reshape, Flatten,
//!   Transpose, Slice/Split, Squeeze, Unsqueeze, and Concat of tensors on one grid) keeps the grid.
//! * A DequantizeLinear of integer initializers is a float constant whose scales are remembered:
//!   the Conv, Gemm or MatMul that reads it as weights keeps them ([`Conv::weight_scales`]), and
//!   the integer semantics v2 uses those integers as given.
//! * A QLinear op is its float op (weights dequantized, the int32 bias at scale
//!   `x_scale · w_scale`) followed by a Quantize to its output grid.
//!
//! [`Conv::weight_scales`]: crate::ir::Conv::weight_scales

use super::{ConstTensor, Ctx, Importer, Val};
use crate::ModelError;
use crate::ir::{BinOp, Dense, Op, QParam, ValueId};
use crate::proto::{NodeProto, data_type};
use crate::tensor::{Tensor, numel};

/// The `com.microsoft` ops tessera reads.
pub(super) const MICROSOFT_OPS: &[&str] = &["QLinearAdd", "QLinearGlobalAveragePool"];

/// Ops whose output holds the same integers (rearranged, or a window's maximum) as their first
/// input, so a quantized input's grid carries over.
const KEEPS_GRID: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Slice",
];

/// A constant that is a DequantizeLinear of integers: its scales along `axis` (one scale: the
/// whole tensor).
#[derive(Clone, Debug)]
pub(super) struct QConst {
    scales: Vec<f32>,
    axis: usize,
}

/// The floats of a constant.
fn floats(cx: &Ctx, c: &ConstTensor, what: &str) -> Result<Vec<f32>, ModelError> {
    match c {
        ConstTensor::F32(t) => Ok(t.data().to_vec()),
        ConstTensor::I64(_) => Err(cx.unsupported(format!("{what} must be a float tensor"))),
    }
}

impl Importer<'_> {
    /// The name of input `idx` of the node.
    fn input_name<'c>(&self, cx: &'c Ctx, idx: usize) -> &'c str {
        cx.node.input.get(idx).map_or("", String::as_str)
    }

    /// Scales at input `idx`: finite and positive.
    fn scales_at(&self, cx: &Ctx, idx: usize) -> Result<Vec<f32>, ModelError> {
        let c = self.need_const(cx, idx, "a scale")?;
        let s = floats(cx, &c, "a scale")?;
        if s.is_empty() {
            return Err(cx.unsupported("a scale tensor is empty"));
        }
        if let Some(v) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(cx.unsupported(format!(
                "scale {v} (input {idx}) is not a finite positive number"
            )));
        }
        Ok(s)
    }

    /// Zero points at input `idx` and whether their type is int8 (uint8 otherwise; absent:
    /// uint8 zeros). With `int32`, an int32 tensor (a bias) is accepted too.
    fn zeros_at(&self, cx: &Ctx, idx: usize, int32: bool) -> Result<(Vec<i64>, bool), ModelError> {
        let Some(v) = self.get(cx, idx)? else {
            return Ok((vec![0], false));
        };
        let Val::Const(ConstTensor::I64(t)) = v else {
            return Err(cx.unsupported(format!(
                "the zero point (input {idx}) must be an integer constant"
            )));
        };
        let dt = self.dtypes.get(self.input_name(cx, idx)).copied();
        let signed = match dt {
            Some(data_type::INT8) => true,
            Some(data_type::UINT8) => false,
            Some(data_type::INT32) if int32 => true,
            other => {
                return Err(cx.unsupported(format!(
                    "the zero point (input {idx}) has data type {}; tessera reads uint8 and int8 grids",
                    other.map_or("unknown".to_string(), |d| d.to_string())
                )));
            }
        };
        Ok((t.data().to_vec(), signed))
    }

    /// A per-tensor grid from a scale at `s` and a zero point at `z`.
    fn grid_at(&self, cx: &Ctx, s: usize, z: usize) -> Result<QParam, ModelError> {
        let scales = self.scales_at(cx, s)?;
        let (zeros, signed) = self.zeros_at(cx, z, false)?;
        let (&[scale], &[zero]) = (scales.as_slice(), zeros.as_slice()) else {
            return Err(cx.unsupported(
                "an activation must be quantized per tensor (one scale, one zero point)",
            ));
        };
        let zero = i32::try_from(zero).map_err(|_| cx.unsupported("zero point out of range"))?;
        QParam::new(scale, zero, signed).map_err(|e| cx.unsupported(e.to_string()))
    }

    /// Input `idx` is a quantized activation on grid `q`.
    fn on_grid(&self, cx: &Ctx, idx: usize, q: &QParam) -> Result<ValueId, ModelError> {
        let x = self.need_dyn(cx, idx)?;
        match self.grids.get(&x) {
            Some(g) if g == q => Ok(x),
            Some(g) => Err(cx.unsupported(format!(
                "'{}' is read with scale {} and zero point {} but was quantized with scale {} and zero point {}; \
                 tessera imports int8 graphs whose tensors are read on the grid they were quantized to",
                self.input_name(cx, idx),
                q.scale,
                q.zero_point,
                g.scale,
                g.zero_point
            ))),
            None => Err(cx.unsupported(format!(
                "'{}' is read as a quantized tensor but no QuantizeLinear or QLinear op made it",
                self.input_name(cx, idx)
            ))),
        }
    }

    /// The real values of integer constant `q` (input `qi`) with scales (input `si`) and zero
    /// points (input `zi`) along `axis`; returns them and the scales.
    fn dequantized(
        &self,
        cx: &Ctx,
        [qi, si, zi]: [usize; 3],
        axis: usize,
        int32: bool,
    ) -> Result<(Tensor, Vec<f32>), ModelError> {
        let Val::Const(ConstTensor::I64(q)) = self.need(cx, qi)? else {
            return Err(cx.unsupported(format!(
                "input {qi} must be an integer constant (quantized weights)"
            )));
        };
        let scales = self.scales_at(cx, si)?;
        let (zeros, _) = self.zeros_at(cx, zi, int32)?;
        let shape = q.shape();
        let n = if scales.len() == 1 {
            1
        } else {
            shape.get(axis).copied().ok_or_else(|| {
                cx.unsupported(format!("axis {axis} is outside the rank {}", shape.len()))
            })?
        };
        if scales.len() != n || (zeros.len() != n && zeros.len() != 1) {
            return Err(cx.unsupported(format!(
                "{} scales and {} zero points for {n} slices of the tensor {shape:?}",
                scales.len(),
                zeros.len()
            )));
        }
        let inner = if n == 1 {
            q.len().max(1)
        } else {
            numel(shape.get(axis + 1..).unwrap_or(&[]))?.max(1)
        };
        let data = q
            .data()
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / inner) % n;
                let (s, z) = (
                    scales.get(c).copied().unwrap_or(1.0),
                    zeros.get(c).or(zeros.first()).copied().unwrap_or(0),
                );
                ((v - z) as f64 * f64::from(s)) as f32
            })
            .collect();
        Ok((Tensor::new(shape.to_vec(), data)?, scales))
    }

    /// Quantize `x` to grid `q` as the value `out`.
    fn quantize_to(
        &mut self,
        cx: &Ctx,
        x: ValueId,
        q: QParam,
        out: &str,
    ) -> Result<Val, ModelError> {
        let name = format!("{}_quantize", cx.name);
        let y = self.b.push(&name, Op::Quantize(q), vec![x], out)?;
        self.grids.insert(y, q);
        Ok(Val::Dyn(y))
    }

    /// Weight scales of the constant at input `idx` when it is a DequantizeLinear of integers;
    /// per-channel scales must run along `out_axis` (the layer's output channels).
    pub(super) fn weight_scales(
        &self,
        cx: &Ctx,
        idx: usize,
        out_axis: usize,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(qc) = self.qconsts.get(self.input_name(cx, idx)) else {
            return Ok(None);
        };
        if qc.scales.len() != 1 && qc.axis != out_axis {
            return Err(cx.unsupported(format!(
                "the weights are quantized along axis {}; tessera takes per-channel scales along the output axis {out_axis}",
                qc.axis
            )));
        }
        Ok(Some(qc.scales.clone()))
    }

    /// After a node: its output keeps a quantized input's grid where the op moves integers.
    pub(super) fn keep_grid(&mut self, node: &NodeProto, result: &Val) {
        let Val::Dyn(y) = result else { return };
        if self.grids.contains_key(y) {
            return;
        }
        let grid_of = |name: &String| match self.vals.get(name) {
            Some(Val::Dyn(v)) => self.grids.get(v).copied(),
            _ => None,
        };
        let g = if KEEPS_GRID.contains(&node.op_type.as_str()) {
            node.input.first().and_then(grid_of)
        } else if node.op_type == "Concat" {
            let mut gs = node.input.iter().map(grid_of);
            match gs.next().flatten() {
                Some(first) if gs.all(|g| g == Some(first)) => Some(first),
                _ => None,
            }
        } else {
            None
        };
        if let Some(g) = g {
            self.grids.insert(*y, g);
        }
    }

    /// Split: one Slice per output along `axis`.
    pub(super) fn split(&mut self, cx: &Ctx) -> Result<(), ModelError> {
        cx.check_attrs(&["axis", "split", "num_outputs"])?;
        let x = self.need_dyn(cx, 0)?;
        let shape = self.b.shape(x).to_vec();
        let axis = super::ops::norm_axis(cx, cx.int("axis", 0)?, shape.len())?;
        let dim = shape.get(axis).copied().unwrap_or(0);
        let outs = cx.node.output.len();
        let sizes: Vec<i64> = match cx.ints("split")? {
            Some(s) => s,
            None => match self.get(cx, 1)? {
                Some(Val::Const(ConstTensor::I64(t))) => t.data().to_vec(),
                Some(_) => return Err(cx.unsupported("split sizes must be an int64 constant")),
                None => {
                    if outs == 0 || dim % outs != 0 {
                        return Err(cx.unsupported(format!(
                            "an axis of {dim} does not split evenly into {outs} outputs"
                        )));
                    }
                    vec![(dim / outs) as i64; outs]
                }
            },
        };
        if sizes.len() != outs
            || sizes.iter().any(|&s| s <= 0)
            || sizes.iter().sum::<i64>() != dim as i64
        {
            return Err(cx.unsupported(format!(
                "split sizes {sizes:?} do not cut an axis of {dim} into {outs} non-empty parts"
            )));
        }
        let grid = self.grids.get(&x).copied();
        let mut start = 0usize;
        for (k, (&s, out)) in sizes.iter().zip(&cx.node.output).enumerate() {
            let end = start + s as usize;
            if !out.is_empty() {
                let op = Op::Slice { axis, start, end };
                let y = self.b.push(&format!("{}:{k}", cx.name), op, vec![x], out)?;
                if let Some(g) = grid {
                    self.grids.insert(y, g);
                }
                self.vals.insert(out.clone(), Val::Dyn(y));
            }
            start = end;
        }
        Ok(())
    }

    /// The ops of this module; `cx.node.op_type` is one of them.
    pub(super) fn quant_op(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        match cx.node.op_type.as_str() {
            "QuantizeLinear" => {
                cx.check_attrs(&["axis", "saturate"])?;
                let x = match self.need(cx, 0)? {
                    Val::Dyn(x) => x,
                    Val::Const(_) => {
                        return Err(cx.unsupported(
                            "QuantizeLinear of a constant: store the weights as integers (a DequantizeLinear of an int8 initializer)",
                        ));
                    }
                };
                let q = self.grid_at(cx, 1, 2)?;
                let name = cx.name.clone();
                let y = self.b.push(&name, Op::Quantize(q), vec![x], out)?;
                self.grids.insert(y, q);
                Ok(Val::Dyn(y))
            }
            "DequantizeLinear" => {
                cx.check_attrs(&["axis"])?;
                match self.need(cx, 0)? {
                    Val::Dyn(_) => {
                        let q = self.grid_at(cx, 1, 2)?;
                        Ok(Val::Dyn(self.on_grid(cx, 0, &q)?))
                    }
                    Val::Const(c) => {
                        let axis = super::ops::norm_axis(cx, cx.int("axis", 1)?, c.shape().len())
                            .unwrap_or(0);
                        let (t, scales) = self.dequantized(cx, [0, 1, 2], axis, true)?;
                        self.qconsts
                            .insert(out.to_string(), QConst { scales, axis });
                        Ok(Val::Const(ConstTensor::F32(t)))
                    }
                }
            }
            "QLinearConv" => {
                cx.check_attrs(super::CONV_ATTRS)?;
                let xq = self.grid_at(cx, 1, 2)?;
                let x = self.on_grid(cx, 0, &xq)?;
                let (weight, ws) = self.dequantized(cx, [3, 4, 5], 0, false)?;
                let yq = self.grid_at(cx, 6, 7)?;
                let rows = weight.shape().first().copied().unwrap_or(0);
                let bias = match self.get(cx, 8)? {
                    None => None,
                    Some(Val::Const(ConstTensor::I64(b))) if b.len() == rows => {
                        let d = b
                            .data()
                            .iter()
                            .enumerate()
                            .map(|(c, &v)| {
                                let s = ws.get(c).or(ws.first()).copied().unwrap_or(1.0);
                                (v as f64 * f64::from(xq.scale) * f64::from(s)) as f32
                            })
                            .collect();
                        Some(Tensor::new(vec![rows], d)?)
                    }
                    Some(_) => {
                        return Err(cx.unsupported(format!(
                            "the bias (input 8) must be an int32 constant of {rows} elements"
                        )));
                    }
                };
                let acc = format!("{out}_acc");
                let Val::Dyn(a) = self.conv_with(cx, x, weight, bias, Some(ws), &acc)? else {
                    return Err(cx.unsupported("the convolution folded to a constant"));
                };
                self.quantize_to(cx, a, yq, out)
            }
            "QLinearMatMul" => {
                cx.check_attrs(&[])?;
                let aq = self.grid_at(cx, 1, 2)?;
                let a = self.on_grid(cx, 0, &aq)?;
                let (w, ws) = self.dequantized(cx, [3, 4, 5], 1, false)?;
                let yq = self.grid_at(cx, 6, 7)?;
                if self.b.shape(a).len() != 2 || w.shape().len() != 2 {
                    return Err(cx.unsupported(
                        "QLinearMatMul needs a 2-D activation and 2-D constant weights",
                    ));
                }
                let weight = super::transpose2(&w)?;
                let dense = Op::Dense(Dense {
                    weight,
                    bias: None,
                    weight_scales: Some(ws),
                });
                let y = self
                    .b
                    .push(&cx.name, dense, vec![a], &format!("{out}_acc"))?;
                self.quantize_to(cx, y, yq, out)
            }
            "QLinearAdd" => {
                cx.check_attrs(&[])?;
                let operand = |i: usize| -> Result<Val, ModelError> {
                    match self.need(cx, i)? {
                        Val::Dyn(_) => {
                            let q = self.grid_at(cx, i + 1, i + 2)?;
                            Ok(Val::Dyn(self.on_grid(cx, i, &q)?))
                        }
                        Val::Const(_) => {
                            let (t, _) = self.dequantized(cx, [i, i + 1, i + 2], 0, false)?;
                            Ok(Val::Const(ConstTensor::F32(t)))
                        }
                    }
                };
                let (a, b) = (operand(0)?, operand(3)?);
                let cq = self.grid_at(cx, 6, 7)?;
                let Val::Dyn(s) = self.combine(cx, BinOp::Add, a, b, &format!("{out}_sum"))? else {
                    return Err(cx.unsupported("QLinearAdd of two constants"));
                };
                self.quantize_to(cx, s, cq, out)
            }
            "QLinearGlobalAveragePool" => {
                cx.check_attrs(&["channels_last"])?;
                if cx.int("channels_last", 0)? != 0 {
                    return Err(cx.unsupported("channels_last = 1 (NHWC) is not supported"));
                }
                let xq = self.grid_at(cx, 1, 2)?;
                let x = self.on_grid(cx, 0, &xq)?;
                let yq = self.grid_at(cx, 3, 4)?;
                let y = self
                    .b
                    .push(&cx.name, Op::GlobalAvgPool, vec![x], &format!("{out}_avg"))?;
                self.quantize_to(cx, y, yq, out)
            }
            "ReduceMean" => self.reduce_mean(cx, out),
            _ => self.slice(cx, out),
        }
    }

    /// ReduceMean over the two spatial axes of an NCHW tensor: global average pooling.
    fn reduce_mean(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&["axes", "keepdims", "noop_with_empty_axes"])?;
        let x = self.need_dyn(cx, 0)?;
        let shape = self.b.shape(x).to_vec();
        let axes = match cx.ints("axes")? {
            Some(a) => a,
            None => match self.get(cx, 1)? {
                Some(Val::Const(ConstTensor::I64(t))) => t.data().to_vec(),
                _ => vec![],
            },
        };
        let mut norm = axes
            .iter()
            .map(|&a| super::ops::norm_axis(cx, a, shape.len()))
            .collect::<Result<Vec<_>, _>>()?;
        norm.sort_unstable();
        if shape.len() != 4 || norm != [2, 3] {
            return Err(cx.unsupported(format!(
                "ReduceMean over axes {axes:?} of {shape:?}; tessera reduces only the spatial axes [2, 3] of an NCHW tensor"
            )));
        }
        let keep = cx.int("keepdims", 1)? != 0;
        if keep {
            return Ok(Val::Dyn(self.b.push(
                &cx.name,
                Op::GlobalAvgPool,
                vec![x],
                out,
            )?));
        }
        let y = self
            .b
            .push(&cx.name, Op::GlobalAvgPool, vec![x], &format!("{out}_keep"))?;
        let flat = vec![shape[0], shape[1]];
        Ok(Val::Dyn(self.b.reshape(
            &format!("{}_flat", cx.name),
            y,
            flat,
            out,
        )?))
    }

    /// Slice with constant starts, ends, axes and unit steps: one Slice node per sliced axis.
    fn slice(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&["starts", "ends", "axes"])?;
        let mut x = self.need_dyn(cx, 0)?;
        let konst = |imp: &Self, i: usize, attr: &str| -> Result<Option<Vec<i64>>, ModelError> {
            if imp.opset < 10 {
                return cx.ints(attr);
            }
            match imp.get(cx, i)? {
                None => Ok(None),
                Some(Val::Const(ConstTensor::I64(t))) => Ok(Some(t.data().to_vec())),
                Some(_) => Err(cx.unsupported(format!("{attr} must be an int64 constant"))),
            }
        };
        let starts = konst(self, 1, "starts")?.ok_or_else(|| cx.unsupported("no starts"))?;
        let ends = konst(self, 2, "ends")?.ok_or_else(|| cx.unsupported("no ends"))?;
        let rank = self.b.shape(x).len();
        let axes = konst(self, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if let Some(steps) = konst(self, 4, "steps")?
            && steps.iter().any(|&s| s != 1)
        {
            return Err(cx.unsupported(format!("steps {steps:?}: only unit steps are supported")));
        }
        if starts.len() != ends.len() || starts.len() != axes.len() {
            return Err(cx.unsupported("starts, ends and axes differ in length"));
        }
        let mut cuts = Vec::new();
        for ((&s, &e), &a) in starts.iter().zip(&ends).zip(&axes) {
            let axis = super::ops::norm_axis(cx, a, rank)?;
            let dim = self.b.shape(x).get(axis).copied().unwrap_or(0) as i64;
            let clampi = |v: i64| {
                let v = if v < 0 { v.saturating_add(dim) } else { v };
                v.clamp(0, dim) as usize
            };
            let (start, end) = (clampi(s), clampi(e));
            if start >= end {
                return Err(cx.unsupported(format!("slice {s}..{e} of an axis of {dim} is empty")));
            }
            if (start, end) != (0, dim as usize) {
                cuts.push((axis, start, end));
            }
        }
        let Some(last) = cuts.len().checked_sub(1) else {
            return Ok(Val::Dyn(x));
        };
        for (k, (axis, start, end)) in cuts.into_iter().enumerate() {
            let name = if k == last {
                cx.name.clone()
            } else {
                format!("{}:{k}", cx.name)
            };
            let o = if k == last { out } else { "" };
            x = self
                .b
                .push(&name, Op::Slice { axis, start, end }, vec![x], o)?;
        }
        Ok(Val::Dyn(x))
    }
}
