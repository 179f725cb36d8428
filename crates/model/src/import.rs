//! ONNX → [`Graph`] import with static shape inference.
//!
//! Supported ops: Conv (any pads/strides/dilations/auto_pad, any group count), Gemm, MatMul,
//! Add/Sub/Mul/Div (constant or variable operands, numpy broadcasting), Relu, MaxPool,
//! AveragePool, GlobalAveragePool, Flatten, Reshape, BatchNormalization (inference form, folded
//! into the preceding Conv/Gemm), Identity and Dropout (dropped), Constant, Softmax (final layer),
//! and (in `import_ops.rs`) Sum, Concat, Transpose, Pad
//! (constant mode), Clip, LRN, Sigmoid, Tanh, Unsqueeze, Squeeze, and ConstantOfShape, Shape and
//! Gather, which fold at import (as do Concat, Transpose, Unsqueeze and Squeeze over constants).
//! Constant operands that follow a Conv or dense layer per output channel (a bias `Add`, a
//! BatchNorm's scale and shift) are folded into that layer's weights and bias.

use crate::ModelError;
use crate::builder::GraphBuilder;
use crate::ir::{BinOp, Conv, Dense, Gemm, Graph, Op, Pool, ValueId};
use crate::limits::{ImportLimits, check_graph};
use crate::proto::{AttributeProto, ModelProto, NodeProto, TensorProto, attr_type, data_type};
use crate::tensor::{Tensor, broadcast_apply, broadcast_shapes, numel};
use prost::Message;
use std::collections::HashMap;

#[path = "import_ops.rs"]
mod ops;
#[path = "import_quant.rs"]
mod quant;

/// A constant tensor read from the file.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstTensor {
    /// Floating-point data (float, double, and small integer types converted).
    F32(Tensor<f32>),
    /// 64-bit integer data (shapes, axes).
    I64(Tensor<i64>),
}

impl ConstTensor {
    /// As floats (integers converted).
    pub fn to_f32(&self) -> Tensor<f32> {
        match self {
            ConstTensor::F32(t) => t.clone(),
            ConstTensor::I64(t) => t.map(|&v| v as f32),
        }
    }
    /// Shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            ConstTensor::F32(t) => t.shape(),
            ConstTensor::I64(t) => t.shape(),
        }
    }
}

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Size for a symbolic leading (batch) dimension of an input.
    pub batch: usize,
    /// Graph inputs to treat as constants (name → value), e.g. a shape tensor fed at run time.
    pub constants: HashMap<String, ConstTensor>,
    /// Caps on attributes and budgets on memory and work (see [`crate::limits`]).
    pub limits: ImportLimits,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            constants: HashMap::new(),
            limits: ImportLimits::default(),
        }
    }
}

/// Read and import an ONNX file.
pub fn load_model(path: &std::path::Path, opts: &ImportOptions) -> Result<Graph, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    import_model(&bytes, opts)
}

/// Decode a TensorProto into a constant. Rejects external data, unknown types and size mismatches.
pub fn parse_tensor(t: &TensorProto) -> Result<ConstTensor, ModelError> {
    let name = if t.name.is_empty() {
        "<unnamed>"
    } else {
        t.name.as_str()
    };
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                ModelError::Invalid(format!("tensor '{name}' has negative dimension {d}"))
            })
        })
        .collect::<Result<_, _>>()?;
    let n = numel(&shape)?;
    if t.data_location == 1 {
        return Err(ModelError::Invalid(format!(
            "tensor '{name}' keeps its data in an external file; re-save the model with the data embedded"
        )));
    }
    let raw = &t.raw_data;
    let bad_len = |have: usize, each: usize| {
        ModelError::Invalid(format!(
            "tensor '{name}' of shape {shape:?} needs {n} elements but holds {} (truncated or corrupted data)",
            have / each.max(1)
        ))
    };
    let check = |have: usize| {
        if have == n {
            Ok(())
        } else {
            Err(bad_len(have, 1))
        }
    };
    macro_rules! from_raw {
        ($ty:ty, $size:expr) => {{
            if raw.len() != n * $size {
                return Err(bad_len(raw.len(), $size));
            }
            raw.chunks_exact($size)
                .map(|c| {
                    let mut b = [0u8; $size];
                    b.copy_from_slice(c);
                    <$ty>::from_le_bytes(b)
                })
                .collect::<Vec<$ty>>()
        }};
    }
    let out = match t.data_type {
        data_type::FLOAT => {
            let v = if !raw.is_empty() {
                from_raw!(f32, 4)
            } else {
                t.float_data.clone()
            };
            check(v.len())?;
            ConstTensor::F32(Tensor::new(shape, v)?)
        }
        data_type::DOUBLE => {
            let v = if !raw.is_empty() {
                from_raw!(f64, 8)
            } else {
                t.double_data.clone()
            };
            check(v.len())?;
            ConstTensor::F32(Tensor::new(shape, v.iter().map(|&x| x as f32).collect())?)
        }
        data_type::INT64 => {
            let v = if !raw.is_empty() {
                from_raw!(i64, 8)
            } else {
                t.int64_data.clone()
            };
            check(v.len())?;
            ConstTensor::I64(Tensor::new(shape, v)?)
        }
        data_type::INT32 => {
            let v: Vec<i64> = if !raw.is_empty() {
                from_raw!(i32, 4).into_iter().map(i64::from).collect()
            } else {
                t.int32_data.iter().map(|&x| i64::from(x)).collect()
            };
            check(v.len())?;
            ConstTensor::I64(Tensor::new(shape, v)?)
        }
        data_type::UINT8 | data_type::INT8 | data_type::BOOL => {
            let v: Vec<i64> = if !raw.is_empty() {
                if raw.len() != n {
                    return Err(bad_len(raw.len(), 1));
                }
                raw.iter()
                    .map(|&b| {
                        if t.data_type == data_type::INT8 {
                            i64::from(b as i8)
                        } else {
                            i64::from(b)
                        }
                    })
                    .collect()
            } else {
                t.int32_data.iter().map(|&x| i64::from(x)).collect()
            };
            check(v.len())?;
            ConstTensor::I64(Tensor::new(shape, v)?)
        }
        other => {
            return Err(ModelError::Invalid(format!(
                "tensor '{name}' has data type {other}; tessera reads float, double, int64, int32, int8, uint8 and bool"
            )));
        }
    };
    Ok(out)
}

#[derive(Clone, Debug)]
enum Val {
    Dyn(ValueId),
    Const(ConstTensor),
}

struct Ctx<'a> {
    node: &'a NodeProto,
    name: String,
    limits: &'a ImportLimits,
}

impl Ctx<'_> {
    fn unsupported(&self, detail: impl Into<String>) -> ModelError {
        ModelError::Unsupported {
            node: self.name.clone(),
            op: self.node.op_type.clone(),
            detail: detail.into(),
        }
    }
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    fn check_attrs(&self, allowed: &[&str]) -> Result<(), ModelError> {
        for a in &self.node.attribute {
            if !allowed.contains(&a.name.as_str()) {
                return Err(self.unsupported(format!(
                    "attribute '{}' is not supported; supported attributes: {}",
                    a.name,
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }
    fn int(&self, name: &str, default: i64) -> Result<i64, ModelError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.r#type == attr_type::INT || a.r#type == 0 => Ok(a.i),
            Some(_) => Err(self.unsupported(format!("attribute '{name}' must be an integer"))),
        }
    }
    fn float(&self, name: &str, default: f32) -> Result<f32, ModelError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.r#type == attr_type::FLOAT || a.r#type == 0 => Ok(a.f),
            Some(_) => Err(self.unsupported(format!("attribute '{name}' must be a float"))),
        }
    }
    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, ModelError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == attr_type::INTS || a.r#type == 0 => Ok(Some(a.ints.clone())),
            Some(_) => {
                Err(self.unsupported(format!("attribute '{name}' must be a list of integers")))
            }
        }
    }
    fn string(&self, name: &str) -> Result<Option<String>, ModelError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == attr_type::STRING || a.r#type == 0 => {
                Ok(Some(String::from_utf8_lossy(&a.s).into_owned()))
            }
            Some(_) => Err(self.unsupported(format!("attribute '{name}' must be a string"))),
        }
    }
    /// Check one attribute value against `max` (the [`ImportLimits`] field `field`).
    fn capped(
        &self,
        attr: &str,
        v: i64,
        max: usize,
        field: &'static str,
    ) -> Result<usize, ModelError> {
        self.limits
            .attr(&self.name, &self.node.op_type, attr, v, max, field)
    }
    /// Two values in `0..=max` from an `ints` attribute of length 2 (or `default`).
    fn pair(
        &self,
        name: &str,
        default: usize,
        max: usize,
        field: &'static str,
    ) -> Result<[usize; 2], ModelError> {
        match self.ints(name)? {
            None => Ok([default; 2]),
            Some(v) => {
                let v = v
                    .iter()
                    .map(|&x| self.capped(name, x, max, field))
                    .collect::<Result<Vec<_>, _>>()?;
                <[usize; 2]>::try_from(v.as_slice()).map_err(|_| {
                    self.unsupported(format!(
                        "attribute '{name}' has {} values; only 2-D (NCHW) windows are supported",
                        v.len()
                    ))
                })
            }
        }
    }
}

/// Resolve pads for a 2-D window from `auto_pad`/`pads`: (top, left, bottom, right).
fn resolve_pads(
    cx: &Ctx,
    input_hw: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    dil: [usize; 2],
) -> Result<[usize; 4], ModelError> {
    let auto = cx.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" | "" => match cx.ints("pads")? {
            None => Ok([0; 4]),
            Some(p) => {
                let p = p
                    .iter()
                    .map(|&x| cx.capped("pads", x, cx.limits.max_pad, "max_pad"))
                    .collect::<Result<Vec<_>, _>>()?;
                <[usize; 4]>::try_from(p.as_slice()).map_err(|_| {
                    cx.unsupported(format!(
                        "pads has {} values; only 2-D windows (4 pads) are supported",
                        p.len()
                    ))
                })
            }
        },
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = [0usize; 4];
            for a in 0..2 {
                let s = strides[a].max(1);
                let out = input_hw[a].div_ceil(s);
                let span = dil[a] * kernel[a].saturating_sub(1) + 1;
                let total = ((out.saturating_sub(1)) * s + span).saturating_sub(input_hw[a]);
                let small = total / 2;
                let (b, e) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[a] = b;
                pads[a + 2] = e;
            }
            for &p in &pads {
                cx.capped(
                    "pads (from auto_pad)",
                    i64::try_from(p).unwrap_or(i64::MAX),
                    cx.limits.max_pad,
                    "max_pad",
                )?;
            }
            Ok(pads)
        }
        other => Err(cx.unsupported(format!(
            "auto_pad '{other}' is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER"
        ))),
    }
}

/// The attributes of Conv (and QLinearConv).
const CONV_ATTRS: &[&str] = &[
    "auto_pad",
    "dilations",
    "group",
    "kernel_shape",
    "pads",
    "strides",
];

struct Importer<'l> {
    limits: &'l ImportLimits,
    b: GraphBuilder,
    vals: HashMap<String, Val>,
    opset: i64,
    softmax_outputs: Vec<String>,
    /// Data type of every initializer and Constant output (a zero point's type is its grid's).
    dtypes: HashMap<String, i32>,
    /// The grid of every quantized activation of an int8 model.
    grids: HashMap<ValueId, crate::ir::QParam>,
    /// Constants that are a DequantizeLinear of integers: their scales, along an axis.
    qconsts: HashMap<String, quant::QConst>,
}

impl Importer<'_> {
    fn get(&self, cx: &Ctx, idx: usize) -> Result<Option<Val>, ModelError> {
        match cx.node.input.get(idx) {
            None => Ok(None),
            Some(n) if n.is_empty() => Ok(None),
            Some(n) => self.vals.get(n).cloned().map(Some).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "node '{}' reads '{n}', which no earlier node, input or initializer defines",
                    cx.name
                ))
            }),
        }
    }
    fn need(&self, cx: &Ctx, idx: usize) -> Result<Val, ModelError> {
        self.get(cx, idx)?
            .ok_or_else(|| cx.unsupported(format!("input {idx} is missing")))
    }
    fn need_dyn(&self, cx: &Ctx, idx: usize) -> Result<ValueId, ModelError> {
        match self.need(cx, idx)? {
            Val::Dyn(v) => Ok(v),
            Val::Const(_) => Err(cx.unsupported(format!(
                "input {idx} is a constant; tessera does not fold this op over constants"
            ))),
        }
    }
    fn need_const(&self, cx: &Ctx, idx: usize, what: &str) -> Result<ConstTensor, ModelError> {
        match self.need(cx, idx)? {
            Val::Const(c) => Ok(c),
            Val::Dyn(_) => Err(cx.unsupported(format!(
                "{what} (input {idx}) must be a constant initializer; tessera needs static weights and shapes"
            ))),
        }
    }
    /// Turn a value into a graph value, materialising constants as Constant nodes.
    fn as_dyn(&mut self, cx: &Ctx, v: Val) -> Result<ValueId, ModelError> {
        match v {
            Val::Dyn(id) => Ok(id),
            Val::Const(c) => {
                let name = format!("{}_const{}", cx.name, self.b.len());
                self.b.push(&name, Op::Constant(c.to_f32()), vec![], "")
            }
        }
    }

    fn node(&mut self, node: &NodeProto, index: usize) -> Result<(), ModelError> {
        let name = if node.name.is_empty() {
            format!("{}_{index}", node.op_type)
        } else {
            node.name.clone()
        };
        let cx = Ctx {
            node,
            name,
            limits: self.limits,
        };
        let microsoft =
            node.domain == "com.microsoft" && quant::MICROSOFT_OPS.contains(&node.op_type.as_str());
        if !node.domain.is_empty() && node.domain != "ai.onnx" && !microsoft {
            return Err(cx.unsupported(format!(
                "custom domain '{}' is not supported (of com.microsoft, tessera reads {})",
                node.domain,
                quant::MICROSOFT_OPS.join(", ")
            )));
        }
        if node.op_type == "Split" {
            return self.split(&cx);
        }
        let out_name = node.output.first().cloned().unwrap_or_default();
        if out_name.is_empty() {
            return Err(cx.unsupported("node has no output"));
        }
        let result: Val = match node.op_type.as_str() {
            "Identity" => {
                cx.check_attrs(&[])?;
                self.need(&cx, 0)?
            }
            "Dropout" => {
                cx.check_attrs(&["ratio", "seed", "is_test", "consumed_inputs"])?;
                if node.output.get(1).is_some_and(|m| !m.is_empty()) {
                    // The mask output is only defined in training mode; leave it undefined so a
                    // consumer fails with a clear "not defined" error.
                }
                self.need(&cx, 0)?
            }
            "Constant" => {
                cx.check_attrs(&[
                    "value",
                    "value_float",
                    "value_floats",
                    "value_int",
                    "value_ints",
                ])?;
                let a = node
                    .attribute
                    .first()
                    .ok_or_else(|| cx.unsupported("Constant without a value"))?;
                let c = match a.name.as_str() {
                    "value" => {
                        let t = a
                            .t
                            .as_ref()
                            .ok_or_else(|| cx.unsupported("Constant 'value' holds no tensor"))?;
                        self.dtypes.insert(out_name.clone(), t.data_type);
                        parse_tensor(t)?
                    }
                    "value_float" => ConstTensor::F32(Tensor::new(vec![], vec![a.f])?),
                    "value_floats" => {
                        ConstTensor::F32(Tensor::new(vec![a.floats.len()], a.floats.clone())?)
                    }
                    "value_int" => ConstTensor::I64(Tensor::new(vec![], vec![a.i])?),
                    _ => ConstTensor::I64(Tensor::new(vec![a.ints.len()], a.ints.clone())?),
                };
                Val::Const(c)
            }
            "Relu" => {
                cx.check_attrs(&["consumed_inputs"])?;
                let x = self.need_dyn(&cx, 0)?;
                Val::Dyn(self.b.push(&cx.name, Op::Relu, vec![x], &out_name)?)
            }
            "Add" | "Sub" | "Mul" | "Div" => self.binary(&cx, &out_name)?,
            "Conv" => self.conv(&cx, &out_name)?,
            "MaxPool" | "AveragePool" => self.pool(&cx, &out_name)?,
            "GlobalAveragePool" => {
                cx.check_attrs(&[])?;
                let x = self.need_dyn(&cx, 0)?;
                Val::Dyn(
                    self.b
                        .push(&cx.name, Op::GlobalAvgPool, vec![x], &out_name)?,
                )
            }
            "Flatten" => {
                cx.check_attrs(&["axis"])?;
                let v = self.need(&cx, 0)?;
                let shape = self.val_shape(&v);
                let r = shape.len() as i64;
                let axis = cx.int("axis", 1)?;
                let axis = if axis < 0 { axis + r } else { axis };
                if !(0..=r).contains(&axis) {
                    return Err(cx.unsupported(format!("axis {axis} is outside [-{r}, {r}]")));
                }
                let a = axis as usize;
                let new = vec![numel(&shape[..a])?, numel(&shape[a..])?];
                self.reshape_to(&cx, v, new, &out_name)?
            }
            "Reshape" => {
                cx.check_attrs(&["allowzero", "shape"])?;
                let v = self.need(&cx, 0)?;
                let spec: Vec<i64> = if let Some(s) = cx.ints("shape")? {
                    s
                } else {
                    match self.need_const(&cx, 1, "the target shape")? {
                        ConstTensor::I64(t) => t.data().to_vec(),
                        ConstTensor::F32(_) => {
                            return Err(cx.unsupported("the target shape must be an int64 tensor"));
                        }
                    }
                };
                let allowzero = cx.int("allowzero", 0)? != 0;
                let new = reshape_target(&cx, &self.val_shape(&v), &spec, allowzero)?;
                self.reshape_to(&cx, v, new, &out_name)?
            }
            "MatMul" => self.matmul(&cx, &out_name)?,
            "Gemm" => self.gemm(&cx, &out_name)?,
            "BatchNormalization" => self.batchnorm(&cx, &out_name)?,
            "Softmax" => {
                cx.check_attrs(&["axis"])?;
                let x = self.need_dyn(&cx, 0)?;
                let r = self.b.shape(x).len() as i64;
                let legacy = self.opset < 13;
                let axis = cx.int("axis", if legacy { 1 } else { -1 })?;
                let axis = if axis < 0 { axis + r } else { axis };
                // Opset 13 normalises along one existing axis, so a scalar has none; the legacy
                // form flattens at `axis` and also takes a scalar as one row.
                let axes = if legacy { 0..r.max(1) } else { 0..r };
                if !axes.contains(&axis) {
                    return Err(cx.unsupported(format!("axis {axis} out of range for rank {r}")));
                }
                self.softmax_outputs.push(out_name.clone());
                Val::Dyn(self.b.push(
                    &cx.name,
                    Op::Softmax {
                        axis: axis as usize,
                        coerce_2d: legacy,
                    },
                    vec![x],
                    &out_name,
                )?)
            }
            "ConstantOfShape" | "Shape" | "Gather" | "Unsqueeze" | "Squeeze" | "Concat" | "Sum"
            | "Transpose" | "Pad" | "Clip" | "LRN" | "Sigmoid" | "Tanh" => {
                self.extra_op(&cx, &out_name)?
            }
            "QuantizeLinear"
            | "DequantizeLinear"
            | "QLinearConv"
            | "QLinearMatMul"
            | "QLinearAdd"
            | "QLinearGlobalAveragePool"
            | "ReduceMean"
            | "Slice" => self.quant_op(&cx, &out_name)?,
            other => {
                return Err(cx.unsupported(format!(
                    "operator '{other}' is not supported; tessera supports Conv, Gemm, MatMul, Add, Sub, Mul, Div, Sum, Relu, Sigmoid, Tanh, Clip, \
                     MaxPool, AveragePool, GlobalAveragePool, LRN, Flatten, Reshape, Transpose, Concat, Pad (constant), Unsqueeze, Squeeze, \
                     BatchNormalization, Identity, Dropout, Constant, ConstantOfShape, Shape and Gather (on constants), Softmax (final layer), \
                     Slice, Split, ReduceMean (spatial), and the int8 ops QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, \
                     QLinearAdd and QLinearGlobalAveragePool"
                )));
            }
        };
        self.keep_grid(node, &result);
        self.vals.insert(out_name, result);
        Ok(())
    }

    fn val_shape(&self, v: &Val) -> Vec<usize> {
        match v {
            Val::Dyn(id) => self.b.shape(*id).to_vec(),
            Val::Const(c) => c.shape().to_vec(),
        }
    }

    fn reshape_to(
        &mut self,
        cx: &Ctx,
        v: Val,
        new: Vec<usize>,
        out: &str,
    ) -> Result<Val, ModelError> {
        Ok(match v {
            Val::Dyn(x) => Val::Dyn(self.b.reshape(&cx.name, x, new, out)?),
            Val::Const(ConstTensor::F32(t)) => Val::Const(ConstTensor::F32(t.reshape(new)?)),
            Val::Const(ConstTensor::I64(t)) => Val::Const(ConstTensor::I64(t.reshape(new)?)),
        })
    }

    fn binary(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&["broadcast", "axis", "consumed_inputs"])?;
        let op = match cx.node.op_type.as_str() {
            "Add" => BinOp::Add,
            "Sub" => BinOp::Sub,
            "Mul" => BinOp::Mul,
            _ => BinOp::Div,
        };
        let a = self.need(cx, 0)?;
        let mut b = self.need(cx, 1)?;
        // Opset < 7 "legacy" broadcast: B aligns with A starting at `axis`.
        if self.opset < 7
            && cx.int("broadcast", 0)? == 1
            && let Some(axis) = cx.attr("axis").map(|a| a.i)
        {
            let ra = self.val_shape(&a).len() as i64;
            let bs = self.val_shape(&b);
            let axis = if axis < 0 {
                axis.saturating_add(ra)
            } else {
                axis
            };
            let trailing = (ra - axis.clamp(0, ra)) - bs.len() as i64;
            if axis < 0 || axis > ra || trailing < 0 {
                return Err(cx.unsupported("legacy broadcast axis does not fit the operand ranks"));
            }
            let mut ns = bs.clone();
            ns.extend(std::iter::repeat_n(1, trailing as usize));
            b = self.reshape_to(cx, b, ns, "")?;
        }
        self.combine(cx, op, a, b, out)
    }

    /// `a op b` over two values: folded when both are constants.
    fn combine(
        &mut self,
        cx: &Ctx,
        op: BinOp,
        a: Val,
        b: Val,
        out: &str,
    ) -> Result<Val, ModelError> {
        Ok(match (a, b) {
            (Val::Const(x), Val::Const(y)) => {
                // Folding allocates the broadcast result and two index maps: charge it first, so
                // that two tiny constants cannot ask for gigabytes.
                let shape = broadcast_shapes(x.shape(), y.shape())?;
                self.charge(cx, &shape)?;
                let (x, y) = (x.to_f32(), y.to_f32());
                Val::Const(ConstTensor::F32(broadcast_apply(&x, &y, |p, q| {
                    op.apply(p, q)
                })?))
            }
            (Val::Dyn(x), Val::Const(c)) => {
                let bin = Op::Binary {
                    op,
                    constant: Some(c.to_f32()),
                    constant_first: false,
                };
                Val::Dyn(self.b.push(&cx.name, bin, vec![x], out)?)
            }
            (Val::Const(c), Val::Dyn(x)) => {
                let bin = Op::Binary {
                    op,
                    constant: Some(c.to_f32()),
                    constant_first: true,
                };
                Val::Dyn(self.b.push(&cx.name, bin, vec![x], out)?)
            }
            (Val::Dyn(x), Val::Dyn(y)) => {
                let bin = Op::Binary {
                    op,
                    constant: None,
                    constant_first: false,
                };
                Val::Dyn(self.b.push(&cx.name, bin, vec![x, y], out)?)
            }
        })
    }

    fn conv(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(CONV_ATTRS)?;
        let x = self.need_dyn(cx, 0)?;
        let weight = self.need_const(cx, 1, "the weight W")?.to_f32();
        let bias = self.get(cx, 2)?;
        let bias = match bias {
            None => None,
            Some(Val::Const(c)) => Some(c.to_f32()),
            Some(Val::Dyn(_)) => {
                return Err(cx.unsupported("the bias B must be a constant initializer"));
            }
        };
        let scales = self.weight_scales(cx, 1, 0)?;
        self.conv_with(cx, x, weight, bias, scales, out)
    }

    /// A Conv node over `x` (attributes from `cx`), with an int8 model's weight scales if any.
    fn conv_with(
        &mut self,
        cx: &Ctx,
        x: ValueId,
        weight: Tensor,
        bias: Option<Tensor>,
        weight_scales: Option<Vec<f32>>,
        out: &str,
    ) -> Result<Val, ModelError> {
        let ws = weight.shape().to_vec();
        if ws.len() != 4 {
            return Err(cx.unsupported(format!(
                "weight of shape {ws:?}: only 2-D convolution (4-D weights) is supported"
            )));
        }
        let kernel = [ws[2], ws[3]];
        for k in kernel {
            cx.capped(
                "kernel (weight shape)",
                i64::try_from(k).unwrap_or(i64::MAX),
                cx.limits.max_kernel,
                "max_kernel",
            )?;
        }
        if let Some(k) = cx.ints("kernel_shape")?
            && k.iter()
                .map(|&v| usize::try_from(v).ok())
                .collect::<Option<Vec<_>>>()
                .as_deref()
                != Some(&kernel[..])
        {
            return Err(cx.unsupported(format!(
                "kernel_shape {k:?} disagrees with the weight shape {ws:?}"
            )));
        }
        let strides = cx.pair("strides", 1, cx.limits.max_stride, "max_stride")?;
        let dilations = cx.pair("dilations", 1, cx.limits.max_dilation, "max_dilation")?;
        let groups = cx.capped(
            "group",
            cx.int("group", 1)?,
            cx.limits.max_groups,
            "max_groups",
        )?;
        let xs = self.b.shape(x).to_vec();
        if xs.len() != 4 {
            return Err(cx.unsupported(format!(
                "input of shape {xs:?}: only NCHW inputs are supported"
            )));
        }
        let pads = resolve_pads(cx, [xs[2], xs[3]], kernel, strides, dilations)?;
        let bias = match bias {
            Some(b) => Some(
                b.reshape(vec![ws[0]])
                    .map_err(|_| cx.unsupported(format!("bias must have {} elements", ws[0])))?,
            ),
            None => None,
        };
        let op = Op::Conv(Conv {
            weight,
            bias,
            strides,
            pads,
            dilations,
            groups,
            weight_scales,
        });
        Ok(Val::Dyn(self.b.push(&cx.name, op, vec![x], out)?))
    }

    fn pool(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        let is_max = cx.node.op_type == "MaxPool";
        if is_max {
            cx.check_attrs(&[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ])?;
            if cx.int("storage_order", 0)? != 0 {
                return Err(
                    cx.unsupported("storage_order = 1 (column-major indices) is not supported")
                );
            }
            if cx.node.output.get(1).is_some_and(|s| !s.is_empty()) {
                return Err(cx.unsupported("the Indices output is not supported"));
            }
        } else {
            cx.check_attrs(&[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ])?;
        }
        let x = self.need_dyn(cx, 0)?;
        let xs = self.b.shape(x).to_vec();
        if xs.len() != 4 {
            return Err(cx.unsupported(format!(
                "input of shape {xs:?}: only NCHW inputs are supported"
            )));
        }
        let kernel = match cx.ints("kernel_shape")? {
            Some(_) => cx.pair("kernel_shape", 1, cx.limits.max_kernel, "max_kernel")?,
            None => return Err(cx.unsupported("kernel_shape is required")),
        };
        let strides = cx.pair("strides", 1, cx.limits.max_stride, "max_stride")?;
        let dilations = cx.pair("dilations", 1, cx.limits.max_dilation, "max_dilation")?;
        let pads = resolve_pads(cx, [xs[2], xs[3]], kernel, strides, dilations)?;
        let p = Pool {
            kernel,
            strides,
            pads,
            dilations,
            count_include_pad: cx.int("count_include_pad", 0)? != 0,
            ceil_mode: cx.int("ceil_mode", 0)? != 0,
        };
        let op = if is_max {
            Op::MaxPool(p)
        } else {
            Op::AvgPool(p)
        };
        Ok(Val::Dyn(self.b.push(&cx.name, op, vec![x], out)?))
    }

    fn matmul(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&[])?;
        let a = self.need(cx, 0)?;
        let b = self.need(cx, 1)?;
        if let (Val::Dyn(x), Val::Const(w)) = (&a, &b) {
            let w = w.to_f32();
            if self.b.shape(*x).len() == 2 && w.shape().len() == 2 {
                let weight = transpose2(&w)?;
                let weight_scales = self.weight_scales(cx, 1, 1)?;
                return Ok(Val::Dyn(self.b.push(
                    &cx.name,
                    Op::Dense(Dense {
                        weight,
                        bias: None,
                        weight_scales,
                    }),
                    vec![*x],
                    out,
                )?));
            }
        }
        let x = self.as_dyn(cx, a)?;
        let y = self.as_dyn(cx, b)?;
        Ok(Val::Dyn(self.b.push(
            &cx.name,
            Op::MatMul,
            vec![x, y],
            out,
        )?))
    }

    fn gemm(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&["alpha", "beta", "transA", "transB", "broadcast"])?;
        let g = Gemm {
            alpha: cx.float("alpha", 1.0)?,
            beta: cx.float("beta", 1.0)?,
            trans_a: cx.int("transA", 0)? != 0,
            trans_b: cx.int("transB", 0)? != 0,
        };
        let a = self.need(cx, 0)?;
        let b = self.need(cx, 1)?;
        let c = self.get(cx, 2)?;
        // Dense form: variable A (not transposed), constant B, constant per-output bias.
        if let (Val::Dyn(x), Val::Const(w), false) = (&a, &b, g.trans_a) {
            let w = w.to_f32();
            let xs = self.b.shape(*x).to_vec();
            if xs.len() == 2 && w.shape().len() == 2 {
                let mut weight = if g.trans_b { w } else { transpose2(&w)? };
                let m = weight.shape()[0];
                let bias = match &c {
                    None => Some(None),
                    Some(Val::Const(cc)) => per_output_bias(&cc.to_f32(), m)
                        .map(|v| Some(v.iter().map(|&q| q * g.beta).collect::<Vec<_>>())),
                    Some(Val::Dyn(_)) => None,
                };
                if let Some(bias) = bias {
                    let weight_scales = self.weight_scales(cx, 1, if g.trans_b { 0 } else { 1 })?;
                    if weight_scales.is_some() && g.alpha != 1.0 {
                        return Err(cx.unsupported(
                            "alpha ≠ 1 on an int8 model's quantized weights; fold it into the weight scales",
                        ));
                    }
                    for v in weight.data_mut() {
                        *v *= g.alpha;
                    }
                    let bias = bias.map(|b| Tensor::new(vec![m], b)).transpose()?;
                    return Ok(Val::Dyn(self.b.push(
                        &cx.name,
                        Op::Dense(Dense {
                            weight,
                            bias,
                            weight_scales,
                        }),
                        vec![*x],
                        out,
                    )?));
                }
            }
        }
        let mut ins = vec![self.as_dyn(cx, a)?, self.as_dyn(cx, b)?];
        if let Some(c) = c {
            ins.push(self.as_dyn(cx, c)?);
        }
        Ok(Val::Dyn(self.b.push(&cx.name, Op::Gemm(g), ins, out)?))
    }

    fn batchnorm(&mut self, cx: &Ctx, out: &str) -> Result<Val, ModelError> {
        cx.check_attrs(&[
            "epsilon",
            "momentum",
            "spatial",
            "is_test",
            "consumed_inputs",
            "training_mode",
        ])?;
        if cx.int("training_mode", 0)? != 0 {
            return Err(cx.unsupported(
                "training_mode = 1 is not supported; export the model in inference mode",
            ));
        }
        if cx.int("spatial", 1)? != 1 {
            return Err(cx.unsupported("spatial = 0 is not supported"));
        }
        let x = self.need_dyn(cx, 0)?;
        let eps = cx.float("epsilon", 1e-5)?;
        let scale = self.need_const(cx, 1, "scale")?.to_f32();
        let bias = self.need_const(cx, 2, "B")?.to_f32();
        let mean = self.need_const(cx, 3, "mean")?.to_f32();
        let var = self.need_const(cx, 4, "var")?.to_f32();
        let xs = self.b.shape(x).to_vec();
        let c = *xs
            .get(1)
            .ok_or_else(|| cx.unsupported("input needs a channel axis"))?;
        for (t, n) in [
            (&scale, "scale"),
            (&bias, "B"),
            (&mean, "mean"),
            (&var, "var"),
        ] {
            if t.len() != c {
                return Err(cx.unsupported(format!(
                    "{n} has {} elements, the input has {c} channels",
                    t.len()
                )));
            }
        }
        let mut s = vec![0f32; c];
        let mut sh = vec![0f32; c];
        for i in 0..c {
            s[i] = scale.data()[i] / (var.data()[i] + eps).sqrt();
            sh[i] = bias.data()[i] - mean.data()[i] * s[i];
        }
        let mut cshape = vec![c];
        cshape.extend(std::iter::repeat_n(1, xs.len().saturating_sub(2)));
        let mul = Op::Binary {
            op: BinOp::Mul,
            constant: Some(Tensor::new(cshape.clone(), s)?),
            constant_first: false,
        };
        let y = self
            .b
            .push(&format!("{}_scale", cx.name), mul, vec![x], "")?;
        let add = Op::Binary {
            op: BinOp::Add,
            constant: Some(Tensor::new(cshape, sh)?),
            constant_first: false,
        };
        Ok(Val::Dyn(self.b.push(&cx.name, add, vec![y], out)?))
    }
}

fn transpose2(w: &Tensor) -> Result<Tensor, ModelError> {
    let (r, c) = (w.shape()[0], w.shape()[1]);
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = w.data()[i * c + j];
        }
    }
    Tensor::new(vec![c, r], out)
}

/// The `[M]` vector a constant broadcasts to along the last axis of an `[N, M]` output, if it is one.
fn per_output_bias(c: &Tensor, m: usize) -> Option<Vec<f32>> {
    let s = c.shape();
    if s.iter().rev().skip(1).any(|&d| d != 1) {
        return None;
    }
    match s.last().copied().unwrap_or(1) {
        1 => Some(vec![c.data().first().copied()?; m]),
        d if d == m => Some(c.data().to_vec()),
        _ => None,
    }
}

fn reshape_target(
    cx: &Ctx,
    input: &[usize],
    spec: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, ModelError> {
    let total = numel(input)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                if infer.replace(i).is_some() {
                    return Err(cx.unsupported("more than one -1 in the target shape"));
                }
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                cx.unsupported("0 in the target shape has no input dimension to copy")
            })?),
            d if d >= 0 => out.push(d as usize),
            d => return Err(cx.unsupported(format!("invalid target dimension {d}"))),
        }
    }
    let known = numel(&out)?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(cx.unsupported(format!("cannot reshape {input:?} to {spec:?}")));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(cx.unsupported(format!(
            "cannot reshape {input:?} ({total} elements) to {spec:?}"
        )));
    }
    Ok(out)
}

/// Decode and import ONNX bytes into a validated [`Graph`].
pub fn import_model(bytes: &[u8], opts: &ImportOptions) -> Result<Graph, ModelError> {
    let model = ModelProto::decode(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
    let graph = model
        .graph
        .ok_or_else(|| ModelError::Decode("the model holds no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(1);
    let name = if graph.name.is_empty() {
        "model".to_string()
    } else {
        graph.name.clone()
    };
    let limits = &opts.limits;
    let mut imp = Importer {
        limits,
        b: GraphBuilder::new(&name, 0),
        vals: HashMap::new(),
        opset,
        softmax_outputs: vec![],
        dtypes: HashMap::new(),
        grids: HashMap::new(),
        qconsts: HashMap::new(),
    };
    for t in &graph.initializer {
        if t.name.is_empty() {
            return Err(ModelError::Invalid("an initializer has no name".into()));
        }
        imp.dtypes.insert(t.name.clone(), t.data_type);
        let c = parse_tensor(t)?;
        limits.shape(&t.name, "initializer", c.shape())?;
        imp.vals.insert(t.name.clone(), Val::Const(c));
    }
    for (k, v) in &opts.constants {
        imp.vals.insert(k.clone(), Val::Const(v.clone()));
    }
    for inp in &graph.input {
        if imp.vals.contains_key(&inp.name) {
            continue; // old-IR models list initializers as inputs too
        }
        let tt = inp
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .ok_or_else(|| ModelError::Invalid(format!("input '{}' is not a tensor", inp.name)))?;
        if tt.elem_type != data_type::FLOAT && tt.elem_type != data_type::DOUBLE {
            return Err(ModelError::Invalid(format!(
                "input '{}' has element type {}; tessera's runtime inputs are float tensors (bind integer inputs as constants)",
                inp.name, tt.elem_type
            )));
        }
        let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
        let mut shape = Vec::with_capacity(dims.len());
        for (i, d) in dims.iter().enumerate() {
            match d.dim_value {
                // An explicit 0 is a static, zero-sized dimension (ONNX semantics), not a batch.
                Some(v) if v >= 0 => shape.push(v as usize),
                _ if i == 0 => shape.push(opts.batch),
                _ => {
                    return Err(ModelError::Invalid(format!(
                        "input '{}' has a symbolic or negative dimension at axis {i}; tessera needs static shapes (only the batch axis may be symbolic)",
                        inp.name
                    )));
                }
            }
        }
        limits.shape(&inp.name, "input", &shape)?;
        let id = imp.b.input(&inp.name, shape)?;
        imp.vals.insert(inp.name.clone(), Val::Dyn(id));
    }
    for (i, n) in graph.node.iter().enumerate() {
        imp.node(n, i)?;
    }
    let mut outputs = Vec::new();
    for o in &graph.output {
        match imp.vals.get(&o.name) {
            Some(Val::Dyn(id)) => outputs.push(*id),
            Some(Val::Const(_)) => {
                return Err(ModelError::Invalid(format!(
                    "output '{}' is a constant",
                    o.name
                )));
            }
            None => {
                return Err(ModelError::Invalid(format!(
                    "output '{}' is never computed",
                    o.name
                )));
            }
        }
    }
    if outputs.is_empty() {
        return Err(ModelError::Invalid("the graph has no outputs".into()));
    }
    let softmax = std::mem::take(&mut imp.softmax_outputs);
    let mut g = imp.b.finish(outputs)?;
    let counts = g.consumer_counts();
    for s in softmax {
        if let Some(id) = g.values.iter().position(|v| v.name == s)
            && (!g.outputs.contains(&id) || counts.get(id).copied().unwrap_or(0) > 0)
        {
            return Err(ModelError::Unsupported {
                    node: s,
                    op: "Softmax".into(),
                    detail: "Softmax is supported only as the final layer (its output must be a graph output, read by no other node)".into(),
                });
        }
    }
    fold_channel_constants(&mut g)?;
    g.validate()?;
    check_graph(&g, limits)?;
    Ok(g)
}

/// Fold per-channel constant Add/Sub/Mul/Div that directly follow a Conv or Dense layer (whose
/// output nothing else reads) into that layer's weights and bias.
pub fn fold_channel_constants(g: &mut Graph) -> Result<(), ModelError> {
    loop {
        let counts = g.consumer_counts();
        let mut producer = vec![usize::MAX; g.values.len()];
        for (k, n) in g.nodes.iter().enumerate() {
            producer[n.output] = k;
        }
        let mut did = None;
        for (i, n) in g.nodes.iter().enumerate() {
            let Op::Binary {
                op,
                constant: Some(c),
                constant_first: false,
            } = &n.op
            else {
                continue;
            };
            let Some(&x) = n.inputs.first() else { continue };
            let j = producer[x];
            if j == usize::MAX || counts[x] != 1 || g.outputs.contains(&x) {
                continue;
            }
            let out_shape = g.shape(x);
            if out_shape.len() < 2
                || broadcast_shapes(out_shape, c.shape()).ok().as_deref() != Some(out_shape)
            {
                continue;
            }
            let ch = out_shape[1];
            // Right-align the constant against the output: only axis 1 may differ from 1.
            let off = out_shape.len() - c.shape().len();
            let per_channel = c
                .shape()
                .iter()
                .enumerate()
                .all(|(k, &d)| d == 1 || k + off == 1);
            if !per_channel {
                continue;
            }
            let vals: Vec<f32> = if c.len() == 1 {
                vec![c.data()[0]; ch]
            } else {
                c.data().to_vec()
            };
            let layer_ok = matches!(&g.nodes[j].op, Op::Conv(c) if c.weight_scales.is_none())
                || matches!(&g.nodes[j].op, Op::Dense(d) if d.weight_scales.is_none());
            if layer_ok && vals.len() == ch {
                did = Some((i, j, *op, vals));
                break;
            }
        }
        let Some((i, j, op, vals)) = did else {
            return Ok(());
        };
        let (weight, bias) = match &mut g.nodes[j].op {
            Op::Conv(c) => (&mut c.weight, &mut c.bias),
            Op::Dense(d) => (&mut d.weight, &mut d.bias),
            _ => return Err(ModelError::Invalid("internal: fold target changed".into())),
        };
        let ch = vals.len();
        let b = bias.get_or_insert_with(|| Tensor::vector(vec![0.0; ch]));
        let per = weight.len() / ch.max(1);
        match op {
            BinOp::Add | BinOp::Sub => {
                let sign = if op == BinOp::Add { 1.0 } else { -1.0 };
                for (bv, v) in b.data_mut().iter_mut().zip(&vals) {
                    *bv += sign * v;
                }
            }
            BinOp::Mul | BinOp::Div => {
                for (k, v) in vals.iter().enumerate() {
                    let f = if op == BinOp::Mul { *v } else { 1.0 / *v };
                    for w in &mut weight.data_mut()[k * per..(k + 1) * per] {
                        *w *= f;
                    }
                    b.data_mut()[k] *= f;
                }
            }
        }
        let out = g.nodes[i].output;
        g.nodes[j].output = out;
        g.nodes.remove(i);
    }
}
